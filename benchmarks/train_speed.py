"""Training throughput: our recipe against the TFRS tutorials' recipe on the same ratings.

    python -m benchmarks --only train --quick --output bench/speed

Figures (``KIND`` is retrieval or ranking, ``DATA`` ml100k, synthetic-10M/-1M, or the pair
synthetic-1M-small-tables / synthetic-1M-large-tables: the same 10^6 ratings by 10^4 users of
10^3 movies and by 10^6 users of 10^5 movies, our retrieval only):
  train_examples_per_s.KIND.DATA           ours: `tfrs_movies.training.make_dataset` + the
                                           `build_model` models with `ModelConfig()` defaults,
                                           the optimizer `fit_model` compiles, batch 256
  train_examples_per_s.KIND.DATA.tutorial  the TFRS basic retrieval / basic ranking tutorials,
                                           written out below: StringLookup + Embedding(32)
                                           towers, Adagrad(0.1), batch 8192, shuffle(100_000)
                                           and cache(); retrieval evaluates FactorizedTopK over
                                           the whole catalogue on every training step
  train_examples_per_s.KIND.DATA.ratio     ours / tutorial
  peak_rss_mb.train.KIND.DATA[.tutorial]   peak resident memory of that measurement's process
  vocab_seconds.DATA, feature_space_seconds.DATA   building our `Vocabulary` / `FeatureSpace`
  train_warmup_seconds.KIND.DATA[.tutorial]        the untimed first block (tracing, filling
                                                   shuffle buffers and caches)
  train_large_tables_slowdown   small-tables / large-tables examples/s: what 100x larger
                                tables cost a step at the same ratings and batch
  train_target.NAME             a target's measured figure, with ``.goal``, ``.compare``
                                (``>=`` or ``<=``) and ``.met``; ``TARGETS`` lists them (a
                                target whose data the run did not train on is left out)

Each (recipe, kind, data) runs in its own child process: fresh TensorFlow and an honest peak
memory. In a child, Keras ``fit`` runs ``repeats + 1`` blocks of ``steps`` steps over the
repeated dataset; the first block is warm-up, examples/s is the median over the others.
ML-100K trains on the random 80/20 split's train part (80,000 ratings); synthetic data on all
its ratings (``tfrs_movies.data.synthetic``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tensorflow_recommenders as tfrs
from benchmarks.timing import median, run_child, write_result
from tfrs_movies import runs
from tfrs_movies.config import DataConfig, ModelConfig, TrainConfig
from tfrs_movies.data import load, make_split
from tfrs_movies.data.synthetic import synthetic
from tfrs_movies.features import FeatureSpace, Vocabulary
from tfrs_movies.models import build_model
from tfrs_movies.training import make_dataset, make_optimizer

KINDS = ("retrieval", "ranking")
RECIPES = ("ours", "tutorial")
TUTORIAL_BATCH = 8192
TUTORIAL_EMBEDDING = 32
_TABLES = ("ratings", "movies", "users")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Steps per timed block, chosen so that a block takes seconds, not milliseconds.

    Attributes:
      ours: steps of our recipe (batch 256) per block.
      tutorial_retrieval: steps of the tutorial retrieval recipe (batch 8192, corpus top-K
        metrics on every step: the slowest step by far).
      tutorial_ranking: steps of the tutorial ranking recipe (batch 8192).
      repeats: timed blocks; each figure is their median.
    """

    ours: int = 100
    tutorial_retrieval: int = 3
    tutorial_ranking: int = 100
    repeats: int = 3

    def steps(self, recipe: str, kind: str) -> int:
        return self.ours if recipe == "ours" else getattr(self, f"tutorial_{kind}")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Ratings to train on: ``ml100k`` (the raw folder's 80% train split) or synthetic sizes,
    and the (recipe, kind) measurements made on them."""

    name: str
    plan: Plan
    users: int = 0
    movies: int = 0
    ratings: int = 0
    recipes: tuple[str, ...] = RECIPES
    kinds: tuple[str, ...] = KINDS


def datasets(quick: bool) -> list[Dataset]:
    """ML-100K, 10^7 synthetic ratings (quick: 10^6, so the name says 1M), and 10^6 ratings
    on small and on large tables (our retrieval)."""
    scale = 1 if quick else 10
    ours = {"recipes": ("ours",), "kinds": ("retrieval",)}
    return [Dataset("ml100k", Plan()),
            Dataset(f"synthetic-{scale}M", Plan(tutorial_retrieval=1 if scale > 1 else 3),
                    users=100_000 * scale, movies=10_000 * scale, ratings=1_000_000 * scale),
            Dataset("synthetic-1M-small-tables", Plan(), users=10_000, movies=1_000,
                    ratings=1_000_000, **ours),
            Dataset("synthetic-1M-large-tables", Plan(), users=1_000_000, movies=100_000,
                    ratings=1_000_000, **ours)]


@dataclasses.dataclass(frozen=True)
class Target:
    """A figure a benchmark is held to, checked on every run that has it (``targets``)."""

    name: str
    key: str
    compare: str  # ">=" or "<="
    goal: float
    meaning: str


TARGETS = (
    Target("large_tables_slowdown", "train_large_tables_slowdown", "<=", 1.5,
           "10^6 ratings, batch 256: examples/s of 10^4 users x 10^3 movies / of 10^6 x 10^5"),
    Target("examples_per_s_10M", "train_examples_per_s.retrieval.synthetic-10M", ">=", 19_070,
           "retrieval at 10^7 ratings, batch 256: 10x the 1,907 examples/s before lazy updates"),
    Target("ml100k_vs_tutorial", "train_examples_per_s.retrieval.ml100k.ratio", ">=", 20,
           "ML-100K retrieval examples/s / the TFRS tutorial recipe's"),
)


def targets(out: dict, held_to: tuple[Target, ...] = TARGETS,
            prefix: str = "train_target") -> dict:
    """``PREFIX.*`` keys of every target of ``held_to`` whose figure ``out`` holds."""
    got = {}
    for target in held_to:
        if target.key not in out:
            continue
        value = out[target.key]
        met = value >= target.goal if target.compare == ">=" else value <= target.goal
        name = f"{prefix}.{target.name}"
        got.update({name: value, f"{name}.goal": target.goal,
                    f"{name}.compare": target.compare, f"{name}.meaning": target.meaning,
                    f"{name}.met": bool(met)})
    return got


def prepare(dataset: Dataset, data_dir: Path, folder: Path) -> Path:
    """Writes the ratings, movies and users the children train on to ``folder`` (Parquet)."""
    if dataset.name == "ml100k":
        data = load(DataConfig(data_dir=str(data_dir)))
        ratings = make_split(data, DataConfig(data_dir=str(data_dir))).train
    else:
        data = synthetic(dataset.users, dataset.movies, dataset.ratings)
        ratings = data.ratings
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in zip(_TABLES, (ratings, data.movies, data.users)):
        table.to_parquet(folder / f"{name}.parquet")
    return folder


def run(data_dir: Path, work: Path, quick: bool) -> dict:
    """Every (data, kind, recipe) measurement, each in a child process; flat keys."""
    out: dict = {"train_batch_size.ours": TrainConfig().batch_size,
                 "train_batch_size.tutorial": TUTORIAL_BATCH}
    for dataset in datasets(quick):
        print(f"train: preparing {dataset.name}", flush=True)
        folder = prepare(dataset, data_dir, work / f"train-{dataset.name}")
        out[f"train_rows.{dataset.name}"] = len(pd.read_parquet(folder / "ratings.parquet",
                                                                columns=["user_rating"]))
        for kind in dataset.kinds:
            for recipe in dataset.recipes:
                print(f"train: {recipe} {kind} on {dataset.name}", flush=True)
                child = run_child("benchmarks.train_speed", [
                    "--child", "--recipe", recipe, "--kind", kind, "--data", str(folder),
                    "--steps", str(dataset.plan.steps(recipe, kind)),
                    "--repeats", str(dataset.plan.repeats)])
                out.update(flatten(child, kind, dataset.name, recipe))
            if "tutorial" in dataset.recipes:
                ours = out[f"train_examples_per_s.{kind}.{dataset.name}"]
                tutorial = out[f"train_examples_per_s.{kind}.{dataset.name}.tutorial"]
                out[f"train_examples_per_s.{kind}.{dataset.name}.ratio"] = round(
                    ours / tutorial, 3)
    small = out.get("train_examples_per_s.retrieval.synthetic-1M-small-tables")
    large = out.get("train_examples_per_s.retrieval.synthetic-1M-large-tables")
    if small and large:
        out["train_large_tables_slowdown"] = round(small / large, 3)
    return {**out, **targets(out)}


def flatten(child: dict, kind: str, data: str, recipe: str) -> dict:
    """A child's result -> the section's flat keys (tutorial keys end in ``.tutorial``)."""
    suffix = ".tutorial" if recipe == "tutorial" else ""
    out = {f"train_examples_per_s.{kind}.{data}{suffix}": round(child["examples_per_s"], 1),
           f"peak_rss_mb.train.{kind}.{data}{suffix}": child["peak_rss_mb"],
           f"train_warmup_seconds.{kind}.{data}{suffix}": round(child["warmup_seconds"], 2)}
    if recipe == "ours" and kind == "retrieval":
        out[f"vocab_seconds.{data}"] = round(child["vocab_seconds"], 2)
        out[f"feature_space_seconds.{data}"] = round(child["feature_space_seconds"], 2)
    return out


def examples_in(rows: int, batch: int, first_step: int, steps: int) -> int:
    """Examples in steps ``[first_step, first_step + steps)`` of a repeated dataset of
    ``rows`` rows in batches of ``batch`` (the last batch of every pass is partial)."""
    per_pass = math.ceil(rows / batch)
    last = rows - (per_pass - 1) * batch
    return sum(last if step % per_pass == per_pass - 1 else batch
               for step in range(first_step, first_step + steps))


def timed_fit(model, dataset, rows: int, batch: int, steps: int, repeats: int) -> dict:
    """Keras ``fit`` over ``repeats + 1`` blocks of ``steps`` steps; the first is warm-up.

    Returns ``examples_per_s`` (median over the timed blocks) and ``warmup_seconds``.
    """
    seconds: list[float] = []

    class Clock(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    model.fit(dataset, steps_per_epoch=steps, epochs=repeats + 1, verbose=0, callbacks=[Clock()])
    rates = [examples_in(rows, batch, (i + 1) * steps, steps) / s
             for i, s in enumerate(seconds[1:])]
    return {"examples_per_s": median(rates), "warmup_seconds": seconds[0]}


def _ours(kind: str, ratings: pd.DataFrame, movies, users, steps: int, repeats: int,
          batch_size: int | None = None) -> dict:
    """Our training path, compiled as `fit_model` compiles it (no callbacks, no run dir)."""
    config = ModelConfig()
    train_config = TrainConfig(**({"batch_size": batch_size} if batch_size else {}))
    start = time.perf_counter()
    vocab = Vocabulary.build(ratings, movies, users)
    vocab_seconds = time.perf_counter() - start
    start = time.perf_counter()
    space = FeatureSpace(vocab, max_history=config.max_history)
    space_seconds = time.perf_counter() - start
    result = fit_speed(kind, space, ratings, train_config, steps, repeats)
    return {**result, "vocab_seconds": vocab_seconds, "feature_space_seconds": space_seconds}


def fit_speed(kind: str, space: FeatureSpace, ratings: pd.DataFrame, train_config: TrainConfig,
              steps: int, repeats: int) -> dict:
    """``timed_fit`` of a fresh ``kind`` model with ``ModelConfig()`` defaults, compiled as
    `fit_model` compiles it, at ``train_config.batch_size``."""
    tf.keras.utils.set_random_seed(train_config.seed)
    model = build_model(kind, space, ModelConfig())
    runs.build_variables(model, space)
    model.compile(optimizer=make_optimizer(train_config, steps * (repeats + 1), space))
    dataset = make_dataset(ratings, train_config.batch_size, train_config.seed).repeat()
    return timed_fit(model, dataset, len(ratings), train_config.batch_size, steps, repeats)


class _TutorialRetrieval(tfrs.Model):
    """basic_retrieval.ipynb's ``MovielensModel``: the task holds the FactorizedTopK metric."""

    def __init__(self, user_model, movie_model, task):
        super().__init__()
        self.user_model, self.movie_model, self.task = user_model, movie_model, task

    def compute_loss(self, features, training=False):
        return self.task(self.user_model(features["user_id"]),
                         self.movie_model(features["movie_title"]))


class _TutorialRanking(tfrs.Model):
    """basic_ranking.ipynb's ``RankingModel`` inside its ``MovielensModel``."""

    def __init__(self, user_model, movie_model):
        super().__init__()
        self.user_model, self.movie_model = user_model, movie_model
        self.ratings = tf.keras.Sequential([tf.keras.layers.Dense(256, activation="relu"),
                                            tf.keras.layers.Dense(64, activation="relu"),
                                            tf.keras.layers.Dense(1)])
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(),
                                       metrics=[tf.keras.metrics.RootMeanSquaredError()])

    def compute_loss(self, features, training=False):
        x = tf.concat([self.user_model(features["user_id"]),
                       self.movie_model(features["movie_title"])], axis=1)
        return self.task(labels=features["user_rating"], predictions=self.ratings(x))


