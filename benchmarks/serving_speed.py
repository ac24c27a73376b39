"""Latency of the exported ``recommender`` loaded in-process, and a closed-loop load.

    python -m benchmarks --only serving --quick --output bench/speed

The recommender retrieves 100 candidates, ranks them with the rating model and returns the
best 10 (``ExportConfig()`` defaults; each user's rated movies are left out in-graph). It is
called through `serving.client.RecommenderClient` on the local backend, the path
``python -m serving`` and batch scoring take, with known users in a seeded random order and no
client-side exclusions. Figures (``CAT`` is ml100k or synthetic-1M-movies, a 10^6-movie
catalogue; ``.scann`` marks the ScaNN-indexed export, the rest are brute force):

  serving_p50_ms.recommender.CAT[.scann].batchB   median latency of one call of B users
  serving_p99_ms.recommender.CAT[.scann].batchB   99th percentile of the same calls
  serving_signature_p50_ms.recommender.CAT[.scann].batchB   the SavedModel signature alone
                                                  (the difference is the client's own work)
  serving_signature_p50_ms.retrieval.CAT[.scann].batchB     the retrieval signature alone,
                                                  its calls alternating with the recommender's
  serving_cost_ratio.CAT[.scann].batchB           recommender / retrieval of those two p50s
  serving_concurrent_rps.recommender.CAT.threadsN   closed loop: N threads each send batch-1
                                                  requests back to back for a fixed time;
                                                  requests completed per second
  serving_concurrent_p50_ms / _p99_ms ...threadsN   latency of those requests
  serving_export_seconds.CAT.INDEX                writing that export (index build included)
"""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import speed_exports
from benchmarks.timing import percentile_ms, time_calls
from serving.client import make_client

MODEL = "recommender"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Calls per latency figure and the closed-loop settings.

    Attributes:
      calls: timed calls per (export, batch size), after ``warmup`` untimed ones.
      batches: request sizes (users per call).
      threads: client thread counts of the closed loop.
      loop_seconds: how long each closed loop runs.
    """

    calls: int = 200
    warmup: int = 10
    batches: tuple[int, ...] = (1, 64)
    threads: tuple[int, ...] = (1, 4, 8)
    loop_seconds: float = 10.0


def catalogues() -> list[speed_exports.Catalogue]:
    """ML-100K (brute force) and a 10^6-movie synthetic catalogue (brute force and ScaNN)."""
    return [speed_exports.Catalogue("ml100k"),
            speed_exports.Catalogue("synthetic-1M-movies", users=10_000, movies=1_000_000,
                                    ratings=100_000, indexes=("brute-force", "scann"))]


def plan(quick: bool) -> Plan:
    return Plan(calls=100, warmup=5, loop_seconds=3.0) if quick else Plan()


def _requests(users: list[str], batch: int):
    """Request ``i``: the next ``batch`` users of the list, cycling."""
    def request(i: int) -> list[str]:
        return [users[(i * batch + j) % len(users)] for j in range(batch)]
    return request


def latency(client, users: list[str], batch: int, calls: int, warmup: int) -> dict:
    """p50/p99 (ms) of ``client.recommend``, and p50 of the bare recommender and retrieval
    signatures on the same requests (their calls alternate, either first in turn, so the
    machine's drift hits both alike)."""
    import tensorflow as tf

    request = _requests(users, batch)
    seconds = time_calls(lambda i: client.recommend(request(i)), calls, warmup)
    empty = tf.fill([batch, 1], "")
    bare = {}
    signatures = {model: client.backend._signature(model, None)[0]
                  for model in (MODEL, "retrieval")}

    def both(i: int) -> None:
        ids = tf.constant(request(i))
        # Each goes first on every other request: neither always meets the other's warm cache.
        for model, signature in sorted(signatures.items(), reverse=i % 2 == 1):
            start = time.perf_counter()
            signature(user_id=ids, exclude_movie_ids=empty)["movie_ids"].numpy()
            if i >= warmup:
                bare.setdefault(model, []).append(time.perf_counter() - start)

    for i in range(warmup + calls):
        both(i)
    return {"p50": percentile_ms(seconds, 50), "p99": percentile_ms(seconds, 99),
            "signature_p50": percentile_ms(bare[MODEL], 50),
            "retrieval_p50": percentile_ms(bare["retrieval"], 50)}


def closed_loop(client, users: list[str], threads: int, seconds: float) -> dict:
    """``threads`` clients each send batch-1 requests back to back for ``seconds``.

    Returns requests/s over the whole loop and the p50/p99 latency (ms) of its requests.
    """
    durations: list[list[float]] = [[] for _ in range(threads)]
    client.recommend(users[:1])  # loaded and traced before the clock starts
    deadline = time.perf_counter() + seconds

    def worker(k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            client.recommend([users[i % len(users)]])
            durations[k].append(time.perf_counter() - start)
            i += threads

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    done = np.concatenate([np.asarray(d) for d in durations])
    return {"rps": len(done) / elapsed, "p50": percentile_ms(done, 50),
            "p99": percentile_ms(done, 99)}


def measure(export_dir: Path, users: list[str], label: str, plan: Plan) -> dict:
    """Every figure of one export; keys end in ``label`` then ``.batchB`` / ``.threadsN``."""
    out = {}
    with make_client(model_dir=str(export_dir)) as client:
        for batch in plan.batches:
            got = latency(client, users, batch, plan.calls, plan.warmup)
            out[f"serving_p50_ms.{MODEL}.{label}.batch{batch}"] = round(got["p50"], 3)
            out[f"serving_p99_ms.{MODEL}.{label}.batch{batch}"] = round(got["p99"], 3)
            out[f"serving_signature_p50_ms.{MODEL}.{label}.batch{batch}"] = round(
                got["signature_p50"], 3)
            out[f"serving_signature_p50_ms.retrieval.{label}.batch{batch}"] = round(
                got["retrieval_p50"], 3)
            out[f"serving_cost_ratio.{label}.batch{batch}"] = round(
                got["signature_p50"] / got["retrieval_p50"], 2)
        for threads in plan.threads:
            got = closed_loop(client, users, threads, plan.loop_seconds)
            key = f"{MODEL}.{label}.threads{threads}"
            out[f"serving_concurrent_rps.{key}"] = round(got["rps"], 1)
            out[f"serving_concurrent_p50_ms.{key}"] = round(got["p50"], 3)
            out[f"serving_concurrent_p99_ms.{key}"] = round(got["p99"], 3)
    return out


def run(data_dir: Path, work: Path, quick: bool) -> dict:
    """Builds each catalogue's exports, then measures them one at a time; flat keys."""
    out = {}
    settings = plan(quick)
    for catalogue in catalogues():
        print(f"serving: exporting {catalogue.name}", flush=True)
        exported = speed_exports.build(catalogue, data_dir, work)
        for index, export_dir in exported.dirs.items():
            out[f"serving_export_seconds.{catalogue.name}.{index}"] = round(
                exported.seconds[f"export.{index}"], 1)
            label = catalogue.name + ("" if index == "brute-force" else f".{index}")
            print(f"serving: measuring {label}", flush=True)
            out.update(measure(export_dir, exported.users, label, settings))
    return out
