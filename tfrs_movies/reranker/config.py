"""The re-ranker's settings and its features' names (TensorFlow-free)."""
from __future__ import annotations

import dataclasses

import numpy as np

from tfrs_movies.config import RERANKER_LOSSES, ExportConfig, TrainConfig

FEATURES = ("retrieval_z", "rank", "ease_z", "popularity_z", "recent_z", "session_z",
            "stars_z", "latest_z")
# What a re-ranker on random folds reads, and those saved before the latest family did (their
# config.json names no features): on random folds, the latest family is a noisier copy of the
# item-item one (docs/quality.md, "The re-ranker on validation").
WITHOUT_LATEST = FEATURES[:7]
# Feature families (``ReRankerConfig.without`` leaves some out: the ablations of benchmarks.quality)
FAMILIES = {"retrieval": ("retrieval_z", "rank"), "item-item": ("ease_z",),
            "popularity": ("popularity_z",), "recent": ("recent_z",),
            "session": ("session_z",), "rating": ("stars_z",), "latest": ("latest_z",)}
# How the train split is cut into the lists' fold A and fold B (``ReRankerConfig.folds``).
FOLDS = ("random", "latest")
# EASE inverts a catalogue x catalogue matrix: past this many movies the item-item, session
# and latest families are fitted on the most-rated ones (``ReRankerConfig.ease_movies``), the
# others scoring 0. The families are used while their [users, catalogue] tables hold at most
# MAX_EASE_CELLS cells (``ease_fits``).
MAX_EASE_MOVIES = 10_000
MAX_EASE_CELLS = 50_000_000


def ease_fits(users: int, movies: int) -> bool:
    """Whether the item-item, session and latest families' [users, movies] tables are kept."""
    return users * movies <= MAX_EASE_CELLS


