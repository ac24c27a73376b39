"""Online traffic split between versions: sticky per-user arms by a stable hash.

    from serving.router import Experiment, RoutedClient
    experiment = Experiment.split("ranker-v2", {"stable": 0.9, "canary": 0.1})
    client = RoutedClient(RestBackend("http://localhost:8501"), experiment,
                          request_log=RequestLog("logs/requests.jsonl"))
    client.recommend(["42", "7"])   # [Routed(user_id="42", arm="stable", version=3, ...), ...]

A user's arm depends only on (experiment name, user id): ``sha256(name + "\\0" + user id)``'s
first 8 bytes read as a number in [0, 1), against the arms' cumulative shares in the order
given. So the same user always sees the same arm, in every process and after restarts, and
two experiments with different names split users independently. Raising the share of the
last arm (say canary 10% -> 20%) only moves users into it, never out of it.

An arm asks for a version label (``stable``, ``canary``: they follow ``promote`` with no client
change) or a version number; each result says which arm and version answered.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from serving.backends import check_choice
from serving.client import Backend, Recommendation, RecommenderClient, _check_ids
from serving.request_log import RequestLog
from tfrs_movies.errors import UserError
from tfrs_movies.tf_serving_config import parse_selector

MODELS = ("retrieval", "ranking", "recommender", "similar_movies")


@dataclass(frozen=True)
class Arm:
    """One arm: its name, its share of users and the version or label it asks for.

    Neither a version nor a label: the server's default (latest) version.
    """

    name: str
    share: float
    version: int | None = None
    label: str | None = None


def bucket(experiment: str, user_id: str) -> float:
    """A user's stable position in [0, 1) for ``experiment`` (sha256 of both, 64 bits)."""
    digest = hashlib.sha256(f"{experiment}\x00{user_id}".encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest()[:8], "big") / 2.0**64


@dataclass(frozen=True)
class Experiment:
    """A named split of users into arms whose shares add up to 1.

    Attributes:
      name: part of the hash: renaming an experiment reshuffles its users.
      arms: the arms, in the order their shares are laid out on [0, 1).
    """

    name: str
    arms: tuple[Arm, ...]

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise UserError(f"an experiment needs a name, got {self.name!r}")
        if not self.arms:
            raise UserError(f"experiment {self.name!r} has no arms")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise UserError(f"experiment {self.name!r} repeats an arm name: {names}")
        for arm in self.arms:
            if not (isinstance(arm.share, (int, float)) and 0 < arm.share <= 1):
                raise UserError(f"arm {arm.name!r} share must be in (0, 1], got {arm.share!r}")
            check_choice(arm.version, arm.label)
        total = math.fsum(a.share for a in self.arms)
        if abs(total - 1.0) > 1e-9:
            raise UserError(f"experiment {self.name!r} arm shares add up to {total:g}, not 1: "
                            f"{', '.join(f'{a.name}={a.share:g}' for a in self.arms)}")
        object.__setattr__(self, "_bounds", _cumulative([a.share for a in self.arms]))

    @classmethod
    def split(cls, name: str, shares: Mapping[str, float]) -> Experiment:
        """Arms named by what they ask for: ``{"stable": 0.9, "canary": 0.1}`` (labels) or
        ``{"3": 0.5, "4": 0.5}`` (versions)."""
        arms = []
        for arm, share in shares.items():
            version, label = parse_selector(arm)
            arms.append(Arm(str(arm), share, version=version, label=label))
        return cls(name, tuple(arms))

    def assign(self, user_id: str) -> Arm:
        """The arm of ``user_id`` (always the same one for this experiment)."""
        position = bucket(self.name, user_id)
        for arm, bound in zip(self.arms, self._bounds, strict=True):
            if position < bound:
                return arm
        return self.arms[-1]

    @staticmethod
    def _pins(arm: Arm) -> tuple[dict, dict]:
        versions = {m: arm.version for m in MODELS} if arm.version is not None else {}
        labels = {m: arm.label for m in MODELS} if arm.label is not None else {}
        return versions, labels


def _cumulative(shares: Sequence[float]) -> list[float]:
    bounds, total = [], 0.0
    for share in shares:
        total += share
        bounds.append(total)
    bounds[-1] = 1.0  # rounding never leaves a sliver of [0, 1) without an arm
    return bounds


@dataclass(frozen=True)
class Routed:
    """One user's answer: the arm, the label or version it asked for, the version that
    answered (None when the backend cannot tell, see `serving.backends.Answer`), the
    recommendations, and whether the export knew the user (False: the popularity fallback;
    None: an export older than the ``known`` output)."""

    user_id: str
    arm: str
    label: str | None
    version: int | None
    recommendations: list[Recommendation]
    known: bool | None = None


class RoutedClient:
    """Recommendations through ``experiment``'s arms: one request per arm present in a call.

    Args:
      backend: any backend; every arm uses it with its own version or label.
      experiment: the `Experiment`.
      request_log: optional `RequestLog`; records carry ``experiment`` and ``arm``.
    """

    def __init__(self, backend: Backend, experiment: Experiment, *,
                 request_log: RequestLog | None = None):
        self.backend = backend
        self.experiment = experiment
        self.clients = {
            arm.name: RecommenderClient(
                backend, *experiment._pins(arm), request_log=request_log,
                log_fields={"arm": arm.name, "experiment": experiment.name})
            for arm in experiment.arms}

    def arm(self, user_id: str) -> Arm:
        return self.experiment.assign(user_id)

    def recommend(self, user_ids: Sequence[str], exclude: Sequence[Sequence[str]] | None = None,
                  *, n: int | None = None, history: Sequence[Sequence[str]] | None = None
                  ) -> list[Routed]:
        """B `Routed` results, in the order of ``user_ids``; ``history`` as for
        `RecommenderClient.recommend` (a ``""`` user id is assigned an arm like any other)."""
        users = _check_ids("user_ids", user_ids, allow_blank=history is not None)
        for name, rows in (("exclude", exclude), ("history", history)):
            if rows is not None and (not isinstance(rows, (list, tuple))
                                     or len(rows) != len(users)):
                raise UserError(f"{name} must be a list with one id list per user "
                                f"({len(users)}), got {rows!r}")
        groups: dict[str, list[int]] = {}
        for i, user in enumerate(users):
            groups.setdefault(self.arm(user).name, []).append(i)
        out: list[Routed | None] = [None] * len(users)
        arms = {a.name: a for a in self.experiment.arms}
        for name, rows in groups.items():
            results, version = self.clients[name].recommend_with_version(
                [users[i] for i in rows], None if exclude is None else [exclude[i] for i in rows],
                n=n, history=None if history is None else [history[i] for i in rows])
            for i, recs, known in zip(rows, results, results.known, strict=True):
                out[i] = Routed(users[i], name, arms[name].label,
                                version if version is not None else arms[name].version, recs,
                                known)
        return out

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
