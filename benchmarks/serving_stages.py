"""Where the served recommender's time goes: each stage of its graph timed as its own
``tf.function``, in one process, beside the whole signature and retrieval's.

    python -m benchmarks.serving_stages --run runs/ml100k --output bench/stages

The stages are those of ``serving_graph.RecommenderModule._serve`` on the run's serving
modules (built in memory, as ``export`` builds them): ids -> rows and positions, the index
search with its exclusions (``_Retriever``), the candidates' predicted stars (gathered from
the table the export freezes when it fits, else the rating head run on them; both are
timed), the re-ranker's features (``reranker.FeatureLookup``), its MLP, and the top n with
its gathers and strings. Each is called on the previous stage's outputs for the same requests
of B known users (median of ``--calls`` after a warm-up). Writes ``stages.json`` and ``stages.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import one_line_errors

BATCHES = (1, 64, 256)


def _median_ms(fn, args, calls: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn(*args)
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        out = fn(*args)
        for t in (out if isinstance(out, (tuple, list)) else
                  out.values() if isinstance(out, dict) else [out]):
            t.numpy()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds) * 1000)


def stages(run_dir: Path, batches=BATCHES, calls: int = 50) -> dict:
    """``{batch: {stage: p50 ms}}`` for the run's recommender and retrieval."""
    import tensorflow as tf

    from tfrs_movies.config import ExportConfig
    from tfrs_movies.index import NEG
    from tfrs_movies.runs import load_run
    from tfrs_movies.serving_graph import build_modules

    run = load_run(run_dir)
    modules = build_modules(run, ExportConfig())
    rec, retrieval = modules["recommender"], modules["retrieval"]
    users = np.asarray(run.vocab.user_ids)
    rng = np.random.default_rng(0)

    ids = tf.function(lambda u, e: (rec.users.rows.lookup(u), rec.catalogue.lookup(e)))
    search = tf.function(lambda r, x: rec.retriever(r, x))
    head = tf.function(lambda r, p, s: tf.where(tf.math.is_inf(s), NEG, rec.stars.rating(r, p)))
    rating = tf.function(lambda r, p, s: tf.where(tf.math.is_inf(s), NEG,
                                                  rec.stars.candidates(r, p)))
    features = tf.function(lambda r, p, s, st: rec.rerank.features(r, p, s, st))
    mlp = tf.function(lambda x, s: tf.where(s > NEG, rec.rerank.model(x, training=False), NEG))

    @tf.function
    def top_n(order_scores, positions, scores, ratings):
        order, top = tf.math.top_k(order_scores, rec.n)
        positions = tf.gather(positions, top, batch_dims=1)
        return (rec.catalogue.strings(rec.catalogue.ids, positions, order),
                rec.catalogue.strings(rec.catalogue.titles, positions, order),
                tf.gather(scores, top, batch_dims=1), tf.gather(ratings, top, batch_dims=1))

    whole = tf.function(rec._serve)
    out = {}
    for b in batches:
        u = tf.constant(rng.choice(users, b))
        e = tf.fill([b, 1], "")
        rows, excluded = ids(u, e)
        scores, positions = search(rows, excluded)
        ratings = rating(rows, positions, scores)
        x = features(rows, positions, scores, ratings)
        order = mlp(x, scores)
        out[b] = {
            "ids -> rows, positions": _median_ms(ids, (u, e), calls),
            "index search + exclusions": _median_ms(search, (rows, excluded), calls),
            "rating head run on the K candidates": _median_ms(head, (rows, positions, scores),
                                                              calls),
            "predicted stars of the K candidates (served)": _median_ms(
                rating, (rows, positions, scores), calls),
            "re-ranker features": _median_ms(features, (rows, positions, scores, ratings),
                                             calls),
            "re-ranker MLP": _median_ms(mlp, (x, scores), calls),
            "top n, gathers, strings": _median_ms(top_n, (order, positions, scores, ratings),
                                                  calls),
            "recommender, one tf.function": _median_ms(whole, (u, e), calls),
            "recommender signature (chunked)": _median_ms(rec.serve, (u, e), calls),
            "retrieval signature": _median_ms(retrieval.serve, (u, e), calls),
        }
    return out


def table(result: dict) -> str:
    batches = sorted(result, key=int)
    names = list(result[batches[0]])
    lines = ["| stage | " + " | ".join(f"batch {b} p50 ms" for b in batches) + " |",
             "|---|" + "---:|" * len(batches)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{result[b][name]:.2f}" for b in batches)
                     + " |")
    return "\n".join(lines)


@one_line_errors
def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run trained with --model all")
    parser.add_argument("--output", type=Path, default=Path("bench/stages"))
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args(argv)
    result = stages(args.run, calls=args.calls)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "stages.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "stages.md").write_text(table(result) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
