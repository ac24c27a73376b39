"""Recommendations and similar movies from a trained run (the ``recommend``/``similar`` jobs).

Both build the serving modules of ``serving_graph`` in memory and call them, so a run answers
exactly as its export would (same tables, index, exclusions, popularity fallback and its
``known`` flag, and the ``lookup`` that turns titles into ids); nothing is written.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies import contract, movie_names
from tfrs_movies.config import ExportConfig
from tfrs_movies.errors import UserError
from tfrs_movies.runs import resume_hint
from tfrs_movies.serving_graph import build_modules, catalogue_of


def _catalogue(run) -> pd.DataFrame:
    return pd.DataFrame({"movie_id": run.vocab.catalogue_movies,
                         "title": run.vocab.catalogue_titles})


def _modules(run, k: int, candidates: int):
    return build_modules(run, ExportConfig(k=max(k, candidates), n=k), freeze_stars=False)


def _table(ids, titles, **columns) -> pd.DataFrame:
    ids, titles = contract.decode(ids), contract.decode(titles)
    keep = ids != contract.PAD
    table = pd.DataFrame({"movie_id": ids[keep], "title": titles[keep],
                          **{name: values[keep] for name, values in columns.items()}})
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def recommend(run, user_id: str, k: int = 10, candidates: int = ExportConfig.k,
              history: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Top ``k`` unseen catalogue movies for ``user_id``: (table, notices: one line each).

    With ``history`` (movie ids or titles, oldest first; resolved by the catalogue's
    ``lookup``) the export's ``with_history`` signature answers instead: ``user_id`` may then
    be one the run never saw, or ``""``, and the history's movies are never listed.

    What the run's exported ``recommender`` answers (``retrieval`` when the run has no rating
    model): the ``candidates`` best unseen movies by retrieval score, ordered by the learned
    re-ranker (by predicted rating without one). Columns: rank, movie_id, title, score
    (retrieval score; for an unknown user ``log(1 + train ratings)`` of the popular movies),
    rating (predicted stars) and rank_score (the served order's score). A ranking-only run
    orders every unseen movie by predicted rating. A user the run has never seen gets the
    popular movies and a notice saying so; a run whose training stopped before its rating
    model or re-ranker answers with what it has, and a notice says what it lacks.
    """
    if k < 1:
        raise UserError(f"the list length must be >= 1, got {k}")
    vocab = run.vocab
    notices = []
    retrieves, rates = run.retrieval_model() is not None, run.rating_model() is not None
    unfinished = run.unfinished()
    if unfinished and retrieves:
        answer = ("from retrieval alone (retrieval scores; no predicted stars, no re-ranking)"
                  if not rates else "ordered by predicted rating (no re-ranker)")
        notices.append(f"notice: {run.path} is unfinished (no {' or '.join(unfinished)} yet): "
                       f"answering {answer}; {resume_hint(run.path)}")
    if history is not None and not retrieves:
        raise UserError(f"{run.path} has no retrieval model, and a history needs one (a "
                        "ranking-only run answers from the user id alone)")
    modules = _modules(run, k, candidates if rates else k)
    if retrieves:
        name = "recommender" if rates else "retrieval"
        module = modules[name]
        if history is None:
            answer = module.serve(tf.constant([user_id]), tf.constant([[contract.PAD]]))
        else:
            ids = resolve_movies(module.catalogue, list(history)) if history else []
            answer = module.serve_with_history(tf.constant([user_id]),
                                               tf.constant([ids or [contract.PAD]]),
                                               tf.constant([[contract.PAD]]))
        out = {key: v.numpy()[0] for key, v in answer.items()}
        if not out["known"]:  # the export's own answer: its popularity fallback
            notices.append(contract.fallback_notice("user", [user_id]) if history is None
                           else contract.history_fallback_notice([user_id] if user_id else []))
        columns = {"score": out["scores"]}
        if rates:
            columns["rating"] = out["ratings"]
            columns["rank_score"] = out["rank_scores"]
        titles = out["titles"] if rates else _titles(run, out["movie_ids"])
        return _table(out["movie_ids"], titles, **columns), notices
    # A ranking-only run: every unseen catalogue movie, ordered by predicted rating.
    if user_id not in set(vocab.user_ids) | set(vocab.catalogue_users):
        notices.append(f"notice: user {user_id!r} is unknown to the model (not in its run's "
                       "data): its ratings are those of an unknown user")
    seen = set(pd.concat([run.split.train, run.split.fold_in]).query("user_id == @user_id")[
        "movie_id"])
    catalogue = _catalogue(run)
    catalogue = catalogue[~catalogue["movie_id"].isin(seen)]
    ids = catalogue["movie_id"].to_numpy(dtype=str)
    if not len(ids):
        return _table(np.zeros(0, object), np.zeros(0, object), rating=np.zeros(0)), notices
    ratings = modules["ranking"].serve(tf.constant([user_id] * len(ids)),
                                       tf.constant(ids))["rating"].numpy()
    top = np.argsort(-ratings, kind="stable")[:k]
    return _table(ids[top], catalogue["title"].to_numpy(dtype=object)[top],
                  rating=ratings[top]), notices


def _titles(run, ids: np.ndarray) -> np.ndarray:
    """Titles of [n] movie ids (bytes, as the serving modules return them, or str)."""
    titles = dict(zip(run.vocab.catalogue_movies, run.vocab.catalogue_titles))
    return np.asarray([titles.get(m, "") for m in contract.decode(ids)], dtype=object)


def resolve_movies(catalogue, queries: list[str]) -> list[str]:
    """Movie ids for ids or titles, by a serving catalogue's ``find`` (what the export's
    ``lookup`` signature, `contract.LOOKUP`, answers with): the id, else a whole title, else
    part of one, ignoring case; `UserError` for a query naming no movie or several."""
    out = {key: v.numpy() for key, v in catalogue.find(tf.constant(queries)).items()}
    return [movie_names.pick(found) for found in movie_names.from_outputs(queries, out)]


def resolve_run_movies(run, queries: list[str]) -> list[str]:
    """`resolve_movies` against ``run``'s catalogue (no model is needed: ``analyze``)."""
    return resolve_movies(catalogue_of(run.vocab), list(queries))


def similar(run, queries: list[str], k: int = 10) -> tuple[pd.DataFrame, list[str]]:
    """What the run's exported ``similar_movies`` answers for the seeds ``queries`` (ids or
    titles): movies nearest by cosine to the mean of the seeds' normalized embeddings.

    Returns (table with rank, movie_id, title, score; the resolved seed ids). Seeds are
    excluded from the table.
    """
    if not queries:
        raise UserError("give at least one --movie")
    if k < 1:
        raise UserError(f"the list length must be >= 1, got {k}")
    module = _modules(run, k, k)["similar_movies"]  # held: tf.function keeps only a weak ref
    seeds = resolve_movies(module.catalogue, list(queries))
    out = module.serve(tf.constant([seeds]))
    ids, scores = out["movie_ids"].numpy()[0][:k], out["scores"].numpy()[0][:k]
    return _table(ids, _titles(run, ids), score=scores), seeds
