"""Train/test splits of the ratings table; all seeded, deterministic, and saved in the run dir.

Every part of a ``Split`` is a ratings table (``RATING_COLUMNS``: user_id, movie_id,
user_rating, timestamp) with a fresh RangeIndex and rows in their original order. Strategies
(``DataConfig.split``), with ``f = test_fraction``:
  random      f of all ratings, uniformly.
  user        f of each user's ratings (rounded; each user keeps at least one in train, so
              users with one rating stay whole in train).
  temporal    the latest f of ratings by timestamp: every test rating is at least as late as
              every train rating (ties at the cut are broken by the seed).
  leave-last  each user's last ``leave_last`` ratings by timestamp (ties: file order); users
              with <= leave_last ratings stay whole in train.
  strong      f of the USERS are held out whole; each held-out user's ratings are split at
              random into ``fold_in`` (fold_in_fraction, given to the model at evaluation,
              never trained on) and ``test`` (at least one rating).
``DataConfig.test_ratings`` replaces all of these: test is that file, train the whole dataset
minus any (user, movie) pair of the test file (so ``u.data`` + ``u1.test`` gives ``u1.base``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from tfrs_movies.config import DataConfig
from tfrs_movies.data.schema import RATING_COLUMNS, MovieLensData, conform, empty_frame
from tfrs_movies.data.tabular import read_ratings_file
from tfrs_movies.errors import DataError

log = logging.getLogger(__name__)
SPLIT_PARTS = ("train", "test", "fold_in")


@dataclasses.dataclass
class Split:
    """Rating rows for training, testing and (``strong`` only) folding in held-out users."""

    train: pd.DataFrame
    test: pd.DataFrame
    fold_in: pd.DataFrame = dataclasses.field(default_factory=lambda: empty_frame(RATING_COLUMNS))


def make_split(data: MovieLensData, cfg: DataConfig) -> Split:
    """Splits ``data.ratings`` by ``cfg.split`` (see module doc), seeded by ``cfg.seed``."""
    ratings = data.ratings
    if cfg.test_ratings:
        return _explicit_test(ratings, cfg.test_ratings, cfg.rating_scale)
    if len(ratings) < 2:
        raise DataError(f"{data.name}: {len(ratings)} rating(s) cannot be split into train "
                        "and test")
    rng = np.random.default_rng(cfg.seed)
    user_codes = pd.factorize(ratings["user_id"])[0]
    fold_in = None
    if cfg.split == "random":
        n_test = min(max(1, round(cfg.test_fraction * len(ratings))), len(ratings) - 1)
        test = np.zeros(len(ratings), dtype=bool)
        test[rng.permutation(len(ratings))[:n_test]] = True
    elif cfg.split == "user":
        test = _per_user_pick(user_codes, rng.random(len(ratings)), cfg.test_fraction)
    elif cfg.split == "temporal":
        n_test = min(max(1, round(cfg.test_fraction * len(ratings))), len(ratings) - 1)
        order = np.lexsort((rng.random(len(ratings)), ratings["timestamp"].to_numpy()))
        test = np.zeros(len(ratings), dtype=bool)
        test[order[len(ratings) - n_test:]] = True
        if ratings["timestamp"].nunique() == 1:
            log.warning("%s: all timestamps are equal; the temporal split is a random one",
                        data.name)
    elif cfg.split == "leave-last":
        test = _leave_last(user_codes, ratings["timestamp"].to_numpy(), cfg.leave_last)
    elif cfg.split == "strong":
        test, fold_in = _strong(user_codes, rng, cfg.test_fraction, cfg.fold_in_fraction)
    else:  # DataConfig validates the name; this guards new names added there only
        raise DataError(f"unknown split {cfg.split!r}")
    train_mask = ~test if fold_in is None else ~(test | fold_in)
    if not test.any() or not train_mask.any():
        empty = "test" if not test.any() else "train"
        raise DataError(f"{data.name}: split {cfg.split!r} left {empty} empty "
                        f"({len(ratings)} ratings, {user_codes.max() + 1} users)")
    return Split(train=_rows(ratings, train_mask), test=_rows(ratings, test),
                 fold_in=_rows(ratings, fold_in) if fold_in is not None
                 else empty_frame(RATING_COLUMNS))


def carve_validation(train: pd.DataFrame, fraction: float,
                     seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-user random ``fraction`` of ``train`` as validation (early stopping, tuning).

    Users with one rating stay in train. Never looks at test. ``fraction == 0`` gives an
    empty validation table.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0 or len(train) == 0:
        return train, train.iloc[:0].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    picked = _per_user_pick(pd.factorize(train["user_id"])[0], rng.random(len(train)), fraction)
    return _rows(train, ~picked), _rows(train, picked)


def carve_latest(train: pd.DataFrame, fraction: float,
                 seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's latest ``fraction`` of ``train`` (by timestamp; equal times in a seeded
    order) held out, as ``carve_validation`` holds out a random share: (the rest, held out)."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0 or len(train) == 0:
        return train, train.iloc[:0].reset_index(drop=True)
    noise = np.random.default_rng(seed).random(len(train))
    by_time = np.empty(len(train), dtype=np.int64)  # each row's place in time, ties seeded
    by_time[np.lexsort((noise, train["timestamp"].to_numpy()))] = np.arange(len(train))
    rank, count = _rank_within(pd.factorize(train["user_id"])[0], by_time)
    picked = rank >= count - np.minimum(np.round(fraction * count), count - 1)
    return _rows(train, ~picked), _rows(train, picked)


def follows_in_time(before: pd.DataFrame, after: pd.DataFrame) -> bool:
    """Whether ``after`` comes after ``before`` for every user in both (none of their rows in
    ``after`` is older than one in ``before``), and strictly for at least one (equal times
    everywhere, as ratings without timestamps have, say nothing of order)."""
    first = after.groupby("user_id")["timestamp"].min()
    last = before.groupby("user_id")["timestamp"].max()
    both = first.index.intersection(last.index)
    return bool((first[both] >= last[both]).all()) and bool((first[both] > last[both]).any())


def save_split(split: Split, run_dir) -> Path:
    """Writes ``run_dir/split/{train,test,fold_in}.parquet`` (atomically, file by file)."""
    folder = Path(run_dir) / "split"
    folder.mkdir(parents=True, exist_ok=True)
    for part in SPLIT_PARTS:
        frame = conform(getattr(split, part), RATING_COLUMNS)
        tmp = folder / f".{part}.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, folder / f"{part}.parquet")
    return folder


def load_split(run_dir) -> Split:
    """Reads a split written by ``save_split``; dtypes as in ``RATING_COLUMNS``."""
    folder = Path(run_dir) / "split"
    parts = {}
    for part in SPLIT_PARTS:
        path = folder / f"{part}.parquet"
        if not path.is_file():
            raise DataError(f"{path}: no such file (was the split saved in this run dir?)")
        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises many types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None
        missing = [c for c in RATING_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        parts[part] = conform(frame, RATING_COLUMNS)
    return Split(**parts)


def _rows(ratings: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    return ratings[mask].reset_index(drop=True)


def _rank_within(codes: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row, its 0-based rank by ``key`` among its user's rows, and that user's count."""
    order = np.lexsort((key, codes))
    sorted_codes = codes[order]
    start = np.searchsorted(sorted_codes, sorted_codes, side="left")
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - start
    return rank, np.bincount(codes)[codes]


