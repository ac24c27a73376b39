"""Python client for the exported recommender: one API over local, REST and gRPC backends.

    from serving.client import make_client
    client = make_client(url="http://localhost:8501")        # or model_dir=..., grpc="host:8500"
    client.recommend(["42"], exclude=[["50", "181"]])       # [[Recommendation(...), ...]]
    client.similar([["1", "50"]])                           # seeds averaged: [[("172", 0.93), ...]]
    client.recommend(["99999"]).known                       # [False]: the popularity fallback
    client.recommend([""], history=[["50", "181"]])         # a new user's movies, oldest first
    client.resolve_movies(["Star Wars (1977)", "50"])       # ["50", "50"]: titles or ids
    make_client(url=..., labels={"recommender": "canary"})  # a version label of models.config

The models follow the serving contract (``tfrs_movies.contract``): batched string ids in,
``[B, K]`` ids and float32 scores out. This module validates ids before anything is sent, pads the
ragged exclusion/seed/history lists to a rectangle, and turns output arrays into Python results.
A ``history`` (one list of movie ids per user, oldest first) sends the request to the model's
``with_history`` signature (`tfrs_movies.contract.HISTORY_SIGNATURES`); an export written before
it has none, and the client says so (`NoHistorySignature`) instead of a server error.

Padding puts one ``""`` column *first* (then ``""`` after each row's ids): TF Serving's batcher
with ``pad_variable_length_inputs`` pads requests of different widths with the first element of
each request's tensor, so a leading ``""`` makes its padding the contract's pad value too. Without
it a batched similar-movies request would repeat its first seed and reweight the seed average.
A history is padded the same way: the leading ``""`` is an unknown id, which the model ignores.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from serving.backends import (
    UNNAMED_OUTPUT,
    Answer,
    GrpcBackend,
    LocalBackend,
    RestBackend,
    ServingError,
    check_choice,
)
from serving.request_log import RequestLog
from tfrs_movies import contract, movie_names
from tfrs_movies.errors import UserError, shown
from tfrs_movies.movie_names import Matches

__all__ = ["Backend", "GrpcBackend", "LocalBackend", "Matches", "NoHistorySignature",
           "Recommendation", "RecommenderClient", "RestBackend", "Results", "ServingError",
           "make_client", "missing_signature"]

PAD = contract.PAD


class Backend(Protocol):
    """``predict(model, inputs, version=None, label=None)``; ``label`` is passed only when a
    label is asked for, and ``answer`` (returning an `Answer`) is optional."""

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
      rank_score: the served order's score (the learned re-ranker's; the predicted rating
        for an export without one); the list is sorted by it.
    """

    movie_id: str
    title: str
    score: float
    rating: float
    rank_score: float


class Results(list):
    """One list per query, as a plain list, plus ``known``: per query, True when the model
    answered it (a known user; a query with at least one known seed), False when the list is
    the popularity fallback (scores then ``log(1 + train ratings)``), None when the export is
    older than the ``known`` output and cannot say; and ``limit``: the most movies the model
    returns per query (the export's list length, fixed at export; None when unknown), so a
    caller asking for more can say why it got fewer."""

    def __init__(self, rows, known, limit: int | None = None):
        super().__init__(rows)
        self.known: list[bool | None] = list(known)
        self.limit = limit


class NoHistorySignature(UserError):
    """A history was given for an export written before the ``with_history`` signature.

    Attributes:
      model: the model asked (``recommender`` or ``retrieval``).
      version: the version that lacks it, as far as the backend can tell (None: unknown).
    """

    def __init__(self, model: str, version: int | None, where: str | None = None):
        which = f"version {version}" if version is not None else (where or "the version served")
        super().__init__(
            f"the {model} export ({which}) is older than the history signature: it has no "
            f"{contract.WITH_HISTORY!r} signature, so it cannot answer from a history; export "
            f"the run again (python -m trainer export) to serve one, or ask without a history")
        self.model, self.version = model, version


def missing_signature(err: ServingError, name: str) -> bool:
    """Whether ``err`` says the model has no signature ``name``: the local backend's "has no
    'NAME' signature", TF Serving's 'Serving signature key "NAME" not found' (older servers:
    'signature name: "NAME" not found in signature def'; HTTP 400, gRPC FAILED_PRECONDITION
    or INVALID_ARGUMENT)."""
    text = str(err)
    return (f"'{name}'" in text or f'"{name}"' in text) and (
        "not found" in text or "has no" in text) and (
        err.status in (400, 404) or err.code in ("NOT_FOUND", "INVALID_ARGUMENT",
                                                 "FAILED_PRECONDITION"))


