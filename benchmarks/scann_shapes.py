"""ScaNN index shapes on the trained model's candidates (``scann_trained``), swept in one process.

    python -m benchmarks.scann_shapes --cache /tmp/scann-trained.npz \\
        316:-:40-200,80-200,120-400 1000:-:200-400,300-400 100:-:20-200,30-400 \\
        316:0.2:100-300 0:-:0-200,0-1000

The first run trains ``scann_trained``'s model (``Plan()``: 10^7 synthetic ratings, 10^5
movies) and saves its candidate and query embeddings to ``--cache``; later runs read them. Each
SHAPE is ``LEAVES:AVQ:SEARCHED-RESCORED,...``: a tree of LEAVES partitions (0: none, asymmetric
hashing over every candidate), anisotropic partitioning weight AVQ (``-``: off), then the
query-time (leaves searched, candidates re-scored exactly) pairs. Scoring is asymmetric hashing
(2 dimensions per block, threshold 0.2) as in ``scann_speed.measure``; recall@10 is against
exact brute force, times are ``scann_speed``'s median ms per query at batch 1 and the speed-up
is against brute force timed in the same process. Prints one line per pair.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import scann_speed, scann_trained

K = scann_speed.K


def embeddings(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    if not cache.exists():
        candidates, queries, _ = scann_trained.trained_embeddings(scann_trained.Plan())
        np.savez(cache, candidates=candidates, queries=queries)
    saved = np.load(cache)
    return saved["candidates"].astype(np.float32), saved["queries"].astype(np.float32)


def sweep(candidates: np.ndarray, queries: np.ndarray, shapes: list[str], calls: int) -> None:
    from scann.scann_ops.py import scann_ops

    brute = scann_speed.brute_force(candidates)
    exact = scann_speed.in_batches(brute, queries)
    brute_ms = scann_speed._per_query_ms(lambda q: brute(q).numpy(), queries, 1, calls)
    print(f"brute force: {brute_ms:.3f} ms/query", flush=True)
    for shape in shapes:
        leaves, avq, pairs = shape.split(":")
        pairs = [tuple(int(x) for x in pair.split("-")) for pair in pairs.split(",")]
        builder = scann_ops.builder(candidates, K, "dot_product")
        if int(leaves):
            builder = builder.tree(num_leaves=int(leaves), num_leaves_to_search=pairs[0][0],
                                   training_sample_size=len(candidates), training_iterations=12,
                                   **({} if avq == "-" else {"avq": float(avq)}))
        searcher = (builder.score_ah(2, anisotropic_quantization_threshold=0.2)
                    .reorder(max(r for _, r in pairs)).build())
        for searched, rescored in pairs:
            args = {"final_num_neighbors": K, "pre_reorder_num_neighbors": rescored,
                    **({"leaves_to_search": searched} if int(leaves) else {})}

            def search(q, args=args):
                return searcher.search_batched(q, **args)[0].numpy()

            recall = scann_speed.recall_at_k(scann_speed.in_batches(search, queries), exact)
            ms = scann_speed._per_query_ms(search, queries, 1, calls)
            print(f"leaves {leaves}, avq {avq}, searched {searched}, re-scored {rescored}: "
                  f"recall@10 {recall:.4f}, {ms:.3f} ms/query, {brute_ms / ms:.1f}x brute force",
                  flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, required=True,
                        help="embeddings file (.npz): written on the first run, then read")
    parser.add_argument("--calls", type=int, default=100, help="timed calls per figure")
    parser.add_argument("shapes", nargs="+", help="LEAVES:AVQ:SEARCHED-RESCORED,...")
    args = parser.parse_args(argv)
    sweep(*embeddings(args.cache), args.shapes, args.calls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