@dataclasses.dataclass(frozen=True)
class ReRankerConfig:
    """How the re-ranker is trained. The head's settings are ``TrainConfig``'s ``reranker_*``
    fields (what ``train`` uses and ``trainer tune --model reranker`` searches; ``from_train``),
    the list length the export's candidate count (``ExportConfig.k``).

    Attributes:
      candidates: list length K it learns on (the export's ``k``).
      fold_fraction: share of each user's train ratings held out as fold B (the positives).
      folds: which share: ``random`` (at random per user) or ``latest`` (each user's latest
        ratings: the lists then ask "what next", as a run whose test follows its train in
        time does; ``TrainConfig.reranker_folds``).
      ease_lambda, ease_dropout: the item-item fit's L2 weight and dropout p: DLAE with p > 0
        (a movie's L2 weight ``ease_lambda`` plus ``p / (1 - p)`` times its number of
        ratings: Steck 2020, ``item_item``), EASE with 0. The defaults, DLAE at 0.67 and
        300, scored above EASE at 500 on every split of ML-100K's validation seeds
        (docs/quality.md); the latest family reads the same weights, the session family
        stays EASE.
      ease_share: in a list that a history brings (an unseen id's ``with_history`` request,
        a known user's bringing movies the export does not hold, and the training lists of
        the users learned as unseen ids), this share of the K
        candidates (``ease_candidates``) are the history's best item-item movies that
        retrieval did not rank in its best K - that many (``features.with_item_item``); 0:
        retrieval's K alone. Only where the tables keep the item-item weights
        (``history_fits``).
      history_lists: this share of the users (at random) also gives a list as a
        ``with_history`` request of an unseen id bringing their fold A movies would get it
        (the towers' query and stars from the history alone, the recent family at the end of
        the data, ``ease_share`` of item-item candidates); a second model, learned on every
        list (the users' own, then those), orders the lists with item-item candidates
        (``Bundle.new_users``); the first learns on the users' own alone. 0: none (the one
        model orders every list); only with towers that read a history.
      ease_movies: the item-item, session and latest families are fitted on at most this many
        movies (at most ``MAX_EASE_MOVIES``), the most rated (ties: catalogue order); the
        others score 0 in them.
      hidden: the MLP's hidden sizes.
      epochs, batch_size, learning_rate: Adam on lists (batch_size lists per step).
      use_ease: whether the item-item, session and latest families are used (decided from
        the size of their [users, catalogue] tables: ``ease_fits``).
      without: ``FAMILIES`` whose features are zeroed, in training and serving alike.
      loss: ``listwise`` (softmax over the list) or ``pairwise`` (logistic loss of every
        positive against every negative of its list).
      recent_window_days: the recent family counts a candidate's ratings this many days
        either side of the user's median rating time (at least one bin either side).
      session_gap_seconds, session_window, session_lambda: the session family's sittings
        (no gap between two ratings longer than this), windows (this many consecutive
        ratings of a user; 0: none) and L2 weight (``item_item.Sittings``).
      latest_decay: the latest family is EASE's score of the history with each movie weighted
        ``exp(-back / latest_decay)``, ``back`` the number of the user's movies rated after it.
      features: the ``FEATURES`` its model reads; None (the default): all with ``latest``
        folds, ``WITHOUT_LATEST`` with ``random`` ones (``used_features``).
      history_without: ``FAMILIES`` the model that orders the lists a history brings
        (``history_lists``) does not read (``for_history_lists``), so its requests skip
        them. Default: the predicted stars, which scored the same on the new-users and
        fresh protocols without them (docs/quality.md); the served path then runs the rating
        head on the n it returns, not on the K candidates.
    """

    candidates: int = ExportConfig.k
    fold_fraction: float = 0.25
    folds: str = "random"
    ease_lambda: float = 300.0
    ease_dropout: float = 0.67
    ease_share: float = 0.7
    history_lists: float = 1.0
    ease_movies: int = MAX_EASE_MOVIES
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
    latest_decay: float = 10.0
    features: tuple[str, ...] | None = None
    history_without: tuple[str, ...] = ("rating",)

    def __post_init__(self):
        if self.features is not None:
            object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "history_without", tuple(self.history_without))
        unknown = sorted((set(self.without) | set(self.history_without)) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown feature families {unknown}; known: {sorted(FAMILIES)}")
        if not 1 <= self.ease_movies <= MAX_EASE_MOVIES:
            # Beyond, EASE's [M, M] float64 inverse alone outgrows a machine (8 GB at 3x10^4).
            raise ValueError(f"ease_movies must be within 1..{MAX_EASE_MOVIES}, "
                             f"got {self.ease_movies}")
        if not 0 <= self.history_lists <= 1:
            raise ValueError(f"history_lists must be within [0, 1], got {self.history_lists}")
        if not self.ease_lambda > 0 or not 0 <= self.ease_dropout < 1:
            raise ValueError(f"ease_lambda must be > 0 and ease_dropout within [0, 1), got "
                             f"{self.ease_lambda} and {self.ease_dropout}")
        if not 0 <= self.ease_share < 1:
            raise ValueError(f"ease_share must be within [0, 1), got {self.ease_share}")
        if self.folds not in FOLDS:
            raise ValueError(f"folds must be one of {FOLDS}, got {self.folds!r}")
        if not self.latest_decay > 0:
            raise ValueError(f"latest_decay must be > 0, got {self.latest_decay}")
        if self.features is not None and (not self.features
                                          or set(self.features) - set(FEATURES)):
            raise ValueError(f"features must name some of {FEATURES}, got {self.features}")
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
        """The re-ranker ``train_config`` asks for (its ``reranker_*`` fields), plus ``fields``
        (``folds`` there resolves ``reranker_folds="auto"``; else ``auto`` is ``random``)."""
        folds = fields.pop("folds", None) or (
            train_config.reranker_folds if train_config.reranker_folds in FOLDS else "random")
        return cls(hidden=tuple(train_config.reranker_hidden), epochs=train_config.reranker_epochs,
                   learning_rate=train_config.reranker_learning_rate,
                   loss=train_config.reranker_loss, folds=folds, **fields)

    def ease_candidates(self, k: int) -> int:
        """How many of a list of ``k`` candidates are item-item ones (``ease_share``)."""
        return int(round(self.ease_share * k))

    @property
    def used_features(self) -> tuple[str, ...]:
        """The features its model reads: ``features``, or by default every one with
        ``latest`` folds and ``WITHOUT_LATEST`` with ``random`` ones."""
        if self.features is not None:
            return self.features
        return FEATURES if self.folds == "latest" else WITHOUT_LATEST

    def for_history_lists(self) -> "ReRankerConfig":
        """The config of the model that orders the lists a history brings: this one, less the
        features of ``history_without``."""
        off = {name for family in self.history_without for name in FAMILIES[family]}
        kept = tuple(name for name in self.used_features if name not in off)
        if kept == self.used_features:
            return self
        if not kept:
            raise ValueError(f"history_without {self.history_without} leaves the model of "
                             f"history lists no feature of {self.used_features}")
        return dataclasses.replace(self, features=kept)

    @property
    def mask(self) -> np.ndarray:
        """[F] 1.0 for each of ``used_features``, 0.0 for those of ``without``."""
        off = {name for family in self.without for name in FAMILIES[family]}
        return np.asarray([name not in off for name in self.used_features], np.float32)

    @property
    def columns(self) -> list[int]:
        """Where ``used_features`` are in ``FEATURES`` (the columns ``FeatureLookup`` gives)."""
        return [FEATURES.index(name) for name in self.used_features]
