"""Python client for the exported recommender: one API over local, REST and gRPC backends.

    from serving.client import make_client
    client = make_client(url="http://localhost:8501")        # or model_dir=..., grpc="host:8500"
    client.recommend(["42"], exclude=[["50", "181"]])       # [[Recommendation(...), ...]]
    client.similar([["1", "50"]])                           # seeds averaged: [[("172", 0.93), ...]]

The models follow the serving contract (``tfrs_movies.contract``): batched string ids in,
``[B, K]`` ids and float32 scores out. This module validates ids before anything is sent, pads the
ragged exclusion/seed lists to a rectangle, and turns output arrays into Python results.

Padding puts one ``""`` column *first* (then ``""`` after each row's ids): TF Serving's batcher
with ``pad_variable_length_inputs`` pads requests of different widths with the first element of
each request's tensor, so a leading ``""`` makes its padding the contract's pad value too. Without
it a batched similar-movies request would repeat its first seed and reweight the seed average.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from serving.backends import (
    UNNAMED_OUTPUT,
    GrpcBackend,
    LocalBackend,
    RestBackend,
    ServingError,
)
from tfrs_movies import contract
from tfrs_movies.errors import UserError, shown

__all__ = ["Backend", "GrpcBackend", "LocalBackend", "Recommendation", "RecommenderClient",
           "RestBackend", "ServingError", "make_client"]

PAD = contract.PAD


class Backend(Protocol):
    def predict(self, model: str, inputs: Mapping[str, np.ndarray],
                version: int | None = None) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Recommendation:
    """One recommended movie.

    Attributes:
      movie_id: the MovieLens movie id.
      title: the movie title frozen into the export.
      score: the retrieval score (dot product of user and movie embeddings).
      rating: the ranking model's predicted rating.
    """

    movie_id: str
    title: str
    score: float
    rating: float


class RecommenderClient:
    """Typed calls to the four exported models through any backend.

    Args:
      backend: a `LocalBackend`, `RestBackend` or `GrpcBackend` (anything with ``predict``).
      versions: optional ``{model: version}`` pins; unpinned models use the server's latest.
    """

    def __init__(self, backend: Backend, versions: Mapping[str, int] | None = None):
        self.backend = backend
        self.versions = dict(versions or {})

    def recommend(self, user_ids: Sequence[str], exclude: Sequence[Sequence[str]] | None = None,
                  *, n: int | None = None) -> list[list[Recommendation]]:
        """Best movies per user: retrieve candidates, rank them, keep the top ``n``.

        Args:
          user_ids: B user ids.
          exclude: optional B lists of movie ids never to recommend (e.g. already watched).
          n: keep at most this many per user (the export fixes the maximum).

        Returns:
          B lists of `Recommendation`, best first.
        """
        _check_n(n)
        out = self._call("recommender", self._user_inputs(user_ids, exclude))
        return [
            [Recommendation(m, t, float(s), float(r)) for m, t, s, r in row]
            for row in _rows(n, out["movie_ids"], out["titles"], out["scores"], out["ratings"])
        ]

    def retrieve(self, user_ids: Sequence[str], exclude: Sequence[Sequence[str]] | None = None,
                 *, n: int | None = None) -> list[list[tuple[str, float]]]:
        """Retrieval candidates only: B lists of ``(movie_id, score)``, highest score first."""
        _check_n(n)
        out = self._call("retrieval", self._user_inputs(user_ids, exclude))
        return [[(m, float(s)) for m, s in row]
                for row in _rows(n, out["movie_ids"], out["scores"])]

    def rank(self, user_ids: Sequence[str], movie_ids: Sequence[str]) -> np.ndarray:
        """Predicted ratings for (user, movie) pairs: float32 ``[B]``.

        A single user id is paired with every movie id.
        """
        users = _check_ids("user_ids", user_ids)
        movies = _check_ids("movie_ids", movie_ids)
        if len(users) == 1 and len(movies) > 1:
            users = users * len(movies)
        if len(users) != len(movies):
            raise UserError(f"rank needs as many user ids as movie ids (or one user id), got "
                            f"{len(users)} user ids and {len(movies)} movie ids")
        out = self._call("ranking", {"user_id": np.array(users, dtype=object),
                                     "movie_id": np.array(movies, dtype=object)})
        return np.asarray(out["rating"], dtype=np.float32).reshape(len(users))

    def similar(self, movie_ids: Sequence[Sequence[str]] | Sequence[str], *,
                n: int | None = None) -> list[list[tuple[str, float]]]:
        """Movies similar to seed movies (cosine), highest first.

        Args:
          movie_ids: either B lists of seed ids (each list is one query; its seeds' embeddings
            are averaged) or B single ids (one query per id).
          n: keep at most this many per query.

        Returns:
          B lists of ``(movie_id, score)``.
        """
        _check_n(n)
        if not isinstance(movie_ids, (list, tuple)) or not movie_ids:
            raise UserError(f"movie_ids must be a non-empty list of ids or of id lists, "
                            f"got {movie_ids!r}")
        if any(isinstance(m, str) for m in movie_ids):
            rows = [[m] for m in _check_ids("movie_ids", movie_ids)]
        else:
            rows = [_check_ids(f"movie_ids[{i}]", row) for i, row in enumerate(movie_ids)]
        out = self._call("similar_movies", {"movie_ids": _pad(rows)})
        return [[(m, float(s)) for m, s in row]
                for row in _rows(n, out["movie_ids"], out["scores"])]

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _user_inputs(self, user_ids, exclude) -> dict[str, np.ndarray]:
        users = _check_ids("user_ids", user_ids)
        if exclude is None:
            rows = [[] for _ in users]
        else:
            if not isinstance(exclude, (list, tuple)) or len(exclude) != len(users):
                raise UserError(f"exclude must be a list with one id list per user "
                                f"({len(users)}), got {exclude!r}")
            rows = [_check_ids(f"exclude[{i}]", row, allow_empty=True)
                    for i, row in enumerate(exclude)]
        return {"user_id": np.array(users, dtype=object), "exclude_movie_ids": _pad(rows)}

    def _call(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.backend.predict(model, inputs, version=self.versions.get(model))
        expected = contract.signature(model).output_names
        if len(expected) == 1 and UNNAMED_OUTPUT in out:
            out = {expected[0]: out[UNNAMED_OUTPUT]}
        missing = [name for name in expected if name not in out]
        if missing:
            raise ServingError(f"model {model!r} returned outputs {sorted(out)}, missing "
                               f"{missing}: is the export older than the serving contract?",
                               model=model)
        return out


def _check_ids(name: str, ids, allow_empty: bool = False) -> list[str]:
    """A list of non-empty str ids, or UserError naming the bad value and its position."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple, np.ndarray)):
        raise UserError(f"{name} must be a list of id strings, got {type(ids).__name__} "
                        f"{ids!r}")
    if not len(ids) and not allow_empty:
        raise UserError(f"{name} is empty: give at least one id")
    for i, value in enumerate(ids):
        if not isinstance(value, str):
            raise UserError(f"{name}[{i}] must be a str id, got {type(value).__name__} "
                            f"{shown(value)}")
        if not value.strip():
            raise UserError(f"{name}[{i}] is an empty id ({value!r}); '' is the padding value")
    return list(ids)


