"""Batch scoring as an Apache Beam pipeline: `serving.batch`'s rows, on any Beam runner.

    python -m serving.beam_pipeline --users users.csv --out recs.parquet \\
        --model-dir exports/ml100k -n 10 --exclude-seen runs/ml100k/split/train.parquet
    python -m serving.beam_pipeline --users gs://B/users.parquet --out gs://B/recs.parquet \\
        --model-dir gs://B/exports/ml100k -n 10 --num-shards 0 \\
        --runner DataflowRunner --project P --region R --temp_location gs://B/tmp \\
        --extra_package dist/tfrs_movies-0.1.0-py3-none-any.whl

Needs the ``[beam]`` extra (``pip install 'tfrs-movies[beam]'``). Flags after ours are Beam
pipeline options (``--runner DirectRunner`` by default; ``DataflowRunner``, ``FlinkRunner``,
``SparkRunner`` with their own options); workers need this package installed
(``--extra_package`` a wheel, or a custom container) and, for a ScaNN export, ``scann``.

The pipeline: read ``user_id`` and, when the file has one, ``history`` (CSV/TSV with a header
via ``ReadFromText``, or ``ReadFromParquet``; the history as `serving.batch` reads it: a list
column, or ``|``-separated ids) -> validate with `serving.batch`'s rules (bad ids to
``OUT.errors.csv``) -> distinct -> join each user's seen movies (``--exclude-seen``) ->
``BatchElements`` of
``--batch-size`` -> a DoFn that loads the ``recommender`` SavedModel once per worker process in
``setup()`` and scores each batch with `serving.batch.recommend_table` (the local scorer's own
function, so the rows are the same) -> ``WriteToParquetBatched`` or ``WriteToText`` (CSV).

Differences from ``python -m serving batch``: rows are in no particular order (sort by
``user_id, rank`` to compare); ``--exclude-seen`` must be CSV/TSV/Parquet with a header
(``user_id, movie_id``; e.g. a run's ``split/train.parquet``; MovieLens ``u.data`` is not read
here) and rows with a blank id are ignored rather than refused; a user id repeated with
different histories keeps one of them (not always the first); ``OUT.errors.csv`` is always
written (maybe only its header); there is no resume (runners retry failed bundles themselves).
At the end (on a runner that waits for the job) it prints the local scorer's one-line summary,
from Beam counters in namespace ``tfrs_movies``: users, rows, bad ids, duplicates, seconds.
A model dir the workers cannot see as a local folder (``gs://...``) is copied to a local temp
folder once per worker with Beam's filesystems.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from serving.backends import LocalBackend, ServingError
from serving.batch import (DEFAULT_BATCH_SIZE, ERROR_COLUMNS, HISTORY, MODEL, SCHEMA,
                           BatchReport, check_outputs, normalize_ids, output_format,
                           parse_history, predict_for, recommend_table)
from tfrs_movies.errors import UserError

try:
    import apache_beam as beam
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.utils import shared
except ImportError as _err:  # the module stays importable; `build` explains what is missing
    beam = None
    _BEAM_IMPORT_ERROR = _err

_PARQUET = (".parquet", ".pq")
_ALIASES = {"user_id": ("user_id", "userId", "user"), "movie_id": ("movie_id", "movieId"),
            HISTORY: (HISTORY, "history_movie_ids")}
# pyarrow's CSV writer (the local scorer's) quotes the header names.
_CSV_HEADER = ",".join(f'"{name}"' for name in SCHEMA.names)
_VALIDATE_BATCH = 10_000  # ids validated together (vectorized, like the local scorer)
_METRICS = "tfrs_movies"  # namespace of the counters the summary reads


def _require_beam() -> None:
    if beam is None:
        raise UserError(f"the Beam pipeline needs Apache Beam: pip install 'tfrs-movies[beam]' "
                        f"({_BEAM_IMPORT_ERROR})")


def _first_file(pattern: str) -> str:
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise UserError(f"{pattern}: no such file")
    return sorted(m.path for m in matches)[0]


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _columns(pattern: str, wanted: tuple[str, ...], optional: tuple[str, ...] = ()
             ) -> tuple[list[str], str, list[int] | None]:
    """Actual column names for ``wanted`` (aliases allowed), then for those of ``optional`` the
    file has, the file kind, and for text files the delimiter's field positions of those
    columns (from the header line)."""
    path = _first_file(pattern)
    if path.lower().endswith(_PARQUET):
        import pyarrow.parquet as pq

        with _open(path) as f:
            header = pq.ParquetFile(f).schema_arrow.names
        kind = "parquet"
    else:
        with _open(path) as f:
            line = f.readline().decode("utf-8", "replace").rstrip("\r\n")
        kind = "tsv" if "\t" in line or path.lower().endswith(".tsv") else "csv"
        header = [h.strip() for h in _split(line, kind)]
    names = []
    for column in wanted:
        found = [a for a in _ALIASES[column] if a in header]
        if not found:
            raise UserError(f"{path}: missing column {column}; found {', '.join(header) or 'none'}"
                            f" (a header line naming the columns is required)")
        names.append(found[0])
    names += [found[0] for found in ([a for a in _ALIASES[c] if a in header] for c in optional)
              if found]
    return names, kind, None if kind == "parquet" else [header.index(n) for n in names]


def _split(line: str, kind: str) -> list[str]:
    # As tfrs_movies.data.tabular.read_text: quoted CSV skipping spaces after ",", raw TSV.
    if kind == "tsv":
        return next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE))
    return next(csv.reader([line], skipinitialspace=True))


def _read_columns(p, label: str, pattern: str, wanted: tuple[str, ...],
                  optional: tuple[str, ...] = ()):
    """A PCollection of tuples of the ``wanted`` columns, then of the ``optional`` ones the
    file has (the first file: a glob's files share one header); all-blank text lines are
    skipped."""
    names, kind, positions = _columns(pattern, wanted, optional)
    if kind == "parquet":
        return (p | f"{label}Read" >> beam.io.ReadFromParquet(pattern, columns=names)
                | f"{label}Columns" >> beam.Map(lambda row: tuple(row[n] for n in names)))

    def parse(line: str):
        fields = _split(line, kind) if line.strip() else []
        if any(f.strip() for f in fields):
            yield tuple(fields[i] if i < len(fields) else "" for i in positions)

    return (p | f"{label}Read" >> beam.io.ReadFromText(pattern, skip_header_lines=1)
            | f"{label}Parse" >> beam.FlatMap(parse))


def _validate(rows: list, source: str):
    """A batch of raw ``(id,)`` or ``(id, history)`` rows -> ``(str id, history list or
    None)``, and ``(value, reason)`` on output "errors"."""
    values = [row[0] for row in rows]
    # pandas infers the dtype as reading the whole file does (numbers with nulls: float64).
    normalized, bad = normalize_ids(pd.Series(values))
    bad_at = dict(bad)
    histories: list[list[str] | None] = [None] * len(rows)
    for i, row in enumerate(rows):
        if len(row) > 1 and i not in bad_at:
            try:
                histories[i] = parse_history(row[1])
            except ValueError as err:
                bad_at[i] = str(err)
    Metrics.counter(_METRICS, "bad_ids").inc(len(bad_at))
    for i, value in enumerate(normalized):
        if i in bad_at:
            text = "" if values[i] is None or (isinstance(values[i], float)
                                               and np.isnan(values[i])) else str(values[i])
            yield beam.pvalue.TaggedOutput("errors", (text, f"{source}: {bad_at[i]}"))
        else:
            yield str(value), histories[i]


def _local_model_dir(model_dir: str, version: int | None = None, copy: bool = False) -> str:
    """``model_dir`` itself when it is a local folder, else a local copy of its recommender
    (pinned ``version`` or the highest) made with Beam's filesystems (gs://, s3://, hdfs://)."""
    if os.path.isdir(model_dir) and not copy:
        return model_dir
    root = f"{model_dir.rstrip('/')}/{MODEL}/"
    found = FileSystems.match([f"{root}*/saved_model.pb"])[0].metadata_list
    versions = sorted(int(v) for v in (m.path[len(root):].split("/")[0] for m in found)
                      if v.isdigit())
    if not versions or (version is not None and version not in versions):
        raise ServingError(f"no {MODEL} model{f' version {version}' if version else ''} under "
                           f"{root} (found versions {versions})", code="NOT_FOUND", model=MODEL)
    source = f"{root}{version or versions[-1]}/"
    local = tempfile.mkdtemp(prefix="tfrs-movies-model-")
    target = os.path.join(local, MODEL, str(version or versions[-1]))
    for m in FileSystems.match([f"{source}**"])[0].metadata_list:
        dest = os.path.join(target, *m.path[len(source):].split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with _open(m.path) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    return local


if beam is not None:
    class ScoreBatches(beam.DoFn):
        """``[(user_id, [seen movie ids], history or None)]`` batches -> `SCHEMA` tables (main
        output) and ``(user_id, error)`` for users the model rejected (output ``"errors"``);
        users with a history are asked through ``with_history``.

        The SavedModel is loaded once per worker process (``setup`` + ``shared.Shared``), not
        per bundle or element.
        """

        def __init__(self, model_dir: str, n: int | None, version: int | None = None):
            self.model_dir, self.n, self.version = model_dir, n, version
            self._shared = shared.Shared()
            self._backend = None

        def setup(self):
            key = (self.model_dir, self.version)
            self._backend = self._shared.acquire(self._load, tag=key)

        def _load(self):
            return LocalBackend(_local_model_dir(self.model_dir, self.version))

        def process(self, batch):
            users = [u for u, _, _ in batch]
            exclude = [seen for _, seen, _ in batch]
            history = [h or [] for _, _, h in batch]
            table, errors = recommend_table(predict_for(self._backend, version=self.version),
                                            users, exclude, self.n, history)
            Metrics.counter(_METRICS, "users").inc(len(users) - len(errors))
            Metrics.counter(_METRICS, "rows").inc(table.num_rows)
            Metrics.counter(_METRICS, "bad_ids").inc(len(errors))
            yield table
            for error in errors:
                yield beam.pvalue.TaggedOutput("errors", error)


def _csv_text(table: pa.Table) -> str:
    """Rows formatted exactly as the local scorer's CSV (pyarrow's writer), no header."""
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False))
    return buffer.getvalue().decode("utf-8").rstrip("\n")


