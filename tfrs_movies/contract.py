"""The serving contract: every exported model's signature, its names, dtypes and shapes.

Free of TensorFlow: export builds its input signatures from it, and the client, batch
scoring, the Beam pipeline, the stand-in servers and the tests read their names here. Change a
signature here and everything that uses it follows (or fails its tests).

Dimensions: ``B`` users or queries in the request, ``E`` excluded or seed ids per row (``""``
pads), ``K`` candidates retrieved (``ExportConfig.k``), ``N`` recommendations returned
(``ExportConfig.n``). A request of more than ``MAX_ROWS_PER_CALL`` rows is processed inside the
graph in chunks of that many, so one call's memory does not grow with its batch.
"""
from __future__ import annotations

import dataclasses

SIGNATURE = "serving_default"
PAD = ""  # pads ragged id lists to a rectangle; never a valid id
MAX_ROWS_PER_CALL = 256


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One named input or output.

    Attributes:
      name: the key in requests and responses.
      dtype: ``string`` or ``float32`` (TF Serving's ``DT_STRING``/``DT_FLOAT``).
      shape: symbolic dimensions, e.g. ``("B", "K")``.
      doc: what it holds.
    """

    name: str
    dtype: str
    shape: tuple[str, ...]
    doc: str


@dataclasses.dataclass(frozen=True)
class Signature:
    """The ``serving_default`` signature of one exported model."""

    model: str
    doc: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


_USER = Tensor("user_id", "string", ("B",), "user ids; unknown ids get the popular movies")
_EXCLUDE = Tensor("exclude_movie_ids", "string", ("B", "E"),
                  "movie ids never to return for that user, besides the ones they rated in "
                  "the run's train data (unless exported with --keep-seen)")

SIGNATURES: dict[str, Signature] = {s.model: s for s in (
    Signature(
        "retrieval", "the best K movies by dot product of the user and movie embeddings",
        (_USER, _EXCLUDE),
        (Tensor("movie_ids", "string", ("B", "K"), 'best first; "" where fewer are allowed'),
         Tensor("scores", "float32", ("B", "K"),
                "retrieval score (dot product); -inf where movie_ids is \"\"; the log "
                "rating count for an unknown user's popular movies"))),
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
                "rating for a run without a re-ranker); -inf where movie_ids is \"\""))),
    Signature(
        "similar_movies", "cosine neighbours of the mean of up to E seed movies",
        (Tensor("movie_ids", "string", ("B", "E"), 'seed movie ids per query ("" pads)'),),
        (Tensor("movie_ids", "string", ("B", "K"), "best first, seeds left out"),
         Tensor("scores", "float32", ("B", "K"),
                "cosine similarity; the log rating count when no seed is known"))),
)}
MODELS = tuple(SIGNATURES)


def signature(model: str) -> Signature:
    """The signature of ``model``; KeyError names the known ones."""
    try:
        return SIGNATURES[model]
    except KeyError:
        raise KeyError(f"no model {model!r} in the serving contract "
                       f"(models: {', '.join(MODELS)})") from None
