"""The re-ranker's features: one table builder and one TensorFlow path for the training lists
and the serving graph alike, so what it learns on is what it is served.

Per candidate, each normalised within the user's list (z-scores), so that values computed by
the fold models it learned on and by the full-train models it serves with are on one scale:

  retrieval   the candidate's retrieval score (z-scored) and its rank in the list
  item-item   the item-item score of the candidate given the user's history (DLAE's weights,
              or EASE's: ``ReRankerConfig.ease_dropout``), z-scored
  popularity  log(1 + known ratings) of the candidate, z-scored
  recent      log(1 + the candidate's ratings within ``recent_window_days`` of the user's
              median rating time), z-scored: what was watched when this user was (an unknown
              user is at the end of the data: what is watched now)
  session     the session family's EASE score given the user's history (``Sittings``), z-scored
  rating      the candidate's predicted stars (a rating model's), z-scored
  latest      the item-item score given the user's history with each movie weighted by
              how recent it is (``exp(-back / latest_decay)``, ``back`` the movies rated after
              it), z-scored: what follows what the user just watched
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies.index import NEG
from tfrs_movies.inference import gather_cells, pairs, position_of
from tfrs_movies.reranker.config import MAX_EASE_CELLS, MAX_EASE_MOVIES, ReRankerConfig
from tfrs_movies.reranker.item_item import (Sittings, ease_factors, ease_fit, latest_weights,
                                            most_rated, session_fit)
from tfrs_movies.reranker.recency import Recent, recent_counts


def _zscore(values: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """[B, K] -> z-scores within each row over its ``valid`` slots (0 elsewhere)."""
    weight = tf.cast(valid, tf.float32)
    count = tf.maximum(tf.reduce_sum(weight, axis=1, keepdims=True), 1.0)
    values = tf.where(valid, values, 0.0)
    mean = tf.reduce_sum(values * weight, axis=1, keepdims=True) / count
    var = tf.reduce_sum(tf.square(values - mean) * weight, axis=1, keepdims=True) / count
    return tf.where(valid, (values - mean) / (tf.sqrt(var) + 1e-6), 0.0)


def features(scores: tf.Tensor, ease: tf.Tensor, popularity: tf.Tensor,
             recent: tf.Tensor, session: tf.Tensor, stars: tf.Tensor,
             latest: tf.Tensor | None = None) -> tf.Tensor:
    """The re-ranker's input [B, K, F] (``FEATURES``) of one list per user.

    Args:
      scores: [B, K] retrieval scores, best first; -inf marks an empty slot.
      ease: [B, K] EASE scores of the candidates (zeros without the item-item family).
      popularity: [B, K] known ratings of the candidates.
      recent: [B, K] the candidates' ratings around the user's time (``recent_counts``).
      session: [B, K] the candidates' session scores (``session_scores``; zeros without the
        family).
      stars: [B, K] the candidates' predicted ratings (zeros without a rating model).
      latest: [B, K] the candidates' latest-family scores (zeros without it: the default).
    """
    valid = scores > NEG
    k = tf.shape(scores)[1]
    rank = tf.math.log1p(tf.cast(tf.range(k), tf.float32)) / tf.math.log1p(
        tf.cast(k, tf.float32))
    rank = tf.broadcast_to(rank[None, :], tf.shape(scores))
    parts = [_zscore(scores, valid), rank, _zscore(ease, valid),
             _zscore(tf.math.log1p(tf.cast(popularity, tf.float32)), valid),
             _zscore(tf.math.log1p(tf.cast(recent, tf.float32)), valid),
             _zscore(session, valid), _zscore(stars, valid),
             tf.zeros_like(scores) if latest is None else _zscore(latest, valid)]
    return tf.stack(parts, axis=-1)


@dataclasses.dataclass(frozen=True)
class FeatureTables:
    """What the features read, per user row and per catalogue position, computed once from
    the ratings a list's models know (the training lists: fold A; the export: train).

    Attributes:
      popularity: [N] float32 known ratings of each movie (of the rows' users).
      bins: [U] int32 each user row's time bin, ``cumulative`` [N, T + 1] float32 the movies'
        cumulative counts per bin and ``window`` the bins either side (``Recent.tables``).
      ease, session: [U, N] float32 item-item and session scores of each user row, or None
        when the config leaves them out (``use_ease``); past ``ease_movies`` fitted on the
        most-rated movies, the others' columns 0.
      latest: [U, N] float32 the latest family's scores (EASE's weights on each row's history
        weighted by recency, ``item_item.latest_weights``), None without EASE or where the
        config does not read it (``used_features``); ``decay`` its ``latest_decay``.
      user_ids, movie_ids: the [U] user rows and [N] catalogue movies they were built for.
      ease_weights, session_weights: [N, N] float32, the two EASE fits' weights, so that a
        history a request brings scores as ``history @ weights`` (``FeatureLookup``); None
        without the families, where N^2 exceeds ``MAX_EASE_CELLS`` (``history_fits``) or the
        fits saw only part of the catalogue.
      ease_left, ease_right: [N, r] float32, the item-item weights' low-rank form
        (``item_item.ease_factors``): a request's history over the whole catalogue, for the
        candidates it adds (``with_item_item``); kept with the weights.
    """

    popularity: np.ndarray
    bins: np.ndarray
    cumulative: np.ndarray
    window: int
    ease: np.ndarray | None
    session: np.ndarray | None
    user_ids: np.ndarray
    movie_ids: np.ndarray
    ease_weights: np.ndarray | None = None
    session_weights: np.ndarray | None = None
    latest: np.ndarray | None = None
    decay: float = 10.0
    ease_left: np.ndarray | None = None
    ease_right: np.ndarray | None = None

    def fits(self, user_ids: np.ndarray, movie_ids: np.ndarray,
             ease_movies: int = MAX_EASE_MOVIES) -> bool:
        """Whether these are the tables of exactly these user rows and catalogue, with the
        weights a request's history needs where there are any (tables saved before them lack
        them; ``ease_movies`` the config's)."""
        complete = (self.ease is None or self.ease_weights is not None
                    or not history_fits(len(self.movie_ids))
                    or len(self.movie_ids) > ease_movies)
        complete &= self.ease_weights is None or self.ease_left is not None
        return (complete and np.array_equal(self.user_ids, np.asarray(user_ids, str))
                and np.array_equal(self.movie_ids, np.asarray(movie_ids, str)))

    def save(self, path) -> None:
        optional = {name: getattr(self, name) for name in _OPTIONAL
                    if getattr(self, name) is not None}
        np.savez(path, popularity=self.popularity, bins=self.bins, cumulative=self.cumulative,
                 window=self.window, user_ids=self.user_ids, movie_ids=self.movie_ids,
                 decay=self.decay, **optional)

    @classmethod
    def load(cls, path) -> "FeatureTables":
        with np.load(path) as f:
            optional = {name: f[name] if name in f else None for name in _OPTIONAL}
            decay = float(f["decay"]) if "decay" in f else cls.decay
            return cls(f["popularity"], f["bins"], f["cumulative"], int(f["window"]),
                       user_ids=f["user_ids"], movie_ids=f["movie_ids"], decay=decay,
                       **optional)

    @classmethod
    def build(cls, known: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray,
              config: ReRankerConfig, recent: Recent,
              sittings: Sittings | None) -> "FeatureTables":
        """The tables of the user rows ``user_ids`` and catalogue ``movie_ids``, from ``known``
        (user_id, movie_id rows: the histories and the popularity), ``recent`` and
        ``sittings`` (built from the same ratings, or frozen with the re-ranker; only read
        with ``config.use_ease``)."""
        _, columns = pairs(known, position_of(user_ids), position_of(movie_ids))
        popularity = np.bincount(columns, minlength=len(movie_ids)).astype(np.float32)
        bins, cumulative = recent.tables(user_ids, movie_ids)
        ease = session = ease_weights = session_weights = latest = left = right = None
        if config.use_ease:
            # Past ``ease_movies`` the fits see the most-rated movies only (``head``); the
            # others' columns stay 0. Each fit's [M, M] weights are dropped (or made float32)
            # before the next fit. Fits whose weights are not kept run in float32: 380 MB at
            # ml-latest-small's 9.7k movies, where float64 took 760.
            head = most_rated(known, movie_ids, config.ease_movies)
            fitted = np.asarray(movie_ids)[head]
            keep = len(head) == len(movie_ids) and history_fits(len(movie_ids))
            dtype = np.float64 if keep else np.float32

            def widen(scores: np.ndarray) -> np.ndarray:
                if len(head) == len(movie_ids):
                    return scores
                out = np.zeros((len(user_ids), len(movie_ids)), np.float32)
                out[:, head] = scores
                return out

            ease, ease_weights = ease_fit(known, user_ids, fitted, config.ease_lambda, dtype,
                                          config.ease_dropout)
            if "latest_z" in config.used_features:
                # ``back`` counts every catalogue movie rated later, fitted or not.
                latest = widen((latest_weights(known, user_ids, movie_ids, config.latest_decay,
                                               columns=head).astype(dtype, copy=False)
                                @ ease_weights
                                ).astype(np.float32))
            if keep:
                left, right = ease_factors(known, user_ids, fitted, ease_weights,
                                           config.ease_lambda, dropout=config.ease_dropout)
            ease_weights = ease_weights.astype(np.float32) if keep else None
            session, session_weights = session_fit(known, user_ids, fitted, sittings,
                                                   config.session_lambda, dtype)
            ease, session = widen(ease), widen(session)
            session_weights = session_weights.astype(np.float32) if keep else None
        return cls(popularity, bins, cumulative, recent.window, ease, session,
                   np.asarray(user_ids, str), np.asarray(movie_ids, str), ease_weights,
                   session_weights, latest, config.latest_decay, left, right)


