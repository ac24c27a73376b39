"""The serving contract: every exported model's signature, its names, dtypes and shapes.

Free of TensorFlow: export builds its input signatures from it, and the client, batch
scoring, the Beam pipeline, the stand-in servers and the tests read their names here. Change a
signature here and everything that uses it follows (or fails its tests).

Dimensions: ``B`` users or queries in the request, ``E`` excluded or seed ids per row (``""``
pads), ``K`` candidates retrieved (``ExportConfig.k``), ``N`` recommendations returned
(``ExportConfig.n``), ``M`` movies a lookup lists (``LOOKUP_MATCHES``). A request of more than
``MAX_ROWS_PER_CALL`` rows is processed inside the graph in chunks of that many, so one call's
memory does not grow with its batch.

Every model also has a second signature, `LOOKUP` (``lookup``): a movie id or title -> the
catalogue movies it names, so a client can accept titles wherever a movie is named and catch
unknown ids before asking for anything (``tfrs_movies.movie_names`` reads its answer).

``retrieval`` and ``recommender`` have a third, `WITH_HISTORY` (``with_history``): the same
answers computed from the user's history as the request brings it (``H`` movies, oldest first),
so a user the export has never seen, or a known user who rated movies since, is answered from
what they did (`HISTORY_SIGNATURES`); ``known`` is then false only for an unseen id none of
whose history is in the catalogue. A history longer than the export's maximum (the run's
``max_history``, 200 by default) keeps its most recent movies.
"""
from __future__ import annotations

import dataclasses

import numpy as np

