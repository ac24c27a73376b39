"""Quality benchmark on MovieLens 100K: our default models against baselines run here.

Protocols (each on its own seeded split of ``--data-dir``):
  top-n      per-user random 75/25 split, every rating a positive, train items excluded,
             k=10: nDCG/P/R/MAP@10, coverage and novelty of the *exported* recommender (what
             is served: retrieve 100, re-rank, top 10) and retrieval models, against popularity
             and EASE (closed form, lambda=500) on the same split; mean and spread over
             ``--seeds`` (each seeds the split and the training).
  rating     random 90/10 split and the fixed u1.base/u1.test split: RMSE and MAE of the
             ranking model, against scikit-surprise SVD and SVD++ (extra ``[bench]``).
  tutorial   the TFRS basic-retrieval tutorial: random 80/20 split seeded 42, top-100
             accuracy against all movies, seen movies not excluded.
  ablations  (``--ablations``) the top-n protocol with one lever of the default retrieval
             model changed at a time, and the re-ranker ablations below.
  re-ranker  (``--reranker-ablations``, also part of ``--ablations``) on the last seed's run:
             the exported recommender with its re-ranker retrained on the same lists without
             one feature family (``tfrs_movies.reranker.FAMILIES``), with the pairwise loss,
             and with no re-ranker at all (served order: predicted rating).

Our models are trained with the defaults of ``python -m trainer train`` (only the split
differs); nothing here is tuned on a test split. Run::

    python -m benchmarks.quality --data-dir ../shared/data/ml-100k --output bench/quality

Writes ``quality.json`` (flat keys) and ``quality.md`` (the table) into ``--output``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import one_line_errors
from tfrs_movies import contract
from tfrs_movies import metrics as M
from tfrs_movies.config import DataConfig, ExportConfig, ModelConfig, TrainConfig
from tfrs_movies.reranker import FAMILIES, ease_scores

PUBLISHED_TOPN = {"BiVAE": 0.475, "BPR": 0.442, "LightGCN": 0.420, "NCF": 0.396, "SAR": 0.382}
ABLATIONS = {
    "no history": {"use_history": False},
    "no side features": {"use_features": False},
    "ids only (no history, no features)": {"use_history": False, "use_features": False},
    "no logQ correction": {"logq_correction": False},
    "temperature 0.1": {"temperature": 0.1},
    "+256 sampled negatives": {"num_sampled_negatives": 256},
    "no user id embedding": {"use_user_id": False},
}


def _index(train: pd.DataFrame, test: pd.DataFrame, movies: list[str]):
    users = sorted(set(train["user_id"]) | set(test["user_id"]))
    user_pos = {u: i for i, u in enumerate(users)}
    movie_pos = {m: i for i, m in enumerate(movies)}

    def pairs(frame):
        keep = frame["movie_id"].isin(movie_pos)
        return (frame.loc[keep, "user_id"].map(user_pos).to_numpy(np.int64),
                frame.loc[keep, "movie_id"].map(movie_pos).to_numpy(np.int64))

    return users, user_pos, movie_pos, pairs(train), pairs(test)


def _relevant(test_pairs, users_with_test):
    frame = pd.DataFrame({"u": test_pairs[0], "m": test_pairs[1]})
    groups = frame.groupby("u")["m"].agg(lambda s: np.unique(s.to_numpy()))
    return [groups[u] for u in users_with_test]


def baselines_topn(train, test, movies, k=10, ease_lambda=500.0) -> dict:
    """Popularity and EASE on the same split, train items excluded."""
    users, _, _, tr, te = _index(train, test, movies)
    evaluated = np.unique(te[0])
    relevant = _relevant(te, evaluated)
    out = {}
    pop = np.bincount(tr[1], minlength=len(movies)).astype(np.float64)
    scores = np.tile(pop, (len(users), 1))
    out["popularity"] = M.ranking_metrics(M.topk_from_scores(scores, tr, k)[evaluated], relevant, k)
    # The same closed form the served recommender's re-ranker reads as a feature.
    ease = ease_scores(train, np.asarray(users, dtype=str), np.asarray(movies, dtype=str),
                       ease_lambda).astype(np.float64)
    out[f"EASE (lambda={ease_lambda:g})"] = M.ranking_metrics(
        M.topk_from_scores(ease, tr, k)[evaluated], relevant, k)
    return out


def exported_topn(export_dir: Path, train, test, movies, k=10) -> dict:
    """nDCG/P/R/MAP@k, coverage and novelty of the exported recommender and retrieval models
    (train items are excluded in-graph by the export, so the client sends no exclusions)."""
    import tensorflow as tf

    users, user_pos, movie_pos, tr, te = _index(train, test, movies)
    evaluated = np.unique(te[0])
    relevant = _relevant(te, evaluated)
    out = {}
    seen = np.unique(tr[0] * len(movies) + tr[1])
    popularity = np.bincount(seen % len(movies), minlength=len(movies))
    for name in ("recommender", "retrieval"):
        fn = tf.saved_model.load(str(export_dir / name / "1")).signatures["serving_default"]
        ids = np.asarray(users)[evaluated]
        rows = []
        for i in range(0, len(ids), 512):
            batch = tf.constant(ids[i:i + 512])
            got = fn(user_id=batch, exclude_movie_ids=tf.fill([len(ids[i:i + 512]), 1], ""))
            rows.append(contract.decode(got["movie_ids"].numpy()))
        listed = np.vectorize(lambda m: movie_pos.get(m, -1))(np.concatenate(rows))
        topk = listed[:, :k]
        ceiling = {}
        if name == "retrieval":  # what the re-ranker can reach: its candidates' recall
            width = listed.shape[1]
            ceiling[f"recall@{width}"] = M.ranking_metrics(listed, relevant, width)[
                f"recall@{width}"]
        out[f"ours: exported {name}"] = {
            **M.ranking_metrics(topk, relevant, k), **ceiling,
            f"coverage@{k}": M.catalogue_coverage(topk, len(movies)),
            f"novelty@{k}": M.novelty(topk, popularity, np.unique(tr[0]).size)}
    return out


RERANKER_ABLATIONS = {
    **{f"re-ranker without its {family} features": {"without": (family,)}
       for family in FAMILIES},
    "re-ranker with the pairwise loss": {"loss": "pairwise"},
    "no re-ranker (served order: predicted rating)": None,
}


def reranker_ablations(trained, work: Path) -> dict:
    """The exported recommender's top-n metrics with each ``RERANKER_ABLATIONS`` change of the
    re-ranker, trained on the lists the run's own re-ranker learned from."""
    from tfrs_movies import reranker, reranker_lists
    from tfrs_movies.export import export

    served = trained.reranker
    base = served.config if served is not None else reranker.ReRankerConfig()
    seed = trained.train.seed
    found = reranker_lists.lists(trained.split.train, trained.movies, trained.users,
                                 trained.split.fold_in, trained.model,
                                 dataclasses.replace(trained.train, verbose=0), base, seed)
    split, movies, out = trained.split, trained.vocab.catalogue_movies, {}
    try:
        for label, change in RERANKER_ABLATIONS.items():
            print(f"ablation: {label}")
            config = dataclasses.replace(base, **change) if change is not None else None
            trained.reranker = None
            if config is not None and found is not None:
                # The served re-ranker's tables (recent counts, sittings, EASE) are the run's
                # data: an ablation changes the head, not them.
                trained.reranker = dataclasses.replace(
                    served, model=reranker.train_on(found, config, seed))
            target = work / f"reranker-ablation-{len(out)}"
            export(trained, target, ExportConfig())
            measured = exported_topn(target, split.train, split.test, movies)
            out[f"ablation (seed {seed}): {label}"] = measured["ours: exported recommender"]
    finally:
        trained.reranker = served
    return out