def _per_user_pick(codes: np.ndarray, noise: np.ndarray, fraction: float) -> np.ndarray:
    """Picks round(fraction * n) of each user's n rows at random, leaving at least one."""
    rank, count = _rank_within(codes, noise)
    quota = np.minimum(np.round(fraction * count), count - 1)
    return rank < quota


def _leave_last(codes: np.ndarray, timestamp: np.ndarray, k: int) -> np.ndarray:
    """Each user's last ``k`` rows by timestamp (ties: later row is later), if n > k."""
    position = np.arange(len(codes))
    order = np.lexsort((position, timestamp, codes))
    rank = np.empty(len(codes), dtype=np.int64)
    sorted_codes = codes[order]
    rank[order] = np.arange(len(codes)) - np.searchsorted(sorted_codes, sorted_codes)
    count = np.bincount(codes)[codes]
    return (count > k) & (rank >= count - k)


def _strong(codes: np.ndarray, rng, test_fraction: float, fold_in_fraction: float):
    """(test, fold_in) masks: held-out users' rows split at random, >= 1 in test each."""
    n_users = int(codes.max()) + 1
    if n_users < 2:
        raise DataError("split 'strong' needs at least 2 users")
    n_held = min(max(1, round(test_fraction * n_users)), n_users - 1)
    held = np.zeros(n_users, dtype=bool)
    held[rng.permutation(n_users)[:n_held]] = True
    fold_in = held[codes] & _per_user_pick(codes, rng.random(len(codes)), fold_in_fraction)
    return held[codes] & ~fold_in, fold_in


def _explicit_test(ratings: pd.DataFrame, path, rating_scale=None) -> Split:
    """Test = the file at ``path``; train = all ratings whose pair is not in it."""
    test = read_ratings_file(path, rating_scale)
    pairs = ["user_id", "movie_id"]
    overlap = pd.MultiIndex.from_frame(ratings[pairs]).isin(
        pd.MultiIndex.from_frame(test[pairs]))
    if overlap.any():
        log.warning("%s: %d test pairs are also in the dataset; left out of train",
                    path, int(overlap.sum()))
    train = _rows(ratings, ~overlap)
    if len(train) == 0:
        raise DataError(f"{path}: every rating of the dataset is in the test file; "
                        "nothing is left to train on")
    unseen = ~test["user_id"].isin(set(train["user_id"])) & ~test["movie_id"].isin(
        set(train["movie_id"]))
    if unseen.any():
        log.debug("%s: %d test ratings have both a user and a movie unseen in train",
                 path, int(unseen.sum()))
    return Split(train=train, test=conform(test, RATING_COLUMNS))


def shared_pairs(ratings: pd.DataFrame, other: pd.DataFrame) -> int:
    """How many rows of ``ratings`` have a (user_id, movie_id) pair that ``other`` also has:
    e.g. test ratings a model was trained on."""
    pairs = ["user_id", "movie_id"]
    if not len(ratings) or not len(other):
        return 0
    return int(pd.MultiIndex.from_frame(ratings[pairs].astype(str)).isin(
        pd.MultiIndex.from_frame(other[pairs].astype(str))).sum())
