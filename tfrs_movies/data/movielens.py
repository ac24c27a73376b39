"""Raw, extracted MovieLens folders (``--data-dir``), parsed to exactly TFDS's schema.

The format is told by the files present:
  ``100k``: ``u.data`` (tab separated ratings), ``u.item`` and ``u.user`` (``|`` separated),
    ISO-8859-1, no header.
  ``dat`` (1m, 10m): ``ratings.dat``, ``movies.dat`` and, 1m only, ``users.dat``, all ``::``
    separated, no header.
  ``csv`` (20m, 25m, latest, latest-small): ``ratings.csv`` (``userId,movieId,rating,timestamp``)
    and ``movies.csv`` (``movieId,title,genres``), with headers; no user data.
The mappings are TFDS's (``tensorflow_datasets/structured/movielens_parsing.py``): genre names
to ``GENRES`` ids (``Children's`` is ``Children``; 100k's genre flags in u.item order), 100k
occupations through ``OCCUPATIONS_100K``, 1m occupation codes through ``OCCUPATIONS_1M`` (both
student kinds merged into ``student``), ages bucketed as TFDS does, gender ``True`` = ``M``.
Unlike TFDS, the movies table keeps movies nobody rated, and a genre name outside ``GENRES`` is
a ``DataError`` naming it (TFDS fails on it too). Ratings are read with pandas' C parser: no
Python loop per rating (ml-20m has 2*10^7).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from tfrs_movies.data.schema import (GENRES, MOVIE_COLUMNS, OCCUPATIONS_1M, USER_COLUMNS,
                                     MovieLensData, conform)
from tfrs_movies.data.tabular import (Rows, movies_from_rows, numbers, ratings_from_rows,
                                      read_text, users_from_rows)
from tfrs_movies.errors import DataError

# Dataset version -> the folder its official zip extracts to.
SUBDIRS = {"100k": "ml-100k", "1m": "ml-1m", "10m": "ml-10M100K", "20m": "ml-20m",
           "25m": "ml-25m", "latest-small": "ml-latest-small"}
# Dataset version -> file format; a format is recognised by its ratings file.
FORMATS = {"100k": "100k", "1m": "dat", "10m": "dat", "20m": "csv", "25m": "csv",
           "latest-small": "csv"}
MARKERS = {"100k": "u.data", "dat": "ratings.dat", "csv": "ratings.csv"}
# u.item's 19 genre flag columns, in file order (TFDS's ``all_genre_list``).
GENRES_100K = ("Unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")
_RATING_NAMES = ["user_id", "movie_id", "rating", "timestamp"]
_NUMERIC = {"rating": "float64", "timestamp": "int64"}


def detect_format(folder) -> str | None:
    """``"100k"``, ``"dat"`` or ``"csv"`` by the ratings file in ``folder``; None if none."""
    folder = Path(folder)
    for fmt, marker in MARKERS.items():
        if (folder / marker).is_file():
            return fmt
    return None


def find_folder(data_dir, version: str | None = None) -> Path:
    """The MovieLens folder: ``data_dir`` itself, or its ``ml-<version>`` subfolder."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{data_dir}: no such directory (from --data-dir or TFRS_MOVIES_DATA_DIR)")
    candidates = [root]
    if version in SUBDIRS:
        candidates.append(root / SUBDIRS[version])
    else:
        candidates += sorted(p for p in root.glob("ml-*") if p.is_dir())
    for folder in candidates:
        fmt = detect_format(folder)
        if fmt and (version is None or FORMATS.get(version) == fmt):
            return folder
    found = [f"{f} ({detect_format(f)} format)" for f in candidates if detect_format(f)]
    want = (f"movielens/{version} files ({MARKERS[FORMATS[version]]})" if version in FORMATS
            else "MovieLens files (u.data, ratings.dat or ratings.csv)")
    where = f" or in {SUBDIRS[version]}/" if version in SUBDIRS else ""
    raise DataError(f"{data_dir}: no {want} here{where}"
                    + (f"; found {', '.join(found)}: pass the matching --dataset" if found else ""))


