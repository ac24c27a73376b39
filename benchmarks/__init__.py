"""Quality and speed benchmarks: each writes JSON and a markdown table."""
from __future__ import annotations

import sys

from tfrs_movies.errors import UserError


def one_line_errors(run):
    """``run(argv) -> int`` as a ``main`` that prints a user's mistake (``UserError``, such as
    a bad ``--data-dir``) in one line, without a traceback, and returns 2."""
    def main(argv=None) -> int:
        try:
            return run(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return main
