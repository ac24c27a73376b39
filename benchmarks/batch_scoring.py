"""Batch-scoring throughput of `serving.batch.score_users` (users/second), local backend.

    python -m benchmarks.batch_scoring --name ml100k --export-dir EXP \\
        --users-file ../shared/data/ml-100k/u.user --exclude-seen RUN/split/train.parquet
    python -m benchmarks.batch_scoring --name synthetic-1M --export-dir EXP \\
        --synthetic-users 1000000 --known-from RUN/split/train.parquet

The ids are written to a Parquet file first, so the timing covers what ``python -m serving
batch`` does after loading the model: reading the ids, scoring, writing the part files and
concatenating them into the output. The model is loaded and warmed up on one request before
the clock starts (``load_seconds`` reports that separately). ``--known-from`` cycles over the
users of a ratings file (the model's own path; repeats are scored once, so "users scored" is
at most the number of known users); without it the ids are made up and distinct, so every one
takes the export's unknown-user (popularity) path. Writes ``--output`` JSON and prints one
markdown table row (with ``--repeat``, the best run; every run's users/s is in the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from serving.batch import DEFAULT_BATCH_SIZE, score_users
from serving.client import make_client

HEADER = ("| run | input ids | users scored | n | batch | concurrency | exclude | seconds | "
          "users/s |\n|---|---:|---:|---:|---:|---:|---|---:|---:|")


def _ids(args) -> list[str]:
    if args.users_file:
        path = Path(args.users_file)
        if path.name == "u.user":  # MovieLens 100K's users file: id|age|gender|...
            return pd.read_csv(path, sep="|", header=None, dtype=str)[0].tolist()
        from serving.batch import read_user_ids
        return read_user_ids(path).ids
    if args.known_from:
        known = pd.read_parquet(args.known_from, columns=["user_id"])["user_id"].unique()
        return [str(known[i % len(known)]) for i in range(args.synthetic_users)]
    return [f"synthetic-{i}" for i in range(args.synthetic_users)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batch_scoring",
                                description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True, help="row label")
    p.add_argument("--export-dir", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--users-file", help="CSV/Parquet with user_id, or MovieLens u.user")
    src.add_argument("--synthetic-users", type=int, help="score this many ids")
    p.add_argument("--known-from", help="ratings Parquet whose users the synthetic ids cycle")
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--exclude-seen", help="ratings file passed as exclusions")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1,
                   help="score the ids this many times; users/s of each run is reported")
    p.add_argument("--output", help="JSON results file")
    args = p.parse_args(argv)

    ids = _ids(args)
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        users = Path(tmp) / "users.parquet"
        pd.DataFrame({"user_id": ids}).to_parquet(users)
        start = time.perf_counter()
        client = make_client(model_dir=args.export_dir)
        client.recommend(ids[:args.batch_size], n=1)  # load + first full-batch call (warm-up)
        load = time.perf_counter() - start
        reports = [score_users(client, users, Path(tmp) / "recs.parquet", n=args.n,
                               exclude=args.exclude_seen, batch_size=args.batch_size,
                               concurrency=args.concurrency, progress=True)
                   for _ in range(args.repeat)]
        client.close()
    report = max(reports, key=lambda r: r.users_per_second)
    import tensorflow as tf

    result = {
        "name": args.name, "export_dir": args.export_dir, "input_ids": len(ids),
        "users": report.users, "rows": report.rows, "n": args.n,
        "batch_size": args.batch_size, "concurrency": args.concurrency,
        "exclude_seen": args.exclude_seen, "seconds": round(report.seconds, 3),
        "users_per_second": round(report.users_per_second, 1),
        "users_per_second_each_run": [round(r.users_per_second, 1) for r in reports],
        "load_seconds": round(load, 3), "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "machine": platform.platform(), "tensorflow": tf.__version__,
        "command": " ".join(["python -m benchmarks.batch_scoring"] + (argv or sys.argv[1:])),
    }
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(HEADER)
    print(f"| {args.name} | {len(ids):,} | {report.users:,} | {args.n} | {args.batch_size} | "
          f"{args.concurrency} | {'yes' if args.exclude_seen else 'no'} | {report.seconds:.1f} | "
          f"{report.users_per_second:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
