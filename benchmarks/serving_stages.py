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

The ``with_history`` rows time that signature's own stages on the same users, each bringing
``HISTORY`` movies they have not rated (``serving_cost.histories``): the request's history in
catalogue positions, the user feature dict with the history, each user tower on it, the
item-item candidates its new movies bring (``RecommenderModule._with_item_item``), the rating
head on the candidates and on the n returned (what runs where the second re-ranker, which
reads no stars by default, orders every row of the request), the re-ranker's features with
the history's item-item, session and latest scores, and the second re-ranker's MLP, which
orders those lists.
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
from benchmarks.serving_cost import histories

BATCHES = (1, 64, 256)
HISTORY = 50


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
    from tfrs_movies.runs import load_run

    return stages_of(load_run(run_dir), batches, calls)


def stages_of(run, batches=BATCHES, calls: int = 50, length: int = HISTORY) -> dict:
    """``stages`` of a run in memory (a re-ranker's, trained with ``--model all``), each
    ``with_history`` request bringing ``length`` movies."""
    import tensorflow as tf

    from tfrs_movies.config import ExportConfig
    from tfrs_movies.index import NEG
    from tfrs_movies.serving_graph import _retrieve_with_history, build_modules

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

    def mlp_of(model):
        return tf.function(lambda x, s: tf.where(s > NEG, model(x, training=False), NEG))

    mlp = mlp_of(rec.rerank.model)

    @tf.function
    def top_n(order_scores, positions, scores, ratings):
        order, top = tf.math.top_k(order_scores, rec.n)
        positions = tf.gather(positions, top, batch_dims=1)
        return (rec.catalogue.strings(rec.catalogue.ids, positions, order),
                rec.catalogue.strings(rec.catalogue.titles, positions, order),
                tf.gather(scores, top, batch_dims=1), tf.gather(ratings, top, batch_dims=1))

    whole = tf.function(rec._serve)
    movies = dict(zip(users, histories(run.vocab, list(users), length)))
    space = rec.retriever.space
    history_positions = tf.function(lambda h: rec.history.positions(rec.catalogue.lookup(h)))
    user_features = tf.function(lambda u, h: space.user_features(u, history_movie_ids=h))
    query = tf.function(lambda u, h: rec.retriever.query(space.user_features(
        u, history_movie_ids=h)))
    rating_user = tf.function(lambda u, h: rec.stars.rating.user_of(space.user_features(
        u, history_movie_ids=h)))
    head_of = tf.function(lambda users_in, p: rec.stars.rating.of_users(users_in, p))
    history_features = tf.function(lambda r, p, s, st, h: rec.rerank.features(
        r, p, s, st, rec.history.new(r, h)))
    whole_history = tf.function(rec._serve_history)
    out = {}
    for b in batches:
        picked = rng.choice(users, b)
        u = tf.constant(picked)
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
        h = tf.constant(np.stack([movies[x] for x in picked]))
        history = history_positions(h)
        users_in = rating_user(u, h)
        got = _retrieve_with_history(rec, u, h, e)
        new = rec.history.new(got.rows, got.history)
        mixed_scores, mixed_positions, mixed = rec._with_item_item(got, new)
        mixed_x = rec.rerank.features(got.rows, mixed_positions, mixed_scores,
                                      head_of(users_in, tf.maximum(mixed_positions, 0)), new)
        item_item = tf.function(lambda r, q, s, p, x, n: rec._with_item_item(
            got._replace(rows=r, queries=q, scores=s, positions=p, excluded=x), n)[:2])
        second = rec.rerank.new_users or rec.rerank.model
        out[b].update({
            f"with_history (H = {length}): the history's catalogue positions": _median_ms(
                history_positions, (h,), calls),
            "with_history: user features with the history": _median_ms(user_features, (u, h),
                                                                       calls),
            "with_history: retrieval tower (features included)": _median_ms(query, (u, h),
                                                                            calls),
            "with_history: rating tower (features included)": _median_ms(rating_user, (u, h),
                                                                         calls),
            "with_history: item-item candidates (70 of the K)": _median_ms(
                item_item, (got.rows, got.queries, got.scores, got.positions, got.excluded,
                            new), calls),
            "with_history: rating head on the K candidates": _median_ms(
                head_of, (users_in, tf.maximum(positions, 0)), calls),
            "with_history: rating head on the n returned (served where the second re-ranker "
            "orders every row and reads no stars)": _median_ms(
                head_of, (users_in, tf.maximum(positions[:, :rec.n], 0)), calls),
            "with_history: re-ranker features with the history": _median_ms(
                history_features, (rows, positions, scores, ratings, history), calls),
            "with_history: second re-ranker MLP": _median_ms(mlp_of(second), (mixed_x, scores),
                                                             calls),
            "with_history: recommender, one tf.function": _median_ms(whole_history, (u, h, e),
                                                                     calls),
            "with_history: recommender signature (chunked)": _median_ms(
                rec.serve_with_history, (u, h, e), calls),
        })
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
