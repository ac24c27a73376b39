"""``load(cfg)``: the one entry point from a ``DataConfig`` to validated ``MovieLensData``.

Dispatch on ``cfg.dataset``:
  ``movielens/<v>``  a raw folder (``cfg.resolved_data_dir()``: --data-dir or env
                     ``TFRS_MOVIES_DATA_DIR``) when set, else TFDS (``tfds_source``);
  ``csv``            ``cfg.ratings`` [+ ``cfg.movies``, ``cfg.users``] (``tabular``);
  ``synthetic``      ``synthetic(cfg.synthetic_users, ..._movies, ..._ratings, cfg.seed)``.
Then ``validate`` (schema, no duplicate pairs, sane ratings, movies/users covering the
ratings) and the ``cfg.min_movie_ratings`` filter. File sources also check each rating against
``cfg.rating_scale`` or, without one, the scale the rest of the file uses, naming the file and
line (``tabular.check_rating_scale``); ``validate`` checks ``cfg.rating_scale`` for every source.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from tfrs_movies.config import DataConfig
from tfrs_movies.data.schema import (MOVIE_COLUMNS, RATING_COLUMNS, USER_COLUMNS,
                                     MovieLensData, conform, first_duplicate)
from tfrs_movies.errors import DataError

log = logging.getLogger(__name__)


def load(cfg: DataConfig) -> MovieLensData:
    """Loads, validates and filters the dataset ``cfg`` names (see module doc)."""
    start = time.perf_counter()
    if cfg.dataset == "synthetic":
        from tfrs_movies.data.synthetic import synthetic
        data = synthetic(cfg.synthetic_users, cfg.synthetic_movies, cfg.synthetic_ratings,
                         cfg.seed)
    elif cfg.dataset == "csv":
        from tfrs_movies.data.tabular import load_tabular
        data = load_tabular(cfg.ratings, cfg.movies, cfg.users, cfg.rating_scale)
    elif cfg.dataset.startswith("movielens/"):
        version = cfg.dataset.split("/", 1)[1]
        data_dir = cfg.resolved_data_dir()
        if data_dir:
            from tfrs_movies.data.movielens import read_movielens_dir
            data = read_movielens_dir(data_dir, version, cfg.rating_scale)
        else:
            from tfrs_movies.data.tfds_source import load_tfds
            data = load_tfds(version, manual_dir=cfg.tfds_manual_dir,
                             data_dir=cfg.tfds_data_dir)
    else:  # DataConfig validates the name; this guards names added there only
        raise DataError(f"unknown dataset {cfg.dataset!r}")
    data = validate(data, cfg.rating_scale)
    if cfg.min_movie_ratings > 0:
        data = filter_min_movie_ratings(data, cfg.min_movie_ratings)
    log.debug("%s: %d ratings, %d users, %d movies (%.1fs)", data.name, len(data.ratings),
             len(data.users), len(data.movies), time.perf_counter() - start)
    return data


def validate(data: MovieLensData,
             rating_scale: tuple[float, float] | None = None) -> MovieLensData:
    """Checks the ratings and completes the tables; returns them in schema dtypes.

    Errors (``DataError`` naming ``data.name``): missing rating columns, no ratings, empty or
    missing ids, non-finite or negative ratings, ratings outside ``rating_scale``, repeated
    (user, movie) pairs, repeated movie or user rows, users with demographics missing some
    rating user. Rated movies without metadata get their id as title and no genres; an id-only
    users table gets the missing ids.
    """
    name = data.name
    missing = [c for c in RATING_COLUMNS if c not in data.ratings.columns]
    if missing:
        raise DataError(f"{name}: ratings lack column(s) {', '.join(missing)}")
    if len(data.ratings) == 0:
        raise DataError(f"{name}: no ratings")
    ratings = conform(data.ratings, RATING_COLUMNS)
    for col in ("user_id", "movie_id"):
        bad = ratings[col].isna().to_numpy() | (ratings[col] == "").to_numpy(dtype=bool)
        if bad.any():
            raise DataError(f"{name}: rating row {int(np.argmax(bad))} has an empty {col}")
    rating = ratings["user_rating"].to_numpy()
    bad = ~np.isfinite(rating) | (rating < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{name}: rating row {i} (user_id {ratings['user_id'][i]!r}, movie_id "
                        f"{ratings['movie_id'][i]!r}) has rating {float(rating[i])!r}; ratings "
                        "must be finite and >= 0")
    if rating_scale is not None:
        low, high = rating_scale
        bad = (rating < low) | (rating > high)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{name}: rating row {i} (user_id {ratings['user_id'][i]!r}, "
                            f"movie_id {ratings['movie_id'][i]!r}) has rating "
                            f"{float(rating[i]):g}, outside the rating scale {low:g},{high:g} "
                            "(--rating-scale)")
    dup = first_duplicate(ratings["user_id"].to_numpy(), ratings["movie_id"].to_numpy())
    if dup is not None:
        i, j = dup
        raise DataError(f"{name}: user_id {ratings['user_id'][j]!r} rated movie_id "
                        f"{ratings['movie_id'][j]!r} twice (rating rows {i} and {j})")
    movies = _complete_movies(name, data.movies, ratings)
    users = _complete_users(name, data.users, ratings)
    return MovieLensData(ratings=ratings, movies=movies, users=users, name=name)


def _unique(name: str, table: pd.DataFrame, col: str, what: str) -> None:
    dup = table[col].duplicated().to_numpy()
    if dup.any():
        raise DataError(f"{name}: {what} table lists {col} {table[col].iloc[int(np.argmax(dup))]!r}"
                        " twice")


def _complete_movies(name: str, movies: pd.DataFrame, ratings: pd.DataFrame) -> pd.DataFrame:
    if "movie_id" not in movies.columns:
        raise DataError(f"{name}: movies table has no movie_id column")
    movies = movies.copy()
    if "movie_title" not in movies.columns:
        movies["movie_title"] = movies["movie_id"]
    if "movie_genres" not in movies.columns:
        movies["movie_genres"] = [[] for _ in range(len(movies))]
    movies = conform(movies, MOVIE_COLUMNS)
    _unique(name, movies, "movie_id", "movies")
    extra = pd.unique(ratings["movie_id"][~ratings["movie_id"].isin(movies["movie_id"])])
    if len(extra):
        log.debug("%s: %d rated movies have no metadata; titled by their id", name, len(extra))
        movies = pd.concat([movies, conform({"movie_id": extra, "movie_title": extra,
                                             "movie_genres": [[] for _ in extra]},
                                            MOVIE_COLUMNS)], ignore_index=True)
    return movies


def _complete_users(name: str, users: pd.DataFrame, ratings: pd.DataFrame) -> pd.DataFrame:
    if "user_id" not in users.columns:
        raise DataError(f"{name}: users table has no user_id column")
    users = conform(users, USER_COLUMNS)
    _unique(name, users, "user_id", "users")
    extra = pd.unique(ratings["user_id"][~ratings["user_id"].isin(users["user_id"])])
    if len(extra):
        if len(users.columns) > 1:
            raise DataError(f"{name}: users table has no row for user_id {extra[0]!r} "
                            f"({len(extra)} rating users missing)")
        users = pd.concat([users, conform({"user_id": extra}, USER_COLUMNS)],
                          ignore_index=True)
    return users


def filter_min_movie_ratings(data: MovieLensData, minimum: int) -> MovieLensData:
    """Drops movies with fewer than ``minimum`` ratings, then users left with none."""
    counts = data.ratings["movie_id"].value_counts()
    kept = counts.index[counts.to_numpy() >= minimum]
    ratings = data.ratings[data.ratings["movie_id"].isin(kept)].reset_index(drop=True)
    if len(ratings) == 0:
        raise DataError(f"{data.name}: no ratings left after min_movie_ratings={minimum} (the "
                        f"most rated movie has {int(counts.max())})")
    movies = data.movies[data.movies["movie_id"].isin(kept)].reset_index(drop=True)
    users = data.users[data.users["user_id"].isin(pd.unique(ratings["user_id"]))]
    log.debug("%s: min_movie_ratings=%d kept %d of %d movies, %d of %d ratings", data.name,
             minimum, len(movies), len(data.movies), len(ratings), len(data.ratings))
    return MovieLensData(ratings=ratings, movies=movies, users=users.reset_index(drop=True),
                         name=data.name)
