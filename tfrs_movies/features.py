"""Vocabularies and in-graph feature lookup, built from the train split only.

``FeatureSpace`` turns string ids into the feature dicts the towers eat, entirely inside the
TensorFlow graph: user demographics, the user's rating history, movie genres, title tokens and
release year come from tables frozen when the space is built. Training, evaluation and the
exported SavedModels therefore share one code path, and a client sends ids only.

Two id spaces per side, on purpose:
- the *embedding* vocabulary (``user_vocab``, ``movie_vocab``) holds ids seen in train ratings;
  anything else maps to index 0, the OOV embedding;
- the *catalogue* (``catalogue_users``, ``catalogue_movies``) holds every known user/movie with its
  metadata, so a movie without train ratings still has genres and a title, and a held-out
  user (``strong`` split) still has a fold-in history.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies.data.schema import GENRES
from tfrs_movies.inference import latest_distinct

_YEAR = re.compile(r"\((\d{4})\)\s*$")
_TOKEN = re.compile(r"[a-z0-9']+")
_AGE_BUCKETS = (1.0, 18.0, 25.0, 35.0, 45.0, 50.0, 56.0)


def _title_tokens(title: str) -> list[str]:
    return _TOKEN.findall(_YEAR.sub("", title).lower())


def _year(title: str) -> int:
    match = _YEAR.search(title)
    return int(match.group(1)) if match else 0


@dataclasses.dataclass
class Vocabulary:
    """Everything the feature tables are built from; deterministic given the run's split.

    Attributes:
      user_ids: train users, sorted; embedding row i+1 (row 0 is OOV).
      movie_ids: train movies, sorted; embedding row i+1.
      movie_counts: train ratings per ``movie_ids`` entry (logQ correction, popularity).
      catalogue_movies: every movie id in the movies table, sorted.
      catalogue_titles, catalogue_genres: per ``catalogue_movies`` entry.
      catalogue_users: every user id in the users table, sorted.
      user_features: per ``catalogue_users`` entry, the available demographics as small ints
        (0 = unknown): ``gender``, ``age``, ``occupation``, ``zip``.
      title_tokens: title word vocabulary (words in >= 2 titles).
      years: release years present, sorted.
      history: per ``catalogue_users`` entry, the train (+fold-in) movies, oldest first.
      rating_values: the distinct train ratings, sorted (rating range and class head).
      user_counts: train ratings per ``user_ids`` entry (the row weights of the L2 on looked-up
        rows, ``FeatureSpace.example_occurrences``); None in vocabularies written before it.
    """

    user_ids: list[str]
    movie_ids: list[str]
    movie_counts: list[int]
    catalogue_movies: list[str]
    catalogue_titles: list[str]
    catalogue_genres: list[list[int]]
    catalogue_users: list[str]
    user_features: dict[str, list[int]]
    title_tokens: list[str]
    years: list[int]
    history: list[list[str]]
    rating_values: list[float]
    user_counts: list[int] | None = None

    @classmethod
    def build(cls, train: pd.DataFrame, movies: pd.DataFrame, users: pd.DataFrame,
              fold_in: pd.DataFrame | None = None) -> "Vocabulary":
        """Builds the vocabulary from train ratings (+ fold-in history) and the catalogue."""
        movie_counts = train["movie_id"].value_counts()
        movie_ids = sorted(movie_counts.index)
        user_counts = train["user_id"].value_counts().sort_index()
        movies = movies.sort_values("movie_id")
        users = users.sort_values("user_id")
        token_counts: dict[str, int] = {}
        for title in movies["movie_title"]:
            for tok in set(_title_tokens(title)):
                token_counts[tok] = token_counts.get(tok, 0) + 1
        user_features = {}
        if "user_gender" in users:
            user_features["gender"] = [1 + int(g) for g in users["user_gender"]]
        if "bucketized_user_age" in users:
            ages = {a: i + 1 for i, a in enumerate(_AGE_BUCKETS)}
            user_features["age"] = [ages.get(float(a), 0) for a in users["bucketized_user_age"]]
        if "user_occupation_label" in users:
            user_features["occupation"] = [1 + int(o) for o in users["user_occupation_label"]]
        if "user_zip_code" in users:
            # The first digit is the US postal region; finer prefixes are too sparse on 943 users.
            user_features["zip"] = [1 + int(z[0]) if z[:1].isdigit() else 0
                                    for z in users["user_zip_code"].astype(str)]
        seen = pd.concat([train, fold_in]) if fold_in is not None and len(fold_in) else train
        ordered = seen.sort_values(["user_id", "timestamp", "movie_id"], kind="stable")
        grouped = ordered.groupby("user_id", sort=False)["movie_id"].agg(list)
        return cls(
            user_ids=[str(u) for u in user_counts.index],
            movie_ids=movie_ids,
            movie_counts=[int(movie_counts[m]) for m in movie_ids],
            catalogue_movies=list(movies["movie_id"]),
            catalogue_titles=list(movies["movie_title"]),
            catalogue_genres=[list(map(int, g)) for g in movies["movie_genres"]],
            catalogue_users=list(users["user_id"]),
            user_features=user_features,
            title_tokens=sorted(t for t, c in token_counts.items() if c >= 2),
            years=sorted({y for y in map(_year, movies["movie_title"]) if y}),
            history=[grouped.get(u, []) for u in users["user_id"]],
            rating_values=sorted(float(r) for r in train["user_rating"].unique()),
            user_counts=[int(c) for c in user_counts],
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        values = json.loads(Path(path).read_text())
        # Vocabularies written before the one spelling of "catalogue" name it "catalog_*".
        return cls(**{_OLD_KEYS.get(k, k): v for k, v in values.items()})

    @property
    def rating_range(self) -> tuple[float, float]:
        return self.rating_values[0], self.rating_values[-1]


_OLD_KEYS = {f"catalog_{part}": f"catalogue_{part}"
             for part in ("movies", "titles", "genres", "users")}


def _lookup(vocab: list[str], name: str) -> tf.keras.layers.StringLookup:
    # An empty vocabulary is legal (e.g. no users table): everything maps to OOV index 0.
    # A numpy array, not a list: Keras wraps a list attribute and tracks every string in it,
    # and each SavedModel save walks them all (minutes at 10^6 movies).
    vocabulary = np.asarray(vocab, dtype=str) if len(vocab) else None
    return tf.keras.layers.StringLookup(vocabulary=vocabulary, num_oov_indices=1,
                                        mask_token=None, name=name)


class FeatureSpace(tf.keras.layers.Layer):
    """String ids -> feature dicts, with every table frozen at construction.

    ``user_features(user_ids [B], exclude_movie_ids [B] or None)`` returns
      ``user_index`` [B] int64 (0 = OOV), the demographic ints present in the data [B] int32,
      and ``history`` [B, None] ragged int64 movie embedding indices (at most ``max_history``,
      most recent kept). With ``exclude_movie_ids`` (the training targets) it adds
      ``history_exclude`` [B] int64: the target's movie index where that history holds it,
      else 0; the user tower leaves it out of the bag, so the model never learns to retrieve
      what it was shown as input. With ``history_movie_ids`` [B, H] (a request's history,
      oldest first, "" pads) those movies follow the stored history (a movie in both counts
      once, at its later place; unknown ids are left out), the most recent ``max_history``
      kept: what the serving graph's ``with_history`` signatures feed the towers.
    ``movie_features(movie_ids [B])`` returns ``movie_index`` [B], ``genres`` [B, 21] float32
      multi-hot, ``title`` [B, None] ragged int64 token ids, ``year`` [B] int32.
    """

    def __init__(self, vocab: Vocabulary, max_history: int = 200, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.vocab = vocab
        self.max_history = max_history
        self.user_lookup = _lookup(vocab.user_ids, "user_lookup")
        self.movie_lookup = _lookup(vocab.movie_ids, "movie_lookup")
        self.catalogue_user_lookup = _lookup(vocab.catalogue_users, "catalogue_user_lookup")
        self.catalogue_movie_lookup = _lookup(vocab.catalogue_movies, "catalogue_movie_lookup")

        # Row 0 of every catalogue table is the unknown user/movie.
        self.user_columns = {
            name: tf.constant([0] + values, tf.int32)
            for name, values in vocab.user_features.items()
        }
        movie_index = {m: i + 1 for i, m in enumerate(vocab.movie_ids)}
        hist = [[movie_index[m] for m in h if m in movie_index][-max_history:]
                for h in vocab.history]
        self.history = tf.RaggedTensor.from_row_lengths(
            tf.constant([m for h in hist for m in h], tf.int64),
            tf.constant([0] + [len(h) for h in hist], tf.int64))

        genres = np.zeros((len(vocab.catalogue_movies) + 1, len(GENRES)), np.float32)
        for row, movie_genres in enumerate(vocab.catalogue_genres, start=1):
            genres[row, movie_genres] = 1.0
        self.genres = tf.constant(genres)
        token_index = {t: i + 1 for i, t in enumerate(vocab.title_tokens)}
        titles = [[]] + [[token_index[t] for t in _title_tokens(title) if t in token_index]
                         for title in vocab.catalogue_titles]
        self.titles = tf.RaggedTensor.from_row_lengths(
            tf.constant([t for ts in titles for t in ts], tf.int64),
            tf.constant([len(ts) for ts in titles], tf.int64))
        year_index = {y: i + 1 for i, y in enumerate(vocab.years)}
        self.years = tf.constant([0] + [year_index.get(_year(t), 0)
                                        for t in vocab.catalogue_titles],
                                 tf.int32)
        self.title_strings = tf.constant([""] + list(vocab.catalogue_titles))
        counts = np.asarray(vocab.movie_counts, np.float64)
        # Frequency of each embedding row among train positives; OOV gets the smallest one.
        oov = counts.min() if len(counts) else 1.0
        freq = np.concatenate([[oov], counts]) / max(counts.sum(), 1)
        self.movie_frequency = tf.constant(freq, tf.float32)

    @property
    def num_users(self) -> int:
        return len(self.vocab.user_ids) + 1

    @property
    def num_movies(self) -> int:
        return len(self.vocab.movie_ids) + 1

    @property
    def num_title_tokens(self) -> int:
        return len(self.vocab.title_tokens) + 1

    @property
    def num_years(self) -> int:
        return len(self.vocab.years) + 1

    def user_features(self, user_ids: tf.Tensor, exclude_movie_ids: tf.Tensor | None = None,
                      history_movie_ids: tf.Tensor | None = None):
        row = self.catalogue_user_lookup(user_ids)
        features = {"user_index": self.user_lookup(user_ids)}
        for name, column in self.user_columns.items():
            features[name] = tf.gather(column, row)
        history = _gather_rows(self.history, row)
        if history_movie_ids is not None:
            history = self._followed_by(history, history_movie_ids)
        features["history"] = history
        if exclude_movie_ids is not None:
            # The target's index where the history holds it, else 0 (no history holds row 0).
            target = self.movie_lookup(exclude_movie_ids)
            rows = history.value_rowids()
            hits = tf.where(history.flat_values == tf.gather(target, rows),
                            history.flat_values, tf.zeros_like(history.flat_values))
            features["history_exclude"] = tf.maximum(
                tf.math.unsorted_segment_max(hits, rows, history.nrows()), 0)
        return features

    def _followed_by(self, history: tf.RaggedTensor, movie_ids: tf.Tensor) -> tf.RaggedTensor:
        """Stored histories [B, None] then the request's movies [B, H] (``user_features``)."""
        extra = latest_distinct(self.movie_lookup(movie_ids), self.max_history, 0)
        stored = history.to_tensor(0)
        again = tf.reduce_any(stored[:, :, None] == extra[:, None, :], axis=2)
        both = tf.concat([tf.where(again, tf.zeros_like(stored), stored), extra], axis=1)
        keep = both > 0
        keep &= tf.cumsum(tf.cast(keep, tf.int32), axis=1, reverse=True) <= self.max_history
        return tf.ragged.boolean_mask(both, keep)

    def movie_features(self, movie_ids: tf.Tensor):
        row = self.catalogue_movie_lookup(movie_ids)
        return {
            "movie_index": self.movie_lookup(movie_ids),
            "genres": tf.gather(self.genres, row),
            "title": _gather_rows(self.titles, row),
            "year": tf.gather(self.years, row),
        }

    def titles_of(self, movie_ids: tf.Tensor) -> tf.Tensor:
        """Titles of catalogue movies ("" for unknown ids), same shape as ``movie_ids``."""
        return tf.gather(self.title_strings, self.catalogue_movie_lookup(movie_ids))

    def example_occurrences(self, feature: str, rows: int) -> np.ndarray:
        """[rows] float64: how many times one train example looks up each row of the table
        behind ``feature``, in expectation over the train ratings (an example is a rating:
        its user's features and its movie's).

        ``feature`` is a key of ``user_features`` (``user_index``, a demographic, ``history``)
        or of ``movie_features`` (``movie_index``, ``title``, ``year``). The weights of the L2
        on looked-up rows (``towers``): a row's penalty divided by this is, in expectation,
        the whole-table L2 of that row. A history leaves out its example's own movie; that
        one row is not subtracted here.
        """
        movie_freq = _shares(self.vocab.movie_counts)
        if feature == "movie_index":
            return _bins(np.arange(len(movie_freq)), movie_freq, rows)
        user_freq = _shares(self.vocab.user_counts or [1] * len(self.vocab.user_ids))
        if feature == "user_index":
            return _bins(np.arange(len(user_freq)), user_freq, rows)
        if feature in self.user_columns or feature == "history":
            # Share of examples per catalogue row; row 0: train users without one.
            weight = _catalogue_shares(self.vocab.user_ids, self.vocab.catalogue_users, user_freq)
            if feature == "history":
                return _ragged_bins(self.history, weight, rows)
            return _bins(self.user_columns[feature].numpy(), weight, rows)
        weight = _catalogue_shares(self.vocab.movie_ids, self.vocab.catalogue_movies, movie_freq)
        if feature == "title":
            return _ragged_bins(self.titles, weight, rows)
        if feature == "year":
            return _bins(self.years.numpy(), weight, rows)
        raise ValueError(f"no table behind feature {feature!r}")

    def sampling_probability(self, movie_ids: tf.Tensor) -> tf.Tensor:
        """Train frequency of each movie, for the logQ correction of in-batch negatives."""
        return tf.gather(self.movie_frequency, self.movie_lookup(movie_ids))


