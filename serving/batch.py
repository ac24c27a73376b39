"""Offline batch scoring: the best ``n`` movies for every user in a file, into one table.

    from serving import make_client
    from serving.batch import score_users
    report = score_users(make_client(model_dir="exports/ml100k"), "users.csv", "recs.parquet",
                         n=10, exclude="runs/ml100k/split/train.parquet")
    print(report.summary())

or ``python -m serving batch --users users.csv --out recs.parquet --model-dir exports/ml100k``.

Input: a CSV/TSV or Parquet file with a ``user_id`` column (``userId`` also works; other columns
are ignored: the export looks features up in-graph), or a list of ids. An optional ``history``
column (``history_movie_ids`` also works) gives each user's movie ids, oldest first: a list
column in Parquet, ids separated by ``|`` in CSV/TSV (``50|181|1``; blank: none). A user with a
history is asked through the recommender's ``with_history`` signature (an id the export never
saw is answered from its history; its history's movies are never returned), the others, and
every user of a file without the column, through ``serving_default`` as before; a user id
repeated keeps its first row's history. Output: Parquet, or CSV
when ``out_path`` ends in ``.csv``, one row per recommendation with `SCHEMA`'s columns
``user_id, rank, movie_id, title, score, rating, rank_score, known``; users in input order,
ranks 1..n. ``known`` is false on every row of a user the export does not know (their rows are
the popular movies, ``score`` then ``log(1 + train ratings)``), null from an export older than
the contract's ``known`` output.

How a run is made safe to kill:
- The distinct valid ids, in input order, are cut into parts of ``part_size`` users; each part
  is sent as requests of ``batch_size`` users (TF Serving here batches at most 128 rows, see
  ``serving/batching_parameters.txt``) and written as ``.OUT.parts/part-000123.parquet``
  (written under another name, then renamed: a part file is either complete or absent).
- The CLI refuses an existing ``OUT`` without ``--overwrite``, and an interrupted run's parts
  without ``--resume`` (continue) or ``--overwrite`` (start over): `check_existing`.
- ``resume=True`` keeps the parts already written and scores only the others. The work dir's
  ``manifest.json`` records the ids' and histories' fingerprints, ``n``, batch and part sizes,
  the exclusions' fingerprint and the local model version; resuming with any of them changed
  is refused.
- At the end the parts are concatenated into a temporary file beside ``OUT``, renamed onto
  ``OUT`` (atomic on one filesystem) and the work dir is deleted.
- Nothing the job reads is written: ``OUT``, ``OUT.errors.csv``, the work dir and the temp
  files are refused (`check_outputs`, on resolved paths) when one of them is the users file or
  the ``exclude`` file, or part of a local export.
- A full disk or a read-only folder stops the run with an `OSError` noting what is kept (the
  parts written so far) and that ``resume`` continues it.

Bad ids never stop a run: missing, blank, control-character or non-UTF-8 ids, and ids the
server rejects (HTTP 400 / INVALID_ARGUMENT; the batch is split in halves until the culprits
are alone), are written with the reason to ``OUT.errors.csv``. Before splitting, one request
with a plain id probes the server: if that is rejected too, the fault is the request or model
(wrong export, signature mismatch), not the ids, and the run stops. Unknown ids are not errors:
the export answers them with the most popular movies, and their rows say ``known`` false.

A history file scored by an export older than ``with_history`` stops before anything is written,
with one line naming the model and version (`serving.client.NoHistorySignature`).

Exclusions: the export already drops the movies each user rated in its run's train data (unless
exported with ``--keep-seen``); ``exclude`` adds more, e.g. ratings collected since the export.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from serving.backends import LocalBackend, ServingError
from serving.client import NoHistorySignature, missing_signature
from tfrs_movies import contract, paths
from tfrs_movies.errors import DataError, UserError, shown

__all__ = ["HISTORY_SEPARATOR", "SCHEMA", "BatchReport", "UserIds", "check_existing",
           "check_outputs", "format_rate", "normalize_ids", "output_format", "parse_history",
           "predict_for", "read_user_ids", "recommend_table", "score_users", "seen_movies"]

MODEL = "recommender"  # a model of the serving contract (``tfrs_movies.contract``)
SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int64()), ("movie_id", pa.string()),
                    ("title", pa.string()), ("score", pa.float32()), ("rating", pa.float32()),
                    ("rank_score", pa.float32()), ("known", pa.bool_())])
ERROR_COLUMNS = ("user_id", "error")
DEFAULT_BATCH_SIZE = 128  # TF Serving's max_batch_size in serving/batching_parameters.txt
# A local model answers up to MAX_ROWS_PER_CALL rows in one in-graph call: on the 10^5-user
# synthetic export, requests of 256 scored 8,758 / 9,486 users/s against 8,343 / 8,586 at 128
# (alternating in one process, 2026-12-07, docs/speed.md).
LOCAL_BATCH_SIZE = contract.MAX_ROWS_PER_CALL
# Requests in flight: a local model's graph leaves a core idle between its ops and while a
# request's inputs and answers are converted in Python; four requests fill those gaps (on the
# 10^5-user synthetic export, 9,456 users/s against 9,136 with two: medians of four runs
# alternating, docs/speed.md). Two for a server.
LOCAL_CONCURRENCY = 4
DEFAULT_CONCURRENCY = 2
DEFAULT_PART_SIZE = 4096  # users per part file: resume granularity vs. files per run
_PAD = contract.PAD
_PROBE_ID = "1"  # any non-empty id is valid for the export (unknown ones get popular movies)
_BAD_CHARS = r"[\x00-\x1f\x7f\ud800-\udfff]"  # control characters, lone surrogates
_MANIFEST = "manifest.json"
_OUTPUTS = contract.signature(MODEL).required_outputs
HISTORY = "history"  # the users file's optional column: each user's movie ids, oldest first
_HISTORY_ALIASES = {"history_movie_ids": HISTORY}
HISTORY_SEPARATOR = "|"  # between a CSV/TSV history's ids
(_HISTORY_INPUT,) = (set(contract.signature(MODEL, contract.WITH_HISTORY).input_names)
                     - set(contract.signature(MODEL).input_names))  # history_movie_ids
Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class BatchReport:
    """What a `score_users` run did.

    Attributes:
      out_path: the output file.
      users: distinct valid users in the output (including parts kept by ``resume``).
      rows: recommendation rows written.
      bad_ids: ids written to ``errors_path`` (invalid or rejected by the server).
      errors_path: ``OUT.errors.csv``, or None when every id was good.
      duplicates: input rows repeating an earlier id (scored once).
      resumed_users: users whose parts an earlier, interrupted run had written.
      seconds: wall time of this run: reading input, loading the model, scoring, writing.
      users_per_second: users scored by this run (not resumed ones) per second of ``seconds``
        less ``load_seconds`` (0.0 when this run scored none): the first requests included.
      load_seconds: the part of ``seconds`` spent loading a local model (TensorFlow's import
        and the SavedModel's load, once per process; 0 for a server).
    """

    out_path: str
    users: int
    rows: int
    bad_ids: int
    errors_path: str | None
    duplicates: int
    resumed_users: int
    seconds: float
    users_per_second: float
    load_seconds: float = 0.0

    def summary(self) -> str:
        """One line; the rate only when the scoring (``seconds`` less ``load_seconds``) took at
        least a quarter of a second (below that, for a handful of users, it says nothing)."""
        text = (f"wrote {self.rows:,} recommendations for {self.users:,} users to "
                f"{self.out_path} in {self.seconds:.1f}s")
        if self.seconds - self.load_seconds >= 0.25 and self.users_per_second > 0:
            loaded = (f" after loading the model in {self.load_seconds:.1f}s"
                      if self.load_seconds >= 0.05 else "")
            text += f" ({format_rate(self.users_per_second)} users/s{loaded})"
        if self.resumed_users:
            text += f"; {self.resumed_users:,} users kept from the interrupted run"
        if self.duplicates:
            text += f"; {self.duplicates:,} duplicate ids skipped"
        if self.bad_ids:
            text += f"; {self.bad_ids:,} bad ids listed in {self.errors_path}"
        return text


@dataclass(frozen=True)
class UserIds:
    """Ids read from an input: ``ids`` are the distinct valid ones in first-seen order,
    ``errors`` ``(value, reason)`` for the invalid ones, ``duplicates`` the repeated rows,
    ``histories`` each id's movie ids (its first row's; ``[]``: none), None when the input has
    no history column."""

    ids: list[str]
    errors: list[tuple[str, str]]
    duplicates: int
    histories: dict[str, list[str]] | None = None


def read_user_ids(source: str | os.PathLike | Sequence[str]) -> UserIds:
    """The user ids of a CSV/TSV/Parquet file (column ``user_id``) or of a list of ids.

    Whole-number Parquet floats/ints become their decimal text (``42.0`` -> ``"42"``).
    A missing file or column is a `DataError`; a bad id is an entry of ``errors``.
    """
    from tfrs_movies.data.tabular import read_any, require

    history = None
    if isinstance(source, (str, os.PathLike)):
        rows = read_any(source)
        require(rows, {"userId": "user_id", "user": "user_id", **_HISTORY_ALIASES}, ["user_id"])
        if not len(rows.frame):
            raise DataError(f"{source}: no user ids (the file has no data rows)")
        column = rows.frame["user_id"].reset_index(drop=True)
        if HISTORY in rows.frame:
            history = rows.frame[HISTORY].reset_index(drop=True)
        where = rows  # names "FILE: line N" of a bad id
    else:
        if isinstance(source, bytes) or not isinstance(source, Iterable):
            raise UserError(f"user_ids must be a file path or a list of id strings, got "
                            f"{type(source).__name__}")
        column = pd.Series(list(source), dtype=object)
        where = None
    values, bad = normalize_ids(column)
    parsed: list[list[str] | None] = [None] * len(values)
    if history is not None:
        skip = {i for i, _ in bad}
        for i in range(len(values)):
            if i not in skip:
                try:
                    parsed[i] = parse_history(history.iloc[i])
                except ValueError as err:
                    bad.append((i, str(err)))
        bad.sort()
    errors = [(_text(column.iloc[i]),
               f"{where.at(i) if where is not None else f'user_ids[{i}]'}: {reason}")
              for i, reason in bad]
    ok = np.ones(len(values), dtype=bool)
    ok[[i for i, _ in bad]] = False
    good = values[ok]
    unique = pd.unique(good)
    histories = None
    if history is not None:
        histories = {}
        for i in np.flatnonzero(ok):
            histories.setdefault(str(values[i]), parsed[i])
    return UserIds([str(u) for u in unique], errors, len(good) - len(unique), histories)


def parse_history(value) -> list[str]:
    """One cell of the history column -> its movie ids, oldest first: a list (Parquet; whole
    numbers become their decimal text) or ``|``-separated text (CSV/TSV); missing or blank:
    ``[]``. `ValueError` names a value that is neither."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(HISTORY_SEPARATOR) if v.strip()]
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"history must be a list of movie ids (Parquet) or ids separated by "
                         f"{HISTORY_SEPARATOR!r} (CSV), got {type(value).__name__} "
                         f"{shown(value)}")
    ids = []
    for item in value:
        if item is None or isinstance(item, (float, np.floating)) and np.isnan(item):
            continue  # a null in a list column (pandas reads list<int> nulls as NaN)
        if isinstance(item, (bool, np.bool_)) or not isinstance(
                item, (str, int, np.integer, float, np.floating)) or (
                isinstance(item, (float, np.floating)) and not float(item).is_integer()):
            raise ValueError(f"history holds {type(item).__name__} {shown(item)}, not a movie "
                             f"id")
        text = item.strip() if isinstance(item, str) else str(int(item))
        if text:
            ids.append(text)
    return ids