def _csv_line(values) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def _seen_once(kv):
    """A CoGroupByKey row -> ``(user_id, seen, history)`` once for a user in the input,
    counting the repeats of a user id as duplicates."""
    user, groups = kv
    histories = list(groups["ids"])
    if len(histories) > 1:
        Metrics.counter(_METRICS, "duplicates").inc(len(histories) - 1)
    return [(user, list(groups["seen"]), histories[0])] if histories else []


def _sink(num_shards: int) -> dict:
    return {"num_shards": num_shards, "shard_name_template": "" if num_shards == 1 else None} \
        if num_shards else {}


def build(p, users: str, out: str, model_dir: str, n: int | None = None,
          exclude: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
          num_shards: int = 1, version: int | None = None) -> None:
    """Adds the scoring steps to pipeline ``p``: ``users`` file(s) in, ``out`` written.

    Args:
      users: CSV/TSV/Parquet file or glob with a ``user_id`` column, and optionally a
        ``history`` column (see `serving.batch`).
      out: ``*.parquet``/``*.pq`` or ``*.csv``; with ``num_shards`` 1 exactly this file,
        else ``OUT-SSSSS-of-NNNNN`` shards (0: the runner picks the number).
      model_dir: the export root (local, or any Beam filesystem such as ``gs://``).
      n, exclude, batch_size: as `serving.batch.score_users`.
      version: pin the recommender version (default: the highest).
    """
    _require_beam()
    fmt = output_format(out)
    if n is not None and n < 1 or batch_size < 1 or num_shards < 0:
        raise UserError(f"need n >= 1, batch size >= 1 and shards >= 0, got n={n}, "
                        f"batch size {batch_size}, {num_shards} shards")
    if "://" not in model_dir and not os.path.isdir(model_dir):
        raise UserError(f"export dir {model_dir!r} does not exist or is not a directory")
    if "://" not in out:
        check_outputs(out, {role: path for role, path in (
            ("users file", users), ("exclude file (--exclude-seen)", exclude))
            if path and "://" not in path})
    raw = _read_columns(p, "Users", users, ("user_id",), (HISTORY,))
    checked = (raw | "BatchRaw" >> beam.BatchElements(min_batch_size=_VALIDATE_BATCH,
                                                        max_batch_size=_VALIDATE_BATCH)
               | "Validate" >> beam.FlatMap(_validate, users).with_outputs("errors", main="ids"))
    keyed = checked.ids  # (user_id, history or None)
    if exclude:
        pairs = (_read_columns(p, "Seen", exclude, ("user_id", "movie_id"))
                 | "SeenValid" >> beam.Filter(lambda r: all(
                     isinstance(v, str) and v.strip() for v in r))
                 | "SeenStr" >> beam.Map(lambda r: (str(r[0]), str(r[1]))))
    else:
        pairs = p | "NoSeen" >> beam.Create([])
    requests = ({"ids": keyed, "seen": pairs} | "Join" >> beam.CoGroupByKey()
                | "WithSeen" >> beam.FlatMap(_seen_once))
    scored = (requests
              | "Batch" >> beam.BatchElements(min_batch_size=batch_size,
                                              max_batch_size=batch_size)
              | "Score" >> beam.ParDo(ScoreBatches(model_dir, n, version)).with_outputs(
                  "errors", main="tables"))
    if fmt == "parquet":
        scored.tables | "WriteParquet" >> beam.io.parquetio.WriteToParquetBatched(
            out, SCHEMA, **_sink(num_shards))
    else:
        (scored.tables | "CsvRows" >> beam.Map(_csv_text).with_output_types(str)
         | "DropEmpty" >> beam.Filter(bool)
         | "WriteCsv" >> beam.io.WriteToText(out, header=_CSV_HEADER, **_sink(num_shards)))
    ((checked.errors, scored.errors) | "Errors" >> beam.Flatten()
     | "ErrorLines" >> beam.Map(_csv_line)
     | "WriteErrors" >> beam.io.WriteToText(f"{out}.errors.csv", header=",".join(ERROR_COLUMNS),
                                            num_shards=1, shard_name_template=""))


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Our flags, and the rest as Beam pipeline options."""
    parser = argparse.ArgumentParser(prog="python -m serving.beam_pipeline",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--users", required=True, metavar="FILE",
                        help="CSV/TSV/Parquet file (or glob) with a user_id column and "
                             "optionally a history column (a list, or 50|181|1 in CSV)")
    parser.add_argument("--out", required=True, metavar="FILE", help="*.parquet or *.csv")
    parser.add_argument("--model-dir", required=True, metavar="DIR", help="export root")
    parser.add_argument("-n", type=int, default=None, metavar="N",
                        help="recommendations per user (default: all the export returns)")
    parser.add_argument("--exclude-seen", metavar="RATINGS_FILE",
                        help="CSV/TSV/Parquet with user_id, movie_id: never recommend these")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="B",
                        help=f"users per model call (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--num-shards", type=int, default=1, metavar="S",
                        help="output files: 1 (default) writes exactly --out, 0 lets the "
                             "runner choose")
    parser.add_argument("--version", type=int, default=None,
                        help="recommender version (default: the highest)")
    return parser.parse_known_args(argv)


def report(result, out: str, seconds: float, num_shards: int = 1) -> BatchReport | None:
    """The `BatchReport` of a finished pipeline, from its counters; None while it runs."""
    from apache_beam.runners.runner import PipelineState

    if result is None or result.state != PipelineState.DONE:
        return None
    counts = dict.fromkeys(("users", "rows", "bad_ids", "duplicates"), 0)
    for counter in result.metrics().query(MetricsFilter().with_namespace(_METRICS))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counts[counter.key.metric.name] += int(value or 0)
    target = out if num_shards == 1 else f"{out}-*-of-*"
    return BatchReport(target, counts["users"], counts["rows"], counts["bad_ids"],
                       f"{out}.errors.csv" if counts["bad_ids"] else None, counts["duplicates"],
                       0, seconds, counts["users"] / seconds if seconds > 0 else 0.0)


def run(argv: list[str] | None = None) -> int:
    """Builds and runs the pipeline, then prints its summary; returns the exit code (2 for a
    user error)."""
    args, beam_args = parse_args(argv)
    start = time.perf_counter()
    try:
        _require_beam()
        p = beam.Pipeline(options=PipelineOptions(beam_args))
        with p:
            build(p, args.users, args.out, args.model_dir, n=args.n, exclude=args.exclude_seen,
                  batch_size=args.batch_size, num_shards=args.num_shards, version=args.version)
    except UserError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    summary = report(getattr(p, "result", None), args.out, time.perf_counter() - start,
                     args.num_shards)
    print(summary.summary() if summary is not None else
          "pipeline submitted; it is still running (no summary until it finishes)")
    return 0


if __name__ == "__main__":
    sys.exit(run())