class RecommenderClient:
    """Typed calls to the four exported models through any backend.

    Args:
      backend: a `LocalBackend`, `RestBackend` or `GrpcBackend` (anything with ``predict``).
      versions: optional ``{model: version}`` pins; unpinned models use the server's latest.
      labels: optional ``{model: label}`` pins to version labels of the export's models.config
        (``stable``, ``canary``); a model is pinned by a version or a label, not both.
      request_log: a `RequestLog`: every answered recommend, retrieve and similar request
        appends one record per user (rank requests show no list and are not logged).
      log_fields: extra constant fields of every logged record (the router adds its
        experiment and arm).
    """

    def __init__(self, backend: Backend, versions: Mapping[str, int] | None = None,
                 labels: Mapping[str, str] | None = None, *,
                 request_log: RequestLog | None = None,
                 log_fields: Mapping[str, object] | None = None):
        self.backend = backend
        self.versions = dict(versions or {})
        self.labels = dict(labels or {})
        for model in set(self.versions) | set(self.labels):
            check_choice(self.versions.get(model), self.labels.get(model))
        self.request_log = request_log
        self.log_fields = dict(log_fields or {})

    def pin(self, model: str) -> dict[str, object]:
        """The keyword arguments that select ``model``'s pinned version or label for
        ``backend.predict``: ``{"version": N or None}``, plus ``"label"`` when one is pinned."""
        if model in self.labels:
            return {"version": None, "label": self.labels[model]}
        return {"version": self.versions.get(model)}

    def recommend(self, user_ids: Sequence[str], exclude: Sequence[Sequence[str]] | None = None,
                  *, n: int | None = None, history: Sequence[Sequence[str]] | None = None
                  ) -> list[list[Recommendation]]:
        """Best movies per user: retrieve candidates, rank them, keep the top ``n``.

        Args:
          user_ids: B user ids; with a ``history``, an id the export never saw, or ``""``
            (no id: the answer comes from the history alone), is fine too.
          exclude: optional B lists of movie ids never to recommend (e.g. already watched).
          n: keep at most this many per user (the export fixes the maximum).
          history: optional B lists of the movie ids each user rated, oldest first (the
            export keeps the most recent when a list is longer than its maximum); asks the
            ``with_history`` signature, whose answer never includes these movies.
            `NoHistorySignature` when the export is older than it.

        Returns:
          B lists of `Recommendation`, best first, as `Results` (``.known`` per user: with a
          history, False only for an unknown id none of whose history is in the catalogue).
        """
        return self._recommend(user_ids, exclude, n, history, self.request_log is not None)[0]

    def recommend_with_version(self, user_ids: Sequence[str],
                               exclude: Sequence[Sequence[str]] | None = None, *,
                               n: int | None = None,
                               history: Sequence[Sequence[str]] | None = None
                               ) -> tuple[list[list[Recommendation]], int | None]:
        """As `recommend`, with the version that answered (None when the backend cannot tell,
        see `serving.backends.Answer`)."""
        return self._recommend(user_ids, exclude, n, history, True)

    def _recommend(self, user_ids, exclude, n, history, with_version: bool):
        _check_n(n)
        inputs = self._user_inputs(user_ids, exclude, history)
        out, version = self._call_users("recommender", inputs, with_version)
        results = Results((
            [Recommendation(m, t, float(s), float(r), float(o)) for m, t, s, r, o in row]
            for row in _rows(n, out["movie_ids"], out["titles"], out["scores"], out["ratings"],
                             out["rank_scores"])), _known(out, len(user_ids)), _limit(out))
        self._log("recommender", inputs["user_id"], [[r.movie_id for r in row]
                                                      for row in results], version)
        return results, version

    def retrieve(self, user_ids: Sequence[str], exclude: Sequence[Sequence[str]] | None = None,
                 *, n: int | None = None, history: Sequence[Sequence[str]] | None = None
                 ) -> list[list[tuple[str, float]]]:
        """Retrieval candidates only: B lists of ``(movie_id, score)``, highest score first, as
        `Results` (``.known`` per user); ``history`` as for `recommend`."""
        _check_n(n)
        inputs = self._user_inputs(user_ids, exclude, history)
        out, version = self._call_users("retrieval", inputs, self.request_log is not None)
        results = Results(([(m, float(s)) for m, s in row]
                           for row in _rows(n, out["movie_ids"], out["scores"])),
                          _known(out, len(user_ids)), _limit(out))
        self._log("retrieval", inputs["user_id"], [[m for m, _ in row] for row in results],
                  version)
        return results

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
        out, _ = self._call("ranking", {"user_id": np.array(users, dtype=object),
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
          B lists of ``(movie_id, score)``, as `Results` (``.known`` per query: False when
          none of its seeds is in the catalogue and the list is the popular movies).
        """
        _check_n(n)
        if not isinstance(movie_ids, (list, tuple)) or not movie_ids:
            raise UserError(f"movie_ids must be a non-empty list of ids or of id lists, "
                            f"got {movie_ids!r}")
        if any(isinstance(m, str) for m in movie_ids):
            rows = [[m] for m in _check_ids("movie_ids", movie_ids)]
        else:
            rows = [_check_ids(f"movie_ids[{i}]", row) for i, row in enumerate(movie_ids)]
        out, version = self._call("similar_movies", {"movie_ids": _pad(rows)},
                                  with_version=self.request_log is not None)
        results = Results(([(m, float(s)) for m, s in row]
                           for row in _rows(n, out["movie_ids"], out["scores"])),
                          _known(out, len(rows)), _limit(out))
        self._log("similar_movies", [None] * len(rows), [[m for m, _ in row] for row in results],
                  version, seed_ids=rows)
        return results

    def lookup(self, queries: Sequence[str], *, model: str = "similar_movies"
               ) -> list[Matches]:
        """The catalogue movies each query (an id or a title) names, from ``model``'s
        ``lookup`` signature (`tfrs_movies.contract.LOOKUP`; same pin as the model's answers).
        """
        queries = _check_ids("movies", queries)
        out, _ = self._call(model, {"query": np.array(queries, dtype=object)},
                            signature=contract.LOOKUP)
        return movie_names.from_outputs(queries, out)

    def resolve_movies(self, queries: Sequence[str], *, model: str = "similar_movies"
                       ) -> list[str]:
        """Movie ids for ids or titles (one lookup request): an id stands for itself, else a
        title matches whole or in part, ignoring case. `UserError` names a query that names
        no movie, or several (listing a few)."""
        return [movie_names.pick(found) for found in self.lookup(queries, model=model)]

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _user_inputs(self, user_ids, exclude, history=None) -> dict[str, np.ndarray]:
        """The inputs of ``serving_default`` (user_id, exclude_movie_ids), or with a
        ``history`` those of ``with_history`` (history_movie_ids too; "" user ids allowed)."""
        users = _check_ids("user_ids", user_ids, allow_blank=history is not None)
        if exclude is None:
            rows = [[] for _ in users]
        else:
            if not isinstance(exclude, (list, tuple)) or len(exclude) != len(users):
                raise UserError(f"exclude must be a list with one id list per user "
                                f"({len(users)}), got {exclude!r}")
            rows = [_check_ids(f"exclude[{i}]", row, allow_empty=True)
                    for i, row in enumerate(exclude)]
        inputs = {"user_id": np.array(users, dtype=object), "exclude_movie_ids": _pad(rows)}
        if history is not None:
            if isinstance(history, (str, bytes)) or not isinstance(history, (list, tuple)):
                raise UserError(f"history must be a list with one id list per user, got "
                                f"{type(history).__name__} {shown(history)}")
            if len(history) != len(users):
                raise UserError(f"history and user_ids must have as many rows: got {len(history)} "
                                f"history lists for {len(users)} user ids (one list per user; "
                                f"[] for none)")
            inputs["history_movie_ids"] = _pad([_check_ids(f"history[{i}]", row,
                                                           allow_empty=True)
                                                for i, row in enumerate(history)])
        return inputs

    def _call_users(self, model: str, inputs: dict[str, np.ndarray], with_version: bool):
        """`_call` on ``model``'s ``serving_default``, or its ``with_history`` when the inputs
        carry a history; an export without that signature is `NoHistorySignature`."""
        if "history_movie_ids" not in inputs:
            return self._call(model, inputs, with_version=with_version)
        try:
            return self._call(model, inputs, with_version=with_version,
                              signature=contract.signature(model, contract.WITH_HISTORY))
        except ServingError as err:
            if not missing_signature(err, contract.WITH_HISTORY):
                raise
            raise self.no_history(model) from None

    def no_history(self, model: str) -> NoHistorySignature:
        """The error for a history sent to ``model``'s export that lacks ``with_history``,
        naming the version asked (resolved where the backend can: local, REST's status)."""
        pin = self.pin(model)
        version, where = pin.get("version"), None
        if version is None:
            try:
                version = served_version(self.backend, model, pin.get("label"))
            except (ServingError, UserError):
                version = None
            label = pin.get("label")
            where = f"the version labelled {label!r}" if label else "its latest version"
        return NoHistorySignature(model, version, where)

    def _log(self, model: str, user_ids, movie_ids, version, seed_ids=None) -> None:
        if self.request_log is not None:
            self.request_log.log(model, list(user_ids), movie_ids, version=version,
                                 label=self.labels.get(model), fields=self.log_fields,
                                 seed_ids=seed_ids)

    def _call(self, model: str, inputs: dict[str, np.ndarray], with_version: bool = False,
              signature: contract.Signature | None = None
              ) -> tuple[dict[str, np.ndarray], int | None]:
        """The model's outputs (of ``signature``; default its ``serving_default``) and, with
        ``with_version``, the version that answered.

        The version costs nothing locally and over gRPC; over REST a label request then also
        reads the label's version from the model status (one GET).
        """
        pin = self.pin(model)
        if signature is not None:  # only then: a backend need not know other signatures
            pin["signature"] = signature.name
        signature = signature or contract.signature(model)
        answer = getattr(self.backend, "answer", None)
        if with_version and answer is not None:
            reply: Answer = answer(model, inputs, **pin)
            out, version = reply.outputs, reply.version
        else:
            out, version = self.backend.predict(model, inputs, **pin), pin["version"]
        expected = signature.output_names
        if len(expected) == 1 and UNNAMED_OUTPUT in out:
            out = {expected[0]: out[UNNAMED_OUTPUT]}
        missing = [name for name in signature.required_outputs if name not in out]
        if missing:
            raise ServingError(f"model {model!r} returned outputs {sorted(out)}, missing "
                               f"{missing}: is the export older than the serving contract?",
                               model=model)
        return out, version


def served_version(backend, model: str, label: str | None = None) -> int | None:
    """The version ``backend`` serves for ``model`` (``label``'s, else the latest): the local
    backend's folder, a REST server's model status (one GET); None when it cannot tell."""
    if isinstance(backend, LocalBackend):
        return int(backend.model_path(model, label=label).rsplit(os.sep, 1)[-1])
    if isinstance(backend, RestBackend):
        if label is not None:
            return backend.label_version(model, label)
        return backend.latest_version(model)
    return None


def _check_ids(name: str, ids, allow_empty: bool = False, allow_blank: bool = False
               ) -> list[str]:
    """A list of non-empty str ids (``allow_blank``: "" too), or UserError naming the bad value
    and its position."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple, np.ndarray)):
        raise UserError(f"{name} must be a list of id strings, got {type(ids).__name__} "
                        f"{ids!r}")
    if not len(ids) and not allow_empty:
        raise UserError(f"{name} is empty: give at least one id")
    for i, value in enumerate(ids):
        if not isinstance(value, str):
            raise UserError(f"{name}[{i}] must be a str id, got {type(value).__name__} "
                            f"{shown(value)}")
        if not value.strip() and not (allow_blank and value == PAD):
            raise UserError(f"{name}[{i}] is an empty id ({value!r}); '' is the padding value")
    return list(ids)


def _known(out: Mapping[str, np.ndarray], b: int) -> list[bool | None]:
    """The ``known`` output as B bools; B Nones when the export has no such output."""
    if "known" not in out:
        return [None] * b
    return [bool(v) for v in np.asarray(out["known"]).reshape(b)]


def _limit(out: Mapping[str, np.ndarray]) -> int | None:
    """The model's list length: the width of its ``movie_ids`` output ``[B, N]``."""
    ids = np.asarray(out["movie_ids"])
    return int(ids.shape[-1]) if ids.ndim == 2 else None


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
                *, versions: Mapping[str, int] | None = None,
                labels: Mapping[str, str] | None = None,
                request_log: RequestLog | None = None, **backend_kw) -> RecommenderClient:
    """A `RecommenderClient` on exactly one backend.

    Args:
      model_dir: an export dir to load in-process (`LocalBackend`).
      url: a TF Serving REST root, e.g. ``http://localhost:8501`` (`RestBackend`).
      grpc: a TF Serving gRPC address, e.g. ``localhost:8500`` (`GrpcBackend`).
      versions: optional ``{model: version}`` pins.
      labels: optional ``{model: label}`` pins (version labels of the export's models.config).
      request_log: optional `RequestLog` of every answered recommend/retrieve/similar request.
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
    return RecommenderClient(backend, versions=versions, labels=labels, request_log=request_log)