def normalize_ids(column: pd.Series) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Raw ids (text, or numbers read from Parquet) -> ``str`` ids and ``(position, reason)``
    for each bad one: missing, blank, control characters or lone surrogates (not UTF-8),
    fractional numbers. Whole numbers become their decimal text (``42.0`` -> ``"42"``)."""
    column = column.reset_index(drop=True)
    missing = column.isna().to_numpy(dtype=bool)
    bad = {int(i): "missing user_id" for i in np.flatnonzero(missing)}
    if pd.api.types.is_float_dtype(column):
        whole = ~missing & (column == np.floor(column)).to_numpy(dtype=bool)
        for i in np.flatnonzero(~whole & ~missing):
            bad[int(i)] = f"user_id {float(column.iloc[i])!r} is not a whole number"
        column = column.where(whole, 0).astype(np.int64)
    if pd.api.types.is_integer_dtype(column):
        values = column.astype("string").to_numpy(dtype=object, na_value=None)
        return values, sorted(bad.items())
    values = column.to_numpy(dtype=object, copy=True)  # written below; pandas' view is read-only
    is_str = np.fromiter((isinstance(v, str) for v in values), bool, len(values))
    for i in np.flatnonzero(~is_str & ~missing):
        v = values[i]
        if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            values[i], is_str[i] = str(int(v)), True
        else:
            bad[int(i)] = f"user_id must be text, got {type(v).__name__} {shown(v)}"
    text = pd.Series(np.where(is_str, values, ""), dtype=object)
    blank = is_str & (text.str.strip() == "").to_numpy(dtype=bool)
    weird = is_str & text.str.contains(_BAD_CHARS, regex=True).to_numpy(dtype=bool)
    for i in np.flatnonzero(blank):
        bad[int(i)] = "empty user_id"
    for i in np.flatnonzero(weird & ~blank):
        bad[int(i)] = (f"user_id {values[i]!r} has a control character or is not valid "
                       f"UTF-8")
    return values, sorted(bad.items())


def format_rate(per_second: float) -> str:
    """A rate with the digits that matter: ``1,234``, ``12.3``, ``0.42``."""
    if per_second >= 100:
        return f"{per_second:,.0f}"
    if per_second >= 10:
        return f"{per_second:.1f}"
    return f"{per_second:.2g}"


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def seen_movies(ratings: str | os.PathLike | Mapping[str, Sequence[str]]
                ) -> dict[str, list[str]]:
    """``{user_id: [movie_id, ...]}`` in file order, from a ratings file (any format
    ``read_ratings_file`` reads: CSV, Parquet, MovieLens ``u.data``) or a mapping."""
    if isinstance(ratings, Mapping):
        return {str(u): [str(m) for m in movies] for u, movies in ratings.items()}
    from tfrs_movies.data.tabular import read_ratings_file

    table = read_ratings_file(ratings, check_scale=False)  # only the pairs matter here
    return table.groupby("user_id", sort=False)["movie_id"].agg(list).to_dict()


def predict_for(backend, **pin) -> Predict:
    """``backend.predict`` bound to the recommender and ``pin`` (version or label): inputs
    with a history go to its ``with_history`` signature, others to ``serving_default``."""
    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if _HISTORY_INPUT in inputs:
            return backend.predict(MODEL, inputs, **pin, signature=contract.WITH_HISTORY)
        return backend.predict(MODEL, inputs, **pin)
    return predict


def recommend_table(predict: Predict, users: Sequence[str],
                    exclude: Sequence[Sequence[str]], n: int | None,
                    history: Sequence[Sequence[str]] | None = None
                    ) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Scores one batch; a rejected request is split until the bad ids are alone.

    Args:
      predict: runs the ``recommender``: inputs dict -> outputs dict (`predict_for`: the
        signature follows the inputs).
      users: B distinct valid user ids.
      exclude: B lists of movie ids never to return for that user.
      n: keep at most this many per user (None: all the export returns).
      history: optional B lists of movie ids, oldest first: the users with one are asked in
        one ``with_history`` request, the others in one ``serving_default`` request.

    Returns:
      (`SCHEMA` table of the users' recommendations in user order then rank, ``[(user_id,
      error)]`` for the users the server rejected).
    """
    if history is None or not any(history):
        return _score(predict, list(users), list(exclude), n, None)
    asked = [i for i, h in enumerate(history) if h]
    if len(asked) == len(users):
        return _score(predict, list(users), list(exclude), n, list(history))
    plain = [i for i, h in enumerate(history) if not h]
    tables, errors = [], []
    for rows, with_history in ((plain, False), (asked, True)):
        table, rejected = _score(predict, [users[i] for i in rows], [exclude[i] for i in rows],
                                 n, [history[i] for i in rows] if with_history else None)
        tables.append(table)
        errors += rejected
    position = {u: i for i, u in enumerate(users)}
    table = pa.concat_tables(tables)
    order = np.argsort([position[u] for u in table.column("user_id").to_pylist()],
                       kind="stable")
    return table.take(order), sorted(errors, key=lambda e: position[e[0]])