def _train(data: DataConfig, out: Path, kind: str = "all", **model) -> Path:
    from tfrs_movies.pipeline import train

    train(out, data, dataclasses.replace(ModelConfig(), **model),
          TrainConfig(model=kind, verbose=0, seed=data.seed))
    return out


def _mean_and_spread(per_seed: list[dict]) -> tuple[dict, dict]:
    """{row: {metric: mean}}, {row: {metric: standard deviation}} over the seeds' results."""
    mean, spread = {}, {}
    for row in per_seed[0]:
        keys = [k for k, v in per_seed[0][row].items() if isinstance(v, float)]
        values = {k: np.asarray([r[row][k] for r in per_seed]) for k in keys}
        mean[row] = {k: float(v.mean()) for k, v in values.items()}
        spread[row] = {k: float(v.std()) for k, v in values.items()}
    return mean, spread


def surprise_rmse(train: pd.DataFrame, test: pd.DataFrame, seed: int = 42) -> dict:
    """scikit-surprise SVD and SVD++ (library defaults) on the same split; {} if missing."""
    try:
        import surprise
    except ImportError:
        print("scikit-surprise not installed (pip install '.[bench]'): skipping SVD rows")
        return {}
    reader = surprise.Reader(rating_scale=(1, 5))
    full = surprise.Dataset.load_from_df(train[["user_id", "movie_id", "user_rating"]], reader)
    trainset = full.build_full_trainset()
    testset = list(test[["user_id", "movie_id", "user_rating"]].itertuples(index=False, name=None))
    out = {}
    for name, algo in (("SVD", surprise.SVD(random_state=seed)),
                       ("SVD++", surprise.SVDpp(random_state=seed))):
        start = time.perf_counter()
        algo.fit(trainset)
        pred = np.asarray([p.est for p in algo.test(testset)])
        out[f"surprise {name}"] = M.rating_metrics(test["user_rating"].to_numpy(np.float64), pred)
        print(f"  surprise {name}: rmse {out[f'surprise {name}']['rmse']:.4f} "
              f"({time.perf_counter() - start:.0f}s)")
    return out


