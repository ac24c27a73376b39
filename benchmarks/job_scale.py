"""Time and peak memory of the jobs a new user runs, by catalogue size: `train`, `export` and
one `trainer recommend`, each in its own process, as the README's first command runs them.

    python -m benchmarks.job_scale --data-dir ../shared/data --output bench/jobs

Catalogues: ML-100K (1,682 movies; ``DATA/ml-100k``) and ml-latest-small (9,742 movies, the
same 100k ratings; ``DATA/ml-latest-small.zip``, the official zip, extracted into the work
folder), and with ``--synthetic-movies 30000,100000`` synthetic catalogues of those sizes with
ML-100K's 100,000 ratings and 943 users, one after the other in one run, so their ratios are
measured on the same machine state (``--catalogues`` keeps some of them; ML-100K, the base of
the ratios, is always run first).
Each job's wall time and peak resident memory (``ru_maxrss`` of its process) go into
``jobs.json`` and ``jobs.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from benchmarks import one_line_errors
from tfrs_movies.errors import UserError


def _job(args: list[str], log: Path) -> dict:
    """Runs ``python -m trainer ARGS`` to completion: its wall seconds and peak RSS in MB."""
    start = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", "trainer", *args], stdout=out,
                                 stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise UserError(f"python -m trainer {' '.join(args)} failed; its output is in {log}")
    return {"seconds": round(time.perf_counter() - start, 1),
            "peak_mb": round(usage.ru_maxrss / 1024)}


def catalogues(data: Path, work: Path, synthetic: tuple[int, ...] = ()) -> dict[str, list[str]]:
    """Name -> the data flags of ``train`` for each catalogue found under ``data``, then the
    ``synthetic`` catalogues (movie counts)."""
    found = {}
    if (data / "ml-100k" / "u.data").exists():
        found["ml-100k"] = ["--data-dir", str(data / "ml-100k")]
    if (data / "ml-latest-small.zip").exists():
        with zipfile.ZipFile(data / "ml-latest-small.zip") as z:
            z.extractall(work)
        found["ml-latest-small"] = ["--dataset", "movielens/latest-small", "--data-dir",
                                    str(work / "ml-latest-small")]
    if not found:
        raise UserError(f"--data-dir {data}: holds neither ml-100k/ nor ml-latest-small.zip")
    for movies in synthetic:
        found[f"synthetic, {movies:,} movies"] = [
            "--dataset", "synthetic", "--movies", str(movies), "--ratings", "100000",
            "--users", "943"]
    return found


def _a_user(run_dir: Path) -> str:
    """A user of the run's train split (what ``recommend`` asks for on synthetic data)."""
    import pandas as pd

    return str(pd.read_parquet(run_dir / "split" / "train.parquet", columns=["user_id"])
               ["user_id"].iloc[0])


def run(data: Path, work: Path, user: str = "1", synthetic: tuple[int, ...] = (),
        keep: tuple[str, ...] = ()) -> dict:
    out = {}
    for name, flags in catalogues(data, work, synthetic).items():
        if keep and name != "ml-100k" and not any(k in name for k in keep):
            continue
        folder = name.replace(", ", "-").replace(",", "").replace(" ", "-")
        run_dir, export_dir = work / "runs" / folder, work / "exports" / folder
        print(f"{name}: train, export, recommend", flush=True)
        jobs = {"train": _job(["train", *flags, "--output", str(run_dir)],
                              work / f"{folder}.train.log"),
                "export": _job(["export", "--run", str(run_dir), "--export-dir", str(export_dir)],
                               work / f"{folder}.export.log")}
        asked = user if name.startswith("ml-") else _a_user(run_dir)
        jobs["recommend"] = _job(["recommend", "--run", str(run_dir), "--user", asked],
                                 work / f"{folder}.recommend.log")
        out[name] = jobs
    return out


def table(result: dict) -> str:
    first = next(iter(result))
    lines = ["| catalogue | train s | export s | train + export vs " + first + " | recommend s "
             "| peak MB train / export / recommend |", "|---|---:|---:|---:|---:|---|"]
    base = result[first]["train"]["seconds"] + result[first]["export"]["seconds"]
    for name, jobs in result.items():
        both = jobs["train"]["seconds"] + jobs["export"]["seconds"]
        lines.append(f"| {name} | {jobs['train']['seconds']:.0f} | {jobs['export']['seconds']:.0f} "
                     f"| {both / base:.2f} | {jobs['recommend']['seconds']:.0f} | "
                     + " / ".join(f"{jobs[j]['peak_mb']:,}" for j in ("train", "export",
                                                                       "recommend")) + " |")
    return "\n".join(lines)


@one_line_errors
def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="folder holding ml-100k/ and/or ml-latest-small.zip")
    parser.add_argument("--output", type=Path, default=Path("bench/jobs"))
    parser.add_argument("--synthetic-movies", default="",
                        help="comma-separated catalogue sizes of synthetic runs, e.g. 30000,100000")
    parser.add_argument("--catalogues", default="",
                        help="comma-separated parts of the names to run (ML-100K always runs)")
    args = parser.parse_args(argv)
    try:
        synthetic = tuple(int(float(x)) for x in args.synthetic_movies.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--synthetic-movies {args.synthetic_movies!r}: give movie counts, "
                        f"e.g. 30000,100000") from None
    keep = tuple(x.strip() for x in args.catalogues.split(",") if x.strip())
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jobs-", dir=args.output) as work:
        result = run(args.data_dir, Path(work), synthetic=synthetic, keep=keep)
    (args.output / "jobs.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "jobs.md").write_text(table(result) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