def read_movielens_dir(data_dir, version: str | None = None,
                       rating_scale: tuple[float, float] | None = None) -> MovieLensData:
    """Parses a raw MovieLens folder (see module doc) into ``MovieLensData``.

    ``version`` (``"100k"``, ``"1m"``, ...) picks ``data_dir/ml-<version>`` when ``data_dir``
    is the parent, and must match the files found (1m/10m and 20m/25m/latest-small share a
    format). Tables: ratings ``RATING_COLUMNS``; movies every movie of the movies file;
    users the users file (100k, 1m) or just the rating users' ids. ``rating_scale``: see
    ``tabular.check_rating_scale``.
    """
    folder = find_folder(data_dir, version)
    fmt = detect_format(folder)
    ratings, movies, users = {"100k": _read_100k, "dat": _read_dat,
                              "csv": _read_csv}[fmt](folder, rating_scale)
    if users is None:
        users = conform({"user_id": pd.unique(ratings["user_id"])}, USER_COLUMNS)
    return MovieLensData(ratings=ratings, movies=movies, users=users,
                         name=f"movielens/{version or fmt} ({folder})")


def _required(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise DataError(f"{path}: no such file (a MovieLens {detect_format(folder)} folder "
                        f"needs it)")
    return path


def _read_100k(folder: Path, scale):
    ratings = ratings_from_rows(read_text(_required(folder, "u.data"), sep="\t",
                                          names=_RATING_NAMES, encoding="latin-1",
                                          numeric=_NUMERIC), scale)
    flags = [f"genre:{g}" for g in GENRES_100K]
    item = read_text(_required(folder, "u.item"), sep="|", encoding="latin-1",
                     names=["movie_id", "title", "release_date", "video_release_date", "url",
                            *flags])
    genre_ids = np.array([GENRES.index(g) for g in GENRES_100K])
    on = item.frame[flags].to_numpy() == "1"
    item.frame = item.frame[["movie_id", "title"]].assign(
        genres=["|".join(GENRES[i] for i in genre_ids[row]) for row in on])
    movies = movies_from_rows(item)
    users = users_from_rows(read_text(_required(folder, "u.user"), sep="|", encoding="latin-1",
                                      names=["user_id", "age", "gender", "occupation",
                                             "zip_code"]))
    return ratings, movies, users


def _dat_rows(path: Path, names: list[str], encoding: str = "utf-8",
              numeric: dict | None = None) -> Rows:
    """A ``::`` separated file (no header) read by the C parser after ``::`` -> tab."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    return read_text(path, sep="\t", names=names, encoding=encoding, numeric=numeric,
                     source=io.BytesIO(data.replace(b"::", b"\t")))


def _read_dat(folder: Path, scale):
    ratings = ratings_from_rows(_dat_rows(_required(folder, "ratings.dat"), _RATING_NAMES,
                                          numeric=_NUMERIC), scale)
    users_path = folder / "users.dat"
    # 1m (the one with users.dat) is ISO-8859-1 as TFDS reads it; 10m is UTF-8 (read_text
    # reads any line that is not UTF-8 as ISO-8859-1).
    encoding = "latin-1" if users_path.is_file() else "utf-8"
    movies = movies_from_rows(_dat_rows(_required(folder, "movies.dat"),
                                        ["movie_id", "title", "genres"], encoding))
    users = None
    if users_path.is_file():
        rows = _dat_rows(users_path, ["user_id", "gender", "age", "occupation", "zip_code"],
                         "latin-1")
        code = numbers(rows, "occupation", np.int64, integer=True, nonnegative=True)
        if (code >= len(OCCUPATIONS_1M)).any():
            i = int(np.argmax(code >= len(OCCUPATIONS_1M)))
            raise DataError(f"{rows.at(i)}: occupation {int(code[i])} is unknown "
                            f"(1m codes are 0-{len(OCCUPATIONS_1M) - 1})")
        rows.frame = rows.frame.assign(occupation=np.asarray(OCCUPATIONS_1M, dtype=object)[code])
        users = users_from_rows(rows)
    return ratings, movies, users


def _read_csv(folder: Path, scale):
    ratings = ratings_from_rows(read_text(_required(folder, "ratings.csv"), numeric=_NUMERIC),
                                scale)
    movies = movies_from_rows(read_text(_required(folder, "movies.csv")))
    return ratings, conform(movies, MOVIE_COLUMNS), None
