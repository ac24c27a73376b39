"""The second stage: a listwise re-ranker that learns what a user watches next.

The served ``recommender`` retrieves ``K`` candidates and orders them by this model's score.
It reads, per candidate, what the two towers cannot express on their own, each normalised
within the user's list (z-scores), so that values computed by the fold models it learned on
and by the full-train models it serves with are on one scale:

  retrieval   the candidate's retrieval score (z-scored) and its rank in the list
  item-item   the EASE score of the candidate given the user's history (closed form, fitted
              on the ranker's own training fold; at export on all of train), z-scored
  popularity  log(1 + train ratings) of the candidate, z-scored
  recent      log(1 + the candidate's train ratings within ``recent_window_days`` of the
              user's median train rating time), z-scored: what was watched when this user was
              (an unknown user is at the end of train: what is watched now). ``Recent`` holds
              the tables, frozen with the re-ranker's weights.
  session     an EASE score fitted on what was rated together instead of on users, given the
              user's history, z-scored: what is rated in the same sitting as the user's
              movies, as session-aware linear item-item models do (SLIST, Choi et al. 2021).
              Its rows (``Sittings``) are each user's sittings (ratings with gaps of at most
              ``session_gap_seconds``) and windows of ``session_window`` ratings in a row
              (two offsets: each rating is in two windows).
  rating      the candidate's predicted stars (the rating model's; on the ranker's training
              lists, a rating model trained on fold A), z-scored: what this user would think
              of it, beside whether they would watch it.

These features, the MLP's width, the epochs, the learning rate and the loss were chosen on a
validation split carved from train, never the test split: ``benchmarks/reranker_validation.py``
scores each option one change at a time (its table is in the README, "Quality").

``features`` computes them in TensorFlow, for training and inside the exported graph alike.

Learning without leaks (``fit``): the train split is cut per user into a fold A (75%) and a
fold B (25%). A retrieval model trained on A only retrieves each user's top ``K`` movies not in
A; the movies of B among them are the positives, the rest the hard negatives (what the ranker
sees when serving). EASE and a rating model (``fold_models``) are fitted on A too. The loss
is a softmax over the list with the positives sharing the target mass.

Scale: the recent family stores [users] time bins and a [movies, bins] cumulative count
(bins of ``RECENT_BIN_DAYS``, widened so that there are at most ``MAX_RECENT_BINS``: ML-20M's
20 years give 58-day bins). EASE inverts a catalogue x catalogue matrix, and the export stores
every known user's EASE scores ([users, catalogue] floats), so the item-item family is used
while the catalogue has at most ``MAX_EASE_MOVIES`` movies and the table at most
``MAX_EASE_CELLS`` cells (ML-100K, ML-1M); beyond, the re-ranker is trained and served
without it (its features are zeros).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies import data as data_lib
from tfrs_movies.config import RERANKER_LOSSES, TrainConfig

FEATURES = ("retrieval_z", "rank", "ease_z", "popularity_z", "recent_z", "session_z",
            "stars_z")
# Feature families (``ReRankerConfig.without`` leaves some out: the ablations of benchmarks.quality)
FAMILIES = {"retrieval": ("retrieval_z", "rank"), "item-item": ("ease_z",),
            "popularity": ("popularity_z",), "recent": ("recent_z",),
            "session": ("session_z",), "rating": ("stars_z",)}
MAX_EASE_MOVIES = 10_000
MAX_EASE_CELLS = 50_000_000
RECENT_BIN_DAYS = 7
MAX_RECENT_BINS = 128
_NEG = float("-inf")


@dataclasses.dataclass(frozen=True)
class ReRankerConfig:
    """How the re-ranker is trained. The head's defaults are ``TrainConfig``'s ``reranker_*``
    fields (what ``train`` uses and ``trainer tune --model reranker`` searches; ``from_train``).

    Attributes:
      candidates: list length K it learns on (the export's ``k``).
      fold_fraction: share of each user's train ratings held out as fold B (the positives).
      ease_lambda: EASE's L2 weight.
      hidden: the MLP's hidden sizes.
      epochs, batch_size, learning_rate: Adam on lists (batch_size lists per step).
      use_ease: whether the item-item and session families are used (decided from the
        catalogue's size).
      without: ``FAMILIES`` whose features are zeroed, in training and serving alike.
      loss: ``listwise`` (softmax over the list) or ``pairwise`` (logistic loss of every
        positive against every negative of its list).
      recent_window_days: the recent family counts a candidate's ratings this many days
        either side of the user's median rating time (at least one bin either side).
      session_gap_seconds, session_window, session_lambda: the session family's sittings
        (no gap between two ratings longer than this), windows (this many consecutive
        ratings of a user; 0: none) and L2 weight (``Sittings``).
    """

    candidates: int = 100
    fold_fraction: float = 0.25
    ease_lambda: float = 500.0
    hidden: tuple[int, ...] = TrainConfig.reranker_hidden
    epochs: int = TrainConfig.reranker_epochs
    batch_size: int = 32
    learning_rate: float = TrainConfig.reranker_learning_rate
    use_ease: bool = True
    without: tuple[str, ...] = ()
    loss: str = TrainConfig.reranker_loss
    recent_window_days: int = 14
    session_gap_seconds: int = 60
    session_window: int = 10
    session_lambda: float = 100.0

    def __post_init__(self):
        unknown = sorted(set(self.without) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown feature families {unknown}; known: {sorted(FAMILIES)}")
        if self.loss not in RERANKER_LOSSES:
            raise ValueError(f"loss must be one of {RERANKER_LOSSES}, got {self.loss!r}")
        if self.recent_window_days < 0:
            raise ValueError(f"recent_window_days must be >= 0, got {self.recent_window_days}")
        if self.session_gap_seconds < 0 or self.session_window < 0 or not self.session_lambda > 0:
            raise ValueError(f"need session_gap_seconds >= 0, session_window >= 0 and "
                             f"session_lambda > 0, got {self.session_gap_seconds}, "
                             f"{self.session_window} and {self.session_lambda}")

    @classmethod
    def from_train(cls, train_config: TrainConfig, **fields) -> "ReRankerConfig":
        """The re-ranker ``train_config`` asks for (its ``reranker_*`` fields), plus ``fields``."""
        return cls(hidden=tuple(train_config.reranker_hidden), epochs=train_config.reranker_epochs,
                   learning_rate=train_config.reranker_learning_rate,
                   loss=train_config.reranker_loss, **fields)

    @property
    def mask(self) -> np.ndarray:
        """[F] 1.0 for each used feature of ``FEATURES``, 0.0 for those of ``without``."""
        off = {name for family in self.without for name in FAMILIES[family]}
        return np.asarray([name not in off for name in FEATURES], np.float32)


def ease_fits(users: int, movies: int) -> bool:
    return movies <= MAX_EASE_MOVIES and users * movies <= MAX_EASE_CELLS


def _interactions(ratings: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
    """[len(user_ids), len(movie_ids)] float64 0/1: which movie each user rated (ids absent
    from ``ratings`` get zero rows, movies absent from ``movie_ids`` are left out)."""
    row_of = pd.Series(np.arange(len(user_ids)), index=user_ids)
    movies = pd.Series(np.arange(len(movie_ids)), index=movie_ids)
    r, c = ratings["user_id"].map(row_of), ratings["movie_id"].map(movies)
    keep = r.notna() & c.notna()
    x = np.zeros((len(user_ids), len(movie_ids)), np.float64)
    x[r[keep].to_numpy(np.int64), c[keep].to_numpy(np.int64)] = 1.0
    return x


def _ease_weights(x: np.ndarray, lam: float) -> np.ndarray:
    """EASE's item-item weights ``B`` [N, N] (zero diagonal) from the 0/1 rows ``x`` [R, N]."""
    return _ease_from_gram(x.T @ x, lam)


def _ease_from_gram(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE's weights from the rows' Gram matrix ``X^T X`` [N, N]."""
    p = np.linalg.inv(gram + lam * np.eye(gram.shape[0]))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b


def ease_scores(ratings: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray,
                lam: float) -> np.ndarray:
    """EASE (Steck 2019) user x movie scores ``X B`` [U, N], float32 (computed in float64),
    for the rows ``user_ids`` and columns ``movie_ids`` (ids absent from ``ratings`` get zero
    rows). The quality benchmark's EASE baseline is this function too."""
    x = _interactions(ratings, user_ids, movie_ids)
    return (x @ _ease_weights(x, lam)).astype(np.float32)


def session_scores(ratings: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray,
                   sittings: "Sittings", lam: float) -> np.ndarray:
    """The session family's [U, N] float32 scores: each user's ``ratings`` (their history)
    times EASE weights fitted on ``sittings``' rows instead of users' (ids absent from
    ``ratings`` get zero rows)."""
    from scipy import sparse

    columns = pd.Series(np.arange(len(movie_ids)), index=movie_ids).reindex(
        sittings.movie_ids).to_numpy()
    known = ~np.isnan(columns)
    rows = sparse.csr_matrix(
        (np.ones(int(known.sum())), (sittings.sittings[known], columns[known].astype(np.int64))),
        shape=(int(sittings.sittings.max(initial=-1)) + 1, len(movie_ids)))
    rows.data[:] = 1.0  # a movie twice in one row counts once
    b = _ease_from_gram((rows.T @ rows).toarray(), lam)
    return (_interactions(ratings, user_ids, movie_ids) @ b).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Sittings:
    """What was rated together, the session family's rows: ``movie_ids[i]`` is in row
    ``sittings[i]``. Rows are each user's sittings (their ratings in time order while no gap
    between two is longer than ``gap_seconds``), then, with ``window`` > 0, each user's
    windows of ``window`` consecutive ratings, cut at two offsets (0 and ``window // 2``) so
    that every rating is in two windows and every pair of neighbours shares one."""

    movie_ids: np.ndarray
    sittings: np.ndarray

    @classmethod
    def build(cls, ratings: pd.DataFrame, gap_seconds: int, window: int = 0) -> "Sittings":
        ordered = ratings.sort_values(["user_id", "timestamp"], kind="stable")
        by_user = ordered.groupby("user_id", sort=False)
        gap = by_user["timestamp"].diff()
        starts = (gap.isna() | (gap > gap_seconds)).to_numpy()
        movies = ordered["movie_id"].to_numpy(str)
        groups = [np.cumsum(starts).astype(np.int64) - 1]
        if window > 0 and len(ordered):
            user = pd.factorize(ordered["user_id"])[0].astype(np.int64)
            position = by_user.cumcount().to_numpy(np.int64)
            for offset in sorted({0, window // 2}):
                # Row keys (user, window index); numbered after the rows before them.
                key = user * (len(ordered) // window + 2) + (position + offset) // window
                groups.append(int(groups[-1].max()) + 1 + pd.factorize(key)[0])
        return cls(np.tile(movies, len(groups)), np.concatenate(groups))

    def save(self, path: Path) -> None:
        np.savez(path, movie_ids=self.movie_ids, sittings=self.sittings)

    @classmethod
    def load(cls, path: Path) -> "Sittings":
        with np.load(path) as f:
            return cls(f["movie_ids"], f["sittings"])


@dataclasses.dataclass(frozen=True)
class Recent:
    """When movies were rated and when each user rates, for the recent family.

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
        movies = pd.Series(np.arange(len(self.movie_ids)), index=self.movie_ids)
        bins = users.reindex(np.asarray(user_ids, str)).fillna(last).to_numpy(np.int32)
        rows = movies.reindex(np.asarray(movie_ids, str)).to_numpy()
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


def _zscore(values: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """[B, K] -> z-scores within each row over its ``valid`` slots (0 elsewhere)."""
    weight = tf.cast(valid, tf.float32)
    count = tf.maximum(tf.reduce_sum(weight, axis=1, keepdims=True), 1.0)
    values = tf.where(valid, values, 0.0)
    mean = tf.reduce_sum(values * weight, axis=1, keepdims=True) / count
    var = tf.reduce_sum(tf.square(values - mean) * weight, axis=1, keepdims=True) / count
    return tf.where(valid, (values - mean) / (tf.sqrt(var) + 1e-6), 0.0)


def features(scores: tf.Tensor, ease: tf.Tensor, popularity: tf.Tensor,
             recent: tf.Tensor, session: tf.Tensor, stars: tf.Tensor) -> tf.Tensor:
    """The re-ranker's input [B, K, F] (``FEATURES``) of one list per user.

    Args:
      scores: [B, K] retrieval scores, best first; -inf marks an empty slot.
      ease: [B, K] EASE scores of the candidates (zeros without the item-item family).
      popularity: [B, K] train ratings of the candidates.
      recent: [B, K] the candidates' ratings around the user's time (``recent_counts``).
      session: [B, K] the candidates' session scores (``session_scores``; zeros without the
        family).
      stars: [B, K] the candidates' predicted ratings (zeros without a rating model).
    """
    valid = scores > _NEG
    k = tf.shape(scores)[1]
    rank = tf.math.log1p(tf.cast(tf.range(k), tf.float32)) / tf.math.log1p(
        tf.cast(k, tf.float32))
    rank = tf.broadcast_to(rank[None, :], tf.shape(scores))
    parts = [_zscore(scores, valid), rank, _zscore(ease, valid),
             _zscore(tf.math.log1p(tf.cast(popularity, tf.float32)), valid),
             _zscore(tf.math.log1p(tf.cast(recent, tf.float32)), valid),
             _zscore(session, valid), _zscore(stars, valid)]
    return tf.stack(parts, axis=-1)


class ReRanker(tf.keras.Model):
    """[B, K, F] features -> [B, K] scores (higher first); an MLP per candidate. ``recent``
    and ``sittings`` are the ``Recent`` and ``Sittings`` of the data it serves (set by
    ``fit``, saved with the weights)."""

    recent: Recent | None = None
    sittings: Sittings | None = None

    def __init__(self, config: ReRankerConfig, **kwargs):
        super().__init__(**kwargs)
        self.config_ = config
        self.mask = tf.constant(config.mask)
        self.hidden = [tf.keras.layers.Dense(u, activation="relu") for u in config.hidden]
        self.out = tf.keras.layers.Dense(1)

    def call(self, x, training=False):
        x = x * self.mask
        for layer in self.hidden:
            x = layer(x)
        return self.out(x)[..., 0]


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


def weights_path(run_dir: Path) -> Path:
    return Path(run_dir) / "models" / "reranker" / "weights"


def save(model: ReRanker, run_dir: Path) -> None:
    path = weights_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "config.json").write_text(json.dumps(dataclasses.asdict(model.config_)))
    model.recent.save(path.parent / "recent.npz")
    model.sittings.save(path.parent / "sittings.npz")
    model.save_weights(str(path))


def load(run_dir: Path) -> ReRanker | None:
    """The run's re-ranker, or None when it has none."""
    path = weights_path(run_dir)
    if not Path(f"{path}.index").exists():
        return None
    values = json.loads((path.parent / "config.json").read_text())
    config = ReRankerConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in values.items()})
    model = build(config)
    model.load_weights(str(path)).expect_partial()
    model.recent = Recent.load(path.parent / "recent.npz")
    model.sittings = Sittings.load(path.parent / "sittings.npz")
    return model


def build(config: ReRankerConfig) -> ReRanker:
    model = ReRanker(config, name="reranker")
    model(tf.zeros([1, 1, len(FEATURES)]))
    return model


def _top_unseen(query: np.ndarray, candidates: np.ndarray, seen: np.ndarray, k: int,
                cells: int = 50_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Per user row, the k best catalogue positions by dot product and their scores, the
    ``seen`` keys (``row * N + position``) excluded; about ``cells`` scores in memory at once."""
    n = len(candidates)
    chunk = max(1, cells // n)
    tops, scores = [], []
    for start in range(0, len(query), chunk):
        block = query[start:start + chunk] @ candidates.T
        keys = seen[(seen >= start * n) & (seen < (start + len(block)) * n)] - start * n
        block.flat[keys] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < n else np.tile(
            np.arange(n), (len(block), 1))
        order = np.argsort(-np.take_along_axis(block, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        tops.append(top)
        scores.append(np.take_along_axis(block, top, axis=1))
    return np.concatenate(tops), np.concatenate(scores)


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


def fit(train: pd.DataFrame, movies: pd.DataFrame, users: pd.DataFrame, fold_in: pd.DataFrame,
        model_config, train_config, config: ReRankerConfig, seed: int) -> ReRanker | None:
    """Trains the re-ranker on lists from a retrieval model that never saw their targets;
    None when no list holds a positive (too little data: the recommender then orders by
    predicted rating)."""
    start = time.perf_counter()
    found = lists(train, movies, users, fold_in, model_config, train_config, config, seed)
    if found is None:
        return None
    model = train_on(found, config, seed)
    served = pd.concat([train, fold_in])
    model.recent = Recent.build(served, config.recent_window_days)
    # Only the session family reads them: none beyond EASE's catalogue limits (ML-20M).
    model.sittings = Sittings.build(served if config.use_ease else served.iloc[:0],
                                    config.session_gap_seconds, config.session_window)
    print(f"[reranker] trained in {time.perf_counter() - start:.1f}s", flush=True)
    return model


def train_on(found: Lists, config: ReRankerConfig, seed: int) -> ReRanker:
    """A re-ranker fitted to ``found`` (Adam, ``config``'s loss)."""
    tf.keras.utils.set_random_seed(seed)
    model = build(config)
    loss = listwise_loss if config.loss == "listwise" else pairwise_loss
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate), loss=loss)
    model.fit(found.features, found.labels, batch_size=config.batch_size, epochs=config.epochs,
              verbose=0)
    return model


def fold_models(ratings: pd.DataFrame, movies: pd.DataFrame, users: pd.DataFrame,
                fold_in: pd.DataFrame, model_config, train_config):
    """(retrieval model, rating model, their vocabulary), both trained (``train_config``'s
    settings) on ``ratings`` only: what gives a list its candidates and their stars."""
    from tfrs_movies.features import FeatureSpace, Vocabulary
    from tfrs_movies.training import fit_model

    vocab = Vocabulary.build(ratings, movies, users, fold_in)
    space = FeatureSpace(vocab, max_history=model_config.max_history)
    retrieval, _ = fit_model("retrieval", space, model_config, train_config, ratings)
    rating, _ = fit_model("ranking", space, model_config, train_config, ratings)
    return retrieval, rating, vocab


def lists(train: pd.DataFrame, movies: pd.DataFrame, users: pd.DataFrame, fold_in: pd.DataFrame,
          model_config, train_config, config: ReRankerConfig, seed: int) -> Lists | None:
    """The training lists (see the module docstring): the rows with a positive, or None when
    none has one."""
    fold_a, fold_b = data_lib.carve_validation(train, config.fold_fraction, seed)
    print(f"[reranker] training a retrieval and a rating model on fold A ({len(fold_a):,} "
          f"ratings; the {len(fold_b):,} of fold B are its targets)", flush=True)
    retrieval, rating, vocab = fold_models(fold_a, movies, users, fold_in, model_config,
                                           train_config)
    user_ids = np.asarray(sorted(set(train["user_id"])), dtype=str)
    found = candidate_lists(retrieval, fold_a, fold_b, user_ids,
                            np.asarray(vocab.catalog_movies, dtype=str), config, rating)
    keep = found.labels.sum(axis=1) > 0
    k = found.labels.shape[1]
    if not keep.any():
        print(f"[reranker] no user's top {k} holds one of their fold B movies: no re-ranker "
              f"(the recommender orders by predicted rating)", flush=True)
        return None
    targets = sum(len(t) for t in found.targets)
    print(f"[reranker] {int(keep.sum()):,} lists of {k}, {found.labels[keep].sum(1).mean():.1f} "
          f"positives each (fold B recall@{k} {found.labels.sum() / max(targets, 1):.3f})",
          flush=True)
    return found.rows(keep)


def validation_lists(fit: pd.DataFrame, validation: pd.DataFrame, movies: pd.DataFrame,
                     users: pd.DataFrame, fold_in: pd.DataFrame, model_config, train_config,
                     config: ReRankerConfig, seed: int) -> tuple[Lists, Lists] | None:
    """(lists to learn on, lists to score on) for choosing re-ranker settings without the test
    split: a train split cut per user into ``fit`` and ``validation``. The first are what
    ``train`` builds from train (``lists`` on ``fit``: a retriever on its fold A, fold B the
    positives); the second are the validation users' lists of a retriever trained on all of
    ``fit``, with EASE and popularity from ``fit`` and ``validation``'s movies as the labels
    (what the export does with train). None when no learning list holds a positive."""
    learn = lists(fit, movies, users, fold_in, model_config, train_config, config, seed)
    if learn is None:
        return None
    retrieval, rating, vocab = fold_models(fit, movies, users, fold_in, model_config,
                                           train_config)
    user_ids = np.asarray(sorted(set(fit["user_id"])), dtype=str)
    scored = candidate_lists(retrieval, fit, validation, user_ids,
                             np.asarray(vocab.catalog_movies, dtype=str), config, rating)
    return learn, scored.rows(np.asarray([len(t) > 0 for t in scored.targets], bool))


def top_n(found: Lists, scores: np.ndarray, k: int) -> dict[str, float]:
    """Top-``k`` metrics (``metrics.ranking_metrics``) of ``found``'s lists sorted by
    ``scores`` [L, K] (higher first), against every target of each list's user."""
    from tfrs_movies import metrics

    order = np.argsort(-scores, axis=1, kind="stable")
    return metrics.ranking_metrics(np.take_along_axis(found.positions, order, axis=1),
                                   found.targets, k)


def candidate_lists(retrieval, known: pd.DataFrame, held_out: pd.DataFrame,
                    user_ids: np.ndarray, movie_ids: np.ndarray, config: ReRankerConfig,
                    rating=None) -> Lists:
    """Each of ``user_ids``' top ``config.candidates`` of ``retrieval`` among ``movie_ids``,
    the movies of ``known`` excluded, with the features the export computes (EASE and
    popularity from ``known``, stars from ``rating``: zeros without one) and ``held_out``'s
    movies as the labels."""
    from tfrs_movies.evaluation import embed, predict_ratings

    user_pos = pd.Series(np.arange(len(user_ids)), index=user_ids)
    movie_pos = pd.Series(np.arange(len(movie_ids)), index=movie_ids)
    n = len(movie_ids)

    def keys(frame):  # (user row, catalogue position)
        frame = frame[frame["movie_id"].isin(movie_pos.index)
                      & frame["user_id"].isin(user_pos.index)]
        rows = frame["user_id"].map(user_pos).to_numpy(np.int64)
        return rows, frame["movie_id"].map(movie_pos).to_numpy(np.int64)

    seen_rows, seen_cols = keys(known)
    k = min(config.candidates, n)
    top, scores = _top_unseen(embed(retrieval.user_embedding, user_ids),
                              embed(retrieval.movie_embedding, movie_ids),
                              seen_rows * n + seen_cols, k)
    ease = (np.take_along_axis(ease_scores(known, user_ids, movie_ids, config.ease_lambda),
                               top, axis=1) if config.use_ease else np.zeros_like(scores))
    session = (np.take_along_axis(session_scores(
        known, user_ids, movie_ids,
        Sittings.build(known, config.session_gap_seconds, config.session_window),
        config.session_lambda), top, axis=1) if config.use_ease else np.zeros_like(scores))
    popularity = np.bincount(seen_cols, minlength=n)[top]
    stars = np.zeros_like(scores) if rating is None else predict_ratings(rating, pd.DataFrame(
        {"user_id": np.repeat(user_ids, k), "movie_id": movie_ids[top.ravel()]})).reshape(top.shape)
    recent = Recent.build(known, config.recent_window_days)
    bins, cumulative = recent.tables(user_ids, movie_ids)
    recent = recent_counts(tf.constant(bins), tf.constant(cumulative), tf.constant(top),
                           recent.window)
    b_rows, b_cols = keys(held_out)
    candidate_keys = np.arange(len(user_ids))[:, None] * n + top
    labels = np.isin(candidate_keys, b_rows * n + b_cols).astype(np.float32)
    by_user = pd.Series(b_cols).groupby(b_rows).agg(lambda c: np.unique(c.to_numpy()))
    targets = [by_user.get(row, np.zeros(0, np.int64)) for row in range(len(user_ids))]
    x = features(tf.constant(scores), tf.constant(ease), tf.constant(popularity), recent,
                 tf.constant(session), tf.constant(stars)).numpy()
    return Lists(x, labels, top, targets)
