"""UserTower and MovieTower: feature dict -> embedding; one implementation for every model.

Each tower embeds every feature it is given, concatenates, and maps the result to
``embedding_dim`` through optional hidden layers and a final linear projection. With
``use_features=False`` and ``use_history=False`` a tower is a plain id embedding (matrix
factorization's factor), which is what the ablations compare against.
"""
from __future__ import annotations

import tensorflow as tf

from tfrs_movies.config import ModelConfig
from tfrs_movies.features import FeatureSpace

# Side features are narrower than ids: they have few values and should not dominate the concat.
_SIDE_DIM = 16
_USER_SIDE_SIZES = {"gender": 3, "age": 8, "occupation": 23, "zip": 11}


def _embedding(size: int, dim: int, config: ModelConfig, name: str) -> tf.keras.layers.Embedding:
    regularizer = tf.keras.regularizers.l2(config.l2) if config.l2 else None
    return tf.keras.layers.Embedding(size, dim, embeddings_regularizer=regularizer, name=name)


def _bag(table: tf.keras.layers.Embedding, ids: tf.RaggedTensor) -> tf.Tensor:
    """Mean embedding of a ragged bag of ids, [B, None] -> [B, D]; an empty bag gives zeros."""
    return tf.math.divide_no_nan(
        tf.reduce_sum(table(ids), axis=1),
        tf.cast(tf.expand_dims(ids.row_lengths(), 1), tf.float32))


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


class UserTower(tf.keras.Model):
    """User features (``FeatureSpace.user_features``) -> [B, embedding_dim] query embedding.

    Inputs used: ``user_index`` (id embedding), demographics present in the data, and
    ``history`` (mean embedding of the movies the user rated in train) when enabled.
    """

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        dim = config.embedding_dim
        self.id_embedding = _embedding(space.num_users, dim, config, "user_id_embedding")
        self.use_user_id = config.use_user_id
        self.side = {}
        if config.use_features:
            self.side = {name: _embedding(_USER_SIDE_SIZES[name], _SIDE_DIM, config, f"user_{name}")
                         for name in space.vocab.user_features}
        self.history = (_embedding(space.num_movies, dim, config, "history_embedding")
                        if config.use_history else None)
        self.uses_only_ids = not self.side and self.history is None and not config.tower_layers
        self.head = None if self.uses_only_ids else _Head(config, name="user_head")

    def call(self, features, training=False):
        parts = [self.id_embedding(features["user_index"])] if self.use_user_id else []
        parts += [layer(features[name]) for name, layer in self.side.items()]
        if self.history is not None:
            parts.append(_bag(self.history, features["history"]))
        if self.head is None:
            return parts[0]
        return self.head(tf.concat(parts, axis=1), training=training)


class MovieTower(tf.keras.Model):
    """Movie features (``FeatureSpace.movie_features``) -> [B, embedding_dim] candidate embedding.

    Inputs used: ``movie_index`` (id embedding) and, with ``use_features``, the genre
    multi-hot (through a Dense layer), a bag of title tokens and the release year.
    """

    def __init__(self, space: FeatureSpace, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        dim = config.embedding_dim
        self.id_embedding = _embedding(space.num_movies, dim, config, "movie_id_embedding")
        self.use_features = config.use_features
        if self.use_features:
            self.genres = tf.keras.layers.Dense(_SIDE_DIM, use_bias=False, name="genre_embedding")
            self.title = _embedding(space.num_title_tokens, _SIDE_DIM, config, "title_embedding")
            self.year = _embedding(space.num_years, _SIDE_DIM, config, "year_embedding")
        self.uses_only_ids = not self.use_features and not config.tower_layers
        self.head = None if self.uses_only_ids else _Head(config, name="movie_head")

    def call(self, features, training=False):
        parts = [self.id_embedding(features["movie_index"])]
        if self.use_features:
            parts += [self.genres(features["genres"]), _bag(self.title, features["title"]),
                      self.year(features["year"])]
        if self.head is None:
            return parts[0]
        return self.head(tf.concat(parts, axis=1), training=training)
