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
