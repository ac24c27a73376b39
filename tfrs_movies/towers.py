"""UserTower and MovieTower: feature dict -> embedding; one implementation for every model.

Each tower embeds every feature it is given, concatenates, and maps the result to
``embedding_dim`` through optional hidden layers and a final linear projection. With
``use_features=False`` and ``use_history=False`` a tower is a plain id embedding (matrix
factorization's factor), which is what the ablations compare against.

L2 (``config.l2``) is on the rows a batch looks up, not on whole tables, so a step's
embedding gradients stay row-sparse (``tf.IndexedSlices``) and its cost follows the batch:
called with ``l2_rows=n``, a tower adds (``add_loss``) ``l2`` times the mean over its first
``n`` examples of ``sum ||row||^2 / q(row)`` over the rows each example looks up, where
``q`` is how often one train example looks that row up (``FeatureSpace.example_occurrences``).
In expectation over the batch that is ``l2 * sum ||W||^2`` of every table, the whole-table
penalty it replaces; a row is only pulled towards 0 on the steps that use it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfrs_movies.config import ModelConfig
from tfrs_movies.features import FeatureSpace

# Side features are narrower than ids: they have few values and should not dominate the concat.
_SIDE_DIM = 16
_USER_SIDE_SIZES = {"gender": 3, "age": 8, "occupation": 23, "zip": 11}
# The new-user head reads the history's mean and its mean weighted exp(-back / this), ``back``
# the movies rated after each (the re-ranker's ``latest_decay``; not tuned).
NEW_USER_DECAY = 10.0


def _embedding(size: int, dim: int, name: str) -> tf.keras.layers.Embedding:
    return tf.keras.layers.Embedding(size, dim, name=name)


class _RowL2:
    """The L2 of one tower on the rows its lookups touch (see the module docstring).

    ``inverse`` maps a feature name to ``1 / q`` per row of its table ([rows] float32; a row
    no train example looks up gets the largest weight of the table)."""

    def __init__(self, space: FeatureSpace, l2: float, tables: dict[str, int]):
        self.l2 = l2
        self.inverse = {}
        for feature, rows in tables.items():
            q = space.example_occurrences(feature, rows)
            floor = q[q > 0].min() if np.any(q > 0) else 1.0
            self.inverse[feature] = tf.constant(1.0 / np.maximum(q, floor), tf.float32)

    def penalty(self, feature: str, ids, rows):
        """ids [N], their rows [N, D] -> [N] (bags sum these per bag: ``_Tower._bag``)."""
        return tf.reduce_sum(tf.square(rows), axis=-1) * tf.gather(self.inverse[feature], ids)

    def loss(self, penalties: list[tf.Tensor], l2_rows) -> tf.Tensor:
        """The mean over the first ``l2_rows`` examples of their summed penalties, times l2."""
        total = tf.reduce_sum(tf.add_n(penalties)[:l2_rows])
        return self.l2 * tf.math.divide_no_nan(total, tf.cast(l2_rows, tf.float32))


class _Tower(tf.keras.Model):
    """Shared by both towers: table lookups that record their L2 penalty when asked."""

    def _tables(self) -> dict[str, tf.keras.layers.Embedding]:
        """Feature name -> the embedding table it looks up (a method, not an attribute: Keras
        would track a dict attribute, adding names to every checkpoint)."""
        raise NotImplementedError

    def _build_row_l2(self, space: FeatureSpace, config: ModelConfig) -> None:
        tables = {name: layer.input_dim for name, layer in self._tables().items()}
        self.row_l2 = _RowL2(space, config.l2, tables) if config.l2 else None

    def _lookup(self, feature: str, ids, penalties: list | None):
        rows = self._tables()[feature](ids)
        if penalties is not None:
            penalties.append(self.row_l2.penalty(feature, ids, rows))
        return rows

    def _bag(self, feature: str, ids: tf.RaggedTensor, penalties: list | None,
             exclude: tf.Tensor | None = None, decay: float | None = None):
        """Mean of the rows a ragged [B, None] bag of ids looks up -> [B, D] (an empty bag
        gives 0); ``exclude`` [B]: one id per bag left out of it (0: none), subtracted
        rather than masked out of the bag. Each distinct id of the batch is looked up once
        and the bags are summed by position (``tf.sparse.segment_sum``), so a step moves one
        row per distinct id, not one per (example, id): a batch of 256 ML-100K histories holds
        ~33,500 ids of ~1,460 movies (10^7 synthetic ratings: ~7,200 of ~4,200).

        With ``decay``: (that mean, the mean weighted by recency) -> ([B, D], [B, D]), each
        row weighted ``exp(-back / decay)``, ``back`` the number of ids after it in its bag
        (the bags are oldest first; the ``exclude`` id weighs 0)."""
        unique, position = tf.unique(ids.flat_values)
        rows = self._tables()[feature](unique)
        segments = tf.cast(ids.value_rowids(), tf.int32)
        count = tf.cast(ids.nrows(), tf.int32)
        total = tf.sparse.segment_sum(rows, position, segments, num_segments=count)
        size = tf.cast(ids.row_lengths(), tf.float32)
        penalty = None
        if penalties is not None:
            per_row = self.row_l2.penalty(feature, unique, rows)[:, None]
            penalty = tf.sparse.segment_sum(per_row, position, segments, num_segments=count)[:, 0]
        if exclude is not None:
            inside = tf.cast(exclude > 0, tf.float32)
            left_out = self._tables()[feature](exclude) * inside[:, None]
            total -= left_out
            size -= inside
            if penalty is not None:
                penalty -= self.row_l2.penalty(feature, exclude, left_out)
        if penalty is not None:
            penalties.append(penalty)
        mean = tf.math.divide_no_nan(total, size[:, None])
        if decay is None:
            return mean
        end = tf.gather(ids.row_limits(), ids.value_rowids())
        back = tf.cast(end - 1 - tf.range(tf.size(ids.flat_values, out_type=end.dtype)),
                       tf.float32)
        weight = tf.exp(-back / decay)
        if exclude is not None:
            weight *= tf.cast(ids.flat_values != tf.gather(exclude, ids.value_rowids()),
                              tf.float32)
        weighted = tf.math.unsorted_segment_sum(tf.gather(rows, position) * weight[:, None],
                                                segments, count)
        norm = tf.math.unsorted_segment_sum(weight, segments, count)
        return mean, tf.math.divide_no_nan(weighted, norm[:, None])

    def _penalties(self, l2_rows) -> list | None:
        return [] if l2_rows is not None and self.row_l2 is not None else None

    def _add_row_l2(self, penalties: list | None, l2_rows) -> None:
        if penalties:
            self.add_loss(self.row_l2.loss(penalties, l2_rows))


class _Head(tf.keras.layers.Layer):
    """Concatenated features -> [B, embedding_dim]: hidden ReLU layers, then a projection."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.hidden = [tf.keras.layers.Dense(units, activation="relu")
                       for units in config.tower_layers]
        self.dropout = tf.keras.layers.Dropout(config.dropout) if config.dropout else None
        self.projection = tf.keras.layers.Dense(config.embedding_dim)

    def call(self, x, training=False):
        for layer in self.hidden:
            x = layer(x)
            if self.dropout is not None:
                x = self.dropout(x, training=training)
        return self.projection(x)