def _gather_rows(table: tf.RaggedTensor, rows: tf.Tensor) -> tf.RaggedTensor:
    """``tf.gather(table, rows)`` for a ragged [N, None] table, as one flat gather of the
    rows' value positions: ``RaggedGather`` costs time that grows with the table (10^6
    histories of 10^7 ratings: 1.9 ms for 256 rows, against 0.5 ms this way)."""
    splits = table.row_splits
    positions = tf.ragged.range(tf.gather(splits, rows), tf.gather(splits, rows + 1))
    return tf.RaggedTensor.from_row_splits(tf.gather(table.flat_values, positions.flat_values),
                                           positions.row_splits, validate=False)


def _shares(counts) -> np.ndarray:
    """Train counts per vocabulary entry -> shares per embedding row (row 0, OOV: 0)."""
    counts = np.concatenate([[0.0], np.asarray(counts, np.float64)])
    return counts / max(counts.sum(), 1.0)


def _catalogue_shares(ids: list[str], catalogue: list[str], shares: np.ndarray) -> np.ndarray:
    """Embedding-row shares -> shares per catalogue row (row 0: ids not in the catalogue)."""
    position = pd.Index(catalogue).get_indexer(ids) if len(catalogue) else np.full(len(ids), -1)
    out = np.zeros(len(catalogue) + 1)
    np.add.at(out, position + 1, shares[1:])
    return out


def _bins(rows: np.ndarray, weight: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``weight[i]`` over the entries i whose table row is ``rows[i]``, per row."""
    return np.bincount(np.asarray(rows), weights=weight, minlength=size)[:size]


def _ragged_bins(table: tf.RaggedTensor, weight: np.ndarray, size: int) -> np.ndarray:
    """``_bins`` for a ragged [catalogue rows, None] table of ids, each bag weighted."""
    lengths = table.row_lengths().numpy()
    return _bins(table.flat_values.numpy(), np.repeat(weight, lengths), size)
