"""ScaNN against exact brute force on a 10^6-candidate catalogue, and brute force's bound.

    python -m benchmarks --only scann --quick --output bench/speed

The catalogue: ``candidates`` synthetic embeddings of ``ModelConfig().embedding_dim`` dims drawn
as trained movie embeddings look (clusters of tastes, not isotropic noise, which no index can
partition): 1,000 cluster centres ~ N(0, I), each candidate a centre plus N(0, 0.5^2 I), with
norms spread log-normally (popular movies have larger norms under a dot-product softmax).
Queries are drawn the same way, seeded, separately. Brute force is what the export does:
``matmul`` against every candidate, then ``top_k`` (exact). ScaNN is the ``scann`` TF op the
export's ScaNN layer calls: a tree of ``leaves`` partitions, asymmetric hashing, then exact
re-scoring of the best ``reorder`` hits.

Figures (``B`` is 1 or 64 queries per call):
  scann_recall_at_10                       recall@10 of the chosen setting against brute force
  scann_speedup_vs_brute_force             brute force ms/query / ScaNN ms/query at batch 1
  scann_speedup_vs_brute_force.batchB      the same at batch B
  scann_ms_per_query.batchB, brute_force_ms_per_query.batchB   medians over calls
  scann_params.leaves / .leaves_to_search / .reorder   the chosen setting: the fastest one
                                           at batch 1 with recall >= 0.95 (else the best recall)
  scann_sweep.L-R.recall_at_10 / .ms_per_query.batch1   every setting tried
  scann_build_seconds                      building the index (tree training included)
  matmul_gflops                            float32 multiply-add rate of a large square matmul
  brute_force_bound_ms_per_query.batchB    candidates x dims multiply-adds at that rate
  brute_force_bound_ratio.batchB           measured / bound (1.0 would be the bound)
  memory_read_gb_per_s                     rate of one pass summing the candidate table
  brute_force_memory_bound_ms_per_query.batchB   reading the table once per call at that
                                           rate, shared by the call's B queries (at batch 1
                                           brute force is bound by memory, not arithmetic)
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from benchmarks.timing import median, time_calls
from tfrs_movies.config import ModelConfig

K = 10
RECALL_GOAL = 0.95


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of the ScaNN measurement.

    Attributes:
      candidates: catalogue size.
      queries: queries whose recall is averaged.
      calls: timed calls per latency figure (after warm-up).
      leaves: tree partitions (about sqrt(candidates), as ``index.ScaNN`` picks).
      settings: (leaves_to_search, reorder) pairs tried at query time on one index.
    """

    candidates: int = 1_000_000
    queries: int = 1_000
    calls: int = 50
    leaves: int = 1_000
    settings: tuple[tuple[int, int], ...] = ((10, 100), (20, 100), (20, 200), (40, 200),
                                             (80, 200), (100, 200))


def plan(quick: bool) -> Plan:
    return Plan(queries=300, calls=20, settings=((20, 100), (40, 200), (100, 200))) if quick \
        else Plan()


