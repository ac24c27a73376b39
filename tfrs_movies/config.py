"""Frozen configuration dataclasses; every job saves the exact config it ran with as JSON.

Config flows down as arguments, never through globals. ``to_dict``/``from_dict`` round-trip
through JSON (tuples become lists and back), and unknown keys are an error naming the key.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

from tfrs_movies import kinds
from tfrs_movies.errors import UserError
from tfrs_movies.tf_serving_config import check_label

DATASETS = ("movielens/100k", "movielens/1m", "movielens/10m", "movielens/20m", "movielens/25m",
            "movielens/latest-small", "csv", "synthetic")
SPLITS = ("random", "user", "temporal", "leave-last", "strong")
STRATEGIES = ("default", "mirrored", "multi-worker", "parameter-server")
# ``TrainConfig.optimizer``; ``auto`` is resolved by ``training.optimizer_for``.
OPTIMIZERS = ("auto", "lazy-adam", "adam")
# ``auto`` keeps plain Adam up to this many users + movies (ML-1M has about 10^4): there a
# whole-table update costs little next to the step, and on ML-100K validation it scored a
# little better than LazyAdam (docs/tuning.md).
AUTO_DENSE_ROWS = 50_000
# ``TrainConfig.reranker_loss``: the served re-ranker's loss over a list (``tfrs_movies.reranker``).
RERANKER_LOSSES = ("listwise", "pairwise")
# ``TrainConfig.reranker_folds``: how the re-ranker's lists cut train (``auto``: ``latest`` when
# the run's test follows its train in time for every user, else ``random``).
RERANKER_FOLDS = ("auto", "random", "latest")
MODELS = kinds.CHOICES  # every model kind (``tfrs_movies.kinds``) and ``all``


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the interactions come from and how they are split.

    Attributes:
      dataset: one of ``DATASETS``.
      data_dir: raw extracted MovieLens folder (defaults to env ``TFRS_MOVIES_DATA_DIR``); when
        unset, ``movielens/*`` datasets are read through TFDS.
      tfds_manual_dir: folder holding the official MovieLens zip, for TFDS offline builds.
      tfds_data_dir: where TFDS keeps its prepared datasets (TFDS default when unset).
      ratings, movies, users: CSV or Parquet files for ``dataset="csv"``.
      test_ratings: explicit test interactions (same format as ``ratings``); replaces the split.
      synthetic_users, synthetic_movies, synthetic_ratings: sizes for ``dataset="synthetic"``.
      min_movie_ratings: drop movies with fewer ratings than this (before splitting).
      rating_scale: ``(low, high)``: every rating must lie in it (inclusive); None: a rating
        far above the scale the rest of its file uses is an error (``data.tabular`` doc).
      split: one of ``SPLITS``.
      test_fraction: share of ratings (random/user/temporal) or of users (strong) held out.
      leave_last: ratings per user held out by ``leave-last``.
      fold_in_fraction: share of a held-out user's history given to the model by ``strong``.
      seed: seeds the synthetic generator and every split.
    """

    dataset: str = "movielens/100k"
    data_dir: str | None = None
    tfds_manual_dir: str | None = None
    tfds_data_dir: str | None = None
    ratings: str | None = None
    movies: str | None = None
    users: str | None = None
    test_ratings: str | None = None
    synthetic_users: int = 1000
    synthetic_movies: int = 500
    synthetic_ratings: int = 20_000
    min_movie_ratings: int = 0
    rating_scale: tuple[float, float] | None = None
    split: str = "random"
    test_fraction: float = 0.2
    leave_last: int = 1
    fold_in_fraction: float = 0.5
    seed: int = 42

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise UserError(
                f"unknown dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}")
        if self.split not in SPLITS:
            raise UserError(f"unknown split {self.split!r}: choose one of {', '.join(SPLITS)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.fold_in_fraction < 1.0:
            raise UserError(f"fold_in_fraction must be in [0, 1), got {self.fold_in_fraction}")
        if self.dataset == "csv" and not self.ratings:
            raise UserError("dataset 'csv' needs a ratings file (--ratings FILE)")
        if self.rating_scale is not None and not (
                len(self.rating_scale) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(v) for v in self.rating_scale)
                and self.rating_scale[0] < self.rating_scale[1]):
            raise UserError(f"rating_scale must be two finite numbers LOW < HIGH, got "
                            f"{self.rating_scale!r}")
        for name in ("synthetic_users", "synthetic_movies", "synthetic_ratings", "leave_last"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")

    def resolved_data_dir(self) -> str | None:
        """``data_dir``, else env ``TFRS_MOVIES_DATA_DIR`` for MovieLens datasets, else None."""
        if self.data_dir:
            return self.data_dir
        if self.dataset.startswith("movielens/"):
            return os.environ.get("TFRS_MOVIES_DATA_DIR") or None
        return None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Tower and model shapes, shared by retrieval, ranking and multitask models.

    The defaults (with TrainConfig's learning rate and schedule) come from KerasTuner searches
    on ML-100K validation splits (``python -m trainer tune``; docs/tuning.md).

    Attributes:
      embedding_dim: width of every id/feature embedding and of the tower outputs.
      tower_layers: hidden Dense sizes on top of each tower's concatenated features; the
        last projection to ``embedding_dim`` is always added.
      use_features: feed demographics, genres, title tokens and years when the data has them.
      use_history: feed the user's train history (bag of rated movies) into the user tower.
      use_user_id: give the user tower a per-user id embedding (without it, a user is their
        history and demographics, which generalizes to users unseen in training).
      max_history: longest history used per user (most recent kept); also the longest
        history a ``with_history`` request brings that the export reads.
      new_user_rate: share of training examples whose user tower sees the user as a new one
        (the unknown id's row, no demographics, only the history), and of the re-ranker's lists
        built as a new user's ``with_history`` request, so that an id the model has never seen,
        answered from the history its request brings, gets a trained embedding; 0: never.
        0.3 (best of 0 / 0.3 / 0.5 on the new-users protocol's validation seed) raises new
        users' nDCG@10 by 0.008, lowers known users' by 0.002 and raises the rating RMSE by
        0.005 (docs/quality.md): off by default, so known users keep their figures.
      new_user_weight: weight of a second retrieval loss, on every example, of a second
        head of the user tower that reads the history alone: the query of an id the model
        has never seen (``with_history``), which then shares no head with the known users'
        (the retrieval and multitask models'; needs ``use_history``); 0: none, unseen ids get
        the tower's one head. 0.5 was chosen on the new-users protocol's validation seed
        (a linear head scored 0.6361 / 0.6380 / 0.6388 / 0.6390 / 0.6270 at 0.1 / 0.3 / 0.5 /
        1 / 3, none 0.6355; docs/quality.md): new users +0.002 on the test seeds, known
        users within noise, a retrieval step 0.89x as fast.
      new_user_layers: hidden ReLU sizes of that head, on the history's mean and its
        recency-weighted mean ((64,): 0.6427-0.6472 on that seed, a linear head 0.6407).
      dropout: dropout rate inside the towers and the ranking MLP.
      l2: L2 weight on the embedding tables, applied to the rows each batch looks up
        (weighted so that its expectation is ``l2 * sum ||W||^2``: ``towers``); None: the
        model kind's own default
        (``default_l2`` of its class: 1.5e-3 for retrieval, 5e-4 for ranking and
        multitask; 0 for the seed-report models, which that weight flattens).
      gravity: weight of the gravity regularizer ``sum((U^T U) * (V^T V)) / (M N)`` on the
        user and movie id embedding tables (pushes unobserved pairs' scores towards 0).
      temperature: softmax temperature of the retrieval task.
      logq_correction: subtract log of the train item frequency from in-batch logits.
      remove_accidental_hits: ignore in-batch negatives that equal the positive.
      num_sampled_negatives: extra uniformly sampled negatives per batch (0 = in-batch only).
      cross_replica_negatives: under a distribution strategy, every replica's softmax uses
        the in-batch candidates of all replicas (gathered), as one process with the global
        batch would; off, each replica uses only its own share of the batch.
      ranking_layers: hidden sizes of the ranking MLP.
      ranking_head: ``regression`` (MSE, output bounded to the rating range) or ``classes``
        (softmax over the rating values, predicted rating is the expectation).
      use_bias: add user and movie bias terms to the ranking output.
      retrieval_weight, ranking_weight: loss weights of the multitask model.
    """

    embedding_dim: int = 32
    tower_layers: tuple[int, ...] = ()
    use_features: bool = True
    use_history: bool = True
    use_user_id: bool = True
    max_history: int = 200
    new_user_rate: float = 0.0
    new_user_weight: float = 0.5
    new_user_layers: tuple[int, ...] = (64,)
    dropout: float = 0.0
    l2: float | None = None
    gravity: float = 0.0
    temperature: float = 0.02
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    num_sampled_negatives: int = 0
    cross_replica_negatives: bool = True
    ranking_layers: tuple[int, ...] = (128, 64)
    ranking_head: str = "regression"
    use_bias: bool = True
    retrieval_weight: float = 1.0
    ranking_weight: float = 1.0

    def __post_init__(self):
        if self.embedding_dim < 1:
            raise UserError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if self.ranking_head not in ("regression", "classes"):
            raise UserError(
                f"ranking_head must be 'regression' or 'classes', got {self.ranking_head!r}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.new_user_rate < 1.0:
            raise UserError(f"new_user_rate must be in [0, 1), got {self.new_user_rate}")
        if self.new_user_weight < 0:
            raise UserError(f"new_user_weight must be >= 0, got {self.new_user_weight}")
        if self.max_history < 1:
            raise UserError(f"max_history must be >= 1, got {self.max_history}")
        if not (self.use_user_id or self.use_history or self.use_features):
            raise UserError("the user tower needs at least one input: keep the user id, the "
                            "history or the features")
        if self.gravity and not self.use_user_id:
            raise UserError("gravity regularizes the user id embeddings: it needs use_user_id")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to fit and evaluate.

    Attributes:
      model: one of ``MODELS``; ``all`` trains retrieval and ranking and keeps both.
      epochs: passes over the train split.
      batch_size: examples per step (also the number of in-batch negatives).
      learning_rate: Adam learning rate (peak, when a schedule is used).
      lr_schedule: ``constant`` or ``cosine`` decay over all steps.
      optimizer: one of ``OPTIMIZERS``: ``lazy-adam`` (a step updates only the embedding rows
        its batch looked up, so its cost follows the batch, not the tables), ``adam`` (every
        row on every step), or ``auto``: ``adam`` while users + movies are at most
        ``AUTO_DENSE_ROWS`` (there it trains as fast and validates better),
        ``lazy-adam`` beyond.
      validation_fraction: share of train carved out per user for early stopping (0 = none).
      early_stopping_patience: epochs without validation improvement before stopping (0 = off).
      eval_k: cut-off for the top-K metrics in ``metrics.json``.
      seed: seeds weight init and shuffling.
      strategy: one of ``STRATEGIES`` (see ``tfrs_movies.distribute``); ``batch_size`` is the
        global batch, split over the replicas.
      verbose: Keras progress output (0 silent, 1 progress bar, 2 one line per epoch).
      reranker_hidden, reranker_epochs, reranker_learning_rate, reranker_loss: the served
        recommender's second stage (``tfrs_movies.reranker``, trained by ``--model all``):
        its MLP's hidden sizes (empty: linear), its epochs over the training lists, its Adam
        learning rate and its loss (one of ``RERANKER_LOSSES``); chosen on validation,
        searched by ``trainer tune --model reranker``.
      reranker_folds: how its lists cut train (``RERANKER_FOLDS``): ``random`` holds out a
        random share of each user's ratings, ``latest`` their latest (what next); ``auto``
        is ``latest`` when the run's test follows its train in time for every user (a
        ``temporal`` or ``leave-last`` split, or such a test file), else ``random``.
    """

    model: str = "all"
    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 9e-3
    lr_schedule: str = "cosine"
    optimizer: str = "auto"
    validation_fraction: float = 0.0
    early_stopping_patience: int = 0
    eval_k: int = 10
    seed: int = 42
    strategy: str = "default"
    verbose: int = 1
    reranker_hidden: tuple[int, ...] = (16, 8)
    reranker_epochs: int = 20
    reranker_learning_rate: float = 3e-3
    reranker_loss: str = "listwise"
    reranker_folds: str = "auto"

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise UserError(
                f"unknown strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if self.model not in MODELS:
            raise UserError(f"unknown model {self.model!r}: choose one of {', '.join(MODELS)}")
        if self.epochs < 1:
            raise UserError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise UserError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UserError(
                f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(
                f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise UserError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if any(units < 1 for units in self.reranker_hidden):
            raise UserError(f"reranker_hidden must be positive layer sizes (none: a linear "
                            f"re-ranker), got {list(self.reranker_hidden)}")
        if self.reranker_epochs < 1:
            raise UserError(f"reranker_epochs must be >= 1, got {self.reranker_epochs}")
        if not self.reranker_learning_rate > 0:
            raise UserError(
                f"reranker_learning_rate must be > 0, got {self.reranker_learning_rate}")
        if self.reranker_folds not in RERANKER_FOLDS:
            raise UserError(f"unknown reranker_folds {self.reranker_folds!r}: choose one of "
                            f"{', '.join(RERANKER_FOLDS)}")
        if self.reranker_loss not in RERANKER_LOSSES:
            raise UserError(f"unknown reranker_loss {self.reranker_loss!r}: choose one of "
                            f"{', '.join(RERANKER_LOSSES)}")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What ``export`` writes.

    Attributes:
      index: ``brute-force`` (exact, GPU-friendly) or ``scann`` (approximate, CPU).
      k: candidates retrieved (retrieval output width and recommender's candidate pool).
      n: recommendations the recommender returns after ranking.
      exclude_seen: retrieval and recommender never return movies the user rated in the
        run's train data (frozen at export), besides the ids the client excludes.
      version: version directory number (next free number when None).
      serving_root: where the export dir is mounted inside the TF Serving container.
      label: version label (``stable``, ``canary``, ...: lower-case letters, digits, ``_``,
        ``-``, starting with a letter) recorded for the written version in models.config;
        see ``tfrs_movies.tf_serving_config`` for how TF Serving takes it.
      partial: write the models the run supports even when some of the four cannot be
        (e.g. a run without a rating model has no recommender); otherwise that is an error.
    """

    index: str = "brute-force"
    k: int = 100
    n: int = 10
    exclude_seen: bool = True
    version: int | None = None
    serving_root: str = "/models"
    label: str | None = None
    partial: bool = False

    def __post_init__(self):
        if self.label is not None:
            check_label(self.label)
        if self.index not in ("brute-force", "scann"):
            raise UserError(f"unknown index {self.index!r}: choose 'brute-force' or 'scann'")
        if self.k < 1 or self.n < 1 or self.n > self.k:
            raise UserError(f"need 1 <= n <= k, got k={self.k} n={self.n}")
        if self.version is not None and (isinstance(self.version, bool) or self.version < 1):
            raise UserError(f"--version must be a positive integer (TF Serving loads numbered "
                            f"version folders 1, 2, ...), got {self.version}")


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls, values: dict[str, Any], source: str = "config"):
    """Builds ``cls`` from a dict, turning lists back into tuples; unknown keys are an error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"{source}: unknown {cls.__name__} key(s) {', '.join(unknown)}; "
                        f"known: {', '.join(fields)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**kwargs)


def check_types(cls, values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` (field name -> JSON value) checked against the field types of ``cls``;
    returns them with lists turned into tuples. A value of the wrong type (``"big"`` for an
    int, ``null`` for a float, a non-finite number) raises UserError naming ``source``, the
    key and the value. Ranges are ``cls``'s own ``__post_init__`` checks."""
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in values.items():
        kind = hints[key]
        if not _fits(kind, value):
            raise UserError(f"{source}: {key} = {json.dumps(value)} is not {_describe(kind)}")
        checked[key] = tuple(value) if isinstance(value, list) else value
    return checked


def _fits(kind, value) -> bool:
    if kind is type(None):
        return value is None
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return any(_fits(k, value) for k in typing.get_args(kind))
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return isinstance(value, (list, tuple)) and all(_fits(item, v) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind is str:
        return isinstance(value, str)
    return True


def _describe(kind) -> str:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return " or ".join("null" if k is type(None) else _describe(k)
                           for k in typing.get_args(kind))
    if typing.get_origin(kind) is tuple:
        return f"a list of {_describe(typing.get_args(kind)[0]).split(' ', 1)[1]}s"
    return {bool: "true or false", int: "an integer", float: "a finite number",
            str: "a string"}.get(kind, getattr(kind, "__name__", str(kind)))


def save_configs(path: str | os.PathLike, **configs) -> None:
    """Writes ``{"data": {...}, "model": {...}, ...}`` to ``path`` (atomically)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({k: to_dict(v) for k, v in configs.items()}, indent=2) + "\n")
    tmp.replace(path)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "export": ExportConfig}
# Fields added with a default that changes what a run is: a saved config without one was
# written before it, by a run trained without it (a run's checkpoint has no new-user head).
_BEFORE_FIELDS = {"model": {"new_user_weight": 0.0}}


def load_configs(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a file written by ``save_configs`` back into dataclasses."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file (is this a run directory?)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    return {k: from_dict(_SECTIONS[k], {**_BEFORE_FIELDS.get(k, {}), **v}, source=str(path))
            for k, v in raw.items() if k in _SECTIONS}
