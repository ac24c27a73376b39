"""A trained re-ranker with what it was fitted beside, saved and loaded as one frozen bundle.

``RUN/models/reranker/`` holds ``config.json`` (its ``ReRankerConfig``), ``weights.*`` (and
``new_users.*``: the model that orders the lists holding item-item candidates, unseen ids'
and known users' with new movies in the request, where there is one),
``recent.npz`` and ``sittings.npz`` (the ``Recent`` and ``Sittings`` of the ratings it
serves: train and fold-in) and ``tables.npz``: the ``FeatureTables`` the serving graph reads,
computed once when it is trained (the closed-form EASE and session fits are the slow part of
an export at 10^4 movies), so export, evaluation and ``trainer recommend`` load them. A run
without them (trained before they were kept) has them computed where they are needed.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tfrs_movies.reranker.config import ReRankerConfig
from tfrs_movies.reranker.features import FeatureTables
from tfrs_movies.reranker.item_item import Sittings
from tfrs_movies.reranker.model import ReRanker, build
from tfrs_movies.reranker.recency import Recent


@dataclasses.dataclass(frozen=True)
class Bundle:
    """The re-ranker ``model``, the ``recent`` and ``sittings`` of the data it serves, (once
    computed from them) the serving graph's feature ``tables``, and ``new_users``: the model
    that orders the ``with_history`` lists holding item-item candidates (an unseen id's, a
    known user's with new movies), trained on an unseen id's such lists
    (``ReRankerConfig.history_lists``; None: ``model`` orders them)."""

    model: ReRanker
    recent: Recent
    sittings: Sittings
    tables: FeatureTables | None = None
    new_users: ReRanker | None = None

    @property
    def config(self) -> ReRankerConfig:
        return self.model.config_


def weights_path(run_dir: Path) -> Path:
    return Path(run_dir) / "models" / "reranker" / "weights"


def new_users_path(run_dir: Path) -> Path:
    return weights_path(run_dir).parent / "new_users"


def save(bundle: Bundle, run_dir: Path) -> None:
    path = weights_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "config.json").write_text(json.dumps(dataclasses.asdict(bundle.config)))
    bundle.recent.save(path.parent / "recent.npz")
    bundle.sittings.save(path.parent / "sittings.npz")
    tables = path.parent / "tables.npz"
    if bundle.tables is not None:
        bundle.tables.save(tables)
    else:  # an earlier re-ranker's tables are not this one's
        tables.unlink(missing_ok=True)
    bundle.model.save_weights(str(path))
    new_users = new_users_path(run_dir)
    if bundle.new_users is not None:
        bundle.new_users.save_weights(str(new_users))
    else:
        for old in new_users.parent.glob(f"{new_users.name}.*"):
            old.unlink()


def load(run_dir: Path) -> Bundle | None:
    """The run's re-ranker, or None when it has none."""
    path = weights_path(run_dir)
    if not Path(f"{path}.index").exists():
        return None
    values = json.loads((path.parent / "config.json").read_text())
    # Re-rankers trained before these learned on no item-item candidates and no unseen ids.
    values.setdefault("ease_share", 0.0)
    values.setdefault("history_lists", 0.0)
    values.setdefault("history_without", ())  # their second model read every feature
    values.setdefault("ease_dropout", 0.0)  # their item-item weights were EASE's
    config = ReRankerConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in values.items()})
    model = build(config)
    model.load_weights(str(path)).expect_partial()
    tables = path.parent / "tables.npz"
    new_users = None
    if Path(f"{new_users_path(run_dir)}.index").exists():
        new_users = build(config.for_history_lists())
        new_users.load_weights(str(new_users_path(run_dir))).expect_partial()
    return Bundle(model, Recent.load(path.parent / "recent.npz"),
                  Sittings.load(path.parent / "sittings.npz"),
                  FeatureTables.load(tables) if tables.exists() else None, new_users)
