"""Interaction and metadata files: CSV, TSV, Parquet and MovieLens rating files (``dataset="csv"``).

Also the row-level parsing every file source shares (``movielens.py`` reuses it), so that every
bad value is reported the same way: ``DataError("FILE: line N: COLUMN VALUE ...")``, with lines
1-based and counting the header (Parquet: ``row N``, 1-based).

Accepted files (the kind is told by extension, then by the first line):
  ratings: ``user_id,movie_id,rating[,timestamp]`` (also ``userId``/``movieId``/``user_rating``);
    timestamp (integer Unix seconds; a Parquet datetime or date column is converted to Unix
    seconds, naive times taken as UTC) defaults to 0. A headerless file whose first row has a number
    in its third field is read as ``user_id, movie_id, rating[, timestamp]``; this covers
    MovieLens ``u.data``/``u1.base``/``u1.test`` (tab separated) and ``ratings.dat`` (``::``).
  movies: ``movie_id[,title,genres]``; genres ``"Action|Comedy"`` names of ``GENRES``
    (case-insensitive, ``Children's`` = ``Children``), an unknown name is an error.
  users: ``user_id[,age,gender,occupation,zip_code]``; age in years, 0 to ``MAX_AGE`` (TFDS
    age bucket), gender ``M``/``F``, occupation a name of ``OCCUPATIONS`` or a MovieLens
    100k/1m occupation name.
Ids are always read as text: ``"007"`` stays ``"007"``.

Rating scale (``check_rating_scale``): with an explicit ``rating_scale=(low, high)``
(``--rating-scale LOW,HIGH``) every rating must lie in it. Without one, the scale is inferred:
a rating above ``RATING_OUTLIER_FACTOR`` (5) times the largest rating of the rest of the file
(the rest = all rows but the largest 0.1%, at least one row; that largest value taken as at
least 1) is an error. This catches slips by a factor of ten (50 in a 1-5 file, 45 for 4.5)
whatever the scale (1-5, 0.5-5, 1-10, 0-100, implicit 0/1), never stops real MovieLens data,
and lets through values merely a little above the scale (a 6 or 10 in a 1-5 file: pass
``--rating-scale`` to catch those). Heavy-tailed counts (play counts as ratings) can trip it:
pass the real range as ``--rating-scale``.

Text encoding: files are read as UTF-8; when a file is not valid UTF-8, each line that is not
is decoded as Latin-1 (ISO-8859-1) on its own and the others stay UTF-8, and a log line says
how many lines that was and the first one (a file mixing both keeps its UTF-8 titles).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import io
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tfrs_movies.data.schema import (GENRES, MOVIE_COLUMNS, OCCUPATIONS, RATING_COLUMNS,
                                     USER_COLUMNS, MovieLensData, bucketize_age, conform,
                                     first_duplicate_codes, genre_index, id_codes,
                                     occupation_index)
from tfrs_movies.errors import DataError

log = logging.getLogger(__name__)
PARQUET_SUFFIXES = (".parquet", ".pq")
RATING_ALIASES = {"userId": "user_id", "movieId": "movie_id", "user_rating": "rating"}
MOVIE_ALIASES = {"movieId": "movie_id", "movie_title": "title", "movie_genres": "genres"}
# Users also accept this package's own users table (TFDS column names).
USER_ALIASES = {"userId": "user_id", "zip": "zip_code", "zipcode": "zip_code",
                "user_zip_code": "zip_code", "user_gender": "gender", "sex": "gender",
                "bucketized_user_age": "age", "user_occupation_label": "occupation"}
MAX_AGE = 120  # oldest plausible user age in years; 999 or 1e9 is a typo or a missing-value code
# Inferred rating scale (module doc): a rating above FACTOR x the largest of all but the
# largest SHARE of the rows is far outside the scale the rest of the file uses.
RATING_OUTLIER_FACTOR = 5.0
RATING_OUTLIER_SHARE = 0.001
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, after surrogateescape

@dataclasses.dataclass
class Rows:
    """A file's data rows as read: ``frame`` row ``i`` is file line ``i + first``."""

    frame: pd.DataFrame
    path: str
    first: int = 2
    unit: str = "line"

    def at(self, i: int) -> str:
        """"FILE: line N" of the row at position ``i`` (blank lines dropped still count)."""
        return f"{self.path}: {self.unit} {self.line(i)}"

    def line(self, i: int) -> int:
        return int(self.frame.index[i]) + self.first


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".strip(": ")