def _score(predict: Predict, users: list[str], exclude: list, n: int | None,
           history: list | None) -> tuple[pa.Table, list[tuple[str, str]]]:
    """One request for ``users`` (with ``history``: ``with_history``), split when rejected."""
    try:
        out = predict(_inputs(users, exclude, history))
    except ServingError as err:
        if history is not None and missing_signature(err, contract.WITH_HISTORY):
            raise NoHistorySignature(MODEL, None) from None
        if not _rejected(err):
            raise
        if len(users) > 1:
            try:  # is it the ids, or is every request refused (wrong model, bad signature)?
                predict(_inputs([_PROBE_ID], [[]], None if history is None else [[]]))
            except ServingError as probe_err:
                if _rejected(probe_err):
                    raise ServingError(f"the server rejects every request, even for one plain "
                                       f"user id: {err}", status=err.status, code=err.code,
                                       model=err.model) from err
                raise
        return _bisect(predict, users, exclude, n, history, err)
    return _table(users, out, n), []


def _bisect(predict: Predict, users: list[str], exclude: list, n: int | None,
            history: list | None, err: ServingError) -> tuple[pa.Table, list[tuple[str, str]]]:
    if len(users) == 1:
        return SCHEMA.empty_table(), [(users[0], " ".join(str(err).split()))]
    tables, errors = [], []
    mid = len(users) // 2
    for part in (slice(0, mid), slice(mid, None)):
        part_history = None if history is None else history[part]
        try:
            out = predict(_inputs(users[part], exclude[part], part_history))
        except ServingError as part_err:
            if not _rejected(part_err):
                raise
            table, part_errors = _bisect(predict, users[part], exclude[part], n, part_history,
                                         part_err)
        else:
            table, part_errors = _table(users[part], out, n), []
        tables.append(table)
        errors += part_errors
    return pa.concat_tables(tables), errors


