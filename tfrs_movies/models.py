"""RetrievalModel, RankingModel and MultitaskModel on the shared towers, and their builder.

Every model takes batches of ``{"user_id": [B] string, "movie_id": [B] string,
"user_rating": [B] float32}`` and looks features up through its ``FeatureSpace``.
``build_model`` is the one builder that training and tuning both call.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_movies.config import ModelConfig
from tfrs_movies.distribute import global_mean, per_replica_share, replicas
from tfrs_movies.features import FeatureSpace
from tfrs_movies.towers import MovieTower, UserTower


class _TwoTowers(tfrs.Model):
    """Feature space plus one user and one movie tower; the embedding entry points.

    Capabilities that evaluation, ``recommend`` and export look at:
      ``retrieves``: user and movie embeddings score candidates by dot product.
      ``rates``: ``predict_rating(user_ids, movie_ids)`` gives ratings.
    """

    retrieves = False
    rates = False
    default_l2 = 5e-4  # ``ModelConfig.l2`` when left at None: tuned on ML-100K validation

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.space = space
        self.config = config
        self.user_tower = UserTower(space, config, name="user_tower")
        self.movie_tower = MovieTower(space, config, name="movie_tower")

    def user_embedding(self, user_ids, exclude_movie_ids=None, training=False):
        """[B] string user ids -> [B, D] query embeddings (unknown ids use the OOV row)."""
        features = self.space.user_features(user_ids, exclude_movie_ids)
        return self.user_tower(features, training=training)

    def movie_embedding(self, movie_ids, training=False):
        """[B] string movie ids -> [B, D] candidate embeddings."""
        return self.movie_tower(self.space.movie_features(movie_ids), training=training)

    def regularized(self, loss):
        """``loss`` plus ``config.gravity`` times the gravity term of the id embeddings."""
        if not self.config.gravity:
            return loss
        return loss + per_replica_share(self.config.gravity * gravity(
            self.user_tower.id_embedding.embeddings, self.movie_tower.id_embedding.embeddings))

    def losses_of(self, inputs, training=False):
        """(task loss, regularization loss) of one replica's batch; their gradients, summed
        over the replicas, are the single-process gradients of the global batch."""
        loss = self.compute_loss(inputs, training=training)
        regularization = tf.reduce_sum([tf.reduce_sum(term) for term in self.losses])
        return loss, per_replica_share(regularization)

    def train_step(self, inputs):
        """``tfrs.Model.train_step`` with the regularization losses (computed in full on every
        replica) divided by the replica count, so distributed gradients match one process.

        Task losses are means over the global batch already (``distribute.global_mean``).
        """
        with tf.GradientTape() as tape:
            loss, regularization_loss = self.losses_of(inputs, training=True)
            total_loss = loss + regularization_loss
        gradients = tape.gradient(total_loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        metrics = {metric.name: metric.result() for metric in self.metrics}
        metrics.update(loss=loss, regularization_loss=regularization_loss, total_loss=total_loss)
        return metrics


def gravity(users: tf.Tensor, movies: tf.Tensor) -> tf.Tensor:
    """``(1/(MN)) * sum_ij <U_i, V_j>^2`` for [M, D] and [N, D] tables, via the D x D Gram
    matrices: ``sum((U^T U) * (V^T V)) / (MN)``, never the M x N score matrix."""
    m = tf.cast(tf.shape(users)[0], tf.float32)
    n = tf.cast(tf.shape(movies)[0], tf.float32)
    return tf.reduce_sum(tf.matmul(users, users, transpose_a=True)
                         * tf.matmul(movies, movies, transpose_a=True)) / (m * n)


class _RetrievalTask(tf.keras.layers.Layer):
    """In-batch softmax with logQ correction, plus optional uniformly sampled extra negatives."""

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.space = space
        self.config = config
        self.task = tfrs.tasks.Retrieval(temperature=config.temperature,
                                         remove_accidental_hits=config.remove_accidental_hits)
        self.train_movies = tf.constant(space.vocab.movie_ids)

    def call(self, model: _TwoTowers, features, training=False):
        movie_ids = features["movie_id"]
        # The target is dropped from the user's history so the tower cannot copy it.
        query = model.user_embedding(features["user_id"], movie_ids, training=training)
        candidates = model.movie_embedding(movie_ids, training=training)
        # Embedding rows, not strings: collectives cannot gather strings.
        candidate_ids = self.space.movie_lookup(movie_ids)
        frequency = self.space.sampling_probability(movie_ids)
        if self.config.cross_replica_negatives and replicas() > 1:
            candidates, candidate_ids, frequency = _gather_replicas(
                candidates, candidate_ids, frequency)
        # Probability that a movie is one of the batch's candidates: B * train frequency.
        probability = tf.cast(tf.shape(candidate_ids)[0], tf.float32) * frequency
        extra = self.config.num_sampled_negatives
        if extra:
            index = tf.random.uniform([extra], 0, tf.shape(self.train_movies)[0], tf.int32)
            sampled = tf.gather(self.train_movies, index)
            candidates = tf.concat([candidates, model.movie_embedding(sampled, training)], 0)
            uniform = extra / len(self.space.vocab.movie_ids)
            probability = tf.concat([probability, tf.fill([extra], uniform)], 0)
            candidate_ids = tf.concat([candidate_ids, self.space.movie_lookup(sampled)], 0)
        loss = self.task(
            query, candidates,
            candidate_sampling_probability=probability if self.config.logq_correction else None,
            candidate_ids=candidate_ids if self.config.remove_accidental_hits else None,
            compute_metrics=False)
        # TFRS sums over the batch; a mean keeps l2/gravity weights per example, as in ranking.
        return global_mean(loss, tf.shape(query)[0])


def _gather_replicas(*tensors: tf.Tensor) -> list[tf.Tensor]:
    """Every replica's rows of each [B_local, ...] tensor, this replica's rows first (the task
    reads candidate i as query i's positive). Gradients flow back to the replica that
    computed each row."""
    context = tf.distribute.get_replica_context()
    shift = -context.replica_id_in_sync_group * tf.shape(tensors[0])[0]
    # One gather per tensor: a batched gather concatenates, so all dtypes would have to match.
    return [tf.roll(context.all_gather(t, axis=0), shift, axis=0) for t in tensors]


class _RankingHead(tf.keras.layers.Layer):
    """Tower outputs + genre multi-hot (+ user/movie biases) -> an MLP -> a bounded rating.

    ``regression``: ``low + (high - low) * sigmoid(mlp + b_user + b_movie)`` and MSE.
    ``classes``: logits over the train rating values and cross-entropy; the predicted rating
    is the expectation under the softmax.
    """

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.space = space
        self.config = config
        self.values = tf.constant(space.vocab.rating_values, tf.float32)
        self.low, self.high = space.vocab.rating_range
        self.layers_ = [tf.keras.layers.Dense(u, activation="relu") for u in config.ranking_layers]
        self.dropout = tf.keras.layers.Dropout(config.dropout) if config.dropout else None
        classes = config.ranking_head == "classes"
        self.out = tf.keras.layers.Dense(len(space.vocab.rating_values) if classes else 1)
        self.user_bias = self.movie_bias = None
        if config.use_bias and not classes:
            self.user_bias = tf.keras.layers.Embedding(space.num_users, 1,
                                                       embeddings_initializer="zeros")
            self.movie_bias = tf.keras.layers.Embedding(space.num_movies, 1,
                                                        embeddings_initializer="zeros")
        # Summed here, averaged over the global batch in ``call`` (distribution-safe).
        loss = (tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
                if classes else tf.keras.losses.MeanSquaredError(reduction="sum"))
        metrics = [] if classes else [tf.keras.metrics.RootMeanSquaredError()]
        self.task = tfrs.tasks.Ranking(loss=loss, metrics=metrics)

    def outputs(self, model: _TwoTowers, user_ids, movie_ids, training=False):
        """[B] ids -> [B] raw output (regression) or [B, C] logits (classes)."""
        user = model.user_embedding(user_ids, movie_ids, training=training)
        movie_features = model.space.movie_features(movie_ids)
        movie = model.movie_tower(movie_features, training=training)
        x = tf.concat([user, movie, user * movie, movie_features["genres"]], axis=1)
        for layer in self.layers_:
            x = layer(x)
            if self.dropout is not None:
                x = self.dropout(x, training=training)
        x = self.out(x)
        if self.config.ranking_head == "classes":
            return x
        x = tf.squeeze(x, 1)
        if self.user_bias is not None:
            x += tf.squeeze(self.user_bias(self.space.user_lookup(user_ids)), 1)
            x += tf.squeeze(self.movie_bias(self.space.movie_lookup(movie_ids)), 1)
        return x

    def predict_rating(self, model, user_ids, movie_ids, training=False):
        """[B] ids -> [B] float32 predicted ratings within the train rating range."""
        out = self.outputs(model, user_ids, movie_ids, training)
        if self.config.ranking_head == "classes":
            return tf.reduce_sum(tf.nn.softmax(out) * self.values, axis=1)
        return self.low + (self.high - self.low) * tf.sigmoid(out)

    def call(self, model, features, training=False):
        out = self.outputs(model, features["user_id"], features["movie_id"], training)
        rating = features["user_rating"]
        if self.config.ranking_head == "classes":
            labels = tf.searchsorted(self.values, tf.reshape(rating, [-1]))
            loss = self.task(labels=labels, predictions=out)
        else:
            prediction = self.low + (self.high - self.low) * tf.sigmoid(out)
            # [B, 1]: Keras' MSE averages the last axis, so [B] inputs would be pre-averaged.
            loss = self.task(labels=rating[:, None], predictions=prediction[:, None])
        return global_mean(loss, tf.shape(rating)[0])


class RetrievalModel(_TwoTowers):
    """Two-tower retrieval: softmax over in-batch (and sampled) negatives."""

    retrieves = True

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(space, config, **kwargs)
        self.retrieval = _RetrievalTask(space, config, name="retrieval_task")

    def compute_loss(self, features, training=False):
        return self.regularized(self.retrieval(self, features, training=training))


class RankingModel(_TwoTowers):
    """Hybrid rating model: towers, genres and biases into an MLP."""

    rates = True

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(space, config, **kwargs)
        self.ranking = _RankingHead(space, config, name="ranking_head")

    def predict_rating(self, user_ids, movie_ids, training=False):
        return self.ranking.predict_rating(self, user_ids, movie_ids, training)

    def compute_loss(self, features, training=False):
        return self.regularized(self.ranking(self, features, training=training))


class MultitaskModel(_TwoTowers):
    """Retrieval and ranking on one set of towers, losses weighted by the config."""

    retrieves = True
    rates = True

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(space, config, **kwargs)
        self.retrieval = _RetrievalTask(space, config, name="retrieval_task")
        self.ranking = _RankingHead(space, config, name="ranking_head")

    def predict_rating(self, user_ids, movie_ids, training=False):
        return self.ranking.predict_rating(self, user_ids, movie_ids, training)

    def compute_loss(self, features, training=False):
        return self.regularized(
            self.config.retrieval_weight * self.retrieval(self, features, training=training)
            + self.config.ranking_weight * self.ranking(self, features, training=training))


# Model kind -> class; every ``--model`` choice but ``all`` is a key here.
KINDS = {"retrieval": RetrievalModel, "ranking": RankingModel, "multitask": MultitaskModel}


def build_model(kind: str, space: FeatureSpace, config: ModelConfig) -> _TwoTowers:
    """The one model builder, shared by train and tune: ``kind`` is a key of ``KINDS``.

    ``config.l2`` left at None becomes the kind's ``default_l2``."""
    if config.l2 is None:
        config = dataclasses.replace(config, l2=KINDS[kind].default_l2)
    return KINDS[kind](space, config, name=kind)


from tfrs_movies import paper_models  # noqa: E402,F401  (registers mf, softmax-history, ...)