def _empty(col: pd.Series) -> np.ndarray:
    """Missing or blank cells of a column as a bool array."""
    bad = col.isna().to_numpy().copy()
    if not pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        bad |= (col == "").to_numpy(dtype=bool)
    return bad


def read_text(path, *, sep: str = ",", names: list[str] | None = None,
              encoding: str = "utf-8", numeric: dict[str, str] | None = None,
              source=None) -> Rows:
    """Reads a delimited text file: ids and text as ``str``, ``numeric`` columns parsed fast.

    ``names`` means headerless. Numeric columns are typed by the C parser when every value
    parses; otherwise they come back as text and ``numbers`` names the bad value's line.
    Blank lines are dropped but still counted. ``source`` (a buffer) replaces reading ``path``.
    """
    numeric = numeric or {}
    quoting = csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE
    kw = dict(sep=sep, header=None if names else 0, names=names, encoding=encoding,
              quoting=quoting, skip_blank_lines=False, keep_default_na=False,
              skipinitialspace=sep == ",", engine="c")

    def read(dtype, na_values):
        if source is not None:
            source.seek(0)
        return pd.read_csv(source if source is not None else path, dtype=dtype,
                           na_values=na_values, **kw)

    try:
        try:
            frame = read(collections.defaultdict(lambda: str, numeric),
                         {c: [""] for c in numeric})
        except (ValueError, TypeError, OverflowError) as e:
            if isinstance(e, (pd.errors.ParserError, UnicodeDecodeError)):
                raise
            frame = read(str, None)  # a bad number: read as text so ``numbers`` can name it
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        if encoding != "utf-8":
            raise
        if source is not None:
            source.seek(0)
        data = source.read() if source is not None else Path(path).read_bytes()
        return read_text(path, sep=sep, names=names, numeric=numeric,
                         source=io.BytesIO(decode_lines(data, path).encode("utf-8")))
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (no header and no rows)") from None
    except (pd.errors.ParserError, ValueError, OSError) as e:
        raise DataError(f"{path}: malformed file ({_one_line(e)})") from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took an extra field as index
        raise DataError(f"{path}: malformed file (line {2 if not names else 1} has more fields "
                        f"than the {'header' if not names else 'format'} has columns)")
    frame.columns = [str(c).strip() for c in frame.columns]
    blank = np.ones(len(frame), dtype=bool)
    for c in frame.columns:
        blank &= _empty(frame[c])
    if blank.any():
        frame = frame[~blank]
    return Rows(frame, str(path), first=1 if names else 2)


def decode_lines(data: bytes, path) -> str:
    """``data`` decoded line by line: UTF-8, and Latin-1 for each line that is not UTF-8.

    One UTF-8 decode with ``surrogateescape`` marks the bytes that are not UTF-8; only the
    lines holding a mark are decoded again, as Latin-1. Logs how many lines were read as
    Latin-1 and the first of them (1-based, counting a header); a warning when other lines
    hold UTF-8 text (a file mixing encodings), else an info line (a Latin-1 file).
    """
    text = data.decode("utf-8", errors="surrogateescape")
    bad, pos = [], 0  # (start, stop) of each line holding a mark
    while (mark := _NOT_UTF8.search(text, pos)) is not None:
        start = text.rfind("\n", 0, mark.start()) + 1
        stop = text.find("\n", mark.start())
        pos = stop = len(text) if stop < 0 else stop
        bad.append((start, stop))
    if not bad:
        return text
    parts, end = [], 0
    for start, stop in bad:
        parts += [text[end:start],
                  text[start:stop].encode("utf-8", "surrogateescape").decode("latin-1")]
        end = stop
    mixed = not ("".join(parts[0::2]) + text[end:]).isascii()  # UTF-8 text elsewhere
    (log.warning if mixed else log.debug)(
        "%s: %d line(s) are not valid UTF-8 (first: line %d); read those as Latin-1%s", path,
        len(bad), text.count("\n", 0, bad[0][0]) + 1,
        " and the other lines as UTF-8" if mixed else "")
    return "".join(parts) + text[end:]