class UserTower(_Tower):
    """User features (``FeatureSpace.user_features``) -> [B, embedding_dim] query embedding.

    Inputs used: ``user_index`` (id embedding), demographics present in the data, and
    ``history`` (mean embedding of the movies the user rated in train) when enabled.
    ``call(..., l2_rows=n)`` adds the L2 of the first n examples' rows (training). In training,
    ``new_user_rate`` of the examples see their user as a new one: the id's row and the
    demographics of an unknown user (index 0), the history as it is.

    With ``new_user_head`` (the retrieval models', when ``ModelConfig.new_user_weight`` > 0)
    the tower has a second head on the history alone (its mean and its recency-weighted mean,
    ``NEW_USER_DECAY``, through ``new_user_layers``): ``call(..., with_new_user=True)``
    returns (the tower's output, that head's [B, D]), what an id the model has never seen
    is queried with (``TwoTowers.query_from``).
    """

    def __init__(self, space: FeatureSpace, config: ModelConfig, new_user_head: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        dim = config.embedding_dim
        self.id_embedding = _embedding(space.num_users, dim, "user_id_embedding")
        self.use_user_id = config.use_user_id
        self.side = {}
        if config.use_features:
            self.side = {name: _embedding(_USER_SIDE_SIZES[name], _SIDE_DIM, f"user_{name}")
                         for name in space.vocab.user_features}
        self.history = (_embedding(space.num_movies, dim, "history_embedding")
                        if config.use_history else None)
        self.new_user_rate = config.new_user_rate if config.use_history else 0.0
        self._build_row_l2(space, config)
        self.uses_only_ids = not self.side and self.history is None and not config.tower_layers
        self.head = None if self.uses_only_ids else _Head(config, name="user_head")
        self.new_user_head = None
        if new_user_head and self.history is not None:
            self.new_user_head = _Head(
                dataclasses.replace(config, tower_layers=config.new_user_layers),
                name="new_user_head")

    def _tables(self):
        return {**({"user_index": self.id_embedding} if self.use_user_id else {}), **self.side,
                **({"history": self.history} if self.history is not None else {})}

    def call(self, features, training=False, l2_rows=None, with_new_user=False):
        penalties = self._penalties(l2_rows)
        if training and self.new_user_rate:
            features = _as_new_users(features, self.new_user_rate, [*self.side, "user_index"])
        parts = ([self._lookup("user_index", features["user_index"], penalties)]
                 if self.use_user_id else [])
        parts += [self._lookup(name, features[name], penalties) for name in self.side]
        if self.history is not None:
            bag = self._bag("history", features["history"], penalties,
                            features.get("history_exclude"),
                            decay=NEW_USER_DECAY if with_new_user else None)
            # With the new-user head: (the mean, the recency-weighted mean).
            bag, recent = bag if with_new_user else (bag, None)
            parts.append(bag)
        self._add_row_l2(penalties, l2_rows)
        out = parts[0] if self.head is None else self.head(tf.concat(parts, axis=1),
                                                           training=training)
        if not with_new_user:
            return out
        if self.new_user_head is None:
            raise ValueError("with_new_user: this user tower has no new-user head")
        return out, self.new_user_head(tf.concat([parts[-1], recent], axis=1),
                                       training=training)


def _as_new_users(features: dict, rate: float, names: list[str]) -> dict:
    """``features`` with ``names`` (the id and demographics) set to 0, the unknown user's
    index, for a random ``rate`` of the examples."""
    new = tf.random.uniform(tf.shape(features["user_index"])) < rate
    return {**features, **{name: tf.where(new, tf.zeros_like(features[name]), features[name])
                           for name in names}}


class MovieTower(_Tower):
    """Movie features (``FeatureSpace.movie_features``) -> [B, embedding_dim] candidate embedding.

    Inputs used: ``movie_index`` (id embedding) and, with ``use_features``, the genre
    multi-hot (through a Dense layer), a bag of title tokens and the release year.
    ``call(..., l2_rows=n)`` adds the L2 of the first n movies' rows (the batch's own movies,
    not the sampled negatives after them).
    """

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        dim = config.embedding_dim
        self.id_embedding = _embedding(space.num_movies, dim, "movie_id_embedding")
        self.use_features = config.use_features
        if self.use_features:
            self.genres = tf.keras.layers.Dense(_SIDE_DIM, use_bias=False, name="genre_embedding")
            self.title = _embedding(space.num_title_tokens, _SIDE_DIM, "title_embedding")
            self.year = _embedding(space.num_years, _SIDE_DIM, "year_embedding")
        self._build_row_l2(space, config)
        self.uses_only_ids = not self.use_features and not config.tower_layers
        self.head = None if self.uses_only_ids else _Head(config, name="movie_head")

    def _tables(self):
        return {"movie_index": self.id_embedding,
                **({"title": self.title, "year": self.year} if self.use_features else {})}

    def call(self, features, training=False, l2_rows=None):
        penalties = self._penalties(l2_rows)
        parts = [self._lookup("movie_index", features["movie_index"], penalties)]
        if self.use_features:
            title = features["title"]
            parts += [self.genres(features["genres"]),
                      self._bag("title", title, penalties),
                      self._lookup("year", features["year"], penalties)]
        self._add_row_l2(penalties, l2_rows)
        if self.head is None:
            return parts[0]
        return self.head(tf.concat(parts, axis=1), training=training)