def run(data_dir: Path, output: Path, ablations: bool = False,
        seeds: tuple[int, ...] = (42,), reranker_only: bool = False) -> dict:
    from tfrs_movies.evaluation import evaluate_retrieval
    from tfrs_movies.export import export
    from tfrs_movies.runs import load_run

    results: dict[str, dict] = {}
    work = Path(tempfile.mkdtemp(prefix="quality-"))
    base = DataConfig(data_dir=str(data_dir))

    per_seed = []
    for seed in seeds:
        print(f"top-n: per-user 75/25 split, seed {seed}")
        topn = dataclasses.replace(base, split="user", test_fraction=0.25, seed=seed)
        trained = load_run(_train(topn, work / f"topn-{seed}"))
        export(trained, work / f"topn-export-{seed}", ExportConfig())
        movies = trained.vocab.catalogue_movies
        split = trained.split
        per_seed.append({**exported_topn(work / f"topn-export-{seed}", split.train, split.test,
                                         movies),
                         **baselines_topn(split.train, split.test, movies)})
        print("  " + ", ".join(f"{row}: {m['ndcg@10']:.4f}" for row, m in per_seed[-1].items()))
    results["top-n"], results["top-n spread"] = _mean_and_spread(per_seed)
    results["top-n seeds"] = {str(s): {row: m["ndcg@10"] for row, m in r.items()}
                              for s, r in zip(seeds, per_seed)}
    if ablations or reranker_only:  # on the last seed's split
        results["top-n"].update(reranker_ablations(trained, work))
    if ablations:
        for label, change in ABLATIONS.items():
            print(f"ablation: {label}")
            ablated = load_run(_train(topn, work / f"ablation-{len(results)}-{label[:8]}",
                                      kind="retrieval", **change))
            results["top-n"][f"ablation: {label}"] = evaluate_retrieval(
                ablated.retrieval_model(), movies, split.train, split.test, 10)

    print("rating: random 90/10 split and u1.base/u1.test")
    results["rating"] = {}
    for label, data in (("random 90/10", dataclasses.replace(base, test_fraction=0.1)),
                        ("u1", dataclasses.replace(base, test_ratings=str(data_dir / "u1.test")))):
        rated = load_run(_train(data, work / f"rating-{label[:2]}", kind="ranking"))
        test = rated.split.test
        section = {"ours: ranking": rated_metrics(rated, test)}
        section.update(surprise_rmse(rated.split.train, test))
        results["rating"][label] = section

    print("tutorial: random 80/20 split seeded 42, top-100 accuracy, seen not excluded")
    tut = load_run(_train(base, work / "tutorial", kind="retrieval"))
    results["tutorial"] = {"ours: retrieval": {"top100_accuracy": evaluate_retrieval(
        tut.retrieval_model(), tut.vocab.catalogue_movies, tut.split.train, tut.split.test,
        100, exclude_seen=False)["top100_accuracy"]}}
    return results


