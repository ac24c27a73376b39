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

Each class is a ``models.TwoTowers`` built through its ``__init__`` (with a tower config of
its own where the kind needs a plain id table), so evaluation, ``recommend``, export and
``analyze`` treat them like the core models. They are registered in ``tfrs_movies.kinds``.

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

from tfrs_movies.config import ModelConfig
from tfrs_movies.distribute import global_mean, per_replica_share
from tfrs_movies.errors import UserError
from tfrs_movies.features import FeatureSpace
from tfrs_movies.models import RatingHead, PairModel

# mf-gravity's gravity weight when the config leaves it at 0 (with 0 it would be plain ``mf``).
DEFAULT_GRAVITY = 1.0


def _ids_only(config: ModelConfig) -> ModelConfig:
    """A tower config that is a plain id embedding (a factor table)."""
    return dataclasses.replace(config, use_features=False, use_history=False, use_user_id=True,
                               tower_layers=())


class _PaperModel(PairModel):
    """``PairModel``'s loss (the rating head's, for mf and rating-classes) with their defaults."""

    # The two-tower models' tuned L2 (5e-4 when measured) flattens these (mf on ML-100K: nDCG@10
    # 0.088, the same as mf-gravity, i.e. biases only); they take L2 only when asked (``--l2``).
    default_l2 = 0.0
    # The papers' models as they were: no second head for unseen ids (softmax-history's
    # tower has no user id, so an unseen id is read as any user is).
    trains_new_user_head = False


class _BiasedDot(tf.keras.layers.Layer):
    """mf's rating head: ``[u, b_u]`` per user and ``[v, b_m]`` per movie;
    ``call(users [B, D+1], movies [B, K, D+1]) -> u.v + b_u + b_m + b`` as [B, K]."""

    def __init__(self, space: FeatureSpace, **kwargs):
        super().__init__(**kwargs)
        self.low, self.high = space.vocab.rating_range
        self.user_bias = tf.keras.layers.Embedding(space.num_users, 1, name="user_bias",
                                                   embeddings_initializer="zeros")
        self.movie_bias = tf.keras.layers.Embedding(space.num_movies, 1, name="movie_bias",
                                                    embeddings_initializer="zeros")
        self.global_bias = self.add_weight(name="global_bias", shape=(), initializer="zeros")
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(reduction="sum"),
                                       metrics=[tf.keras.metrics.RootMeanSquaredError()])

    def user_inputs(self, user, features):
        return tf.concat([user, self.user_bias(features["user_index"])], axis=-1)

    def movie_inputs(self, movie, features):
        return tf.concat([movie, self.movie_bias(features["movie_index"])], axis=-1)

    def call(self, users, movies, training=False):
        dot = tf.reduce_sum(users[:, None, :-1] * movies[..., :-1], axis=-1)
        return dot + users[:, None, -1] + movies[..., -1] + self.global_bias

    def rating(self, outputs):
        return self.low + (self.high - self.low) * tf.sigmoid(outputs)

    def loss(self, outputs, ratings):
        # [B, 1]: Keras' MSE averages the last axis, so [B] inputs would be pre-averaged.
        loss = self.task(labels=ratings[:, None], predictions=self.rating(outputs))
        return global_mean(loss, tf.shape(ratings)[0])


class MatrixFactorization(_PaperModel):
    """Biased MF on id embeddings, sigmoid-scaled to the rating range, MSE.

    The movie bias is folded into the retrieval embeddings so that a dot product ranks exactly
    as the predicted rating does: query ``[u, 1]``, candidate ``[v, b_m]``, both D + 1 wide
    (the user and global biases do not change a user's ranking).
    """

    retrieves = True
    rates = True

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        config = dataclasses.replace(config, gravity=self._gravity_weight(config))
        factors = _ids_only(config)
        super().__init__(space, config, factors, factors, **kwargs)
        self.head = _BiasedDot(space, name="mf_head")

    @staticmethod
    def _gravity_weight(config: ModelConfig) -> float:
        return config.gravity

    def query(self, user, features):
        return tf.concat([user, tf.ones_like(user[:, :1])], axis=1)

    def candidate(self, movie, features):
        return self.head.movie_inputs(movie, features)


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
        query = self.query(*self.user_tower_of(features["user_id"], movie_ids, training,
                                                l2_rows=tf.shape(movie_ids)[0]))
        # Every embedding row (OOV included) is a class; an id-only tower reads movie_index only.
        candidates = self.movie_tower({"movie_index": self.rows}, training=training)
        return self.softmax(query, candidates, self.space.movie_lookup(movie_ids))

    def losses_of(self, inputs, training=False):
        """The candidate table is read whole on every step (its gradient is dense anyway), so
        its L2 is the whole table's: ``l2 * sum(V^2)``, computed in full on every replica."""
        loss, regularization = super().losses_of(inputs, training)
        if self.config.l2:
            table = self.movie_tower.id_embedding.embeddings
            regularization += per_replica_share(self.config.l2 * tf.reduce_sum(tf.square(table)))
        return loss, regularization


class RatingClasses(_PaperModel):
    """Ratings as classes: [user, movie, genres] -> dense layers -> softmax over rating values.

    User tower: id embedding (+ demographics with ``use_features``); movie tower: id embedding
    (+ genres, title and year with ``use_features``); the genre multi-hot is concatenated too.
    The head is the shared ``RatingHead`` with classes, no user x movie product, and L2
    ``config.l2`` on its kernels. The predicted rating is the expected rating.

    It does not retrieve: its score is an MLP of the pair, not a dot product of the towers.
    """

    rates = True

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        towers = dataclasses.replace(config, use_history=False, use_user_id=True, tower_layers=())
        super().__init__(space, config, towers, towers, **kwargs)
        self.head = RatingHead(space, dataclasses.replace(config, use_bias=False), classes=True,
                               interaction=False, kernel_l2=config.l2 or 0.0, name="rating_head")
