"""ScaNN on a trained retrieval model's own candidate embeddings (not on synthetic vectors).

    python -m benchmarks --only scann --output bench/speed     (part of the scann section)

The synthetic clustered vectors of ``scann_speed`` may flatter a partitioning index. Here our
retrieval model (``ModelConfig()`` defaults, the optimizer ``fit_model`` compiles, batch 256)
trains for ``Plan.steps`` steps on ``tfrs_movies.data.synthetic`` ratings (10^7 ratings of 10^6
users x 10^5 movies; ``--quick``: 10^6 of 10^5 x 10^4), then every catalogue movie's candidate
embedding is the index and ``Plan.queries`` users' query embeddings (seeded sample) are the
queries; ``scann_speed.measure`` sweeps the same settings against exact brute force. The model
trains for a fixed number of steps, not whole epochs: ``scann_trained_train_examples`` says
how many examples it saw.

Figures: the ``scann_speed`` keys with ``scann_trained`` for ``scann`` (recall@10, sweep,
ms/query and speed-up at batch 1 and 64, ``scann_trained_brute_force_ms_per_query.batchB``),
plus ``scann_trained_train_examples``, ``scann_trained_train_seconds`` and the
``scann_target.*`` keys of ``TARGETS`` (the issue's goal: recall@10 >= 0.95 at >= 50x).
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import scann_speed
from benchmarks.train_speed import Target, targets
from tfrs_movies import runs
from tfrs_movies.config import ModelConfig, TrainConfig
from tfrs_movies.data.synthetic import synthetic
from tfrs_movies.inference import embed
from tfrs_movies.features import FeatureSpace, Vocabulary
from tfrs_movies.models import build_model
from tfrs_movies.training import make_dataset, make_optimizer


TARGETS = (
    Target("recall_at_10", "scann_trained_recall_at_10", ">=", 0.95,
           "ScaNN on a trained model's candidates: recall@10 against brute force"),
    Target("speedup", "scann_trained_speedup_vs_brute_force", ">=", 50,
           "ScaNN on a trained model's candidates: brute force ms / ScaNN ms at batch 1"),
)


@dataclasses.dataclass(frozen=True)
class Plan:
    users: int = 1_000_000
    movies: int = 100_000
    ratings: int = 10_000_000
    steps: int = 8_000
    queries: int = 1_000
    settings: tuple[tuple[int, int], ...] = ((10, 100), (20, 100), (40, 200), (80, 200),
                                             (120, 400))


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(users=100_000, movies=10_000, ratings=1_000_000, steps=1_000, queries=300,
                    settings=((10, 100), (40, 200)))
    return Plan()


def trained_embeddings(settings: Plan, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(candidates [movies, D], queries [queries, D], figures) of a freshly trained model."""
    data = synthetic(settings.users, settings.movies, settings.ratings, seed=seed)
    config, train_config = ModelConfig(), TrainConfig(seed=seed)
    vocab = Vocabulary.build(data.ratings, data.movies, data.users)
    space = FeatureSpace(vocab, max_history=config.max_history)
    model = build_model("retrieval", space, config)
    runs.build_variables(model, space)
    model.compile(optimizer=make_optimizer(train_config, settings.steps, space))
    dataset = make_dataset(data.ratings, train_config.batch_size, seed).repeat()
    print(f"scann_trained: training retrieval for {settings.steps:,} steps on "
          f"{len(data.ratings):,} synthetic ratings", flush=True)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=settings.steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    users = np.random.default_rng(seed).choice(np.asarray(vocab.user_ids, dtype=str),
                                               size=min(settings.queries, len(vocab.user_ids)),
                                               replace=False)
    candidates = embed(model.movie_embedding, np.asarray(vocab.catalogue_movies, dtype=str))
    queries = embed(model.user_embedding, users)
    figures = {"scann_trained_train_examples": settings.steps * train_config.batch_size,
               "scann_trained_train_seconds": round(seconds, 1)}
    return candidates, queries, figures


def run(quick: bool) -> dict:
    settings = plan(quick)
    candidates, queries, figures = trained_embeddings(settings)
    index = scann_speed.Plan(candidates=len(candidates), queries=len(queries),
                             calls=20 if quick else 50,
                             leaves=max(10, round(math.sqrt(len(candidates)))),
                             settings=settings.settings)
    out = {**figures, **scann_speed.measure(candidates.astype(np.float32),
                                            queries.astype(np.float32), index,
                                            prefix="scann_trained")}
    return {**out, **targets(out, TARGETS, "scann_target")}