def _rejected(err: ServingError) -> bool:
    return err.status == 400 or err.code == "INVALID_ARGUMENT"


def _inputs(users: Sequence[str], exclude: Sequence[Sequence[str]],
            history: Sequence[Sequence[str]] | None = None) -> dict[str, np.ndarray]:
    """The recommender's inputs (with ``history``: its ``with_history`` signature's); id lists
    padded with "" (one leading "" column, as the client does, so a batching TF Serving pads
    with "" too)."""
    inputs = {"user_id": np.asarray(users, dtype=object), "exclude_movie_ids": _padded(exclude)}
    if history is not None:
        inputs[_HISTORY_INPUT] = _padded(history)
    return inputs


def _padded(rows: Sequence[Sequence[str]]) -> np.ndarray:
    width = 1 + max((len(row) for row in rows), default=0)
    padded = np.full((len(rows), width), _PAD, dtype=object)
    for i, row in enumerate(rows):
        if len(row):
            padded[i, 1:1 + len(row)] = list(row)
    return padded


def _table(users: Sequence[str], out: Mapping[str, np.ndarray], n: int | None) -> pa.Table:
    """``[B, K]`` outputs -> long table. Like `RecommenderClient.recommend`, drops "" ids and
    -inf (masked) scores or ratings, then keeps the first ``n`` per user; vectorized."""
    missing = [name for name in _OUTPUTS if name not in out]
    if missing:
        raise ServingError(f"model {MODEL!r} returned outputs {sorted(out)}, missing {missing}: "
                           f"is the export older than the serving contract?", model=MODEL)
    ids, titles = np.asarray(out["movie_ids"]), np.asarray(out["titles"])
    scores = np.asarray(out["scores"], np.float32)
    ratings = np.asarray(out["ratings"], np.float32)
    if ids.ndim != 2 or ids.shape[0] != len(users) or not (
            ids.shape == titles.shape == scores.shape == ratings.shape):
        raise ServingError(f"model {MODEL!r} answered {len(users)} users with outputs of shapes "
                           f"{[np.shape(out[k]) for k in _OUTPUTS]}, expected [B={len(users)}, n]",
                           model=MODEL)
    valid = (ids != _PAD) & ~np.isneginf(scores) & ~np.isneginf(ratings)
    rank = np.cumsum(valid, axis=1)
    keep = valid & (rank <= n) if n is not None else valid
    row = np.nonzero(keep)[0]
    known = (pa.array(np.asarray(out["known"], bool).reshape(len(users))[row]) if "known" in out
             else pa.nulls(len(row), pa.bool_()))
    return pa.Table.from_arrays([
        pa.array(np.asarray(users, dtype=object)[row], pa.string()),
        pa.array(rank[keep].astype(np.int64)),
        pa.array(ids[keep], pa.string()),
        pa.array(titles[keep], pa.string()),
        pa.array(scores[keep]),
        pa.array(ratings[keep]),
        pa.array(np.asarray(out["rank_scores"], np.float32)[keep]),
        known,
    ], schema=SCHEMA)


