"""MovieLens through TensorFlow Datasets (``movielens/<version>-ratings`` and ``-movies``).

TFDS builds the dataset once into ``data_dir`` (TFDS's default when None) from the official
GroupLens zip, downloading it, or offline from ``manual_dir`` holding that zip
(``DownloadConfig(manual_dir=...)``). Without either, a build would spend minutes retrying
the download, so an unreachable GroupLens host is detected first and reported as a
``DataError`` naming ``--tfds-manual-dir`` and ``--data-dir``.

Tables: ratings and (100k, 1m) user demographics come from ``-ratings``; movies from
``-movies``, so movies nobody rated stay in the catalogue exactly as
``movielens.read_movielens_dir`` keeps them. Both are read by parsing the TFRecord shards in
batches of 65536 (no per-example decoding or Python): latest-small's 100,836 ratings take
~0.5 s instead of ~6 s through ``as_dataset``.
"""
from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tfrs_movies.data.schema import (MOVIE_COLUMNS, RATING_COLUMNS, USER_COLUMNS,
                                     MovieLensData, conform)
from tfrs_movies.errors import DataError

log = logging.getLogger(__name__)
TFDS_VERSIONS = ("100k", "1m", "20m", "25m", "latest-small")
_HOST = "files.grouplens.org"
_BATCH = 1 << 16


def load_tfds(version: str, *, manual_dir: str | None = None,
              data_dir: str | None = None) -> MovieLensData:
    """``movielens/<version>`` through TFDS, as ``MovieLensData`` (see module doc)."""
    if version not in TFDS_VERSIONS:
        raise DataError(f"movielens/{version} is not in TFDS ({', '.join(TFDS_VERSIONS)}); "
                        f"pass --data-dir DIR, the extracted MovieLens folder")
    if manual_dir and not Path(manual_dir).expanduser().is_dir():
        raise DataError(f"{manual_dir}: no such directory (--tfds-manual-dir)")
    import tfrs_movies  # noqa: F401  sets TF_USE_LEGACY_KERAS before TensorFlow loads
    import tensorflow as tf
    import tensorflow_datasets as tfds

    start = time.perf_counter()
    ratings_builder = _prepared(tfds, version, "ratings", manual_dir, data_dir)
    movies_builder = _prepared(tfds, version, "movies", manual_dir, data_dir)
    ratings, users = _ratings_and_users(tf, ratings_builder)
    movies = _movies(tf, movies_builder)
    log.debug("movielens/%s from TFDS: %d ratings in %.1fs", version, len(ratings),
             time.perf_counter() - start)
    return MovieLensData(ratings=ratings, movies=movies, users=users,
                         name=f"movielens/{version} (TFDS)")


def _online(host: str = _HOST, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers on port 443 within ``timeout`` seconds."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hint(version: str) -> str:
    return (f"pass --tfds-manual-dir DIR (a folder holding the official ml-{version}.zip) or "
            f"--data-dir DIR (the extracted ml-{version} folder)")


def _prepared(tfds, version: str, table: str, manual_dir, data_dir):
    """The TFDS builder of ``movielens/<version>-<table>``, built if needed."""
    name = f"movielens/{version}-{table}"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():
            return builder
    except Exception as e:  # TFDS raises many types for a bad data_dir
        raise DataError(f"TFDS cannot open {name} in {data_dir or 'its default data dir'} "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                        ) from None
    zip_name = f"ml-{version}.zip"
    has_zip = bool(manual_dir) and (Path(manual_dir).expanduser() / zip_name).is_file()
    if not has_zip and not _online():
        where = f"{manual_dir} has no {zip_name} and " if manual_dir else ""
        raise DataError(f"cannot build TFDS {name}: {where}{_HOST} is unreachable (offline?); "
                        + _hint(version))
    config = (tfds.download.DownloadConfig(manual_dir=str(Path(manual_dir).expanduser()))
              if manual_dir else None)
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as e:  # download, checksum and parse errors all end up here
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"TFDS could not build {name} ({type(e).__name__}: {first}); "
                        + _hint(version)) from None
    return builder


def _decode(values: np.ndarray) -> np.ndarray:
    """UTF-8 bytes -> ``str`` object array, decoding each distinct value once."""
    codes, uniques = pd.factorize(values)
    names = np.empty(len(uniques), dtype=object)
    names[:] = [u.decode("utf-8") for u in uniques]
    return names[codes]


def _columns(tf, builder, keep) -> dict[str, np.ndarray]:
    """The features ``keep`` (those the dataset has) of the train split as numpy arrays.

    Reads the TFRecord shards and parses 65536 serialized examples per ``tf.io.parse_example``
    call (per-example decoding through ``as_dataset`` is ~50x slower). ``movie_genres``
    comes back as a list of int lists. Falls back to ``as_dataset`` for other file formats.
    """
    features = builder.info.features
    keep = [k for k in keep if k in features.keys()]
    serialized = features.get_serialized_info()
    dtypes = {k: serialized[k].tf_dtype for k in keep}
    fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
    if fmt != "tfrecord":
        ds = builder.as_dataset(split="train", shuffle_files=False).ragged_batch(_BATCH)
    else:
        spec = {k: (tf.io.VarLenFeature(tf.int64) if k == "movie_genres"
                    else features.tf_example_spec[k]) for k in keep}
        files = [str(f) for f in builder.info.splits["train"].filepaths]
        ds = (tf.data.TFRecordDataset(files).batch(_BATCH)
              .map(lambda s: tf.io.parse_example(s, spec), num_parallel_calls=tf.data.AUTOTUNE)
              .prefetch(tf.data.AUTOTUNE))
    parts = {k: [] for k in keep}
    for batch in ds:
        for k in keep:
            value = batch[k]
            if isinstance(value, tf.sparse.SparseTensor):
                value = tf.RaggedTensor.from_sparse(value)
            parts[k].append(value.to_list() if isinstance(value, tf.RaggedTensor)
                            else value.numpy())
    out = {}
    for k, chunks in parts.items():
        if k == "movie_genres":
            out[k] = [list(map(int, row)) for chunk in chunks for row in chunk]
            continue
        values = np.concatenate(chunks) if chunks else np.zeros(0)
        if dtypes[k] == tf.string:
            values = _decode(values)
        elif dtypes[k] == tf.bool:
            values = values.astype(bool)
        out[k] = values
    return out


def _ratings_and_users(tf, builder) -> tuple[pd.DataFrame, pd.DataFrame]:
    cols = _columns(tf, builder, list(dict.fromkeys([*RATING_COLUMNS, *USER_COLUMNS])))
    ratings = conform(cols, RATING_COLUMNS)
    users = pd.DataFrame({k: v for k, v in cols.items() if k in USER_COLUMNS})
    return ratings, conform(users.drop_duplicates("user_id"), USER_COLUMNS)


def _movies(tf, builder) -> pd.DataFrame:
    return conform(_columns(tf, builder, list(MOVIE_COLUMNS)), MOVIE_COLUMNS)
