"""The seed reports' models as ``--model`` variants on the shared feature space and towers.

- ``mf``: matrix factorization ``rating = low + (high - low) * sigmoid(u.v + b_u + b_m + b)``,
  MSE on the observed ratings.
- ``mf-gravity``: the same model plus L2 on the factor tables (``--l2``) and the gravity term
  ``(1/(MN)) sum_ij <U_i, V_j>^2`` (``--gravity``), which pulls the scores of unobserved pairs
  towards zero instead of leaving them arbitrary.
- ``softmax-history``: candidate generation as a softmax over every movie; the user is the bag
  of movies they rated (plus demographics with features on) through hidden ReLU layers, with no
  user-id embedding, so a user unseen in training is served from their history as it is.
- ``rating-classes``: user, movie and genre embeddings concatenated into dense layers (dropout,
  L2) with a softmax over the rating values; the predicted rating is the expectation.

Each class is a ``models._TwoTowers``: ``user_embedding``/``movie_embedding`` come from
``towers.UserTower``/``MovieTower``, so evaluation, ``recommend``, export and ``analyze`` treat
them like the core models. Importing this module registers them in ``models.KINDS``.

Sample::

    python -m trainer train --model mf-gravity --l2 1e-5 --data-dir ../shared/data/ml-100k \\
        --output runs/mf-gravity

(gravity weight ``DEFAULT_GRAVITY`` unless ``ModelConfig.gravity`` says otherwise, e.g. through
``--hparams FILE`` holding ``{"gravity": 10}``).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_movies import models
from tfrs_movies.config import ModelConfig
from tfrs_movies.distribute import global_mean
from tfrs_movies.errors import UserError
from tfrs_movies.features import FeatureSpace
from tfrs_movies.towers import MovieTower, UserTower

# mf-gravity's gravity weight when the config leaves it at 0 (with 0 it would be plain ``mf``).
DEFAULT_GRAVITY = 1.0


def _ids_only(config: ModelConfig) -> ModelConfig:
    """A tower config that is a plain id embedding (a factor table)."""
    return dataclasses.replace(config, use_features=False, use_history=False, use_user_id=True,
                               tower_layers=())


class _PaperModel(models._TwoTowers):
    """``_TwoTowers`` whose user and movie towers may be built from different configs."""

    # The two-tower models' tuned 5e-4 flattens these (mf on ML-100K: nDCG@10 0.088, the
    # same as mf-gravity, i.e. biases only); they take L2 only when asked (``--l2``).
    default_l2 = 0.0

    def __init__(self, space: FeatureSpace, config: ModelConfig, user_config: ModelConfig,
                 movie_config: ModelConfig, **kwargs):
        # Not ``_TwoTowers.__init__``: it builds both towers from one config, and an unused
        # tower left as an attribute would still be tracked in the checkpoint.
        tfrs.Model.__init__(self, **kwargs)
        self.space = space
        self.config = config
        self.user_tower = UserTower(space, user_config, name="user_tower")
        self.movie_tower = MovieTower(space, movie_config, name="movie_tower")


def _nearest_class(values: tf.Tensor, rating: tf.Tensor) -> tf.Tensor:
    """[C] sorted rating values, [B] ratings -> [B] index of the nearest value."""
    return tf.argmin(tf.abs(tf.reshape(rating, [-1, 1]) - values[None, :]), axis=1)


class MatrixFactorization(_PaperModel):
    """Biased MF on id embeddings, sigmoid-scaled to the rating range, MSE.

    The movie bias is folded into the embeddings so that a dot product ranks exactly as the
    predicted rating does: ``user_embedding = [u, 1]``, ``movie_embedding = [v, b_m]``, both
    [B, D + 1] (the user and global biases do not change a user's ranking). ``self.config``
    therefore says ``embedding_dim = D + 1``: the width evaluation and export see.
    """

    retrieves = True
    rates = True

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        factors = _ids_only(config)
        outer = dataclasses.replace(factors, embedding_dim=config.embedding_dim + 1,
                                    gravity=self._gravity_weight(config))
        super().__init__(space, outer, factors, factors, **kwargs)
        self.low, self.high = space.vocab.rating_range
        self.user_bias = tf.keras.layers.Embedding(space.num_users, 1, name="user_bias",
                                                   embeddings_initializer="zeros")
        self.movie_bias = tf.keras.layers.Embedding(space.num_movies, 1, name="movie_bias",
                                                    embeddings_initializer="zeros")
        self.global_bias = self.add_weight(name="global_bias", shape=(), initializer="zeros")
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(reduction="sum"),
                                       metrics=[tf.keras.metrics.RootMeanSquaredError()])

    @staticmethod
    def _gravity_weight(config: ModelConfig) -> float:
        return config.gravity

    def _factors(self, user_ids, movie_ids, training=False):
        """[B] ids -> (u [B, D], v [B, D], b_u [B], b_m [B])."""
        u = self.user_tower(self.space.user_features(user_ids), training=training)
        v = self.movie_tower(self.space.movie_features(movie_ids), training=training)
        b_u = tf.squeeze(self.user_bias(self.space.user_lookup(user_ids)), 1)
        b_m = tf.squeeze(self.movie_bias(self.space.movie_lookup(movie_ids)), 1)
        return u, v, b_u, b_m

    def user_embedding(self, user_ids, exclude_movie_ids=None, training=False):
        u = self.user_tower(self.space.user_features(user_ids), training=training)
        return tf.concat([u, tf.ones_like(u[:, :1])], axis=1)

    def movie_embedding(self, movie_ids, training=False):
        v = self.movie_tower(self.space.movie_features(movie_ids), training=training)
        return tf.concat([v, self.movie_bias(self.space.movie_lookup(movie_ids))], axis=1)

    def _logit(self, user_ids, movie_ids, training=False):
        u, v, b_u, b_m = self._factors(user_ids, movie_ids, training)
        return tf.reduce_sum(u * v, axis=1) + b_u + b_m + self.global_bias

    def predict_rating(self, user_ids, movie_ids, training=False):
        """[B] ids -> [B] float32 ratings within the train rating range."""
        return self.low + (self.high - self.low) * tf.sigmoid(
            self._logit(user_ids, movie_ids, training))

    def compute_loss(self, features, training=False):
        prediction = self.predict_rating(features["user_id"], features["movie_id"], training)
        # [B, 1]: Keras' MSE averages the last axis, so [B] inputs would be pre-averaged.
        loss = self.task(labels=features["user_rating"][:, None], predictions=prediction[:, None])
        return self.regularized(global_mean(loss, tf.shape(prediction)[0]))


class GravityMatrixFactorization(MatrixFactorization):
    """``mf`` plus the gravity term (and ``config.l2`` on the factor tables).

    ``config.gravity`` weighs the gravity term; left at 0 it is ``DEFAULT_GRAVITY``.
    """

    @staticmethod
    def _gravity_weight(config: ModelConfig) -> float:
        return config.gravity or DEFAULT_GRAVITY


class _FullSoftmax(tf.keras.layers.Layer):
    """Cross-entropy of a softmax over every movie embedding row: the exact (not sampled)
    version of the retrieval task, affordable while the catalogue is ~10^4-10^5 movies."""

    def call(self, query: tf.Tensor, candidates: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """query [B, D], candidates [N, D], labels [B] in [0, N) -> scalar mean loss."""
        logits = tf.matmul(query, candidates, transpose_b=True)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        return global_mean(tf.reduce_sum(losses), tf.shape(labels)[0])


class SoftmaxHistory(_PaperModel):
    """Softmax candidate generation from the user's history (YouTube-DNN style).

    User tower: mean embedding of the user's train (+ fold-in) movies, demographics when
    ``use_features``, ``config.tower_layers`` ReLU layers and a projection; no user-id
    embedding. Movie side: a plain id table, the softmax's output weights. The loss is the
    cross-entropy over all movie rows, labels being the rated movie's row (the target is
    removed from the input history).
    """

    retrieves = True

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        if config.gravity:
            raise UserError("softmax-history has no user-id table for the gravity term: "
                            "leave --gravity at 0")
        user = dataclasses.replace(config, use_history=True, use_user_id=False)
        super().__init__(space, config, user, _ids_only(config), **kwargs)
        self.softmax = _FullSoftmax(name="full_softmax")
        self.rows = tf.range(space.num_movies, dtype=tf.int64)

    def compute_loss(self, features, training=False):
        movie_ids = features["movie_id"]
        query = self.user_embedding(features["user_id"], movie_ids, training=training)
        # Every embedding row (OOV included) is a class; an id-only tower reads movie_index only.
        candidates = self.movie_tower({"movie_index": self.rows}, training=training)
        return self.softmax(query, candidates, self.space.movie_lookup(movie_ids))


class RatingClasses(_PaperModel):
    """Ratings as classes: [user, movie, genres] -> dense layers -> softmax over rating values.

    User tower: id embedding (+ demographics with ``use_features``); movie tower: id embedding
    (+ genres, title and year with ``use_features``); the genre multi-hot is concatenated too.
    Hidden layers are ``config.ranking_layers`` with ReLU, ``config.dropout`` and L2
    ``config.l2`` on their kernels. ``predict_rating`` is the expected rating.

    It does not retrieve: its score is an MLP of the pair, not a dot product of the towers.
    """

    rates = True

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        towers = dataclasses.replace(config, use_history=False, use_user_id=True, tower_layers=())
        super().__init__(space, config, towers, towers, **kwargs)
        self.values = tf.constant(space.vocab.rating_values, tf.float32)
        regularizer = tf.keras.regularizers.l2(config.l2) if config.l2 else None
        self.hidden = [tf.keras.layers.Dense(units, activation="relu",
                                             kernel_regularizer=regularizer)
                       for units in config.ranking_layers]
        self.dropout = tf.keras.layers.Dropout(config.dropout) if config.dropout else None
        self.logits = tf.keras.layers.Dense(len(space.vocab.rating_values), name="rating_logits")
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"))

    def class_logits(self, user_ids, movie_ids, training=False):
        """[B] ids -> [B, C] logits over ``vocab.rating_values``."""
        user = self.user_embedding(user_ids, training=training)
        features = self.space.movie_features(movie_ids)
        movie = self.movie_tower(features, training=training)
        x = tf.concat([user, movie, features["genres"]], axis=1)
        for layer in self.hidden:
            x = layer(x)
            if self.dropout is not None:
                x = self.dropout(x, training=training)
        return self.logits(x)

    def predict_rating(self, user_ids, movie_ids, training=False):
        """[B] ids -> [B] expected rating under the class softmax."""
        probabilities = tf.nn.softmax(self.class_logits(user_ids, movie_ids, training))
        return tf.reduce_sum(probabilities * self.values, axis=1)

    def compute_loss(self, features, training=False):
        logits = self.class_logits(features["user_id"], features["movie_id"], training)
        labels = _nearest_class(self.values, features["user_rating"])
        loss = self.task(labels=labels, predictions=logits)
        return self.regularized(global_mean(loss, tf.shape(labels)[0]))


KINDS = {"mf": MatrixFactorization, "mf-gravity": GravityMatrixFactorization,
         "softmax-history": SoftmaxHistory, "rating-classes": RatingClasses}
models.KINDS.update(KINDS)
