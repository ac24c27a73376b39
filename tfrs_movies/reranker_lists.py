"""The re-ranker's learning lists, and the re-ranker ``train`` fits on them.

Learning without leaks (``fit``): the train split is cut per user into a fold A (75%) and a
fold B (25%: at random, or each user's latest with ``ReRankerConfig.folds`` "latest":
``folds_for``). A retrieval model trained on A only retrieves each user's top ``K`` movies not in
A; the movies of B among them are the positives, the rest the hard negatives (what the
re-ranker sees when serving). The feature tables (EASE, sittings, popularity, recent counts)
come from A too, through the same ``reranker.FeatureTables`` the export builds from train, and
the stars from a rating model trained on A (``fold_models``). The loss is a softmax over the
list with the positives sharing the target mass.

A new user's lists: a ``with_history`` request of an unseen id, computed as the export would
answer it: their fold A movies sent as the request's history to towers that do not know the
id (query and stars), the recent family at the end of the data, and ``ease_share`` of the
candidates the history's best item-item movies (``reranker.with_item_item``). With
``ModelConfig.new_user_rate`` > 0 that share of the users' lists is computed so. With
``ReRankerConfig.history_lists`` (default: every user) the users also give such a list besides
their own: a second re-ranker learns on both, and the export orders unseen ids' lists with it
(``Bundle.new_users``), so it learns on what a new user's request gives; the first learns on
the users' own lists alone.

This module sits above ``training`` (it fits the fold models) and below the train job
(``pipeline``) and tuning, which call it.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies import data as data_lib
from tfrs_movies import reranker
from tfrs_movies.features import FeatureSpace, Vocabulary
from tfrs_movies.inference import embed, pairs, position_of, predict_ratings
from tfrs_movies.reranker import Lists, ReRankerConfig
from tfrs_movies.training import fit_model

log = logging.getLogger(__name__)


def fit(train: pd.DataFrame, movies: pd.DataFrame, users: pd.DataFrame, fold_in: pd.DataFrame,
        model_config, train_config, config: ReRankerConfig, seed: int) -> reranker.Bundle | None:
    """Trains the re-ranker on lists from a retrieval model that never saw their targets, with
    the ``Recent`` and ``Sittings`` of what it will serve (train and fold-in), and the
    unseen ids' re-ranker on the same lists followed by those of ``history_lists`` (none
    without them); None when no list holds a positive (too little data: the recommender then
    orders by predicted rating)."""
    start = time.perf_counter()
    found, new = _lists(train, movies, users, fold_in, model_config, train_config, config, seed)
    if found is None:
        return None
    model = reranker.train_on(found, config, seed)
    served = pd.concat([train, fold_in])
    bundle = reranker.Bundle(
        model, reranker.Recent.build(served, config.recent_window_days),
        # Only the session family reads them: none without the families (``ease_fits``: ML-20M).
        reranker.Sittings.build(served if config.use_ease else served.iloc[:0],
                                config.session_gap_seconds, config.session_window),
        new_users=None if new is None else reranker.train_on(found.then(new),
                                                             config.for_history_lists(), seed))
    log.info(f"[reranker] trained in {time.perf_counter() - start:.1f}s")
    return bundle


def folds_for(requested: str, split) -> str:
    """``TrainConfig.reranker_folds`` for ``split``: ``auto`` is ``latest`` when its test
    follows its train in time for every user (the lists then ask what the test asks: what
    next), else ``random``."""
    if requested != "auto":
        return requested
    folds = "latest" if data_lib.follows_in_time(split.train, split.test) else "random"
    log.info(f"[reranker] {folds} folds: the test "
             f"{'follows' if folds == 'latest' else 'does not follow'} train in time for every "
             f"user (--reranker-folds)")
    return folds


def carve(train: pd.DataFrame, fraction: float, seed: int,
          folds: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``train`` less each user's held-out ``fraction``, and that share: their latest ratings
    with ``latest`` folds, a random share with ``random`` ones."""
    held_out = data_lib.carve_latest if folds == "latest" else data_lib.carve_validation
    return held_out(train, fraction, seed)


