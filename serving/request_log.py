"""A request log of what was shown: one JSON line per user of every answered request.

    from serving import make_client
    from serving.request_log import RequestLog, records
    client = make_client(url="http://localhost:8501", request_log=RequestLog("logs/requests.jsonl"))
    client.recommend(["42"])                      # appends one line
    shown = list(records("logs/requests.jsonl"))  # every segment, oldest first

A record (keys in this order; ``arm``/``experiment`` only for routed traffic, see
`serving.router`)::

    {"time": "2026-08-01T12:00:00.123456Z", "request_id": "5f0c...", "user_id": "42",
     "model": "recommender", "version": 3, "label": "canary", "arm": "canary",
     "experiment": "ranker-v2", "movie_ids": ["174", "50", "181"]}

``movie_ids`` are the ids the caller got, in order (after the client dropped padding and cut to
``n``); ``version`` is the version that answered when the backend can tell (see
`serving.backends.Answer`), else null; ``label`` is the label asked for, else null. All the
users of one request share ``time`` and ``request_id``. Similar-movie queries have
``"user_id": null`` and their seeds in ``seed_ids``. Joining these records with later clicks or
watches on (user_id, movie_id) gives click-through or watch-through per version or arm.

Rotation by size: before a write that would take the active file past ``max_bytes``, the file
is renamed to ``STEM.000001.SUFFIX`` (then ``.000002.``, ... never renumbered, so a reader that
has processed segment k never sees it change) and a new active file is started; ``keep`` bounds
how many rotated segments stay. Each append is one ``write`` of whole lines, flushed; one process
should own a log file (give each worker its own path), as rotation is not coordinated across
processes.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from tfrs_movies.errors import DataError, UserError

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def _segment_pattern(path: Path) -> re.Pattern:
    return re.compile(re.escape(path.stem) + r"\.(\d{6,})" + re.escape(path.suffix) + "$")


def segments(path: str | os.PathLike) -> list[Path]:
    """The rotated segments of the log at ``path``, oldest first, then the active file."""
    path = Path(path)
    pattern = _segment_pattern(path)
    numbered = sorted((int(m[1]), p) for p in path.parent.glob(f"{path.stem}.*{path.suffix}")
                      if (m := pattern.match(p.name)))
    return [p for _, p in numbered] + ([path] if path.exists() else [])


class RequestLog:
    """Appends request records as JSON lines to ``path``, rotating by size.

    Args:
      path: the active file, e.g. ``logs/requests.jsonl`` (its folder must exist).
      max_bytes: rotate before the active file would grow past this (a single request larger
        than this still goes into one file).
      keep: rotated segments to keep (oldest deleted first); None keeps all.
      clock: seconds since the epoch (tests pass a fixed clock).
    """

    def __init__(self, path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES,
                 keep: int | None = None, *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise UserError(f"request log folder {str(self.path.parent)!r} does not exist")
        if self.path.is_dir():
            raise UserError(f"request log {str(self.path)!r} is a directory; give a file name")
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
            raise UserError(f"max_bytes must be an int >= 1, got {max_bytes!r}")
        if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool)
                                 or keep < 0):
            raise UserError(f"keep must be None or an int >= 0, got {keep!r}")
        self.max_bytes = max_bytes
        self.keep = keep
        self._clock = clock
        self._lock = threading.Lock()
        self._file = None

    def log(self, model: str, user_ids: Sequence[str | None], movie_ids: Sequence[Sequence[str]],
            *, version: int | None = None, label: str | None = None,
            fields: Mapping[str, object] | None = None,
            seed_ids: Sequence[Sequence[str]] | None = None) -> None:
        """Appends one record per user (row) of one answered request."""
        stamp = datetime.fromtimestamp(self._clock(), timezone.utc)
        common = {"time": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                  "request_id": uuid.uuid4().hex}
        lines = []
        for i, (user, ids) in enumerate(zip(user_ids, movie_ids, strict=True)):
            record = {**common, "user_id": user, "model": model, "version": version,
                      "label": label, **(fields or {})}
            if seed_ids is not None:
                record["seed_ids"] = list(seed_ids[i])
            record["movie_ids"] = list(ids)
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        self._append("".join(lines).encode("utf-8"))

    def _append(self, data: bytes) -> None:
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "ab")
            size = self._file.tell()
            if size and size + len(data) > self.max_bytes:
                self._rotate()
            self._file.write(data)
            self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        pattern = _segment_pattern(self.path)
        rotated = [p for p in segments(self.path) if pattern.match(p.name)]
        number = int(pattern.match(rotated[-1].name)[1]) + 1 if rotated else 1
        os.rename(self.path, self.path.with_name(
            f"{self.path.stem}.{number:06d}{self.path.suffix}"))
        if self.keep is not None:
            rotated = [p for p in segments(self.path) if pattern.match(p.name)]
            for old in rotated[:max(0, len(rotated) - self.keep)]:
                old.unlink()
        self._file = open(self.path, "ab")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def records(path: str | os.PathLike) -> Iterator[dict]:
    """Every record of the log at ``path`` (all segments, oldest first).

    A line that is not a JSON object raises `DataError` naming the file and 1-based line.
    """
    for segment in segments(path):
        with open(segment, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{segment} line {number}: not a JSON record ({err})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{segment} line {number}: not a JSON object: {line[:80]!r}")
                yield record