def score_users(client, user_ids: str | os.PathLike | Sequence[str], out_path: str | os.PathLike,
                n: int | None = None,
                exclude: str | os.PathLike | Mapping[str, Sequence[str]] | None = None, *,
                batch_size: int | None = None, resume: bool = False,
                progress: bool = True, part_size: int = DEFAULT_PART_SIZE,
                concurrency: int | None = None, stream: TextIO | None = None) -> BatchReport:
    """Recommendations for every user of ``user_ids``, written to ``out_path``.

    Args:
      client: a `RecommenderClient` (any backend); its ``recommender`` version pin is used.
      user_ids: a CSV/TSV/Parquet file with a ``user_id`` column, or a list of ids.
      out_path: ``*.parquet``/``*.pq`` (Parquet) or ``*.csv``; replaced atomically at the end.
      n: recommendations per user (None: all the export returns, its ``n``).
      exclude: movies never to recommend per user: a ratings file (e.g. a run's
        ``split/train.parquet``: "don't recommend what they have seen") or a mapping.
      batch_size: users per request; None: ``LOCAL_BATCH_SIZE`` (256) with a local model,
        ``DEFAULT_BATCH_SIZE`` (128, TF Serving's batcher here takes at most 128) otherwise.
      resume: keep the parts an interrupted run with the same inputs wrote.
      progress: show users done, users/s and ETA on ``stream`` (default stderr).
      part_size: users per part file, the unit of ``resume``.
      concurrency: requests in flight at once: overlaps one request's Python work with another's
        model time locally, and network round trips with a remote server; None:
        ``LOCAL_CONCURRENCY`` (4) with a local model, ``DEFAULT_CONCURRENCY`` (2) otherwise.

    Returns:
      a `BatchReport`.
    """
    start = time.perf_counter()
    out = Path(out_path)
    fmt = output_format(out)
    local = isinstance(client.backend, LocalBackend)
    if batch_size is None:
        batch_size = LOCAL_BATCH_SIZE if local else DEFAULT_BATCH_SIZE
    if concurrency is None:
        concurrency = LOCAL_CONCURRENCY if local else DEFAULT_CONCURRENCY
    for name, value in (("batch_size", batch_size), ("part_size", part_size),
                        ("concurrency", concurrency)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name} must be an int >= 1, got {value!r}")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise UserError(f"n must be an int >= 1, got {n!r}")
    paths.check_parent(out, "--out")
    paths.check_writable(out.parent)
    check_outputs(out, {"users file": user_ids, "exclude file (--exclude-seen)": exclude,
                        "export": _export_input(client)})
    users = read_user_ids(user_ids)
    seen = seen_movies(exclude) if exclude is not None else {}
    histories = users.histories
    manifest = {"ids": _digest("\x00".join(users.ids)), "users": len(users.ids), "n": n,
                "batch_size": batch_size, "part_size": part_size,
                "exclude": _exclude_digest(exclude), "model": _model_identity(client),
                "history": None if histories is None else _digest(json.dumps(
                    [histories[u] for u in users.ids]))}
    pin = _pin(client)
    predict = predict_for(client.backend, **pin)
    load_seconds = 0.0
    if histories is not None and any(histories.values()):
        # Before anything is written: an export older than with_history stops the run here.
        loading = time.perf_counter()
        try:
            predict(_inputs([_PROBE_ID], [[]], [[]]))
        except ServingError as err:
            if missing_signature(err, contract.WITH_HISTORY):
                raise client.no_history(MODEL) from None
            raise
        if local:
            load_seconds = time.perf_counter() - loading
    work = out.with_name(f".{out.name}.parts")
    done = _prepare_work_dir(work, manifest, resume)

    starts = range(0, len(users.ids), part_size)
    resumed = sum(min(part_size, len(users.ids) - s) for i, s in enumerate(starts) if i in done)
    bar = _Progress(len(users.ids), resumed, stream or sys.stderr, enabled=progress)
    pool = ThreadPoolExecutor(concurrency) if concurrency > 1 else None
    try:
        # A local model is loaded before the rate's clock: TensorFlow's import and the
        # SavedModel's load are paid once per process, not per user (reported apart).
        if local and len(done) < len(starts):
            loading = time.perf_counter()
            client.backend.load(MODEL, **pin)
            load_seconds += time.perf_counter() - loading
        todo = [(i, users.ids[first:first + part_size]) for i, first in enumerate(starts)
                if i not in done]
        batches = [[part[b:b + batch_size] for b in range(0, len(part), batch_size)]
                   for _, part in todo]

        def score(batch):
            return recommend_table(predict, batch, [seen.get(u, ()) for u in batch], n,
                                   None if histories is None else
                                   [histories[u] for u in batch])

        # One stream of requests over every part: a part is written while the next one's
        # requests run, so the model does not wait for the writes.
        results = _in_order(pool, score, [b for part in batches for b in part],
                            2 * concurrency)
        for (i, part), asked in zip(todo, batches):
            tables = [next(results) for _ in asked]
            _write_part(work, i, pa.concat_tables([t for t, _ in tables]),
                        [e for _, errors in tables for e in errors])
            bar.update(len(part))
    except (ServingError, KeyboardInterrupt) as err:
        bar.close()
        hint = (f"{bar.done:,}/{len(users.ids):,} users are saved in {work}; run again with "
                f"resume (--resume) to continue")
        if isinstance(err, KeyboardInterrupt):
            print(f"interrupted: {hint}", file=stream or sys.stderr)
            raise
        raise ServingError(f"{err} ({hint})", status=err.status, code=err.code,
                           model=err.model) from err
    except OSError as err:  # a full disk, a read-only folder: the parts written are kept
        bar.close()
        err.add_note(f"writing {work}: {bar.done:,}/{len(users.ids):,} users are saved there; "
                     f"free space and run again with resume (--resume) to continue")
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    bar.close()
    try:
        rows, errors = _merge(work, len(starts), out, fmt)
        errors_path = _write_errors(out, users.errors + errors)
    except OSError as err:
        err.add_note(f"writing {out}: every user is scored and saved in {work}; free space and "
                     f"run again with resume (--resume) to write it")
        raise
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    scored = len(users.ids) - resumed
    scoring = seconds - load_seconds
    return BatchReport(str(out), len(users.ids) - len(errors), rows,
                       len(users.errors) + len(errors), errors_path, users.duplicates, resumed,
                       seconds, scored / scoring if scoring > 0 else 0.0, load_seconds)