def read_any(path, *, ratings: bool = False) -> Rows:
    """Reads CSV/TSV/Parquet (by extension); for ``ratings``, also headerless rating files."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    if p.suffix.lower() in PARQUET_SUFFIXES:
        try:
            frame = pd.read_parquet(p)
        except Exception as e:  # pyarrow raises many types for a bad file
            raise DataError(f"{path}: not a readable Parquet file ({_one_line(e)})") from None
        return Rows(frame.reset_index(drop=True), str(path), first=1, unit="row")
    with open(p, "rb") as f:
        head = f.readline().rstrip(b"\r\n")
    numeric = {"rating": "float64", "timestamp": "int64"} if ratings else {}
    if ratings and b"::" in head:  # MovieLens 1m/10m ratings.dat
        return read_text(path, sep="\t", names=_rating_names(head.split(b"::")),
                         numeric=numeric, source=io.BytesIO(p.read_bytes().replace(b"::", b"\t")))
    sep = "\t" if b"\t" in head or p.suffix.lower() == ".tsv" else ","
    fields = head.split(sep.encode())
    if ratings and len(fields) in (3, 4) and _is_number(fields[2]):
        return read_text(path, sep=sep, names=_rating_names(fields), numeric=numeric)
    return read_text(path, sep=sep, numeric=numeric)


def _rating_names(fields) -> list[str]:
    return ["user_id", "movie_id", "rating", "timestamp"][:max(3, min(len(fields), 4))]


def _is_number(field: bytes) -> bool:
    try:
        float(field)
        return True
    except ValueError:
        return False


def require(rows: Rows, aliases: dict[str, str], required: list[str]) -> None:
    """Renames alias columns in place; a missing required column is an error naming it."""
    rows.frame = rows.frame.rename(columns={a: c for a, c in aliases.items()
                                            if a in rows.frame.columns and c not in rows.frame})
    missing = [c for c in required if c not in rows.frame.columns]
    if missing:
        raise DataError(f"{rows.path}: missing column(s) {', '.join(missing)}; found "
                        f"{', '.join(map(str, rows.frame.columns)) or 'none'}")


def ids(rows: Rows, column: str) -> np.ndarray:
    """A column of ids as a shared-``str`` object array; an empty id is an error."""
    codes, names = id_codes_of(rows, column)
    return names[codes]


def id_codes_of(rows: Rows, column: str) -> tuple[np.ndarray, np.ndarray]:
    """``schema.id_codes`` of a column; an empty or fractional (Parquet float) id is an error."""
    col = rows.frame[column]
    if pd.api.types.is_float_dtype(col):  # Parquet floats: only whole numbers are ids
        whole = (col.notna() & (col == np.floor(col))).to_numpy()
        if not whole.all():
            i = int(np.argmin(whole))
            raise DataError(f"{rows.at(i)}: {column} {col.iloc[i]!r} is not a valid id")
        col = col.astype(np.int64)
    bad = _empty(col)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{rows.at(i)}: empty {column}")
    return id_codes(col)


def numbers(rows: Rows, column: str, dtype, *, integer: bool = False,
            nonnegative: bool = False) -> np.ndarray:
    """A numeric column as ``dtype``; a missing, non-numeric, non-finite, negative (when
    ``nonnegative``) or fractional (when ``integer``) value is an error naming its line."""
    col = rows.frame[column]
    if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
        vals = pd.to_numeric(col, errors="coerce")
    else:
        vals = col
    arr = vals.to_numpy()
    if arr.dtype.kind in "iu":
        bad = np.zeros(len(arr), dtype=bool)
    else:
        arr = arr.astype(np.float64)
        bad = ~np.isfinite(arr)
        if nonnegative:
            bad |= arr < 0
        if integer:
            bad |= np.isfinite(arr) & (arr != np.floor(arr))
    if nonnegative and arr.dtype.kind == "i":
        bad |= arr < 0
    if bad.any():
        i = int(np.argmax(bad))
        raw, value = _raw(col, i), arr[i]
        if _empty(col.iloc[i:i + 1])[0]:
            problem = "is empty"
        elif np.isnan(value):
            problem = f"{raw!r} is not a number"
        elif not np.isfinite(value):
            problem = f"{raw!r} is not a finite number"
        elif nonnegative and value < 0:
            problem = f"{raw!r} is negative"
        else:
            problem = f"{raw!r} is not a whole number"
        raise DataError(f"{rows.at(i)}: {column} {problem}")
    return arr.astype(dtype)


def _raw(col: pd.Series, i: int) -> str:
    """Cell ``i`` as the file spells it: text as is, numbers (C reader, Parquet) as ``%.15g``."""
    raw = col.iloc[i]
    if isinstance(raw, str):
        return raw
    return f"{float(raw):.15g}" if not pd.isna(raw) else ""


def timestamps(rows: Rows, column: str) -> np.ndarray:
    """Unix seconds as int64: whole numbers as they are; a datetime column (Parquet
    ``timestamp[ms|us|ns]``, with or without a time zone; naive = UTC) or a ``date`` column
    converted to seconds (fractions dropped: floor). A missing value is an error."""
    col = rows.frame[column]
    present = col.dropna()
    is_dates = pd.api.types.is_datetime64_any_dtype(col) or (
        col.dtype == object and len(present) > 0 and isinstance(present.iloc[0], datetime.date))
    if not is_dates:
        return numbers(rows, column, np.int64, integer=True)
    when = pd.to_datetime(col, utc=True)
    missing = when.isna().to_numpy()
    if missing.any():
        raise DataError(f"{rows.at(int(np.argmax(missing)))}: {column} is empty")
    return ((when - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def check_rating_scale(rows: Rows, rating: np.ndarray,
                       scale: tuple[float, float] | None = None) -> None:
    """Stops at the first rating outside ``scale`` (inclusive), or without one, far outside
    the scale the rest of the file uses (module doc); the error names file, line and value.
    ``rows`` has its ``rating`` column, ``rating`` its values as numbers."""
    if scale is not None:
        low, high = scale
        bad = (rating < low) | (rating > high)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{rows.at(i)}: rating {_raw(rows.frame['rating'], i)!r} is outside "
                            f"the rating scale {low:g},{high:g} (--rating-scale)")
        return
    if len(rating) < 2:
        return
    trim = max(1, int(len(rating) * RATING_OUTLIER_SHARE))
    top = float(np.partition(rating, len(rating) - 1 - trim)[len(rating) - 1 - trim])
    limit = RATING_OUTLIER_FACTOR * max(top, 1.0)
    bad = rating > limit
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{rows.at(i)}: rating {_raw(rows.frame['rating'], i)!r} is far outside the scale "
            f"the other ratings use (all but the largest {trim:,} of {len(rating):,} are <= "
            f"{top:g}; the limit is {RATING_OUTLIER_FACTOR:g}x that); fix it, or if it is "
            f"right give the scale with --rating-scale LOW,HIGH")


def _check_unique(rows: Rows, key: np.ndarray, column: str) -> None:
    dup = pd.Series(key).duplicated().to_numpy()
    if dup.any():
        i = int(np.argmax(dup))
        first = int(np.flatnonzero(key == key[i])[0])
        raise DataError(f"{rows.at(i)}: duplicate {column} {key[i]!r} "
                        f"(first at {rows.unit} {rows.line(first)})")


def ratings_from_rows(rows: Rows, rating_scale: tuple[float, float] | None = None, *,
                      check_scale: bool = True) -> pd.DataFrame:
    """``RATING_COLUMNS`` table from rows with user_id, movie_id, rating[, timestamp].

    ``rating_scale`` and ``check_scale`` (False: ratings need only be finite and >= 0, e.g.
    a file read only for its (user, movie) pairs): see ``check_rating_scale``.
    """
    require(rows, RATING_ALIASES, ["user_id", "movie_id", "rating"])
    if len(rows.frame) == 0:
        raise DataError(f"{rows.path}: no ratings (the file has no data rows)")
    user_codes, user_names = id_codes_of(rows, "user_id")
    movie_codes, movie_names = id_codes_of(rows, "movie_id")
    user, movie = user_names[user_codes], movie_names[movie_codes]
    rating = numbers(rows, "rating", np.float32, nonnegative=True)
    if check_scale:
        check_rating_scale(rows, rating, rating_scale)
    if "timestamp" in rows.frame.columns:
        timestamp = timestamps(rows, "timestamp")
    else:
        timestamp = np.zeros(len(user), dtype=np.int64)
    dup = first_duplicate_codes(user_codes, movie_codes)
    if dup is not None:
        earlier, later = dup
        raise DataError(f"{rows.at(later)}: duplicate rating of movie_id {movie[later]!r} by "
                        f"user_id {user[later]!r} (first at {rows.unit} {rows.line(earlier)})")
    return conform({"user_id": user, "movie_id": movie, "user_rating": rating,
                    "timestamp": timestamp}, RATING_COLUMNS)


def genre_lists(rows: Rows, column: str) -> list[list[int]]:
    """``"A|B"`` cells (or lists of names) -> lists of GENRES ids; "" is no genres."""
    lookup = genre_index()
    col = rows.frame[column]
    cells = [("|".join(GENRES[g] if isinstance(g, (int, np.integer)) and 0 <= g < len(GENRES)
                       else str(g) for g in v)  # lists of names or ids (our own tables)
              if isinstance(v, (list, tuple, np.ndarray)) else
              ("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)))
             for v in col]
    codes, uniques = pd.factorize(pd.Series(cells, dtype=object))
    parsed = []
    for k, cell in enumerate(uniques):
        names = [g.strip() for g in cell.split("|") if g.strip()]
        unknown = [g for g in names if g.lower() not in lookup]
        if unknown:
            i = int(np.argmax(codes == k))
            raise DataError(f"{rows.at(i)}: unknown genre {unknown[0]!r} in {column} "
                            f"(known: {', '.join(GENRES)})")
        parsed.append([lookup[g.lower()] for g in names])
    return [parsed[c] for c in codes]


def movies_from_rows(rows: Rows) -> pd.DataFrame:
    """``MOVIE_COLUMNS`` table from rows with movie_id[, title, genres]."""
    require(rows, MOVIE_ALIASES, ["movie_id"])
    movie = ids(rows, "movie_id")
    _check_unique(rows, movie, "movie_id")
    if "title" in rows.frame.columns:
        title = rows.frame["title"].fillna("").astype(str).to_numpy(dtype=object)
        title = np.where(title == "", movie, title)
    else:
        title = movie
    genres = (genre_lists(rows, "genres") if "genres" in rows.frame.columns
              else [[] for _ in range(len(movie))])
    return conform({"movie_id": movie, "movie_title": title, "movie_genres": genres},
                   MOVIE_COLUMNS)


def _lookup_column(rows: Rows, column: str, table: dict, what: str) -> np.ndarray:
    """Maps a text column through ``table`` (lower-cased keys); unknown values are errors."""
    col = rows.frame[column].astype(str).str.strip().str.lower()
    codes, uniques = pd.factorize(col)
    mapped = []
    for k, value in enumerate(uniques):
        if value not in table:
            i = int(np.argmax(codes == k))
            raw = rows.frame[column].iloc[i]
            problem = "is empty" if value in ("", "nan", "none") else f"{raw!r} is unknown"
            raise DataError(f"{rows.at(i)}: {column} {problem} ({what})")
        mapped.append(table[value])
    return np.asarray(mapped)[codes]


def users_from_rows(rows: Rows) -> pd.DataFrame:
    """``USER_COLUMNS`` table from rows with user_id[, age, gender, occupation, zip_code]."""
    require(rows, USER_ALIASES, ["user_id"])
    frame = rows.frame
    out = {"user_id": ids(rows, "user_id")}
    _check_unique(rows, out["user_id"], "user_id")
    if "gender" in frame.columns and pd.api.types.is_bool_dtype(frame["gender"]):
        out["user_gender"] = frame["gender"].to_numpy(dtype=bool)  # True = M, as in TFDS
    elif "gender" in frame.columns:
        genders = {"m": True, "male": True, "f": False, "female": False}
        out["user_gender"] = _lookup_column(rows, "gender", genders, "use M or F").astype(bool)
    if "age" in frame.columns:
        age = numbers(rows, "age", np.float64, nonnegative=True)
        if (age > MAX_AGE).any():
            i = int(np.argmax(age > MAX_AGE))
            raise DataError(f"{rows.at(i)}: age {_raw(frame['age'], i)!r} is not a plausible "
                            f"age in years (0-{MAX_AGE})")
        out["bucketized_user_age"] = bucketize_age(age)
    if "occupation" in frame.columns and pd.api.types.is_integer_dtype(frame["occupation"]):
        label = numbers(rows, "occupation", np.int64, nonnegative=True)  # OCCUPATIONS index
        if (label >= len(OCCUPATIONS)).any():
            i = int(np.argmax(label >= len(OCCUPATIONS)))
            raise DataError(f"{rows.at(i)}: occupation {int(label[i])} is not an OCCUPATIONS "
                            f"index (0-{len(OCCUPATIONS) - 1})")
        out["user_occupation_label"] = label
    elif "occupation" in frame.columns:
        out["user_occupation_label"] = _lookup_column(
            rows, "occupation", occupation_index(),
            f"known: {', '.join(OCCUPATIONS)}").astype(np.int64)
    if "zip_code" in frame.columns:
        out["user_zip_code"] = frame["zip_code"].fillna("").astype(str).to_numpy(dtype=object)
    return conform(out, USER_COLUMNS)


def read_ratings_file(path, rating_scale: tuple[float, float] | None = None, *,
                      check_scale: bool = True) -> pd.DataFrame:
    """A ratings file (see module doc) as a validated ``RATING_COLUMNS`` table; the scale
    arguments are ``ratings_from_rows``'s."""
    return ratings_from_rows(read_any(path, ratings=True), rating_scale, check_scale=check_scale)


