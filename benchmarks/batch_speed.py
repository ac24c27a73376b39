"""Batch-scoring throughput on 10^6 synthetic users, local SavedModel.

    python -m benchmarks --only batch --quick --output bench/speed

A synthetic run with ``users`` users (each with ratings, so each has a history and seen movies
the export excludes in-graph) over a 10^4-movie catalogue is trained briefly and exported with
brute force (`speed_exports`). `serving.batch.score_users` then scores every user, top 10, from
a Parquet file of ids to a Parquet table: the path of ``python -m serving batch``. The model is
loaded and warmed up before the clock starts. Baseline: the same client asked one user per call
(what a loop over users without batching does), on the first ``baseline_users`` users.

Figures (``DATA`` is synthetic-1M-users, or synthetic-100K-users with ``--quick``):
  batch_users_per_s.DATA            median over repeats of users scored per second
  batch_users_per_s.DATA.one_by_one the baseline, users per second
  batch_users_per_s.DATA.ratio      batched / one by one
  batch_seconds.DATA                wall time of the median run
  batch_export_seconds.DATA         the export those figures were measured on
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import pandas as pd

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import speed_exports
from benchmarks.timing import median
from serving.batch import score_users
from serving.client import make_client


@dataclasses.dataclass(frozen=True)
class Plan:
    """Users scored and how often.

    Attributes:
      users: synthetic users (all of them are scored).
      movies: the synthetic catalogue's movies.
      ratings: synthetic ratings over those users (every user rates at least once).
      repeats: full scoring runs; the figure is their median.
      baseline_users: users asked one at a time for the baseline.
    """

    users: int = 1_000_000
    movies: int = 10_000
    ratings: int = 3_000_000
    repeats: int = 1
    baseline_users: int = 2_000

    @property
    def name(self) -> str:
        for size, suffix in ((1_000_000, "M"), (1000, "K")):
            if self.users >= size and self.users % size == 0:
                return f"synthetic-{self.users // size}{suffix}-users"
        return f"synthetic-{self.users}-users"


def plan(quick: bool) -> Plan:
    return Plan(users=100_000, ratings=400_000, repeats=2, baseline_users=500) if quick \
        else Plan()


def run(data_dir: Path, work: Path, quick: bool) -> dict:
    """Exports the synthetic run, then times the batch client over all its users; flat keys."""
    settings = plan(quick)
    name = settings.name
    catalogue = speed_exports.Catalogue(name, users=settings.users, movies=settings.movies,
                                        ratings=settings.ratings)
    print(f"batch: exporting {name}", flush=True)
    exported = speed_exports.build(catalogue, data_dir, work)
    users = exported.users
    out = {f"batch_export_seconds.{name}": round(exported.seconds["export.brute-force"], 1),
           f"batch_users.{name}": len(users)}
    with tempfile.TemporaryDirectory(prefix="batch-speed-", dir=work) as tmp:
        ids = Path(tmp) / "users.parquet"
        pd.DataFrame({"user_id": users}).to_parquet(ids)
        with make_client(model_dir=str(exported.dirs["brute-force"])) as client:
            client.recommend(users[:128], n=1)  # loaded and traced before any clock starts
            client.recommend(users[:1], n=1)
            reports = []
            for i in range(settings.repeats):
                print(f"batch: scoring {len(users):,} users (run {i + 1}/{settings.repeats})",
                      flush=True)
                reports.append(score_users(client, ids, Path(tmp) / "recs.parquet", n=10))
            start = time.perf_counter()
            for user in users[:settings.baseline_users]:
                client.recommend([user], n=10)
            one_by_one = settings.baseline_users / (time.perf_counter() - start)
    rate = median(r.users_per_second for r in reports)
    out.update({f"batch_users_per_s.{name}": round(rate, 1),
                f"batch_users_per_s.{name}.one_by_one": round(one_by_one, 1),
                f"batch_users_per_s.{name}.ratio": round(rate / one_by_one, 2),
                f"batch_seconds.{name}": round(median(r.seconds for r in reports), 1)})
    return out
