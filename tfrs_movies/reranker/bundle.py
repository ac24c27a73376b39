"""A trained re-ranker with what it was fitted beside, saved and loaded as one frozen bundle.

``RUN/models/reranker/`` holds ``config.json`` (its ``ReRankerConfig``), ``weights.*``,
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
    """The re-ranker ``model``, the ``recent`` and ``sittings`` of the data it serves, and
    (once computed from them) the serving graph's feature ``tables``."""

    model: ReRanker
    recent: Recent
    sittings: Sittings
    tables: FeatureTables | None = None

    @property
    def config(self) -> ReRankerConfig:
        return self.model.config_


def weights_path(run_dir: Path) -> Path:
    return Path(run_dir) / "models" / "reranker" / "weights"


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


def load(run_dir: Path) -> Bundle | None:
    """The run's re-ranker, or None when it has none."""
    path = weights_path(run_dir)
    if not Path(f"{path}.index").exists():
        return None
    values = json.loads((path.parent / "config.json").read_text())
    values.setdefault("ease_share", 0.0)  # re-rankers trained before it learned on none
    config = ReRankerConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in values.items()})
    model = build(config)
    model.load_weights(str(path)).expect_partial()
    tables = path.parent / "tables.npz"
    return Bundle(model, Recent.load(path.parent / "recent.npz"),
                  Sittings.load(path.parent / "sittings.npz"),
                  FeatureTables.load(tables) if tables.exists() else None)