def read_movies_file(path) -> pd.DataFrame:
    """A movies file as a ``MOVIE_COLUMNS`` table (title defaults to the id)."""
    return movies_from_rows(read_any(path))


def read_users_file(path) -> pd.DataFrame:
    """A users file as a ``USER_COLUMNS`` table with the optional columns it has."""
    return users_from_rows(read_any(path))


def load_tabular(ratings, movies=None, users=None,
                 rating_scale: tuple[float, float] | None = None) -> MovieLensData:
    """``dataset="csv"``: the three files as ``MovieLensData`` (``rating_scale``: see
    ``check_rating_scale``).

    Without a movies file every movie gets its id as title and no genres (``loading.load``
    does the same for rated movies a movies file lacks); a users file must cover every user.
    """
    table = read_ratings_file(ratings, rating_scale)
    if movies:
        movie_table = read_movies_file(movies)
    else:
        movie_ids = pd.unique(table["movie_id"])
        movie_table = conform({"movie_id": movie_ids, "movie_title": movie_ids,
                               "movie_genres": [[] for _ in movie_ids]}, MOVIE_COLUMNS)
    if users:
        user_table = read_users_file(users)
        missing = pd.unique(table["user_id"][~table["user_id"].isin(user_table["user_id"])])
        if len(missing):
            raise DataError(f"{users}: no row for user_id {missing[0]!r} of {ratings} "
                            f"({len(missing)} rating users missing)")
    else:
        user_table = conform({"user_id": pd.unique(table["user_id"])}, USER_COLUMNS)
    return MovieLensData(ratings=table, movies=movie_table, users=user_table, name=str(ratings))
