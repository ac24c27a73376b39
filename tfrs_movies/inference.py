"""Batched calls of trained models on numpy ids, and the id -> position idiom they share.

``embed`` and ``predict_ratings`` are what evaluation, the re-ranker's lists and the serving
graph's tables call: one ``tf.function`` per call, ``_BATCH`` ids at a time; ``gather_cells``
reads a [user rows, catalogue] table at each user's candidates.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf

_BATCH = 4096


def position_of(ids) -> pd.Series:
    """id -> its position in ``ids`` (look up with ``.map``/``.reindex``; absent ids: NaN)."""
    return pd.Series(np.arange(len(ids)), index=ids)


def pairs(frame: pd.DataFrame, user_pos: pd.Series, movie_pos: pd.Series
          ) -> tuple[np.ndarray, np.ndarray]:
    """(user positions, movie positions) [R] int64 of ``frame``'s rows whose user and movie
    both have one."""
    rows = frame["user_id"].map(user_pos)
    cols = frame["movie_id"].map(movie_pos)
    keep = rows.notna() & cols.notna()
    return rows[keep].to_numpy(np.int64), cols[keep].to_numpy(np.int64)


def gather_cells(table: tf.Tensor, rows: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """``table[rows[b], positions[b, k]]`` -> [B, K] of a [rows, catalogue] table, [B] rows
    and [B, K] positions: one gather of B K cells, never B whole rows of the catalogue."""
    rows = tf.broadcast_to(tf.cast(rows, tf.int64)[:, None], tf.shape(positions))
    return tf.gather_nd(table, tf.stack([rows, tf.cast(positions, tf.int64)], axis=-1))


def latest_distinct(ids: tf.Tensor, limit: int, empty: int) -> tf.Tensor:
    """[B, H] int64 ids, oldest first, ``empty`` (or less) where a slot holds none -> [B, L]
    (L <= ``limit``): each row's ids once (where one repeats, its latest place counts), the
    latest ``limit`` of them, oldest first, padded with ``empty`` at the end. A sort per row,
    not an [H, H] comparison, so a long history costs H log H."""
    ids = tf.cast(ids, tf.int64)
    width = tf.cast(tf.maximum(tf.shape(ids)[1], 1), tf.int64)
    places = tf.broadcast_to(tf.range(tf.shape(ids, out_type=tf.int64)[1])[None], tf.shape(ids))
    order = tf.argsort(ids * width + places, axis=1, stable=True)
    ordered = tf.gather(ids, order, batch_dims=1)
    # In id order, an entry followed by the same id is an earlier place of that id.
    repeated = tf.concat([ordered[:, :-1] == ordered[:, 1:],
                          tf.zeros_like(ordered[:, :1], tf.bool)], axis=1)
    repeated = tf.gather(repeated, tf.argsort(order, axis=1), batch_dims=1)
    keep = (ids > empty) & ~repeated
    from_end = tf.cumsum(tf.cast(keep, tf.int32), axis=1, reverse=True)
    keep &= from_end <= limit
    return tf.ragged.boolean_mask(ids, keep).to_tensor(default_value=tf.cast(empty, tf.int64))


def embed(fn, ids: np.ndarray) -> np.ndarray:
    """Applies ``fn`` ([B] string ids -> [B, D]) in batches: [N] ids -> [N, D] numpy."""
    call = tf.function(fn, reduce_retracing=True)
    out = [call(tf.constant(ids[i:i + _BATCH])).numpy() for i in range(0, len(ids), _BATCH)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict_ratings(model, frame: pd.DataFrame) -> np.ndarray:
    """Predicted ratings [N] for the (user_id, movie_id) rows of ``frame``."""
    call = tf.function(model.predict_rating, reduce_retracing=True)
    users = frame["user_id"].to_numpy(dtype=str)
    movies = frame["movie_id"].to_numpy(dtype=str)
    out = [call(tf.constant(users[i:i + _BATCH]), tf.constant(movies[i:i + _BATCH])).numpy()
           for i in range(0, len(users), _BATCH)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)