def _in_order(pool: ThreadPoolExecutor | None, fn: Callable, items: list, ahead: int):
    """``map(fn, items)`` in order; with a ``pool``, at most ``ahead`` calls submitted and not
    yet taken (``Executor.map`` would submit them all at once)."""
    if pool is None:
        yield from map(fn, items)
        return
    pending = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def output_format(out: str | os.PathLike) -> str:
    """``"parquet"`` for ``*.parquet``/``*.pq``, ``"csv"`` for ``*.csv``, else `UserError`."""
    suffix = Path(out).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise UserError(f"output {str(out)!r}: name it *.parquet (or *.pq) for Parquet or *.csv for "
                    f"CSV, got extension {suffix or 'none'!r}")


def check_outputs(out: str | os.PathLike, inputs: Mapping[str, object]) -> None:
    """`UserError` when a file the job writes is one it reads.

    Written: ``out``, ``out.errors.csv``, the work dir ``.OUT.parts/`` (and anything in it)
    and the temp files ``.OUT.tmp-*`` / ``.OUT.errors.csv.tmp-*`` beside ``out``. ``inputs``
    maps a name for the message to a path (or to a `tfrs_movies.paths.Input`, e.g. the export
    with its own files); other values (id lists, mappings, None) are skipped. Paths are
    compared resolved (symlinks, ``..``, relative paths), and existing files also by inode
    (hard links): `tfrs_movies.paths.check_outputs`, the check of every command.
    """
    out = Path(out).resolve()
    errors = out.with_name(f"{out.name}.errors.csv")
    work = out.with_name(f".{out.name}.parts")
    reads = [value if isinstance(value, paths.Input) else paths.Input(f"the {role}", value)
             for role, value in inputs.items()]
    paths.check_outputs([
        paths.Output("--out", out),
        paths.Output("--out", errors, f"the bad-id file {errors.name} of --out"),
        paths.Output("--out", work, f"the work dir {work.name} of --out", tree=True)], reads)
    temp_prefixes = (f".{out.name}.tmp-", f".{errors.name}.tmp-")
    for read in reads:
        if not isinstance(read.path, (str, os.PathLike)):
            continue
        path = Path(read.path).resolve()
        if path.parent == out.parent and path.name.startswith(temp_prefixes):
            raise UserError(f"refusing to write a temporary file of --out: it is {read.what} "
                            f"{str(read.path)!r}, an input of this job; choose another --out")