def _check_n(n: int | None) -> None:
    if n is not None and (not isinstance(n, int) or n < 1):
        raise UserError(f"n must be an int >= 1, got {n!r}")


def _pad(rows: list[list[str]]) -> np.ndarray:
    """Ragged id lists -> ``[B, 1 + max len]`` object array, "" first and after each row."""
    width = 1 + max((len(row) for row in rows), default=0)
    out = np.full((len(rows), width), PAD, dtype=object)
    for i, row in enumerate(rows):
        out[i, 1:1 + len(row)] = row
    return out


def _rows(n: int | None, movie_ids: np.ndarray, *columns: np.ndarray):
    """Per query, zip ids with their columns, dropping "" ids and -inf (masked) scores."""
    for b in range(movie_ids.shape[0]):
        row = []
        for k, movie_id in enumerate(movie_ids[b]):
            values = [column[b][k] for column in columns]
            if movie_id == PAD or any(
                    isinstance(v, (float, np.floating)) and math.isinf(v) and v < 0
                    for v in values):
                continue
            row.append((movie_id, *values))
        yield row[:n]


def make_client(model_dir: str | None = None, url: str | None = None, grpc: str | None = None,
                *, versions: Mapping[str, int] | None = None, **backend_kw) -> RecommenderClient:
    """A `RecommenderClient` on exactly one backend.

    Args:
      model_dir: an export dir to load in-process (`LocalBackend`).
      url: a TF Serving REST root, e.g. ``http://localhost:8501`` (`RestBackend`).
      grpc: a TF Serving gRPC address, e.g. ``localhost:8500`` (`GrpcBackend`).
      versions: optional ``{model: version}`` pins.
      **backend_kw: passed to the remote backend (``timeout``, ``retries``, ``backoff``, ...).
    """
    given = {k: v for k, v in (("model_dir", model_dir), ("url", url), ("grpc", grpc)) if v}
    if len(given) != 1:
        raise UserError(f"give exactly one of model_dir, url or grpc; got "
                        f"{sorted(given) or 'none'}")
    if model_dir:
        if backend_kw:
            raise UserError(f"a local model dir takes no {sorted(backend_kw)} options")
        backend: Backend = LocalBackend(model_dir)
    elif url:
        backend = RestBackend(url, **backend_kw)
    else:
        backend = GrpcBackend(grpc, **backend_kw)
    return RecommenderClient(backend, versions=versions)