def fold_models(ratings: pd.DataFrame, movies: pd.DataFrame, users: pd.DataFrame,
                fold_in: pd.DataFrame, model_config, train_config):
    """(retrieval model, rating model, their vocabulary), both trained (``train_config``'s
    settings) on ``ratings`` only: what gives a list its candidates and their stars."""
    vocab = Vocabulary.build(ratings, movies, users, fold_in)
    space = FeatureSpace(vocab, max_history=model_config.max_history)
    retrieval, _ = fit_model("retrieval", space, model_config, train_config, ratings)
    rating, _ = fit_model("ranking", space, model_config, train_config, ratings)
    return retrieval, rating, vocab


def lists(train: pd.DataFrame, movies: pd.DataFrame, users: pd.DataFrame, fold_in: pd.DataFrame,
          model_config, train_config, config: ReRankerConfig, seed: int) -> Lists | None:
    """The training lists (see the module docstring): the rows with a positive, or None when
    none has one."""
    return _lists(train, movies, users, fold_in, model_config, train_config,
                  dataclasses.replace(config, history_lists=0.0), seed)[0]


def _lists(train: pd.DataFrame, movies: pd.DataFrame, users: pd.DataFrame,
           fold_in: pd.DataFrame, model_config, train_config, config: ReRankerConfig,
           seed: int) -> tuple[Lists | None, Lists | None]:
    """(``lists``, the unseen ids' re-ranker's: ``history_lists`` of the users' lists as an
    unseen id's request, the rows with a positive; None without)."""
    fold_a, fold_b = carve(train, config.fold_fraction, seed, config.folds)
    log.info(f"[reranker] training a retrieval and a rating model on fold A ({len(fold_a):,} "
             f"ratings; the {len(fold_b):,} of fold B, each user's {config.folds} share, are "
             f"its targets)")
    retrieval, rating, vocab = fold_models(fold_a, movies, users, fold_in, model_config,
                                           train_config)
    user_ids = np.asarray(sorted(set(train["user_id"])), dtype=str)
    rate = model_config.new_user_rate if model_config.use_history else 0.0
    rng = np.random.default_rng(seed)
    new_users = rng.random(len(user_ids)) < rate
    movie_ids = np.asarray(vocab.catalogue_movies, dtype=str)
    tables = feature_tables(fold_a, user_ids, movie_ids, config)
    found = _with_positives(
        candidate_lists(retrieval, fold_a, fold_b, user_ids, movie_ids, config, rating,
                        new_users, tables),
        "of the users", "no re-ranker (the recommender orders by predicted rating)")
    again = rng.random(len(user_ids)) < (config.history_lists if model_config.use_history
                                         else 0.0)
    new = None
    if again.any():  # the users' lists as their requests of an unseen id
        new = candidate_lists(retrieval, fold_a, fold_b, user_ids, movie_ids, config, rating,
                              again, tables).rows(again)
        new = _with_positives(new, "as unseen ids' requests with their fold A movies",
                              "unseen ids get the users' re-ranker")
    return found, new


def _with_positives(found: Lists, what: str, without: str) -> Lists | None:
    """The lists that hold a positive (logged), or None when none does (logged: ``without``)."""
    keep = found.labels.sum(axis=1) > 0
    k = found.labels.shape[1]
    if not keep.any():
        log.info(f"[reranker] no list {what} holds one of its fold B movies in its top {k}: "
                 f"{without}")
        return None
    targets = sum(len(t) for t in found.targets)
    log.info(f"[reranker] {int(keep.sum()):,} lists of {k} {what}, "
             f"{found.labels[keep].sum(1).mean():.1f} positives each (fold B recall@{k} "
             f"{found.labels.sum() / max(targets, 1):.3f})")
    return found.rows(keep)


def validation_lists(fit: pd.DataFrame, validation: pd.DataFrame, movies: pd.DataFrame,
                     users: pd.DataFrame, fold_in: pd.DataFrame, model_config, train_config,
                     config: ReRankerConfig, seed: int) -> tuple[Lists, Lists] | None:
    """(lists to learn on, lists to score on) for choosing re-ranker settings without the test
    split: a train split cut per user into ``fit`` and ``validation``. The first are what
    ``train`` builds from train (``lists`` on ``fit``: a retriever on its fold A, fold B the
    positives); the second are the validation users' lists of a retriever trained on all of
    ``fit``, with the feature tables from ``fit`` and ``validation``'s movies as the labels
    (what the export does with train). None when no learning list holds a positive."""
    learn = lists(fit, movies, users, fold_in, model_config, train_config, config, seed)
    if learn is None:
        return None
    retrieval, rating, vocab = fold_models(fit, movies, users, fold_in, model_config,
                                           train_config)
    user_ids = np.asarray(sorted(set(fit["user_id"])), dtype=str)
    scored = candidate_lists(retrieval, fit, validation, user_ids,
                             np.asarray(vocab.catalogue_movies, dtype=str), config, rating)
    return learn, scored.rows(np.asarray([len(t) > 0 for t in scored.targets], bool))