def _export_input(client) -> paths.Input | None:
    """The export a local client reads, with its own files (models.config, model folders)."""
    backend = getattr(client, "backend", None)
    if not isinstance(backend, LocalBackend):
        return None
    return paths.Input("the export (--model-dir)", backend.export_dir, paths.EXPORT_FILES)


def check_existing(out: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """The CLI's guard against losing work, before anything is read: `UserError` when both
    ``resume`` and ``overwrite`` are asked; when an interrupted run of ``out`` left its parts
    (``.OUT.parts/``) and neither is; when ``out`` exists without ``overwrite`` (with
    ``resume`` and nothing to resume, too). `score_users` itself starts over unless resumed."""
    if resume and overwrite:
        raise UserError("give --resume (continue an interrupted run) or --overwrite (start "
                        "over), not both")
    if overwrite:
        return
    out = Path(out)
    work = out.with_name(f".{out.name}.parts")
    if (work / _MANIFEST).is_file():
        if not resume:
            raise UserError(f"an interrupted run of --out {str(out)!r} left its parts in "
                            f"{str(work)!r}: pass --resume to continue it, or --overwrite to "
                            f"start over")
        return
    if out.exists():
        if resume:
            raise UserError(f"nothing to resume: no interrupted run in {str(work)!r}, and --out "
                            f"{str(out)!r} is already written; pass --overwrite to score again")
        raise UserError(f"--out {str(out)!r} exists: pass --overwrite to replace it (or "
                        f"choose another --out)")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _exclude_digest(exclude) -> str | None:
    if exclude is None:
        return None
    if isinstance(exclude, Mapping):
        return _digest(json.dumps(seen_movies(exclude), sort_keys=True))
    sha = hashlib.sha256()
    with open(exclude, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _pin(client) -> dict:
    """``backend.predict`` keywords for the client's version or label pin; a local label is
    resolved once, so a promote during the run cannot mix two versions into one output."""
    pin = client.pin(MODEL) if hasattr(client, "pin") else {"version": client.versions.get(MODEL)}
    if pin.get("label") is not None and isinstance(client.backend, LocalBackend):
        return {"version": int(os.path.basename(client.backend.model_path(MODEL, **pin)))}
    return pin


def _model_identity(client) -> str | None:
    """The local model version dir; for a server only the version or label pin is known."""
    backend = getattr(client, "backend", None)
    pin = _pin(client)
    if isinstance(backend, LocalBackend):
        return backend.model_path(MODEL, **pin)
    if pin.get("label") is not None:
        return f"label {pin['label']}"
    return None if pin["version"] is None else f"version {pin['version']}"


_MANIFEST_NAMES = {"ids": "the input ids", "users": "the number of users", "n": "-n",
                   "batch_size": "the batch size", "part_size": "the part size",
                   "exclude": "the exclusions (--exclude-seen)", "model": "the model",
                   "history": "the histories (history column)"}


def _prepare_work_dir(work: Path, manifest: dict, resume: bool) -> set[int]:
    """Creates the work dir (or checks it for resume); returns the finished part numbers."""
    path = work / _MANIFEST
    if resume and path.is_file():
        try:
            old = json.loads(path.read_text())
            if not isinstance(old, dict):
                raise ValueError(f"a JSON {type(old).__name__}, not an object")
        except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError included
            raise UserError(f"cannot resume: {path} is unreadable or corrupted ({e}); delete "
                            f"{work} or run again without --resume to start over") from None
        changed = [_MANIFEST_NAMES.get(k, k) for k in manifest if old.get(k) != manifest[k]]
        if changed:
            raise UserError(f"cannot resume from {work}: it was written for different "
                            f"{', '.join(changed)}; run without resume to start over")
        return {int(p.name[5:11]) for p in work.glob("part-??????.parquet")}
    if work.exists():
        shutil.rmtree(work)  # an earlier run's leftovers: start over
    work.mkdir()
    tmp = work / f"{_MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path)
    return set()


def _write_part(work: Path, i: int, table: pa.Table, errors: list[tuple[str, str]]) -> None:
    """Errors first, then the part: a part file's presence marks the part (and its errors)
    done."""
    name = f"part-{i:06d}"
    errors_path = work / f"{name}.errors.json"
    if errors:
        errors_path.write_text(json.dumps(errors))
    elif errors_path.exists():
        errors_path.unlink()
    tmp = work / f".{name}.parquet.tmp"
    pq.write_table(table, tmp)
    tmp.replace(work / f"{name}.parquet")


def _merge(work: Path, parts: int, out: Path, fmt: str) -> tuple[int, list[tuple[str, str]]]:
    """Concatenates the parts into a temp file beside ``out`` and renames it onto ``out``."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    rows, errors, pending = 0, [], []
    writer = (pq.ParquetWriter(tmp, SCHEMA) if fmt == "parquet" else
              pacsv.CSVWriter(tmp, SCHEMA))
    try:
        with writer:
            for i in range(parts):
                table = pq.read_table(work / f"part-{i:06d}.parquet", schema=SCHEMA)
                errors_path = work / f"part-{i:06d}.errors.json"
                if errors_path.exists():
                    errors += [tuple(e) for e in json.loads(errors_path.read_text())]
                rows += table.num_rows
                pending.append(table)
                if sum(t.num_rows for t in pending) >= 1 << 20:  # ~1M-row Parquet row groups
                    writer.write_table(pa.concat_tables(pending))
                    pending = []
            if pending or rows == 0:
                writer.write_table(pa.concat_tables(pending) if pending else
                                   SCHEMA.empty_table())
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return rows, errors


def _write_errors(out: Path, errors: list[tuple[str, str]]) -> str | None:
    """``OUT.errors.csv`` (user_id, error); a stale one from an earlier run is removed."""
    path = out.with_name(f"{out.name}.errors.csv")
    if not errors:
        if path.exists():
            path.unlink()
        return None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pd.DataFrame(errors, columns=list(ERROR_COLUMNS)).to_csv(tmp, index=False)
    tmp.replace(path)
    return str(path)


class _Progress:
    """``users 12,345/943,000  1,234 users/s  ETA 0:12:34`` on stderr: one line redrawn in
    place on a terminal, else a new line every 10 s or 10% of the users.

    After the first update the rate is measured from that update on, so the model's load
    time (paid by the first part) does not skew the ETA.
    """

    def __init__(self, total: int, done: int, stream: TextIO, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.done, self.stream, self.clock = total, done, stream, clock
        self.start_done = done
        self.enabled = enabled and total > 0
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.start = self.last = clock()
        self.since = (self.start, done)  # (time, users done) the rate is measured from
        self.updates = 0
        self.last_decile = (10 * done) // max(total, 1)

    def line(self) -> str:
        start, done = self.since
        if self.done == done:  # nothing since the first part: the whole run's rate
            start, done = self.start, self.start_done
        elapsed = self.clock() - start
        rate = (self.done - done) / elapsed if elapsed > 0 else 0.0
        eta = (str(timedelta(seconds=round((self.total - self.done) / rate))) if rate > 0
               else "?")
        return f"users {self.done:,}/{self.total:,}  {format_rate(rate)} users/s  ETA {eta}"

    def update(self, k: int) -> None:
        self.done += k
        self.updates += 1
        if self.enabled:
            now = self.clock()
            decile = (10 * self.done) // self.total
            if self.tty and now - self.last >= 0.2:
                self.stream.write(f"\r{self.line()}\x1b[K")
                self.stream.flush()
                self.last = now
            elif not self.tty and (now - self.last >= 10 or decile > self.last_decile):
                self.stream.write(self.line() + "\n")
                self.stream.flush()
                self.last, self.last_decile = now, decile
        if self.updates == 1:
            self.since = (self.clock(), self.done)

    def close(self) -> None:
        if self.enabled:
            self.stream.write((f"\r{self.line()}\x1b[K\n" if self.tty else ""))
            self.stream.flush()
            self.enabled = False
