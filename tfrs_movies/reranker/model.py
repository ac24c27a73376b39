"""The re-ranker's model: an MLP per candidate over its features, learned from lists with a
listwise (or pairwise) loss, and the top-N metrics of the order it gives."""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfrs_movies import metrics
from tfrs_movies.reranker.config import FEATURES, ReRankerConfig


class ReRanker(tf.keras.Model):
    """[B, K, F] features (``FEATURES``) -> [B, K] scores (higher first); an MLP per candidate
    on the columns of ``config.used_features``. The features of ``config.without`` are zeroed
    before the MLP, in training and serving alike."""

    def __init__(self, config: ReRankerConfig, **kwargs):
        super().__init__(**kwargs)
        self.config_ = config
        self.mask = tf.constant(config.mask)
        self.columns = (None if config.used_features == FEATURES
                        else tf.constant(config.columns))
        self.hidden = [tf.keras.layers.Dense(u, activation="relu") for u in config.hidden]
        self.out = tf.keras.layers.Dense(1)

    def call(self, x, training=False):
        if self.columns is not None:
            x = tf.gather(x, self.columns, axis=-1)
        x = x * self.mask
        for layer in self.hidden:
            x = layer(x)
        return self.out(x)[..., 0]


def build(config: ReRankerConfig) -> ReRanker:
    model = ReRanker(config, name="reranker")
    model(tf.zeros([1, 1, len(FEATURES)]))  # every column; it reads its own
    return model


def listwise_loss(labels: tf.Tensor, scores: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy of a list whose positives share the target: [B, K] -> [B]."""
    target = labels / tf.maximum(tf.reduce_sum(labels, axis=1, keepdims=True), 1.0)
    return -tf.reduce_sum(target * tf.nn.log_softmax(scores), axis=1)


def pairwise_loss(labels: tf.Tensor, scores: tf.Tensor) -> tf.Tensor:
    """Mean logistic loss ``log(1 + exp(s_neg - s_pos))`` over a list's (positive, negative)
    pairs: [B, K] -> [B]."""
    pairs = labels[:, :, None] * (1.0 - labels[:, None, :])  # [B, positive i, negative j]
    losses = tf.nn.softplus(scores[:, None, :] - scores[:, :, None])
    return tf.reduce_sum(pairs * losses, axis=[1, 2]) / tf.maximum(
        tf.reduce_sum(pairs, axis=[1, 2]), 1.0)


LOSSES = {"listwise": listwise_loss, "pairwise": pairwise_loss}


@dataclasses.dataclass(frozen=True)
class Lists:
    """Per user row, a list of K retrieved movies: ``features`` [L, K, F], ``labels`` [L, K]
    (1.0: one of the user's held-out movies), ``positions`` [L, K] (catalogue positions, best
    retrieval score first) and ``targets`` (L arrays: every held-out catalogue position of that
    user, retrieved or not, which top-N metrics need)."""

    features: np.ndarray
    labels: np.ndarray
    positions: np.ndarray
    targets: list

    def rows(self, keep: np.ndarray) -> "Lists":
        return Lists(self.features[keep], self.labels[keep], self.positions[keep],
                     [t for t, k in zip(self.targets, keep) if k])

    def then(self, more: "Lists") -> "Lists":
        """These lists followed by ``more``'s."""
        return Lists(np.concatenate([self.features, more.features]),
                     np.concatenate([self.labels, more.labels]),
                     np.concatenate([self.positions, more.positions]),
                     self.targets + more.targets)


def train_on(found: Lists, config: ReRankerConfig, seed: int) -> ReRanker:
    """A re-ranker fitted to ``found`` (Adam, ``config``'s loss)."""
    tf.keras.utils.set_random_seed(seed)
    model = build(config)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate),
                  loss=LOSSES[config.loss])
    model.fit(found.features, found.labels, batch_size=config.batch_size, epochs=config.epochs,
              verbose=0)
    return model


def top_n(found: Lists, scores: np.ndarray, k: int) -> dict[str, float]:
    """Top-``k`` metrics (``metrics.ranking_metrics``) of ``found``'s lists sorted by
    ``scores`` [L, K] (higher first), against every target of each list's user."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return metrics.ranking_metrics(np.take_along_axis(found.positions, order, axis=1),
                                   found.targets, k)
