"""The recent family: how often a candidate was rated around the time its user rates.

Scale: ``Recent`` stores [users] time bins and a [movies, bins] cumulative count (bins of
``RECENT_BIN_DAYS``, widened so that there are at most ``MAX_RECENT_BINS``: ML-20M's 20 years
give 58-day bins).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies.inference import position_of

RECENT_BIN_DAYS = 7
MAX_RECENT_BINS = 128


@dataclasses.dataclass(frozen=True)
class Recent:
    """When movies were rated and when each user rates.

    ``cumulative[m, b]`` counts the ratings of ``movie_ids[m]`` in the bins before ``b``
    (``bins + 1`` columns; a bin is ``bin_days`` from the first timestamp), ``user_bins[u]``
    is the bin of ``user_ids[u]``'s median rating time, and a candidate's recent count is its
    ratings in the bins within ``window`` of the user's."""

    user_ids: np.ndarray
    user_bins: np.ndarray
    movie_ids: np.ndarray
    cumulative: np.ndarray
    window: int

    @classmethod
    def build(cls, ratings: pd.DataFrame, window_days: int) -> "Recent":
        t = ratings["timestamp"].to_numpy(np.int64)
        first = int(t.min()) if len(t) else 0
        span_days = (int(t.max()) - first) / 86400 if len(t) else 0.0
        bin_days = max(RECENT_BIN_DAYS, math.ceil(span_days / MAX_RECENT_BINS))
        bins = (t - first) // (bin_days * 86400)
        movie_ids, movie_rows = np.unique(ratings["movie_id"].to_numpy(str), return_inverse=True)
        counts = np.zeros((len(movie_ids), int(bins.max(initial=0)) + 2), np.float32)
        np.add.at(counts, (movie_rows, bins + 1), 1.0)
        user_ids, user_rows = np.unique(ratings["user_id"].to_numpy(str), return_inverse=True)
        median = pd.Series(bins).groupby(user_rows).median().to_numpy()
        return cls(user_ids, np.floor(median).astype(np.int32), movie_ids,
                   np.cumsum(counts, axis=1), max(1, round(window_days / bin_days)))

    def tables(self, user_ids: np.ndarray, movie_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the bins [U] of ``user_ids``, the cumulative counts [N, bins + 1] of
        ``movie_ids``): a user without ratings is at the last bin, an unrated movie all zeros."""
        last = self.cumulative.shape[1] - 2
        users = pd.Series(self.user_bins, index=self.user_ids)
        bins = users.reindex(np.asarray(user_ids, str)).fillna(last).to_numpy(np.int32)
        rows = position_of(self.movie_ids).reindex(np.asarray(movie_ids, str)).to_numpy()
        table = np.zeros((len(movie_ids), self.cumulative.shape[1]), np.float32)
        table[~np.isnan(rows)] = self.cumulative[rows[~np.isnan(rows)].astype(np.int64)]
        return bins, table

    def save(self, path: Path) -> None:
        np.savez(path, user_ids=self.user_ids, user_bins=self.user_bins,
                 movie_ids=self.movie_ids, cumulative=self.cumulative, window=self.window)

    @classmethod
    def load(cls, path: Path) -> "Recent":
        with np.load(path) as f:
            return cls(f["user_ids"], f["user_bins"], f["movie_ids"], f["cumulative"],
                       int(f["window"]))


def recent_counts(bins: tf.Tensor, cumulative: tf.Tensor, positions: tf.Tensor,
                  window: int) -> tf.Tensor:
    """[B] user bins, [N, T + 1] cumulative counts, [B, K] positions -> [B, K] ratings of each
    candidate in the bins within ``window`` of its user's (``Recent``)."""
    width = tf.shape(cumulative, out_type=tf.int64)[1]
    bins = tf.cast(bins, tf.int64)[:, None]
    lo, hi = tf.maximum(bins - window, 0), tf.minimum(bins + window + 1, width - 1)
    flat = tf.reshape(cumulative, [-1])
    row = tf.maximum(tf.cast(positions, tf.int64), 0) * width
    return tf.gather(flat, row + hi) - tf.gather(flat, row + lo)
