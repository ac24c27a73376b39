"""Quality and speed benchmarks: each writes JSON and a markdown table."""