_OPTIONAL = ("ease", "session", "ease_weights", "session_weights", "latest", "ease_left",
             "ease_right")


def history_fits(movies: int) -> bool:
    """Whether the EASE weights of ``movies`` movies are kept for requests' histories."""
    return movies * movies <= MAX_EASE_CELLS


def _history_cells(n: int, history: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """[B, L] history positions (-1: none), [B, K] candidates -> the [B, L, K] int32 cell
    numbers of the [N + 1, N] table ``FeatureLookup.history_weights`` flattened row-major; an
    empty history slot reads row N, all zeros."""
    rows = tf.where(history >= 0, tf.cast(history, tf.int32), n)
    return rows[:, :, None] * n + tf.maximum(tf.cast(positions, tf.int32), 0)[:, None, :]


def _recency(history: tf.Tensor, decay: float) -> tuple[tf.Tensor, tf.Tensor]:
    """[B, L] history positions (-1: none; oldest first) -> ([B, L] each movie's latest-family
    weight ``exp(-back / decay)``, 0 on empty slots; [B] the factor ``exp(-new / decay)`` by
    which the ``new`` movies move the row's stored ones back)."""
    valid = tf.cast(history >= 0, tf.float32)
    back = tf.cumsum(valid, axis=1, exclusive=True, reverse=True)
    return (valid * tf.exp(-back / decay),
            tf.exp(-tf.reduce_sum(valid, axis=1) / decay))


def with_item_item(scores: tf.Tensor, positions: tf.Tensor, item_item: tf.Tensor,
                   blocked: tf.Tensor, extra: int, score_of) -> tuple[tf.Tensor, tf.Tensor]:
    """The candidates of a list that a history brings (an unseen id's, or a known user's
    request with movies their tables do not hold): retrieval's [B, K] (``scores`` best
    first, -inf on empty slots; ``positions``) keeps its best K - ``extra``, and the
    ``extra`` movies with the best ``item_item`` scores [B, N] among those it did not keep
    and not ``blocked`` [B, X] (catalogue positions, -1: none) take the other slots.
    ``score_of(positions [B, extra]) -> [B, extra]`` gives their retrieval scores. Returns
    (scores, positions) [B, K], best retrieval score first, as a retrieval list (the
    re-ranker's rank feature reads that order). The blocked cells are set by one
    scatter, never a catalogue x exclusions comparison."""
    k = positions.shape[1] if positions.shape[1] is not None else tf.shape(positions)[1]
    kept_scores, kept = scores[:, :k - extra], positions[:, :k - extra]
    block = tf.concat([blocked, tf.where(kept_scores > NEG, kept, -1)], axis=1)
    at = tf.where(block >= 0)
    cells = tf.stack([at[:, 0], tf.gather_nd(block, at)], axis=1)
    allowed = tf.tensor_scatter_nd_update(item_item, cells,
                                          tf.fill([tf.shape(cells)[0]], NEG))
    best, added = tf.math.top_k(allowed, extra)
    added = tf.cast(added, positions.dtype)
    added_scores = tf.where(best > NEG, score_of(added), NEG)
    merged_scores, order = tf.math.top_k(tf.concat([kept_scores, added_scores], axis=1), k)
    return merged_scores, tf.gather(tf.concat([kept, added], axis=1), order, batch_dims=1)


class FeatureLookup(tf.Module):
    """``FeatureTables`` in TensorFlow: user rows [B], candidate positions [B, K], their
    retrieval scores and predicted stars [B, K] -> the features [B, K, F]. The training lists
    call it eagerly and the serving graph inside its signatures."""

    def __init__(self, tables: FeatureTables):
        super().__init__()
        self.popularity = tf.constant(tables.popularity)
        self.bins = tf.constant(tables.bins)
        self.recent = tf.Variable(tables.cumulative, trainable=False, name="recent_counts")
        self.window = tables.window
        self.decay = tables.decay
        self.ease = self.session = self.latest = None
        if tables.ease is not None:
            self.ease = tf.Variable(tables.ease, trainable=False, name="ease_scores")
            self.session = tf.Variable(tables.session, trainable=False, name="session_scores")
        if tables.latest is not None:
            self.latest = tf.Variable(tables.latest, trainable=False, name="latest_scores")
        self.n = len(tables.movie_ids)
        self.history_weights = None
        if tables.ease_weights is not None:
            # [(N + 1) * N, 2]: cell (i, j) holds both weights of history movie i for candidate
            # j (one gather reads both: one cache line), then a row of zeros for empty slots.
            pair = np.zeros((self.n + 1, self.n, 2), np.float32)
            pair[:-1, :, 0], pair[:-1, :, 1] = tables.ease_weights, tables.session_weights
            self.history_weights = tf.Variable(pair.reshape(-1, 2), trainable=False,
                                               name="history_weights")
        self.ease_left = self.ease_right = None
        if tables.ease_left is not None:
            # [N + 1, r] (a last row of zeros for empty history slots) and [r, N].
            self.ease_left = tf.Variable(
                np.concatenate([tables.ease_left, np.zeros_like(tables.ease_left[:1])]),
                trainable=False, name="ease_left")
            self.ease_right = tf.Variable(np.ascontiguousarray(tables.ease_right.T),
                                          trainable=False, name="ease_right")

    def history_scores(self, history: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
        """[B, L] catalogue positions of a history (-1: none) -> [B, N] its item-item scores
        over the whole catalogue, in the weights' low-rank form (``ease_factors``), each
        movie weighted by ``weights`` [B, L] if given; only with ``ease_left``."""
        left = tf.gather(self.ease_left, tf.where(history >= 0, history, self.n))
        if weights is not None:
            left *= weights[:, :, None]
        return tf.reduce_sum(left, axis=1) @ self.ease_right

    def row_scores(self, rows: tf.Tensor, history: tf.Tensor, plain: tf.Tensor) -> tf.Tensor:
        """[B] user rows, [B, L] a request's movies their tables do not hold (-1: none;
        oldest first) -> [B, N] the rows' item-item scores over the whole catalogue: the
        latest family's where the tables hold it (what follows what the user just watched),
        else EASE's; the stored history's from the rows' tables, the request's movies'
        added in the low-rank form (``history_scores``). The ``plain`` rows [B] (unseen ids:
        row 0, no stored history) get EASE's score of their history, unweighted. Only with
        ``ease_left``."""
        if self.latest is None:
            return tf.gather(self.ease, rows) + self.history_scores(history)
        weight, moved = _recency(history, self.decay)
        weight = tf.where(plain[:, None], tf.cast(history >= 0, tf.float32), weight)
        return tf.gather(self.latest, rows) * moved[:, None] + self.history_scores(history,
                                                                                   weight)

    def __call__(self, rows: tf.Tensor, positions: tf.Tensor, scores: tf.Tensor,
                 stars: tf.Tensor, history: tf.Tensor | None = None) -> tf.Tensor:
        """``history`` [B, L]: catalogue positions of a request's movies not already in the
        row's tables (-1: none; oldest first), after the row's stored history: added to the
        item-item, session and latest scores."""
        def stored(table):
            return tf.zeros_like(scores) if table is None else gather_cells(table, rows,
                                                                            positions)
        ease, session, latest = stored(self.ease), stored(self.session), stored(self.latest)
        if history is not None and self.history_weights is not None:
            # [B, L, K, 2]: each history movie's EASE and session weight for each candidate
            # (``history @ weights`` read at the candidates only): one gather of B L K cells
            # with int32 cell numbers (N^2 <= MAX_EASE_CELLS). The gather is random reads of
            # a table larger than the caches: with each row's history and candidates in
            # ascending order it reads every table row front to back, in row order (1.75x
            # faster at B = 256, L = 50, K = 100 than the request's order), and the sums are
            # put back in the candidates' order. On ML-100K's 1.7k movies, cell numbers into
            # the flattened table measured 1.6x faster than gather_nd on [N, N], and 3x
            # faster than a sparse [B, N] x [N, N] product.
            by_position = tf.argsort(positions, axis=1, stable=True)
            by_movie = tf.argsort(history, axis=1, stable=True)
            each = tf.gather(self.history_weights, _history_cells(
                self.n, tf.gather(history, by_movie, batch_dims=1),
                tf.gather(positions, by_position, batch_dims=1)))
            back = tf.argsort(by_position, axis=1, stable=True)  # sorted -> request order

            def summed(values):  # [B, L, K, ...] in sorted order -> [B, K, ...] in the request's
                return tf.gather(tf.reduce_sum(values, axis=1), back, batch_dims=1)

            both = summed(each)
            ease += both[..., 0]
            session += both[..., 1]
            if self.latest is not None:
                weight, moved = _recency(history, self.decay)
                weight = tf.gather(weight, by_movie, batch_dims=1)
                latest = latest * moved[:, None] + summed(each[..., 0] * weight[:, :, None])
        recent = recent_counts(tf.gather(self.bins, rows), self.recent, positions, self.window)
        return features(scores, ease, tf.gather(self.popularity, positions), recent, session,
                        stars, latest)
