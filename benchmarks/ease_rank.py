"""How close the low-rank form of the re-ranker's item-item weights (``item_item.ease_factors``)
ranks to the weights themselves: what an unseen id's item-item candidates are chosen with.

    python -m benchmarks.ease_rank --data-dir ../shared/data/ml-100k [--ranks 64,128,256,512]

The top-n protocol's split (per-user random 75/25, ``--seed``): the weights (DLAE at the
re-ranker's defaults, ``ReRankerConfig.ease_lambda`` and ``ease_dropout``) fitted on train;
every test user's train movies score the whole catalogue, train movies left out, once with
the weights and once with each rank's form. Prints nDCG@10 of each top 10 against the test
movies and the correlation of the two forms' scores over every (user, movie outside their
train) cell.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import one_line_errors
from tfrs_movies import data as data_lib
from tfrs_movies import metrics
from tfrs_movies.config import DataConfig
from tfrs_movies.inference import pairs, position_of
from tfrs_movies.reranker import ReRankerConfig, ease_fit
from tfrs_movies.reranker.item_item import ease_factors, interactions


def _ndcg(scores: np.ndarray, relevant: list[np.ndarray], k: int = 10) -> float:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return metrics.ranking_metrics(top, relevant, k)[f"ndcg@{k}"]


def compare(train, test, ranks: list[int], lam: float, dropout: float = 0.0
            ) -> dict[str, float]:
    """``{"exact": nDCG@10, "rank R": nDCG@10, "rank R correlation": r}`` of the item-item
    weights (EASE, or DLAE with ``dropout``)."""
    users = np.asarray(sorted(set(train["user_id"])), str)
    movies = np.asarray(sorted(set(train["movie_id"])), str)
    _, weights = ease_fit(train, users, movies, lam, dropout=dropout)
    seen = interactions(train, users, movies) > 0
    rows, cols = pairs(test, position_of(users), position_of(movies))
    relevant = [cols[rows == u] for u in range(len(users))]
    history = seen.astype(np.float64)
    exact = history @ weights
    exact[seen] = -np.inf
    out = {"exact": _ndcg(exact, relevant)}
    for rank in ranks:
        left, right = ease_factors(train, users, movies, weights, lam, rank=rank,
                                   dropout=dropout)
        approx = (history @ left) @ right.T
        out[f"rank {rank} correlation"] = float(np.corrcoef(approx[~seen], exact[~seen])[0, 1])
        approx[seen] = -np.inf
        out[f"rank {rank}"] = _ndcg(approx, relevant)
    return out


def _main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--ranks", default="64,128,256,512")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    config = DataConfig(data_dir=str(args.data_dir), split="user", test_fraction=0.25,
                        seed=args.seed)
    split = data_lib.make_split(data_lib.load(config), config)
    default = ReRankerConfig()
    got = compare(split.train, split.test, [int(r) for r in args.ranks.split(",")],
                  default.ease_lambda, default.ease_dropout)
    print(f"The re-ranker's item-item weights (lambda {default.ease_lambda:g}, dropout "
          f"{default.ease_dropout:g}), whole-catalogue top 10, seed {args.seed}: exact weights "
          f"nDCG@10 "
          f"{got['exact']:.4f}")
    for rank in args.ranks.split(","):
        print(f"  rank {rank}: nDCG@10 {got[f'rank {rank}']:.4f}, scores' correlation with the "
              f"weights' {got[f'rank {rank} correlation']:.4f}", flush=True)
    return 0


main = one_line_errors(_main)


if __name__ == "__main__":
    raise SystemExit(main())