def _tower(vocabulary: np.ndarray):
    return tf.keras.Sequential([
        tf.keras.layers.StringLookup(vocabulary=vocabulary, mask_token=None),
        tf.keras.layers.Embedding(len(vocabulary) + 1, TUTORIAL_EMBEDDING)])


def tutorial_model(kind: str, user_ids: np.ndarray, movie_ids: np.ndarray):
    """The TFRS basic retrieval / basic ranking tutorial model for these ids (movie ids
    stand in for the tutorial's titles, which are not unique in ML-100K)."""
    user_model, movie_model = _tower(user_ids), _tower(movie_ids)
    if kind == "retrieval":
        candidates = tf.data.Dataset.from_tensor_slices(movie_ids).batch(128).map(movie_model)
        task = tfrs.tasks.Retrieval(metrics=tfrs.metrics.FactorizedTopK(candidates=candidates))
        return _TutorialRetrieval(user_model, movie_model, task)
    return _TutorialRanking(user_model, movie_model)


def _tutorial(kind: str, ratings: pd.DataFrame, movies, steps: int, repeats: int) -> dict:
    user_ids = np.unique(ratings["user_id"].to_numpy(dtype=str))
    movie_ids = np.unique(movies["movie_id"].to_numpy(dtype=str))
    model = tutorial_model(kind, user_ids, movie_ids)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=0.1))
    dataset = tf.data.Dataset.from_tensor_slices({
        "user_id": ratings["user_id"].to_numpy(dtype=str),
        "movie_title": ratings["movie_id"].to_numpy(dtype=str),
        "user_rating": ratings["user_rating"].to_numpy(dtype=np.float32)})
    dataset = dataset.shuffle(100_000, seed=42).batch(TUTORIAL_BATCH).cache().repeat()
    return timed_fit(model, dataset, len(ratings), TUTORIAL_BATCH, steps, repeats)


def child(args) -> int:
    """One measurement in this (fresh) process; writes its figures to ``args.result``."""
    ratings, movies, users = (pd.read_parquet(Path(args.data) / f"{name}.parquet")
                              for name in _TABLES)
    if args.recipe == "ours":
        result = _ours(args.kind, ratings, movies, users, args.steps, args.repeats,
                       args.batch_size)
    else:
        result = _tutorial(args.kind, ratings, movies, args.steps, args.repeats)
    write_result(args.result, result)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="one training-speed measurement (a child of "
                                     "python -m benchmarks)")
    parser.add_argument("--child", action="store_true", required=True)
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--data", required=True, help="folder written by prepare()")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int,
                        help="our recipe's batch (default: TrainConfig's)")
    parser.add_argument("--result", required=True)
    return child(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