def embeddings(n: int, dims: int, seed: int, centres: np.ndarray) -> np.ndarray:
    """``n`` clustered float32 vectors (see the module docstring)."""
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(len(centres), size=n)]
    vectors += rng.normal(0.0, 0.5, size=(n, dims)).astype(np.float32)
    vectors *= rng.lognormal(0.0, 0.25, size=(n, 1)).astype(np.float32)
    return vectors


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |found[i] & exact[i]| / k (both [queries, k] candidate indices)."""
    k = exact.shape[1]
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)]))


def matmul_gflops(size: int = 2048, calls: int = 10) -> float:
    """Float32 multiply-adds per second (10^9) of a ``size`` cube matmul, median of calls."""
    a = tf.random.normal([size, size], seed=1)
    b = tf.random.normal([size, size], seed=2)
    matmul = tf.function(lambda: tf.matmul(a, b))
    seconds = time_calls(lambda i: matmul().numpy(), calls, warmup=2)
    return size ** 3 / median(seconds) / 1e9


def memory_gb_per_s(table: tf.Tensor, calls: int = 10) -> float:
    """Bytes per second (10^9) of reading ``table`` once (a sum over it), median of calls."""
    total = tf.function(lambda: tf.reduce_sum(table))
    seconds = time_calls(lambda i: total().numpy(), calls, warmup=2)
    return table.shape.num_elements() * table.dtype.size / median(seconds) / 1e9


def _per_query_ms(fn, queries: np.ndarray, batch: int, calls: int) -> float:
    """Median ms per query of ``fn(batch of queries)`` over ``calls`` calls."""
    rows = len(queries) - batch + 1
    seconds = time_calls(lambda i: fn(queries[(i * batch) % rows:][:batch]), calls, warmup=3)
    return median(seconds) * 1000.0 / batch


def run(quick: bool) -> dict:
    """Builds one index on the synthetic catalogue, sweeps its query-time settings; flat keys."""
    settings = plan(quick)
    dims = ModelConfig().embedding_dim
    centres = np.random.default_rng(0).normal(size=(1000, dims)).astype(np.float32)
    candidates = embeddings(settings.candidates, dims, 1, centres)
    queries = embeddings(settings.queries, dims, 2, centres)
    return measure(candidates, queries, settings)


def brute_force(candidates: np.ndarray):
    """Exact search: queries [B, D] -> the indices [B, K] of their K best ``candidates`` by dot
    product (one matmul and ``top_k``, traced once)."""
    table = tf.constant(candidates)

    @tf.function(input_signature=[tf.TensorSpec([None, candidates.shape[1]], tf.float32)])
    def brute(q):
        return tf.math.top_k(tf.matmul(q, table, transpose_b=True), k=K).indices

    return brute


def in_batches(search, queries: np.ndarray, size: int = 100) -> np.ndarray:
    """``search(batch) -> [b, K]`` results (numpy) for every query, ``size`` queries a call."""
    return np.concatenate([np.asarray(search(queries[i:i + size]))
                           for i in range(0, len(queries), size)])


def measure(candidates: np.ndarray, queries: np.ndarray, settings: Plan,
            prefix: str = "scann") -> dict:
    """One ScaNN index over ``candidates`` [N, D] with ``settings.leaves`` leaves, its
    query-time ``settings`` swept against exact brute force for ``queries`` [Q, D]; the keys of
    the module docstring, ``scann`` replaced by ``prefix`` (and ``brute_force`` by
    ``PREFIX_brute_force`` unless ``prefix`` is ``scann``)."""
    from scann.scann_ops.py import scann_ops

    dims = candidates.shape[1]
    table = tf.constant(candidates)
    brute_key = "brute_force" if prefix == "scann" else f"{prefix}_brute_force"
    out: dict = {f"{prefix}_candidates": len(candidates), f"{prefix}_dims": dims,
                 f"{prefix}_queries": len(queries)}

    brute = brute_force(candidates)
    exact = in_batches(brute, queries)
    print(f"{prefix}: building a {settings.leaves}-leaf index over {len(candidates):,} "
          f"candidates", flush=True)
    start = time.perf_counter()
    searcher = (scann_ops.builder(candidates, K, "dot_product")
                .tree(num_leaves=settings.leaves, num_leaves_to_search=settings.settings[0][0],
                      training_sample_size=min(len(candidates), 250_000),
                      training_iterations=12)
                .score_ah(2, anisotropic_quantization_threshold=0.2)
                .reorder(max(r for _, r in settings.settings))
                .build())
    out[f"{prefix}_build_seconds"] = round(time.perf_counter() - start, 1)

    def scann_search(leaves: int, reorder: int):
        return lambda q: searcher.search_batched(q, final_num_neighbors=K, leaves_to_search=leaves,
                                                 pre_reorder_num_neighbors=reorder)[0].numpy()

    sweep = []
    for leaves, reorder in settings.settings:
        search = scann_search(leaves, reorder)
        recall = recall_at_k(in_batches(search, queries), exact)
        ms = _per_query_ms(search, queries, 1, settings.calls)
        sweep.append((leaves, reorder, recall, ms))
        out[f"{prefix}_sweep.{leaves}-{reorder}.recall_at_10"] = round(recall, 4)
        out[f"{prefix}_sweep.{leaves}-{reorder}.ms_per_query.batch1"] = round(ms, 4)
        print(f"{prefix}: leaves_to_search {leaves}, reorder {reorder}: recall@10 "
              f"{recall:.4f}, {ms:.3f} ms/query", flush=True)
    good = [s for s in sweep if s[2] >= RECALL_GOAL]
    leaves, reorder, recall, _ = (min(good, key=lambda s: s[3]) if good
                                  else max(sweep, key=lambda s: s[2]))
    out.update({f"{prefix}_params.leaves": settings.leaves,
                f"{prefix}_params.leaves_to_search": leaves,
                f"{prefix}_params.reorder": reorder, f"{prefix}_recall_at_10": round(recall, 4)})
    chosen = scann_search(leaves, reorder)
    bounds = prefix == "scann"  # the machine's rates, measured once (with the synthetic sweep)
    if bounds:
        gflops = matmul_gflops()
        out["matmul_gflops"] = round(gflops, 1)
        bandwidth = memory_gb_per_s(table)
        out["memory_read_gb_per_s"] = round(bandwidth, 1)
    for batch in (1, 64):
        brute_ms = _per_query_ms(lambda q: brute(q).numpy(), queries, batch, settings.calls)
        scann_ms = _per_query_ms(chosen, queries, batch, settings.calls)
        out[f"{brute_key}_ms_per_query.batch{batch}"] = round(brute_ms, 4)
        out[f"{prefix}_ms_per_query.batch{batch}"] = round(scann_ms, 4)
        out[f"{prefix}_speedup_vs_brute_force.batch{batch}"] = round(brute_ms / scann_ms, 2)
        if bounds:
            bound_ms = len(candidates) * dims / (gflops * 1e9) * 1000.0
            out[f"brute_force_bound_ms_per_query.batch{batch}"] = round(bound_ms, 4)
            out[f"brute_force_bound_ratio.batch{batch}"] = round(brute_ms / bound_ms, 2)
            out[f"brute_force_memory_bound_ms_per_query.batch{batch}"] = round(
                candidates.nbytes / (bandwidth * 1e9) * 1000.0 / batch, 4)
    out[f"{prefix}_speedup_vs_brute_force"] = out[f"{prefix}_speedup_vs_brute_force.batch1"]
    return out
