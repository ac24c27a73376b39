"""Models on the shared towers: tasks and heads take tensors, towers run once per step.

Every model takes batches of ``{"user_id": [B] string, "movie_id": [B] string,
"user_rating": [B] float32}`` and looks features up through its ``FeatureSpace``.
``compute_loss`` runs the user tower once and the movie tower once (on the batch's movies plus
any sampled negatives), then hands the tensors to the retrieval task and the rating head.

Two interfaces the rest of the package reads (evaluation, export, analysis):
  retrieval (``retrieves``): ``user_embedding(ids) [B, D]`` and ``movie_embedding(ids)
    [B, D]`` score candidates by dot product.
  rating (``rates``): ``rating_user(ids) [B, Du]`` and ``rating_movie(ids) [N, Dm]`` are the
    per-user and per-movie representations, ``rate(users [B, Du], movies [B, K, Dm]) ->
    [B, K]`` scores lists of candidates with the head (a pair is K = 1). Export stores the
    representations as tables, so a request runs only ``rate``.

``build_model`` (kinds from ``tfrs_movies.kinds``) is the one builder train and tune call.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_movies import kinds
from tfrs_movies.config import ModelConfig
from tfrs_movies.distribute import global_mean, per_replica_share, replicas
from tfrs_movies.features import FeatureSpace
from tfrs_movies.towers import MovieTower, UserTower


class TwoTowers(tfrs.Model):
    """Feature space, a user tower and a movie tower, and the entry points built on them.

    ``user_config``/``movie_config`` (default ``config``) shape the two towers, so a kind can
    make one of them a plain id table. Subclasses set ``retrieves``/``rates``, and a rating
    ``head`` attribute when they rate (no class-level default: a class attribute of that name
    would stop Keras from tracking the instance's layer).
    """

    retrieves = False
    rates = False
    # Whether ``compute_loss`` trains the user tower's new-user head (``PairModel``'s does), so
    # a retrieval kind builds one when ``ModelConfig.new_user_weight`` asks for it.
    trains_new_user_head = False
    # ``ModelConfig.l2`` when left at None, per kind (subclasses), chosen on ML-100K validation
    # splits with the optimizer ``auto`` picks there (docs/tuning.md).
    default_l2 = 5e-4

    def __init__(self, space: FeatureSpace, config: ModelConfig,
                 user_config: ModelConfig | None = None,
                 movie_config: ModelConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        self.space = space
        self.config = config
        user_config = user_config or config
        self.user_tower = UserTower(
            space, user_config, name="user_tower",
            new_user_head=(self.retrieves and self.trains_new_user_head
                           and user_config.new_user_weight > 0))
        self.movie_tower = MovieTower(space, movie_config or config, name="movie_tower")

    # -- towers: features in, [B, D] out -------------------------------------------------
    def user_tower_of(self, user_ids, exclude_movie_ids=None, training=False, l2_rows=None,
                      history_movie_ids=None, with_new_user=False):
        """([B, D] user tower output, the user feature dict); ``l2_rows``: the tower adds the
        L2 of the first ``l2_rows`` users' looked-up rows to ``losses`` (training);
        ``history_movie_ids`` [B, H]: a request's history, added to the stored one
        (``FeatureSpace.user_features``); ``with_new_user``: the output is (the tower's, its
        new-user head's)."""
        features = self.space.user_features(user_ids, exclude_movie_ids, history_movie_ids)
        return self.user_tower(features, training=training, l2_rows=l2_rows,
                               with_new_user=with_new_user), features

    def movie_tower_of(self, movie_ids, training=False, l2_rows=None):
        """([N, D] movie tower output, the movie feature dict); ``l2_rows`` as for users."""
        features = self.space.movie_features(movie_ids)
        return self.movie_tower(features, training=training, l2_rows=l2_rows), features

    # -- retrieval ---------------------------------------------------------------------
    def query(self, user, features):
        """User tower output -> query embedding (identity; mf appends its bias slot)."""
        return user

    def candidate(self, movie, features):
        """Movie tower output -> candidate embedding (identity; mf appends the movie bias)."""
        return movie

    def user_embedding(self, user_ids, exclude_movie_ids=None, training=False,
                       history_movie_ids=None):
        """[B] string user ids -> [B, D] query embeddings (unknown ids: ``query_from``);
        ``history_movie_ids`` [B, H]: with a request's history as well."""
        features = self.space.user_features(user_ids, exclude_movie_ids, history_movie_ids)
        return self.query_from(features, training)

    def query_from(self, features, training=False):
        """A user feature dict (``FeatureSpace.user_features``) -> [B, D] query embeddings;
        with a new-user head (``ModelConfig.new_user_weight``), the rows of ids the model has
        never seen (``user_index`` 0) are that head's."""
        head = self.user_tower.new_user_head
        if head is None:
            return self.query(self.user_tower(features, training=training), features)
        unseen = tf.equal(features["user_index"], 0)

        def mixed():
            user, new = self.user_tower(features, training=training, with_new_user=True)
            return tf.where(unseen[:, None], new, user)

        if not head.built:  # its variables are made here, never inside a branch
            return self.query(mixed(), features)
        # Requests of known users alone (most of them) skip the head.
        user = tf.cond(tf.reduce_any(unseen), mixed,
                       lambda: self.user_tower(features, training=training))
        return self.query(user, features)

    def movie_embedding(self, movie_ids, training=False):
        """[N] string movie ids -> [N, D] candidate embeddings."""
        return self.candidate(*self.movie_tower_of(movie_ids, training))

    # -- rating ------------------------------------------------------------------------
    def rating_user(self, user_ids, training=False, history_movie_ids=None):
        """[B] user ids -> [B, Du]: what ``rate`` needs of each user (export: a table);
        ``history_movie_ids`` [B, H]: with a request's history as well."""
        return self.head.user_inputs(*self.user_tower_of(
            user_ids, training=training, history_movie_ids=history_movie_ids))

    def rating_user_from(self, features):
        """A user feature dict -> [B, Du] (``rating_user`` on features computed once)."""
        return self.head.user_inputs(self.user_tower(features), features)

    def rating_movie(self, movie_ids, training=False):
        """[N] movie ids -> [N, Dm]: what ``rate`` needs of each movie (export: a table)."""
        return self.head.movie_inputs(*self.movie_tower_of(movie_ids, training))

    def rate(self, users, movies, training=False):
        """users [B, Du], movies [B, K, Dm] -> [B, K] predicted ratings."""
        return self.head.rating(self.head(users, movies, training=training))

    def predict_rating(self, user_ids, movie_ids, training=False):
        """[B] ids -> [B] float32 predicted ratings (a list of K = 1 per user)."""
        users = self.rating_user(user_ids, training)
        movies = self.rating_movie(movie_ids, training)[:, None, :]
        return self.rate(users, movies, training)[:, 0]

    # -- training ----------------------------------------------------------------------
    def regularized(self, loss):
        """``loss`` plus ``config.gravity`` times the gravity term of the id embeddings."""
        if not self.config.gravity:
            return loss
        return loss + per_replica_share(self.config.gravity * gravity(
            self.user_tower.id_embedding.embeddings, self.movie_tower.id_embedding.embeddings))

    def losses_of(self, inputs, training=False):
        """(task loss, regularization loss) of one replica's batch; their gradients, summed
        over the replicas, are the single-process gradients of the global batch.

        ``losses`` holds the towers' L2 of this step's rows (a mean over the replica's
        examples; ``towers``) and any kernel regularizers (computed in full): both are
        divided by the replica count."""
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


class RetrievalTask(tf.keras.layers.Layer):
    """In-batch softmax with logQ correction, plus optional uniformly sampled negatives.

    ``sample()`` draws the extra negatives' ids (None without them); the model runs its movie
    tower once on the batch's movies and those, and passes the embeddings to ``call``.
    """

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.space = space
        self.config = config
        self.task = tfrs.tasks.Retrieval(temperature=config.temperature,
                                         remove_accidental_hits=config.remove_accidental_hits)
        self.train_movies = tf.constant(space.vocab.movie_ids)

    def sample(self):
        """[S] uniformly drawn train movie ids, or None."""
        extra = self.config.num_sampled_negatives
        if not extra:
            return None
        index = tf.random.uniform([extra], 0, tf.shape(self.train_movies)[0], tf.int32)
        return tf.gather(self.train_movies, index)

    def call(self, query, candidates, movie_ids, sampled=None, sampled_ids=None):
        """query [B, D], candidates [B, D] (row i is query i's positive), movie_ids [B];
        sampled [S, D] with their ids [S] -> scalar mean loss over the global batch."""
        # Embedding rows, not strings: collectives cannot gather strings.
        candidate_ids = self.space.movie_lookup(movie_ids)
        frequency = self.space.sampling_probability(movie_ids)
        if self.config.cross_replica_negatives and replicas() > 1:
            candidates, candidate_ids, frequency = _gather_replicas(
                candidates, candidate_ids, frequency)
        # Probability that a movie is one of the batch's candidates: B * train frequency.
        probability = tf.cast(tf.shape(candidate_ids)[0], tf.float32) * frequency
        if sampled is not None:
            candidates = tf.concat([candidates, sampled], 0)
            uniform = self.config.num_sampled_negatives / len(self.space.vocab.movie_ids)
            probability = tf.concat([probability, tf.fill(tf.shape(sampled_ids), uniform)], 0)
            candidate_ids = tf.concat([candidate_ids, self.space.movie_lookup(sampled_ids)], 0)
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


class RatingHead(tf.keras.layers.Layer):
    """Listwise rating head: ``call(users [B, Du], movies [B, K, Dm]) -> [B, K]`` raw outputs
    (``[B, K, C]`` class logits with ``classes``); ``rating`` turns them into stars.

    The MLP reads ``[user, movie, user * movie (with interaction), genres]`` per candidate.
    Its first layer is linear in each part, so the user's and the movie's parts are computed
    once per user and once per movie, in ``user_inputs``/``movie_inputs`` (export stores them
    as tables), and a candidate only adds the ``user * movie`` part: the same function as a
    Dense layer on the concatenation, at a third of its cost per pair.

    Layouts: users ``[u (D), u W_u (H), b_user]``, movies ``[m (D), [m, genres] W_m + b
    (H), b_movie]`` (biases with ``use_bias``, regression only; H is the first layer's width).
    ``regression``: ``low + (high - low) * sigmoid(mlp + b_user + b_movie)`` and MSE;
    ``classes``: logits over the train rating values and cross-entropy, the rating being the
    expectation under the softmax.
    """

    def __init__(self, space: FeatureSpace, config: ModelConfig, *, classes: bool,
                 interaction: bool = True, kernel_l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.interaction = interaction
        self.dim = config.embedding_dim
        self.values = tf.constant(space.vocab.rating_values, tf.float32)
        self.low, self.high = space.vocab.rating_range
        regularizer = tf.keras.regularizers.l2(kernel_l2) if kernel_l2 else None
        outputs = len(space.vocab.rating_values) if classes else 1
        widths = tuple(config.ranking_layers) + (outputs,)
        self.hidden = bool(config.ranking_layers)
        self.width = widths[0]

        def dense(units, **kw):
            return tf.keras.layers.Dense(units, kernel_regularizer=regularizer, **kw)

        # The first layer, split by input: W_u, W_m (with genres, and the bias), W_x.
        self.first_user = dense(self.width, use_bias=False, name="first_user")
        self.first_movie = dense(self.width, name="first_movie")
        self.first_pair = dense(self.width, use_bias=False, name="first_pair") \
            if interaction else None
        self.layers_ = [dense(u, activation="relu") for u in widths[1:-1]]
        self.out = dense(outputs) if self.hidden else None
        self.dropout = tf.keras.layers.Dropout(config.dropout) if config.dropout else None
        self.user_bias = self.movie_bias = None
        if config.use_bias and not classes:
            self.user_bias = tf.keras.layers.Embedding(space.num_users, 1,
                                                       embeddings_initializer="zeros")
            self.movie_bias = tf.keras.layers.Embedding(space.num_movies, 1,
                                                        embeddings_initializer="zeros")
        # Summed here, averaged over the global batch in ``loss`` (distribution-safe).
        loss = (tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
                if classes else tf.keras.losses.MeanSquaredError(reduction="sum"))
        metrics = [] if classes else [tf.keras.metrics.RootMeanSquaredError()]
        self.task = tfrs.tasks.Ranking(loss=loss, metrics=metrics)

    def user_inputs(self, user, features):
        """[B, D] tower output -> [B, D + H (+ 1)]."""
        parts = [user, self.first_user(user)]
        if self.user_bias is not None:
            parts.append(self.user_bias(features["user_index"]))
        return tf.concat(parts, axis=-1)

    def movie_inputs(self, movie, features):
        """[N, D] tower output -> [N, D + H (+ 1)]."""
        parts = [movie, self.first_movie(tf.concat([movie, features["genres"]], axis=-1))]
        if self.movie_bias is not None:
            parts.append(self.movie_bias(features["movie_index"]))
        return tf.concat(parts, axis=-1)

    def call(self, users, movies, training=False):
        d, h = self.dim, self.width
        x = users[:, None, d:d + h] + movies[..., d:d + h]  # [B, K, H]
        if self.first_pair is not None:
            x += self.first_pair(users[:, None, :d] * movies[..., :d])
        if self.hidden:
            x = self._dropout(tf.nn.relu(x), training)
            for layer in self.layers_:
                x = self._dropout(layer(x), training)
            x = self.out(x)
        if self.classes:
            return x
        x = x[..., 0]
        if self.user_bias is not None:
            x += users[:, None, -1] + movies[..., -1]
        return x

    def _dropout(self, x, training):
        return x if self.dropout is None else self.dropout(x, training=training)

    def rating(self, outputs):
        """Raw outputs -> [B, K] ratings within the train rating range."""
        if self.classes:
            return tf.reduce_sum(tf.nn.softmax(outputs) * self.values, axis=-1)
        return self.low + (self.high - self.low) * tf.sigmoid(outputs)

    def loss(self, outputs, ratings):
        """outputs of lists of one ([B, 1] or [B, 1, C]), ratings [B] -> scalar mean loss."""
        if self.classes:
            loss = self.task(labels=nearest_class(self.values, ratings), predictions=outputs[:, 0])
        else:
            # [B, 1]: Keras' MSE averages the last axis, so [B] inputs would be pre-averaged.
            loss = self.task(labels=ratings[:, None], predictions=self.rating(outputs))
        return global_mean(loss, tf.shape(ratings)[0])


def nearest_class(values: tf.Tensor, rating: tf.Tensor) -> tf.Tensor:
    """[C] sorted rating values, [B] ratings -> [B] index of the nearest value."""
    return tf.argmin(tf.abs(tf.reshape(rating, [-1, 1]) - values[None, :]), axis=1)


class PairModel(TwoTowers):
    """A model whose loss reads both towers once: ``retrieval_weight`` times the retrieval
    task (when it has one) plus ``ranking_weight`` times the rating head's loss (when it
    rates). Retrieval, ranking and multitask differ only in which parts they build."""

    trains_new_user_head = True

    def compute_loss(self, features, training=False):
        movie_ids = features["movie_id"]
        retrieval = getattr(self, "retrieval", None)
        sampled_ids = retrieval.sample() if retrieval is not None else None
        all_ids = movie_ids if sampled_ids is None else tf.concat([movie_ids, sampled_ids], 0)
        batch = tf.shape(movie_ids)[0]
        # The target is dropped from the user's history so the tower cannot copy it. The
        # towers' L2 covers the batch's own rows (not the sampled negatives').
        # With a new-user head, each example is also queried as an unseen id would be.
        with_new = retrieval is not None and self.user_tower.new_user_head is not None
        user, user_features = self.user_tower_of(features["user_id"], movie_ids, training,
                                                 l2_rows=batch, with_new_user=with_new)
        user, new_user = user if with_new else (user, None)
        movie, movie_features = self.movie_tower_of(all_ids, training, l2_rows=batch)
        loss = 0.0
        if retrieval is not None:
            candidates = self.candidate(movie, movie_features)
            sampled = None if sampled_ids is None else candidates[batch:]
            loss += self.config.retrieval_weight * retrieval(
                self.query(user, user_features), candidates[:batch], movie_ids, sampled,
                sampled_ids)
            if new_user is not None:
                loss += self.config.new_user_weight * retrieval(
                    self.query(new_user, user_features), candidates[:batch], movie_ids,
                    sampled, sampled_ids)
        if self.rates:
            batch_features = {k: v[:batch] for k, v in movie_features.items()}
            outputs = self.head(self.head.user_inputs(user, user_features),
                                self.head.movie_inputs(movie[:batch], batch_features)[:, None],
                                training=training)
            loss += self.config.ranking_weight * self.head.loss(outputs,
                                                                 features["user_rating"])
        return self.regularized(loss)


class RetrievalModel(PairModel):
    """Two-tower retrieval: softmax over in-batch (and sampled) negatives."""

    retrieves = True
    default_l2 = 1.5e-3

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(space, config, **kwargs)
        self.retrieval = RetrievalTask(space, config, name="retrieval_task")


class RankingModel(PairModel):
    """Hybrid rating model: towers, genres and biases into an MLP."""

    rates = True

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(space, config, **kwargs)
        self.head = RatingHead(space, config, classes=config.ranking_head == "classes",
                               name="ranking_head")


class MultitaskModel(PairModel):
    """Retrieval and ranking on one set of towers, losses weighted by the config."""

    retrieves = True
    rates = True

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(space, config, **kwargs)
        self.retrieval = RetrievalTask(space, config, name="retrieval_task")
        self.head = RatingHead(space, config, classes=config.ranking_head == "classes",
                               name="ranking_head")


def build_model(kind: str, space: FeatureSpace, config: ModelConfig) -> TwoTowers:
    """The one model builder, shared by train and tune: ``kind`` names a ``kinds.KINDS`` entry.

    ``config.l2`` left at None becomes the kind's ``default_l2``."""
    cls = kinds.model_class(kind)
    if config.l2 is None:
        config = dataclasses.replace(config, l2=cls.default_l2)
    return cls(space, config, name=kind)
