"""Naming a movie on a command line: an id or a title, resolved by a model's ``lookup``.

The rules live in the exported graph (`contract.LOOKUP`, ``export._Catalogue.find``), so every
model and both CLIs (``python -m trainer``, which builds the serving modules in memory, and
``python -m serving`` on any backend) accept the same names: the id itself, else the titles
equal to the text ignoring case, else the titles containing it ignoring case. This module turns
one lookup answer into an id, or into a one-line `UserError` naming the text and, when several
movies match, a few of them. TensorFlow-free.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tfrs_movies.errors import UserError

ID, TITLE, PART, NONE = 3, 2, 1, 0  # the lookup's ``match`` values


@dataclass(frozen=True)
class Matches:
    """What one lookup query names.

    Attributes:
      query: the text asked for.
      match: `ID`, `TITLE` (a whole title, ignoring case), `PART` (part of titles) or `NONE`.
      count: how many movies match that way (more than are listed when over M).
      movie_ids, titles: M of them, the most rated first.
    """

    query: str
    match: int
    count: int
    movie_ids: tuple[str, ...]
    titles: tuple[str, ...]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def from_outputs(queries: Sequence[str], out: Mapping[str, object]) -> list[Matches]:
    """The lookup signature's outputs (numpy arrays: strings as str or bytes) -> one `Matches`
    per query."""
    rows = []
    for i, query in enumerate(queries):
        ids = [_text(m) for m in out["movie_ids"][i]]
        titles = [_text(t) for t in out["titles"][i]]
        keep = [j for j, m in enumerate(ids) if m]
        rows.append(Matches(query, int(out["match"][i]), int(out["count"][i]),
                            tuple(ids[j] for j in keep), tuple(titles[j] for j in keep)))
    return rows


def pick(found: Matches) -> str:
    """The one movie ``found`` names, or `UserError` (none, or several: a few are listed)."""
    if found.count == 1 and found.movie_ids:
        return found.movie_ids[0]
    if found.count == 0 or not found.movie_ids:
        raise UserError(f"no movie with id or title {found.query!r} in the model's catalogue "
                        "(a title matches ignoring case, or by a part of it)")
    listed = "; ".join(f"{m} {t!r}" for m, t in zip(found.movie_ids, found.titles))
    more = f"; and {found.count - len(found.movie_ids)} more" if found.count > len(
        found.movie_ids) else ""
    how = "whole titles" if found.match == TITLE else "part of their titles"
    fix = "the movie id" if found.match == TITLE else "the movie id, or more of the title"
    raise UserError(f"{found.query!r} matches {found.count} movies ({how}, ignoring case: "
                    f"{listed}{more}): pass {fix}")
