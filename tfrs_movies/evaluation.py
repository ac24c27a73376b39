"""Evaluation of a run's models on its test split (corpus-wide metrics live here, not in fit).

Retrieval: every test user's embedding against every catalogue movie, the user's train (and
fold-in) movies excluded; Recall/Precision/NDCG/MAP/hit rate@K, coverage and novelty.
Ranking: RMSE and MAE of the predicted ratings of the test pairs.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies import contract
from tfrs_movies import metrics as M
from tfrs_movies.config import ExportConfig
from tfrs_movies.inference import embed, pairs, position_of, predict_ratings
from tfrs_movies.serving_graph import build_modules

_BATCH = 4096
log = logging.getLogger(__name__)


def evaluate_retrieval(model, movie_ids: list[str], seen: pd.DataFrame, test: pd.DataFrame,
                       k: int = 10, exclude_seen: bool = True) -> dict:
    """Full-ranking top-k metrics of a two-tower model over the catalogue ``movie_ids``.

    ``seen`` holds the rating rows known at training time (train + fold-in): they are masked
    from each user's list (unless ``exclude_seen`` is False, the TFRS tutorial protocol) and
    give the popularity (distinct users per movie) behind novelty.
    """
    # Every known user gets a row, so popularity and the user count behind novelty agree;
    # only users with a test item are scored.
    users = np.asarray(sorted(set(test["user_id"]) | set(seen["user_id"])), dtype=str)
    movies = np.asarray(movie_ids, dtype=str)
    user_pos, movie_pos = position_of(users), position_of(movies)
    test_rows, test_cols = pairs(test, user_pos, movie_pos)
    scored = np.unique(test_rows)
    movie_emb = embed(model.movie_embedding, movies)
    user_emb = np.zeros((len(users), movie_emb.shape[1]), np.float32)
    user_emb[scored] = embed(model.user_embedding, users[scored])
    result = M.evaluate_topk(user_emb, movie_emb, pairs(seen, user_pos, movie_pos),
                             (test_rows, test_cols), k=min(k, len(movies)),
                             exclude_train=exclude_seen)
    return {key: float(value) for key, value in result.items()}


def evaluate_served(run, seen: pd.DataFrame, test: pd.DataFrame, k: int = 10) -> dict:
    """Top-k metrics of what the run's export serves: its ``recommender`` (retrieve, re-rank)
    built in memory, asked for every test user (their seen movies are excluded in-graph)."""
    movies = np.asarray(run.vocab.catalogue_movies, dtype=str)
    k = min(k, len(movies))
    modules = build_modules(run, ExportConfig(k=max(ExportConfig.k, k), n=k), freeze_stars=False)
    recommender = modules["recommender"]
    movie_pos = position_of(movies)
    test = test[test["movie_id"].isin(movie_pos.index)]
    users = np.asarray(sorted(set(test["user_id"])), dtype=str)
    # Everything known at training time is excluded, as in evaluate_retrieval (the export
    # already leaves out the history it was built from; a validation share is not in it).
    known = seen.groupby("user_id")["movie_id"].agg(list)
    rows = []
    for i in range(0, len(users), _BATCH):
        batch = users[i:i + _BATCH]
        excluded = [known.get(u, []) for u in batch]
        width = 1 + max(map(len, excluded), default=0)
        pad = np.full((len(batch), width), "", dtype=object)
        for row, ids in enumerate(excluded):
            pad[row, 1:1 + len(ids)] = ids
        out = recommender.serve(tf.constant(batch), tf.constant(pad.astype(str)))
        rows.append(contract.decode(out["movie_ids"].numpy()))
    ids = np.concatenate(rows) if rows else np.zeros((0, k), object)
    topk = movie_pos.reindex(ids.ravel()).fillna(-1).to_numpy(np.int64).reshape(ids.shape)
    relevant = test.groupby("user_id")["movie_id"].agg(
        lambda s: movie_pos[s].to_numpy(np.int64))
    result = M.ranking_metrics(topk, [relevant[u] for u in users], k)
    result[f"coverage@{k}"] = M.catalogue_coverage(topk, len(movies))
    pop = seen[seen["movie_id"].isin(movie_pos.index)].drop_duplicates(["user_id", "movie_id"])
    popularity = np.bincount(movie_pos[pop["movie_id"]].to_numpy(np.int64),
                             minlength=len(movies))
    result[f"novelty@{k}"] = M.novelty(topk, popularity, max(seen["user_id"].nunique(), 1))
    return {key: float(value) for key, value in result.items()}


def evaluate(run, test: pd.DataFrame | None = None) -> dict:
    """Metrics of every trained model of ``run`` (a ``runs.Run``) on ``test`` (default: the
    run's test split), one section per model kind."""
    test = run.split.test if test is None else test
    seen = pd.concat([run.split.train, run.split.fold_in], ignore_index=True)
    k = run.train.eval_k
    out = {"test_ratings": int(len(test)), "test_users": int(test["user_id"].nunique())}
    for kind, model in run.models.items():
        section = {}
        if model.retrieves:
            section.update(evaluate_retrieval(model, run.vocab.catalogue_movies, seen, test, k))
        if model.rates:
            section.update(M.rating_metrics(test["user_rating"].to_numpy(np.float64),
                                            predict_ratings(model, test).astype(np.float64)))
        out[kind] = section
        log.info(f"[{kind}] " + "  ".join(f"{key}={value:.4f}" for key, value in section.items()
                                          if key.split("@")[0] in _SHOWN))
    if run.retrieval_model() is not None and run.rating_model() is not None:
        out["recommender"] = section = evaluate_served(run, seen, test, k)
        log.info("[recommender, as served] " + "  ".join(
            f"{key}={value:.4f}" for key, value in section.items()
            if key.split("@")[0] in _SHOWN))
    return out


_SHOWN = {"ndcg", "recall", "precision", "map", "coverage", "rmse", "mae"}
