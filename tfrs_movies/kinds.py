"""The one registry of model kinds: every ``--model`` choice, builder and tuner reads it.

Free of TensorFlow, so configs and CLIs can validate a kind without importing it; the class
behind a kind is imported when a model is built (``model_class``). Adding a kind is one entry
here and one class.
"""
from __future__ import annotations

import dataclasses
import importlib

from tfrs_movies.errors import UserError


@dataclasses.dataclass(frozen=True)
class Kind:
    """One model kind.

    Attributes:
      name: the ``--model`` value and the run directory's ``models/NAME``.
      target: ``module:Class`` of its ``models.TwoTowers`` subclass.
      summary: one line for ``--help`` and docs/models.md.
      search: the tuner's search space and objective (``retrieval``: nDCG@K, ``ranking``:
        RMSE), or None when ``trainer tune`` does not search it.
    """

    name: str
    target: str
    summary: str
    search: str | None = None


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("retrieval", "tfrs_movies.models:RetrievalModel",
         "two towers, softmax over in-batch (and sampled) negatives", search="retrieval"),
    Kind("ranking", "tfrs_movies.models:RankingModel",
         "towers, genres and biases into an MLP that predicts the rating", search="ranking"),
    Kind("multitask", "tfrs_movies.models:MultitaskModel",
         "retrieval and ranking losses on one pair of towers"),
    Kind("mf", "tfrs_movies.paper_models:MatrixFactorization",
         "biased matrix factorization of the ratings"),
    Kind("mf-gravity", "tfrs_movies.paper_models:GravityMatrixFactorization",
         "mf plus L2 and the gravity regularizer"),
    Kind("softmax-history", "tfrs_movies.paper_models:SoftmaxHistory",
         "full softmax over movies from the user's history (no user id)"),
    Kind("rating-classes", "tfrs_movies.paper_models:RatingClasses",
         "ratings as classes: embeddings into dense layers and a softmax"),
)}
# ``all`` trains these two and keeps both: the export's retrieve-then-rank pair.
ALL = ("retrieval", "ranking")
CHOICES = tuple(KINDS) + ("all",)


def trained_by(choice: str) -> list[str]:
    """The kinds a ``--model`` choice trains (``all`` = retrieval and ranking)."""
    if choice == "all":
        return list(ALL)
    check(choice)
    return [choice]


def check(name: str) -> Kind:
    if name not in KINDS:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(CHOICES)}")
    return KINDS[name]


def tunable() -> tuple[str, ...]:
    """Kinds ``trainer tune`` can search."""
    return tuple(k.name for k in KINDS.values() if k.search)


def model_class(name: str) -> type:
    """The class behind kind ``name`` (imports its module)."""
    module, _, attribute = check(name).target.partition(":")
    return getattr(importlib.import_module(module), attribute)
