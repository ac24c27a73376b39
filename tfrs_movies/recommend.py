"""Recommendations and similar movies from a trained run (the ``recommend``/``similar`` jobs).

Both score the whole catalogue in NumPy; they are for inspecting a run. Serving uses the
exported SavedModels (``export.py``), which do the same in-graph.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies.errors import UserError
from tfrs_movies.evaluation import embed


def _catalog(run) -> pd.DataFrame:
    return pd.DataFrame({"movie_id": run.vocab.catalog_movies, "title": run.vocab.catalog_titles})


def popular_movies(run, exclude: set[str] = frozenset(), k: int = 10) -> pd.DataFrame:
    """The ``k`` most-rated train movies not in ``exclude``, with their rating counts as score."""
    counts = pd.Series(run.vocab.movie_counts, index=run.vocab.movie_ids)
    counts = counts[~counts.index.isin(exclude)].sort_values(ascending=False, kind="stable")[:k]
    titles = dict(zip(run.vocab.catalog_movies, run.vocab.catalog_titles))
    return pd.DataFrame({"rank": np.arange(1, len(counts) + 1), "movie_id": counts.index,
                         "title": [titles.get(m, "") for m in counts.index],
                         "score": counts.to_numpy(np.float32)})


def recommend(run, user_id: str, k: int = 10, candidates: int = 100
              ) -> tuple[pd.DataFrame, str | None]:
    """Top ``k`` unseen catalogue movies for ``user_id``: (table, notice or None).

    The same recipe as the exported ``recommender``: retrieve the ``candidates`` best unseen
    movies by retrieval score, then order them by the ranking model's predicted rating (when
    the run has one). Columns: rank, movie_id, title, score (retrieval score, or predicted
    rating for a ranking-only run) and rating. A user the run has never seen gets the most
    popular movies and a notice saying so.
    """
    if k < 1:
        raise UserError(f"-k must be >= 1, got {k}")
    seen_rows = pd.concat([run.split.train, run.split.fold_in])
    seen = set(seen_rows.loc[seen_rows["user_id"] == user_id, "movie_id"])
    known = user_id in set(run.vocab.user_ids) or user_id in set(run.vocab.catalog_users)
    if not known:
        return popular_movies(run, k=k), (f"user {user_id!r} is not in this run's data: "
                                          "showing the most popular movies instead")
    catalog = _catalog(run)
    catalog = catalog[~catalog["movie_id"].isin(seen)].reset_index(drop=True)
    movie_ids = catalog["movie_id"].to_numpy(dtype=str)
    retrieval, ranking = run.retrieval_model(), run.ranking_model()

    def rate(ids):
        users = tf.constant([user_id] * len(ids))
        return ranking.predict_rating(users, tf.constant(ids)).numpy()

    if retrieval is not None:
        query = embed(retrieval.user_embedding, np.asarray([user_id]))[0]
        scores = embed(retrieval.movie_embedding, movie_ids) @ query
    else:
        scores = rate(movie_ids)
    top = np.argsort(-scores, kind="stable")[:max(k, candidates)]
    table = catalog.iloc[top].reset_index(drop=True)
    table["score"] = scores[top].astype(np.float32)
    if ranking is not None:
        table["rating"] = rate(movie_ids[top])
        table = table.sort_values("rating", ascending=False, kind="stable")
    table = table.head(k).reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table, None


def resolve_movie(run, query: str) -> str:
    """A movie id from an id or a title (exact, then case-insensitive, then a unique substring)."""
    catalog = _catalog(run)
    if query in set(catalog["movie_id"]):
        return query
    lowered = catalog["title"].str.lower()
    exact = catalog[lowered == query.lower()]
    matches = exact if len(exact) else catalog[lowered.str.contains(query.lower(), regex=False)]
    if len(matches) == 1:
        return matches["movie_id"].iloc[0]
    if not len(matches):
        raise UserError(f"no movie with id or title {query!r} in this run's catalogue")
    shown = "; ".join(f"{m} {t!r}" for m, t in matches.head(8).itertuples(index=False))
    raise UserError(f"{query!r} matches {len(matches)} movies ({shown}"
                    f"{' ...' if len(matches) > 8 else ''}): pass the movie id")


def similar(run, queries: list[str], k: int = 10) -> tuple[pd.DataFrame, list[str]]:
    """Movies nearest by cosine to the mean of the normalized embeddings of ``queries``.

    Returns (table with rank, movie_id, title, score; the resolved seed ids). Seeds are
    excluded from the table.
    """
    if not queries:
        raise UserError("give at least one --movie")
    seeds = [resolve_movie(run, q) for q in queries]
    catalog = _catalog(run)
    emb = embed(run.embedding_model().movie_embedding, catalog["movie_id"].to_numpy(dtype=str))
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    position = {m: i for i, m in enumerate(catalog["movie_id"])}
    query = emb[[position[s] for s in seeds]].mean(axis=0)
    query /= max(np.linalg.norm(query), 1e-12)
    scores = emb @ query
    scores[[position[s] for s in seeds]] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    table = catalog.iloc[top].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table["score"] = scores[top].astype(np.float32)
    return table, seeds
