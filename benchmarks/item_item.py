"""The re-ranker's item-item weights on their own: EASE against DLAE (``item_item``), fitted on
each protocol's train and scored over the whole catalogue as its served path would score them.

    python -m benchmarks.item_item --data-dir ../shared/data/ml-100k --seeds 11,13 \
        [--weights ease:500,dlae:0.67:300,...]

Per protocol of ``benchmarks.quality`` (the same seeded splits): ``top-n`` (per-user random
75/25) and ``new-users`` score each user's history (train, or the request's) times the
weights; ``fresh`` and ``time`` score it with each movie weighted by recency
(``latest_weights``, the re-ranker's latest family, as their runs read it). The weights are
fitted on train only (a new user's history is folded in at query time, ``history @ B``); the
history's movies are left out. Prints nDCG@10 per protocol and seed. How the re-ranker's
defaults (``ReRankerConfig.ease_lambda``, ``ease_dropout``) were chosen: on seeds no reported
figure uses (docs/quality.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import one_line_errors
from benchmarks.quality import split_fresh, split_new_users, split_time
from tfrs_movies import data as data_lib
from tfrs_movies import metrics
from tfrs_movies.config import DataConfig
from tfrs_movies.errors import UserError
from tfrs_movies.reranker import ReRankerConfig, latest_weights
from tfrs_movies.reranker.item_item import ease_from_gram, interactions

PROTOCOLS = ("top-n", "new-users", "fresh", "time")


def parse_weights(text: str) -> list[tuple[str, float, float]]:
    """``ease:LAMBDA`` and ``dlae:DROPOUT:LAMBDA`` items, comma-separated -> [(label, lambda,
    dropout)]."""
    out = []
    for item in filter(None, text.split(",")):
        parts = item.split(":")
        try:
            if parts[0] == "ease" and len(parts) == 2:
                out.append((f"EASE {parts[1]}", float(parts[1]), 0.0))
                continue
            if parts[0] == "dlae" and len(parts) == 3:
                out.append((f"DLAE {parts[1]} {parts[2]}", float(parts[2]), float(parts[1])))
                continue
        except ValueError:
            pass
        raise UserError(f"--weights: {item!r} is neither ease:LAMBDA nor dlae:DROPOUT:LAMBDA")
    return out


def _split(ratings: pd.DataFrame, protocol: str, seed: int):
    """(train, the evaluated users' histories, their test) of ``protocol``'s split."""
    if protocol == "new-users":
        cut = split_new_users(ratings, seed)
        return cut.train, cut.history, cut.test
    if protocol in ("fresh", "time"):
        cut = (split_fresh if protocol == "fresh" else split_time)(ratings, seed)
        return cut.train, pd.concat([cut.train, cut.history]), cut.test
    config = DataConfig(split="user", test_fraction=0.25, seed=seed)
    split = data_lib.make_split(data_lib.MovieLensData(ratings, pd.DataFrame(), pd.DataFrame(),
                                                       "top-n"), config)
    return split.train, split.train, split.test


def compare(ratings: pd.DataFrame, movies: np.ndarray, protocol: str, seed: int,
            weights: list[tuple[str, float, float]], decay: float) -> dict[str, float]:
    """{label: nDCG@10} of each item-item fit on one protocol and seed."""
    train, history, test = _split(ratings, protocol, seed)
    users = np.asarray(sorted(set(test["user_id"].astype(str))), str)
    fitted_on = np.asarray(sorted(set(train["user_id"].astype(str))), str)
    seen = interactions(history, users, movies)
    relevant_rows = interactions(test, users, movies)
    evaluated = relevant_rows.sum(axis=1) > 0
    relevant = [np.flatnonzero(row) for row in relevant_rows[evaluated]]
    seen = seen[evaluated]
    rows = (latest_weights(history, users, movies, decay)[evaluated]
            if protocol in ("fresh", "time") else seen)
    exclude = np.nonzero(seen)
    x = interactions(train, fitted_on, movies)
    gram = x.T @ x  # once per split: each fit inverts its own copy
    out = {}
    for label, lam, dropout in weights:
        b = ease_from_gram(gram.copy(), lam, dropout)
        top = metrics.topk_from_scores(rows @ b, exclude, 10)
        out[label] = metrics.ranking_metrics(top, relevant, 10)["ndcg@10"]
    return out


def _main(argv) -> int:
    default = ReRankerConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--seeds", default="11,13")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--weights", default=f"ease:500,dlae:{default.ease_dropout:g}:"
                                             f"{default.ease_lambda:g}")
    args = parser.parse_args(argv)
    weights = parse_weights(args.weights)
    protocols = [p for p in args.protocols.split(",") if p]
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise UserError(f"--protocols: {unknown} unknown; known: {', '.join(PROTOCOLS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    data = data_lib.load(DataConfig(data_dir=str(args.data_dir)))
    movies = np.asarray(sorted(str(m) for m in data.movies["movie_id"]), str)
    print("| protocol | seed | " + " | ".join(label for label, _, _ in weights) + " |")
    print("|---|---:|" + "---:|" * len(weights))
    for protocol in protocols:
        for seed in seeds:
            got = compare(data.ratings, movies, protocol, seed, weights, default.latest_decay)
            print(f"| {protocol} | {seed} | " + " | ".join(f"{got[label]:.4f}"
                                                         for label, _, _ in weights) + " |",
                  flush=True)
    return 0


main = one_line_errors(_main)

if __name__ == "__main__":
    raise SystemExit(main())