def rated_metrics(run, test) -> dict:
    from tfrs_movies.inference import predict_ratings

    return M.rating_metrics(test["user_rating"].to_numpy(np.float64),
                            predict_ratings(run.rating_model(), test).astype(np.float64))


def flatten(results: dict) -> dict:
    flat = {}
    for protocol, rows in results.items():
        for row, values in rows.items():
            if protocol == "rating":
                for model, metrics in values.items():
                    for key, value in metrics.items():
                        flat[f"{protocol}/{row}/{model}/{key}"] = value
            else:
                for key, value in values.items():
                    flat[f"{protocol}/{row}/{key}"] = value
    return flat


def table(results: dict) -> str:
    seeds = len(results.get("top-n seeds", {})) or 1
    over = f"{seeds} seed{'s' * (seeds != 1)}"
    lines = [f"| protocol | model | nDCG@10 (mean ± sd, {over}) | P@10 | R@10 | MAP@10 "
             "| coverage@10 | novelty@10 |", "|---|---|---|---|---|---|---|---|"]
    spread = results.get("top-n spread", {})
    for model, m in results["top-n"].items():
        sd = spread.get(model, {}).get("ndcg@10")
        extra = " | ".join(f"{m[key]:.4f}" if key in m else "" for key in
                           ("coverage@10", "novelty@10"))
        lines.append(f"| top-n (per-user 75/25) | {model} | {m['ndcg@10']:.4f}"
                     f"{f' ± {sd:.4f}' if sd is not None else ''} | "
                     f"{m['precision@10']:.4f} | {m['recall@10']:.4f} | {m['map@10']:.4f} | "
                     f"{extra} |")
    for model, value in PUBLISHED_TOPN.items():
        lines.append(f"| top-n (per-user 75/25) | {model} (published, not run here) | "
                     f"{value:.3f} | | | | | |")
    lines += ["", "| protocol | model | RMSE | MAE |", "|---|---|---|---|"]
    for split, rows in results["rating"].items():
        for model, m in rows.items():
            lines.append(f"| rating ({split}) | {model} | {m['rmse']:.4f} | {m['mae']:.4f} |")
    lines.append("| rating (u1) | GLocal-K (published, not run here) | 0.889 | |")
    lines += ["", "| protocol | model | top-100 accuracy |", "|---|---|---|"]
    for model, m in results["tutorial"].items():
        lines.append(f"| TFRS tutorial (80/20, seed 42) | {model} | {m['top100_accuracy']:.4f} |")
    lines.append("| TFRS tutorial (80/20, seed 42) | TFRS tutorial (published) | 0.233-0.238 |")
    lines.append("| TFRS tutorial (80/20, seed 42) | TFRS deep variant (published) | 0.29 |")
    return "\n".join(lines) + "\n"


def _main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k")
    parser.add_argument("--output", type=Path, default=Path("bench/quality"))
    parser.add_argument("--ablations", action="store_true",
                        help="add one row per lever of retrieval and of the re-ranker")
    parser.add_argument("--reranker-ablations", action="store_true",
                        help="add only the re-ranker's rows (last seed's run)")
    parser.add_argument("--seeds", default="42,7,3",
                        help="comma-separated seeds of the top-n protocol (default: %(default)s)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    results = run(args.data_dir, args.output, args.ablations, seeds, args.reranker_ablations)
    args.output.mkdir(parents=True, exist_ok=True)
    flat = flatten(results)
    flat["wall_seconds"] = round(time.perf_counter() - start, 1)
    (args.output / "quality.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    (args.output / "quality.md").write_text(table(results))
    print(table(results))
    print(f"wrote {args.output / 'quality.json'} and quality.md in {flat['wall_seconds']:.0f}s")
    return 0


main = one_line_errors(_main)


if __name__ == "__main__":
    raise SystemExit(main())