SIGNATURE = "serving_default"
WITH_HISTORY = "with_history"
PAD = ""  # pads ragged id lists to a rectangle; never a valid id
MAX_ROWS_PER_CALL = 256
LOOKUP_MATCHES = 8  # M: the movies a lookup lists (it counts them all)


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One named input or output.

    Attributes:
      name: the key in requests and responses.
      dtype: ``string``, ``float32``, ``int32`` or ``bool`` (TF Serving's ``DT_STRING``,
        ``DT_FLOAT``, ``DT_INT32``, ``DT_BOOL``; JSON strings, numbers and true/false).
      shape: symbolic dimensions, e.g. ``("B", "K")``.
      doc: what it holds.
      required: clients need this output; False for outputs added after the first exports
        (``known``), which a client reads when present, so exports written before it still
        serve.
    """

    name: str
    dtype: str
    shape: tuple[str, ...]
    doc: str
    required: bool = True


@dataclasses.dataclass(frozen=True)
class Signature:
    """A signature of an exported model: ``serving_default`` unless ``name`` says otherwise."""

    model: str
    doc: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    name: str = SIGNATURE

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def required_outputs(self) -> tuple[str, ...]:
        """The outputs a client may insist on (see `Tensor.required`)."""
        return tuple(t.name for t in self.outputs if t.required)


_USER = Tensor("user_id", "string", ("B",), "user ids; unknown ids get the popular movies")
_EXCLUDE = Tensor("exclude_movie_ids", "string", ("B", "E"),
                  "movie ids never to return for that user, besides the ones they rated in "
                  "the run's train data (unless exported with --keep-seen)")
_KNOWN_USER = Tensor("known", "bool", ("B",),
                     "true: the user has a row in the export; false: an unknown user, answered "
                     "with the most popular allowed movies (scores then log(1 + train "
                     "ratings))", required=False)

SIGNATURES: dict[str, Signature] = {s.model: s for s in (
    Signature(
        "retrieval", "the best K movies by dot product of the user and movie embeddings",
        (_USER, _EXCLUDE),
        (Tensor("movie_ids", "string", ("B", "K"), 'best first; "" where fewer are allowed'),
         Tensor("scores", "float32", ("B", "K"),
                "retrieval score (dot product); -inf where movie_ids is \"\"; the log "
                "rating count for an unknown user's popular movies"),
         _KNOWN_USER)),
    Signature(
        "ranking", "predicted ratings of (user, movie) pairs",
        (_USER, Tensor("movie_id", "string", ("B",), "one movie per user id")),
        (Tensor("rating", "float32", ("B",), "predicted stars, within the train rating range"),)),
    Signature(
        "recommender", "retrieve K candidates, re-rank them, return the best N",
        (_USER, _EXCLUDE),
        (Tensor("movie_ids", "string", ("B", "N"), "best first"),
         Tensor("titles", "string", ("B", "N"), "the movies' titles"),
         Tensor("scores", "float32", ("B", "N"), "the retrieval score of each movie"),
         Tensor("ratings", "float32", ("B", "N"), "predicted stars of each movie"),
         Tensor("rank_scores", "float32", ("B", "N"),
                "the served order, best first: the learned re-ranker's score (the predicted "
                "rating for a run without a re-ranker); -inf where movie_ids is \"\""),
         _KNOWN_USER)),
    Signature(
        "similar_movies", "cosine neighbours of the mean of up to E seed movies",
        (Tensor("movie_ids", "string", ("B", "E"), 'seed movie ids per query ("" pads)'),),
        (Tensor("movie_ids", "string", ("B", "K"), "best first, seeds left out"),
         Tensor("scores", "float32", ("B", "K"),
                "cosine similarity; the log rating count when no seed is known"),
         Tensor("known", "bool", ("B",),
                "true: at least one seed is in the catalogue (unknown seeds are left out of "
                "the mean); false: none is, and the list is the most popular movies",
                required=False))),
)}
MODELS = tuple(SIGNATURES)

_HISTORY = Tensor("history_movie_ids", "string", ("B", "H"),
                  'the movies the user rated, oldest first; "" pads (wherever it is) and '
                  "unknown ids are ignored; the most recent are kept when longer than the "
                  "export's maximum")
_KNOWN_HISTORY = Tensor("known", "bool", ("B",),
                        "false only where the answer is the popularity fallback: an id the "
                        "export does not know and no catalogue movie in its history")


def _with_history(model: str) -> Signature:
    """``model``'s ``serving_default`` answered from the request's history as well."""
    base = SIGNATURES[model]
    return Signature(
        model, f"{base.doc}, from the user's history as the request brings it: an unseen id's "
        "answer comes from its history alone, a known user's from what the export knows plus "
        "the history (a movie in both counts once); the history's movies are never returned",
        (_USER, _HISTORY, _EXCLUDE),
        tuple(_KNOWN_HISTORY if t.name == "known" else t for t in base.outputs),
        name=WITH_HISTORY)


# The models that answer from a history, by model name (inputs user_id, history_movie_ids,
# exclude_movie_ids; outputs exactly serving_default's).
HISTORY_SIGNATURES: dict[str, Signature] = {m: _with_history(m)
                                            for m in ("retrieval", "recommender")}

# On every model (each holds the catalogue), so a client resolves a movie with the model, and
# the version, that then answers.
LOOKUP = Signature(
    "*", "the catalogue movies a movie id or title names: the id itself, else the titles equal "
    "to it ignoring case, else the titles containing it ignoring case",
    (Tensor("query", "string", ("B",), "a movie id or title (or part of one)"),),
    (Tensor("movie_ids", "string", ("B", "M"),
            'the movies named, most rated first (ties in catalogue order); "" pads'),
     Tensor("titles", "string", ("B", "M"), "their titles"),
     Tensor("match", "int32", ("B",),
            "how they match: 3 the id, 2 the whole title, 1 part of the title, 0 none"),
     Tensor("count", "int32", ("B",), "how many movies match that way (may exceed M)")),
    name="lookup")


def signature(model: str, name: str = SIGNATURE) -> Signature:
    """The signature ``name`` (``serving_default`` or ``with_history``) of ``model``; KeyError
    names the known ones."""
    if model not in SIGNATURES:
        raise KeyError(f"no model {model!r} in the serving contract "
                       f"(models: {', '.join(MODELS)})")
    if name == SIGNATURE:
        return SIGNATURES[model]
    if name == WITH_HISTORY and model in HISTORY_SIGNATURES:
        return HISTORY_SIGNATURES[model]
    raise KeyError(f"model {model!r} has no signature {name!r} (models with "
                   f"{WITH_HISTORY!r}: {', '.join(HISTORY_SIGNATURES)})")


def fallback_notice(what: str, ids: list[str]) -> str:
    """The one line both CLIs print when ``known`` is false: ``what`` is ``user`` (``ids``: the
    unknown users) or ``movie`` (``ids``: a query's seeds, none of them known)."""
    shown = ", ".join(repr(str(i)) for i in ids)
    subject = f"{what} {shown} is" if len(ids) == 1 else f"{what}s {shown} are"
    return (f"notice: {subject} unknown to the model (not in its run's data): showing the most "
            "popular movies instead (score: log(1 + train ratings))")


def history_fallback_notice(users: list[str]) -> str:
    """The line both CLIs print when a request with a history got the popularity fallback
    (``known`` false): ``users`` the ids asked (none: a new user, the history alone)."""
    shown = ", ".join(repr(str(u)) for u in users)
    subject = (f"user {shown} is unknown to the model (not in its run's data) and none of its "
               if len(users) == 1 else
               f"users {shown} are unknown to the model (not in its run's data) and none of "
               "their " if users else "none of the ")
    return (f"notice: {subject}history movies is in the model's catalogue: showing the most "
            "popular movies instead (score: log(1 + train ratings))")


def decode(values) -> np.ndarray:
    """A model's string output (bytes, as TensorFlow returns them, or str) -> a same-shape
    ``object`` array of ``str``. The contract's strings are UTF-8; numpy's ``astype(str)``
    would read bytes as ASCII and fail on the first accented title."""
    array = np.asarray(values, dtype=object)
    return np.asarray(_DECODE(array), dtype=object).reshape(array.shape)


_DECODE = np.frompyfunc(lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v), 1, 1)
