"""Time per epoch, peak memory and batch size for each MovieLens size, on synthetic data.

    python -m benchmarks.epoch_time --output bench/epochs [--only ml-100k,ml-1m]

For each MovieLens size (``SHAPES``: its users, movies and ratings), synthetic ratings of that
shape (``tfrs_movies.data.synthetic``) train our retrieval recipe (``ModelConfig()`` defaults,
the optimizer `fit_model` compiles) for a fixed number of steps at each of ``BATCHES``, in a
child process per size (`benchmarks.train_speed.fit_speed`: a warm-up block, then the median
of the timed blocks). The epoch time is *extrapolated*: ratings / measured examples/s, not a
timed epoch (validation and evaluation not included). Peak memory is the child's peak
resident set: the ratings, vocabulary, feature tables, model, optimizer and input pipeline.

Writes ``DIR/epochs.json`` (flat keys ``epoch_minutes.SIZE.batchB``,
``epoch_examples_per_s.SIZE.batchB``, ``peak_rss_mb.SIZE``, ``shape.SIZE.*``) and
``DIR/epochs.md`` (docs/speed.md, "Time per epoch by MovieLens size").
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import timing
from benchmarks.train_speed import Dataset, Plan, prepare

# MovieLens size -> (users, movies, ratings) of the real dataset.
SHAPES = {"ml-100k": (943, 1_682, 100_000), "ml-1m": (6_040, 3_706, 1_000_209),
          "ml-10m": (69_878, 10_677, 10_000_054), "ml-20m": (138_493, 26_744, 20_000_263),
          "ml-25m": (162_541, 59_047, 25_000_095)}
BATCHES = (256, 4096)
EXAMPLES_PER_BLOCK = 50_000  # steps per timed block: about this many examples
REPEATS = 2


def steps_for(batch: int) -> int:
    return max(5, EXAMPLES_PER_BLOCK // batch)


def run(output: Path, sizes: list[str], work: Path) -> dict:
    out = {**timing.machine(), "run.date": time.strftime("%Y-%m-%d")}
    for size in sizes:
        users, movies, ratings = SHAPES[size]
        print(f"epochs: {size} ({users:,} users, {movies:,} movies, {ratings:,} ratings)",
              flush=True)
        folder = prepare(Dataset(size, Plan(), users, movies, ratings), Path(), work / size)
        child = timing.run_child("benchmarks.epoch_time", ["--child", "--data", str(folder)])
        out.update({f"shape.{size}.users": users, f"shape.{size}.movies": movies,
                    f"shape.{size}.ratings": ratings, f"peak_rss_mb.{size}": child["peak_rss_mb"]})
        for batch in BATCHES:
            rate = child[f"examples_per_s.batch{batch}"]
            out[f"epoch_examples_per_s.{size}.batch{batch}"] = round(rate, 1)
            out[f"epoch_minutes.{size}.batch{batch}"] = round(ratings / rate / 60, 2)
        (output / "epochs.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return out


def table(r: dict) -> str:
    """The table of docs/speed.md: one row per size measured."""
    head = " | ".join(f"epoch at batch {b} (examples/s)" for b in BATCHES)
    lines = [f"| size | users / movies / ratings | {head} | peak RSS (MB) |",
             "|---|---|" + "---:|" * (len(BATCHES) + 1)]
    for size in SHAPES:
        if f"peak_rss_mb.{size}" not in r:
            continue
        cells = " | ".join(f"{_minutes(r[f'epoch_minutes.{size}.batch{b}'])} "
                           f"({r[f'epoch_examples_per_s.{size}.batch{b}']:,.0f})"
                           for b in BATCHES)
        lines.append(f"| {size} | {r[f'shape.{size}.users']:,} / {r[f'shape.{size}.movies']:,}"
                     f" / {r[f'shape.{size}.ratings']:,} | {cells} | "
                     f"{r[f'peak_rss_mb.{size}']:,.0f} |")
    return "\n".join(lines) + "\n"


def _minutes(minutes: float) -> str:
    return f"{minutes * 60:.0f} s" if minutes < 1 else f"{minutes:.1f} min"


def child(data: Path, result: str) -> int:
    """Both batches in this process: one vocabulary and feature space, a model per batch."""
    from tfrs_movies.config import ModelConfig, TrainConfig
    from tfrs_movies.features import FeatureSpace, Vocabulary
    from benchmarks.train_speed import fit_speed

    ratings, movies, users = (pd.read_parquet(data / f"{name}.parquet")
                              for name in ("ratings", "movies", "users"))
    space = FeatureSpace(Vocabulary.build(ratings, movies, users),
                         max_history=ModelConfig().max_history)
    got = {}
    for batch in BATCHES:
        speed = fit_speed("retrieval", space, ratings, TrainConfig(batch_size=batch),
                          steps_for(batch), REPEATS)
        got[f"examples_per_s.batch{batch}"] = speed["examples_per_s"]
        print(f"epochs: batch {batch}: {speed['examples_per_s']:,.0f} examples/s", flush=True)
    timing.write_result(result, got)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.epoch_time",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, help="folder for epochs.json and epochs.md")
    parser.add_argument("--only", default=",".join(SHAPES),
                        help="comma-separated sizes (default: %(default)s)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.data, args.result)
    sizes = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SHAPES]
    if unknown or not sizes or args.output is None:
        raise SystemExit(f"--output DIR is required; --only: choose from {', '.join(SHAPES)}")
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="epochs-") as tmp:
        result = run(args.output, sizes, Path(tmp))
    text = table(result)
    (args.output / "epochs.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