def _top_unseen(query: np.ndarray, candidates: np.ndarray, seen: np.ndarray, k: int,
                cells: int = 50_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Per user row, the k best catalogue positions by dot product and their scores, the
    ``seen`` keys (``row * N + position``) excluded; about ``cells`` scores in memory at once."""
    n = len(candidates)
    chunk = max(1, cells // n)
    tops, scores = [], []
    for start in range(0, len(query), chunk):
        block = query[start:start + chunk] @ candidates.T
        keys = seen[(seen >= start * n) & (seen < (start + len(block)) * n)] - start * n
        block.flat[keys] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < n else np.tile(
            np.arange(n), (len(block), 1))
        order = np.argsort(-np.take_along_axis(block, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        tops.append(top)
        scores.append(np.take_along_axis(block, top, axis=1))
    return np.concatenate(tops), np.concatenate(scores)


def _histories(known: pd.DataFrame, user_ids: np.ndarray) -> np.ndarray:
    """[U, H] str: each user's movies in ``known``, oldest first, "" padded."""
    order = known.sort_values(["user_id", "timestamp", "movie_id"], kind="stable")
    by_user = order.groupby("user_id")["movie_id"].agg(list)
    rows = [by_user.get(u, []) for u in user_ids]
    out = np.full((len(rows), max(map(len, rows), default=0) + 1), "", dtype=object)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out.astype(str)


def _new_user_queries(retrieval, history: np.ndarray, batch: int = 1024) -> np.ndarray:
    """[U, D]: the query of an unseen id ("") bringing each ``history`` row (``_histories``)."""
    return np.concatenate([
        retrieval.user_embedding(tf.fill([len(rows)], ""),
                                 history_movie_ids=tf.constant(rows)).numpy()
        for rows in (history[i:i + batch] for i in range(0, len(history), batch))])


def _new_user_stars(rating, history: np.ndarray, movie_ids: np.ndarray, top: np.ndarray,
                    batch: int = 1024) -> np.ndarray:
    """[U, K]: the predicted stars of the candidates ``top`` for an unseen id bringing each
    ``history`` row."""
    stars = []
    for i in range(0, len(history), batch):
        rows, picked = tf.constant(history[i:i + batch]), top[i:i + batch]
        candidates = tf.reshape(rating.rating_movie(tf.constant(movie_ids[picked].ravel())),
                                [len(picked), top.shape[1], -1])
        users = rating.rating_user(tf.fill([len(picked)], ""), history_movie_ids=rows)
        stars.append(rating.rate(users, candidates).numpy())
    return np.concatenate(stars)


def _with_item_item(tables: reranker.FeatureTables, queries: np.ndarray, candidates: np.ndarray,
                    top: np.ndarray, scores: np.ndarray, seen: list[np.ndarray], extra: int,
                    batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(top, scores) of lists that a history alone brings, ``extra`` of their candidates the
    history's best item-item movies (``reranker.with_item_item``, the serving graph's code):
    ``seen`` each row's history positions, ``queries`` [U, D] and ``candidates`` [N, D] the
    retrieval embeddings that score the movies added."""
    n = len(tables.movie_ids)
    tops, all_scores = [], []
    for start in range(0, len(top), batch):
        rows = seen[start:start + batch]
        multi_hot = np.zeros((len(rows), n), np.float32)
        blocked = np.full((len(rows), max(map(len, rows), default=0) + 1), -1, np.int64)
        for i, row in enumerate(rows):
            multi_hot[i, row] = 1.0
            blocked[i, :len(row)] = row
        item_item = (multi_hot @ tables.ease_left) @ tables.ease_right.T
        query = tf.constant(queries[start:start + batch])
        got = reranker.with_item_item(
            tf.constant(scores[start:start + batch]), tf.constant(top[start:start + batch]),
            tf.constant(item_item), tf.constant(blocked), extra,
            lambda p: tf.einsum("bd,bmd->bm", query, tf.gather(candidates, p)))
        all_scores.append(got[0].numpy())
        tops.append(got[1].numpy())
    return np.concatenate(tops), np.concatenate(all_scores)


def feature_tables(known: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray,
                   config: ReRankerConfig) -> reranker.FeatureTables:
    """The lists' ``FeatureTables``, from ``known`` (what the export builds from train)."""
    return reranker.FeatureTables.build(
        known, user_ids, movie_ids, config,
        reranker.Recent.build(known, config.recent_window_days),
        reranker.Sittings.build(known, config.session_gap_seconds, config.session_window)
        if config.use_ease else None)


def candidate_lists(retrieval, known: pd.DataFrame, held_out: pd.DataFrame,
                    user_ids: np.ndarray, movie_ids: np.ndarray, config: ReRankerConfig,
                    rating=None, new_users: np.ndarray | None = None,
                    tables: reranker.FeatureTables | None = None) -> Lists:
    """Each of ``user_ids``' top ``config.candidates`` of ``retrieval`` among ``movie_ids``,
    the movies of ``known`` excluded, with the features the export computes (its feature
    tables from ``known``, stars from ``rating``: zeros without one) and ``held_out``'s movies
    as the labels. ``new_users`` [U] bool: those users' lists are what a ``with_history``
    request of an unseen id with their ``known`` movies gets (query and stars from the
    history alone, the recent family at the end of the data). ``tables``: those
    ``feature_tables`` builds from the same arguments, when already built."""
    user_pos, movie_pos = position_of(user_ids), position_of(movie_ids)
    n = len(movie_ids)
    seen_rows, seen_cols = pairs(known, user_pos, movie_pos)
    k = min(config.candidates, n)
    new = np.zeros(len(user_ids), bool) if new_users is None else np.asarray(new_users, bool)
    queries = embed(retrieval.user_embedding, user_ids)
    history = _histories(known, user_ids[new]) if new.any() else None
    if new.any():
        queries[new] = _new_user_queries(retrieval, history)
    candidates = embed(retrieval.movie_embedding, movie_ids)
    top, scores = _top_unseen(queries, candidates, seen_rows * n + seen_cols, k)
    tables = tables or feature_tables(known, user_ids, movie_ids, config)
    extra = config.ease_candidates(k)
    if new.any() and extra and tables.ease_left is not None:
        rows = np.flatnonzero(new)
        by_row = np.argsort(seen_rows, kind="stable")
        bounds = np.searchsorted(seen_rows[by_row], np.stack([rows, rows + 1]))
        top[rows], scores[rows] = _with_item_item(
            tables, queries[rows], candidates, top[rows], scores[rows],
            [seen_cols[by_row[a:b]] for a, b in bounds.T], extra)
    stars = np.zeros_like(scores) if rating is None else predict_ratings(rating, pd.DataFrame(
        {"user_id": np.repeat(user_ids, k), "movie_id": movie_ids[top.ravel()]})).reshape(top.shape)
    if new.any() and rating is not None:
        stars[new] = _new_user_stars(rating, history, movie_ids, top[new])
    if new.any():  # an unseen id is at the end of the data (``Recent.tables``)
        tables = dataclasses.replace(tables, bins=np.where(
            new, tables.cumulative.shape[1] - 2, tables.bins).astype(tables.bins.dtype))
        if tables.ease is not None and tables.ease_weights is None:
            # Served without the weights a request's history needs (a catalogue past
            # ``history_fits`` or the fits' ``ease_movies``), an unseen id's item-item,
            # session and latest scores are 0: so are its list's.
            tables = dataclasses.replace(tables, **{
                name: np.where(new[:, None], 0.0, getattr(tables, name)).astype(np.float32)
                for name in ("ease", "session", "latest") if getattr(tables, name) is not None})
    x = reranker.FeatureLookup(tables)(tf.range(len(user_ids)), tf.constant(top),
                                       tf.constant(scores), tf.constant(stars)).numpy()
    b_rows, b_cols = pairs(held_out, user_pos, movie_pos)
    candidate_keys = np.arange(len(user_ids))[:, None] * n + top
    labels = np.isin(candidate_keys, b_rows * n + b_cols).astype(np.float32)
    by_user = pd.Series(b_cols).groupby(b_rows).agg(lambda c: np.unique(c.to_numpy()))
    targets = [by_user.get(row, np.zeros(0, np.int64)) for row in range(len(user_ids))]
    return Lists(x, labels, top, targets)
