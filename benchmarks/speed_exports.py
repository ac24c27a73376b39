"""Exports for the serving and batch speed benchmarks: briefly trained, realistically sized.

Latency and throughput depend on the catalogue, the vocabularies and the graph, not on how well
the model has learned, so each export here trains retrieval and ranking for one epoch on at
most ``fit_rows`` ratings (and the recommender's re-ranker on a fold of those), while the
vocabularies (users, histories, catalogue) come from all
of the data. The export itself is `tfrs_movies.export.export`, exactly what
``python -m trainer export`` writes.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from tfrs_movies import reranker, reranker_lists, runs
from tfrs_movies.config import DataConfig, ExportConfig, ModelConfig, TrainConfig
from tfrs_movies.data import Split, load, make_split
from tfrs_movies.data.synthetic import synthetic
from tfrs_movies.export import export
from tfrs_movies.features import FeatureSpace, Vocabulary
from tfrs_movies.training import fit_model


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Data behind one export.

    Attributes:
      name: label in the figures' keys, e.g. ``ml100k`` or ``synthetic-1M-movies``.
      users, movies, ratings: synthetic sizes; all 0 means ML-100K's 80% train split.
      fit_rows: ratings the models see in their one epoch.
      indexes: export indexes to write (``brute-force``, ``scann``).
    """

    name: str
    users: int = 0
    movies: int = 0
    ratings: int = 0
    fit_rows: int = 100_000
    indexes: tuple[str, ...] = ("brute-force",)


@dataclasses.dataclass
class Exported:
    """An export directory per index, the users the run knows, how long each step took, the
    run's vocabulary (its catalogue and histories) and the run itself (in memory)."""

    dirs: dict[str, Path]
    users: list[str]
    seconds: dict[str, float]
    vocab: Vocabulary | None = None
    run: runs.Run | None = None


def _ratings(catalogue: Catalogue, data_dir: Path):
    if not catalogue.ratings:
        config = DataConfig(data_dir=str(data_dir))
        data = load(config)
        return data, make_split(data, config).train
    data = synthetic(catalogue.users, catalogue.movies, catalogue.ratings)
    return data, data.ratings


def build(catalogue: Catalogue, data_dir: Path, work: Path) -> Exported:
    """Trains a short run on ``catalogue`` and exports it once per index into ``work``."""
    seconds = {}
    start = time.perf_counter()
    data, train = _ratings(catalogue, data_dir)
    seconds["data"] = time.perf_counter() - start
    start = time.perf_counter()
    vocab = Vocabulary.build(train, data.movies, data.users)
    model_config, train_config = ModelConfig(), TrainConfig(epochs=1, verbose=0)
    space = FeatureSpace(vocab, max_history=model_config.max_history)
    seconds["vocab"] = time.perf_counter() - start
    start = time.perf_counter()
    fit = train.sample(n=min(catalogue.fit_rows, len(train)), random_state=0)
    models = {kind: fit_model(kind, space, model_config, train_config, fit)[0]
              for kind in ("retrieval", "ranking")}
    # The served recommender's second stage, trained as `train` does (on a fold of ``fit``).
    second = reranker_lists.fit(fit, data.movies, data.users, train.iloc[:0], model_config,
                                train_config, reranker.ReRankerConfig(use_ease=reranker.ease_fits(
                                    len(vocab.catalogue_users) + 1, len(vocab.catalogue_movies))),
                                seed=0)
    seconds["fit"] = time.perf_counter() - start
    run = runs.Run(path=work, data=DataConfig(), model=model_config, train=train_config,
                   movies=data.movies, users=data.users,
                   split=Split(train=train, test=train.iloc[:0]), vocab=vocab, space=space,
                   models=models, reranker=second)
    dirs = {}
    for index in catalogue.indexes:
        start = time.perf_counter()
        dirs[index] = work / f"export-{catalogue.name}-{index}"
        export(run, dirs[index], ExportConfig(index=index))
        seconds[f"export.{index}"] = time.perf_counter() - start
    users = pd.Series(vocab.user_ids).sample(frac=1.0, random_state=0).tolist()
    return Exported(dirs=dirs, users=users, seconds=seconds, vocab=vocab, run=run)
