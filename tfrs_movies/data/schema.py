"""The in-memory form of every data source: three normalized tables in TFDS's vocabulary.

Every source (TFDS, raw MovieLens folders, CSV/Parquet, synthetic) returns a ``MovieLensData``.
Its tables use the column names and dtypes of TFDS ``movielens/*-ratings``;
``MovieLensData.ratings_frame()`` joins them into exactly that per-rating schema.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

# TFDS ``movie_genres`` ClassLabel names; a genre id is an index into this tuple.
GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "Unknown", "War", "Western", "(no genres listed)",
)
# TFDS ``user_occupation_label`` ClassLabel names.
OCCUPATIONS = (
    "academic/educator", "artist", "clerical/admin", "customer service", "doctor/health care",
    "entertainment", "executive/managerial", "farmer", "homemaker", "lawyer", "librarian",
    "other/not specified", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "student", "technician/engineer", "tradesman/craftsman", "unemployed",
    "writer",
)

# Column -> dtype of each table. ``movie_genres`` holds Python lists of genre ids.
RATING_COLUMNS = {"user_id": object, "movie_id": object, "user_rating": np.float32,
                  "timestamp": np.int64}
MOVIE_COLUMNS = {"movie_id": object, "movie_title": object, "movie_genres": object}
# Users always have ``user_id``; the other columns appear only when the dataset has them.
USER_COLUMNS = {"user_id": object, "user_gender": bool, "bucketized_user_age": np.float32,
                "user_occupation_label": np.int64, "user_zip_code": object}

# Lower bounds of the TFDS ``bucketized_user_age`` buckets (MovieLens 1m's age codes).
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)
# TFDS's MovieLens 100k occupation names -> OCCUPATIONS (movielens_parsing.py).
OCCUPATIONS_100K = {
    "administrator": "clerical/admin", "artist": "artist", "doctor": "doctor/health care",
    "educator": "academic/educator", "engineer": "technician/engineer",
    "entertainment": "entertainment", "executive": "executive/managerial",
    "healthcare": "doctor/health care", "homemaker": "homemaker", "lawyer": "lawyer",
    "librarian": "librarian", "marketing": "sales/marketing", "none": "other/not specified",
    "other": "other/not specified", "programmer": "programmer", "retired": "retired",
    "salesman": "sales/marketing", "scientist": "scientist", "student": "student",
    "technician": "technician/engineer", "writer": "writer",
}
# TFDS's MovieLens 1m occupation code -> name; the two student kinds merge into "student".
OCCUPATIONS_1M = (
    "other/not specified", "academic/educator", "artist", "clerical/admin",
    "college/grad student", "customer service", "doctor/health care", "executive/managerial",
    "farmer", "homemaker", "K-12 student", "lawyer", "programmer", "retired", "sales/marketing",
    "scientist", "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed",
    "writer",
)


def occupation_index() -> dict[str, int]:
    """Lower-cased occupation name (ours, 100k's, 1m's) -> OCCUPATIONS index."""
    names = {o.lower(): i for i, o in enumerate(OCCUPATIONS)}
    for raw, label in OCCUPATIONS_100K.items():
        names.setdefault(raw, OCCUPATIONS.index(label))
    names["k-12 student"] = names["college/grad student"] = OCCUPATIONS.index("student")
    return names


def genre_index() -> dict[str, int]:
    """Lower-cased genre name -> GENRES id, with MovieLens's ``Children's`` = ``Children``."""
    lookup = {g.lower(): i for i, g in enumerate(GENRES)}
    lookup["children's"] = GENRES.index("Children")
    return lookup


def bucketize_age(age: np.ndarray) -> np.ndarray:
    """Ages in years -> TFDS ``bucketized_user_age`` (1, 18, 25, 35, 45, 50, 56) as float32."""
    buckets = np.array(AGE_BUCKETS, dtype=np.float32)
    return buckets[np.searchsorted(buckets[1:], age, side="right")]


@dataclasses.dataclass
class MovieLensData:
    """Ratings, movies and users of one dataset.

    Attributes:
      ratings: one row per (user_id, movie_id) pair; columns ``RATING_COLUMNS``.
      movies: one row per movie_id, covering every movie in ``ratings``; ``MOVIE_COLUMNS``.
        Movies without metadata get their id as title and no genres.
      users: one row per user_id, covering every user in ``ratings``; ``user_id`` plus any
        of the optional ``USER_COLUMNS`` the dataset has.
      name: where the data came from (dataset name or file), for messages and config.json.
    """

    ratings: pd.DataFrame
    movies: pd.DataFrame
    users: pd.DataFrame
    name: str

    def ratings_frame(self) -> pd.DataFrame:
        """The TFDS ``movielens/*-ratings`` per-rating schema: ratings joined to movies, users."""
        return (self.ratings.merge(self.movies, on="movie_id", how="left")
                .merge(self.users, on="user_id", how="left"))

    @property
    def user_feature_columns(self) -> list[str]:
        """The optional user columns this dataset has."""
        return [c for c in USER_COLUMNS if c != "user_id" and c in self.users.columns]


def id_codes(values) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, names)``: ids as int codes into an object array of distinct ``str`` names.

    ``values`` must hold no missing values; numbers become their ``str`` (integers only: a
    float id like 7.0 would silently become "7.0").
    """
    codes, uniques = pd.factorize(values if isinstance(values, pd.Series)
                                  else np.asarray(values))
    names = np.empty(len(uniques), dtype=object)
    names[:] = [str(u) for u in uniques]
    return codes, names


def id_array(values) -> np.ndarray:
    """Ids as an object array of Python ``str``, one shared object per distinct id.

    Sharing matters at scale: 2*10^7 rating rows hold ~10^5 distinct ids, so the array costs
    8 bytes a row instead of ~60.
    """
    codes, names = id_codes(values)
    return names[codes]


def empty_frame(columns: dict) -> pd.DataFrame:
    """An empty table with ``columns``' names and dtypes (e.g. ``RATING_COLUMNS``)."""
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in columns.items()})


def conform(frame, columns: dict) -> pd.DataFrame:
    """``frame`` (a DataFrame or a dict of arrays) restricted to the ``columns`` it has, in
    schema order and dtypes, with a fresh RangeIndex.

    Object (id/text) columns become object arrays of ``str`` (pandas 3 would otherwise infer
    its ``str`` dtype); values that are not already an object array go through ``id_array``.
    ``movie_genres`` stays a column of lists.
    """
    out = {}
    for name, dtype in columns.items():
        if name not in frame:
            continue
        col = frame[name]
        if name == "movie_genres":
            out[name] = pd.Series(list(col), dtype=object)
            continue
        values = col.to_numpy() if isinstance(col, pd.Series) else np.asarray(col)
        if dtype is object:
            out[name] = pd.Series(values if values.dtype == object else id_array(values),
                                  dtype=object)
        else:
            out[name] = pd.Series(values.astype(dtype, copy=False))
    return pd.DataFrame(out)


def first_duplicate(user_ids, movie_ids) -> tuple[int, int] | None:
    """Positions ``(earlier, later)`` of the first repeated (user, movie) pair, or None.

    "First" is the smallest ``later`` position, i.e. the first duplicate line of a file;
    ``earlier`` is the earliest row with the same pair. Vectorised: factorize and sort.
    """
    return first_duplicate_codes(pd.factorize(np.asarray(user_ids))[0],
                                 pd.factorize(np.asarray(movie_ids))[0])


def first_duplicate_codes(user_codes: np.ndarray, movie_codes: np.ndarray
                          ) -> tuple[int, int] | None:
    """``first_duplicate`` on integer id codes (e.g. from ``id_codes``)."""
    key = user_codes.astype(np.int64) * (int(movie_codes.max(initial=0)) + 1) + movie_codes
    plain = np.sort(key)  # the common case, no duplicate, needs only this unstable sort
    if not (plain[1:] == plain[:-1]).any():
        return None
    order = np.argsort(key, kind="stable")
    dup = np.flatnonzero(key[order[1:]] == key[order[:-1]])
    later = order[dup + 1]
    best = int(np.argmin(later))
    # The smallest ``later`` is its group's second row, so the row before it in the stable
    # sort is the group's first.
    return int(order[dup[best]]), int(later[best])
