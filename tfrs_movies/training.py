"""Fits one Keras model: the input pipeline, the optimizer, progress and checkpoints.

``fit_model`` is the one builder-and-fit that the train job (``pipeline``), the re-ranker's
fold models (``reranker_lists``) and the tuner all call. With a run directory it checkpoints
each epoch (Keras ``BackupAndRestore``), so a killed job resumes from its last finished epoch.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies import config as cfg
from tfrs_movies import runs
from tfrs_movies.features import FeatureSpace
from tfrs_movies.lazy_adam import LazyAdam
from tfrs_movies.models import build_model

log = logging.getLogger(__name__)


def batches(frame: pd.DataFrame, batch_size: int, shuffle_seed: int | None = None,
             drop_remainder: bool = False, repeat: bool = False) -> tf.data.Dataset:
    """Rating rows -> batches of ``{"user_id", "movie_id": [B] string, "user_rating": [B]}``.

    The pipeline works per batch, never per row: each pass draws one permutation of the rows
    (``shuffle_seed`` given: a fresh one per pass, from that seed; None: file order), cuts it
    into batches of row numbers and gathers each batch's columns in one op. The rows are
    held as small integer codes into the distinct user and movie ids, turned back into
    strings a batch at a time (10^7 rows of 10^6 users and 10^5 movies: 80 MB of codes, not
    two 10^7-string tensors). A row-by-row ``shuffle().batch()`` cost ~8 ms of the second
    core per ML-100K step of 256; this costs a few ops per batch.
    With ``repeat`` the passes go on forever (each one a new permutation)."""
    users, user_ids = pd.factorize(frame["user_id"])
    movies, movie_ids = pd.factorize(frame["movie_id"])
    columns = {"user": tf.constant(users.astype(np.int32)),
               "movie": tf.constant(movies.astype(np.int32)),
               "user_rating": tf.constant(frame["user_rating"].to_numpy(dtype="float32"))}
    user_table = tf.constant(np.asarray(user_ids, dtype=str))
    movie_table = tf.constant(np.asarray(movie_ids, dtype=str))
    rows = len(frame)
    # With drop_remainder a pass holds at least one batch: rows fewer than a batch (a small
    # shard or validation split) are repeated within the pass, else a repeated pass is empty.
    copies = math.ceil(batch_size / rows) if drop_remainder and 0 < rows < batch_size else 1
    steps = rows * copies // batch_size if drop_remainder else math.ceil(rows / batch_size)

    def one_pass(key):
        order = tf.range(rows, dtype=tf.int32)
        if shuffle_seed is not None:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([key, 0]))
        order = tf.tile(order, [copies])
        starts = tf.data.Dataset.range(steps)
        return starts.map(lambda step: order[step * batch_size:(step + 1) * batch_size])

    def decode(positions):
        return {"user_id": tf.gather(user_table, tf.gather(columns["user"], positions)),
                "movie_id": tf.gather(movie_table, tf.gather(columns["movie"], positions)),
                "user_rating": tf.gather(columns["user_rating"], positions)}

    # One key per pass: a new one each time the dataset is iterated (Keras: each epoch) or
    # repeated, the sequence fixed by the seed.
    keys = tf.data.Dataset.random(seed=shuffle_seed or 0, rerandomize_each_iteration=True)
    passes = keys if repeat else keys.take(1)
    ds = passes.flat_map(one_pass)
    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def make_dataset(frame: pd.DataFrame, batch_size: int, shuffle_seed: int | None = None):
    """Rating rows -> one pass of batches of ``{"user_id", "movie_id": [B] string,
    "user_rating": [B]}`` (``batches``), the last one partial; shuffled (a new order each
    time it is iterated or repeated) when ``shuffle_seed`` is given."""
    return batches(frame, batch_size, shuffle_seed)


def distributed_dataset(strategy: tf.distribute.Strategy, frame: pd.DataFrame,
                        global_batch: int, shuffle_seed: int | None = None):
    """(dataset, steps per epoch) for ``strategy``: each input pipeline (one per worker)
    reads its shard of the rows and yields per-replica batches, repeated forever so that
    every worker runs the same number of steps (``len(frame) // global_batch``)."""
    def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
        shard = frame.iloc[context.input_pipeline_id::context.num_input_pipelines]
        return batches(shard, context.get_per_replica_batch_size(global_batch), shuffle_seed,
                        drop_remainder=True, repeat=True)

    steps = max(1, len(frame) // global_batch)
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        return tf.keras.utils.experimental.DatasetCreator(per_worker), steps
    return strategy.distribute_datasets_from_function(per_worker), steps


def distributed(strategy: tf.distribute.Strategy) -> bool:
    return strategy is not tf.distribute.get_strategy()


class Progress(tf.keras.callbacks.Callback):
    """A progress line (``logging``) every ``every`` seconds (steps, examples/s, ETA) and a
    summary at the end: the progress of long epochs where Keras prints one line per epoch
    (``verbose=2``).

    It never reads the batch logs, so it declares ``_supports_tf_logs``: Keras then lets it run
    under ``ParameterServerStrategy``, whose logs are remote values (steps are counted when they
    are scheduled there, so the rate lines run ahead of the workers; the summary does not)."""

    def __init__(self, name: str, batch_size: int, every: float = 30.0):
        super().__init__()
        self.name, self.batch_size, self.every = name, batch_size, every
        self._supports_tf_logs = True

    def on_train_begin(self, logs=None):
        self.start = self.last = time.perf_counter()
        self.steps = 0
        self.validated = False

    def on_test_begin(self, logs=None):  # fit's validation passes, counted in the time
        self.validated = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last = now
        per_epoch = self.params.get("steps") or 0
        rate = self.steps * self.batch_size / (now - self.start)
        left = ((self.params["epochs"] - self.epoch) * per_epoch - batch - 1) if per_epoch else 0
        eta = f", ETA {left * self.batch_size / rate / 60:.1f} min" if left > 0 else ""
        log.info(f"[{self.name}] epoch {self.epoch + 1}/{self.params['epochs']} step {batch + 1}"
                 f"{'/' + str(per_epoch) if per_epoch else ''}: {rate:,.0f} examples/s{eta}")

    def on_train_end(self, logs=None):
        seconds = time.perf_counter() - self.start
        rate = self.steps * self.batch_size / max(seconds, 1e-9)
        log.info(f"[{self.name}] {self.steps:,} steps of {self.batch_size} in {seconds:.1f} s: "
                 f"{rate:,.0f} examples/s" + (" (validation included)" if self.validated else ""))


class EpochMeans(tf.keras.callbacks.Callback):
    """Adds ``mean_loss`` (and ``val_mean_loss``) to the epoch logs: the mean of the epoch's
    batch losses. A ``tfrs.Model`` reports each batch's own loss, so Keras's epoch ``loss`` is
    the last batch's, noisy on small data; later callbacks (TensorBoard: ``epoch_mean_loss``,
    the progress line, History) see the mean as well.

    The batch losses are summed as tensors, so the training loop is never made to wait for a
    step; logs that are not tensors or numbers (``ParameterServerStrategy``'s remote values)
    are skipped."""

    def __init__(self):
        super().__init__()
        self._supports_tf_logs = True
        self._sums = {}

    def _add(self, part: str, logs) -> None:
        loss = logs.get("loss") if isinstance(logs, dict) else None
        if isinstance(loss, (tf.Tensor, float, int, np.floating)):
            total, count = self._sums.get(part, (0.0, 0))
            self._sums[part] = (total + tf.cast(loss, tf.float64), count + 1)

    def on_epoch_begin(self, epoch, logs=None):
        self._sums = {}

    def on_train_batch_end(self, batch, logs=None):
        self._add("train", logs)

    def on_test_begin(self, logs=None):
        self._sums.pop("validation", None)

    def on_test_batch_end(self, batch, logs=None):
        self._add("validation", logs)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for part, key in (("train", "mean_loss"), ("validation", "val_mean_loss")):
            if part in self._sums:
                total, count = self._sums[part]
                logs[key] = float(total) / count


def optimizer_for(train_config: cfg.TrainConfig, space: FeatureSpace) -> str:
    """``train_config.optimizer`` with ``auto`` resolved for ``space``'s tables."""
    if train_config.optimizer != "auto":
        return train_config.optimizer
    small = space.num_users + space.num_movies <= cfg.AUTO_DENSE_ROWS
    return "adam" if small else "lazy-adam"


def make_optimizer(train_config: cfg.TrainConfig, steps: int,
                   space: FeatureSpace) -> tf.keras.optimizers.Optimizer:
    """Adam at ``learning_rate``, decayed to 0 over ``steps`` with the cosine schedule; lazy
    (``LazyAdam``: an embedding table's update touches only the rows the batch looked up)
    where ``optimizer_for`` says so."""
    rate = train_config.learning_rate
    if train_config.lr_schedule == "cosine":
        rate = tf.keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(steps, 1))
    return LazyAdam(rate) if optimizer_for(train_config, space) == "lazy-adam" \
        else tf.keras.optimizers.Adam(rate)


def fit_model(kind: str, space: FeatureSpace, model_config: cfg.ModelConfig,
              train_config: cfg.TrainConfig, train: pd.DataFrame,
              validation: pd.DataFrame | None = None, run_dir: Path | None = None,
              callbacks: list | None = None, strategy: tf.distribute.Strategy | None = None):
    """Builds and fits one model; with ``run_dir`` it checkpoints each epoch and resumes.

    ``strategy`` (from ``distribute.make_strategy``; default: none) holds the variables and
    splits each ``batch_size`` batch over its replicas. Returns ``(model, history_dict)``.
    Shared by ``train`` and the tuner.
    """
    tf.keras.utils.set_random_seed(train_config.seed)
    strategy = strategy or tf.distribute.get_strategy()
    batch = train_config.batch_size
    fit_args = {}
    if distributed(strategy):
        train_ds, fit_args["steps_per_epoch"] = distributed_dataset(
            strategy, train, batch, train_config.seed)
        steps = fit_args["steps_per_epoch"] * train_config.epochs
    else:
        train_ds = make_dataset(train, batch, train_config.seed)
        steps = math.ceil(len(train) / batch) * train_config.epochs
    with strategy.scope():
        model = build_model(kind, space, model_config)
        runs.build_variables(model, space)  # BackupAndRestore needs every variable up front
        # ...and a model marked built: a tfrs.Model is never called, so Keras would not mark it
        # (BackupAndRestore then warns, and builds the optimizer's slots only later).
        model.built = True
        model.compile(optimizer=make_optimizer(train_config, steps, space))
    callbacks = list(callbacks or [])
    val_ds = None
    if validation is not None and len(validation):
        if distributed(strategy):
            val_ds, fit_args["validation_steps"] = distributed_dataset(strategy, validation, batch)
        else:
            val_ds = make_dataset(validation, batch)
        if train_config.early_stopping_patience:
            callbacks.append(tf.keras.callbacks.EarlyStopping(
                patience=train_config.early_stopping_patience, restore_best_weights=True))
    if run_dir is not None:
        # TensorBoard's first batch would import tensorboard.summary (~60 ms, lazily, inside
        # tf.summary.scalar); Keras times the first batches' callbacks and would call that
        # warm-up a "slow callback". Imported now, before the clock runs.
        import tensorboard.summary  # noqa: F401
        callbacks += [
            Progress(kind, batch),
            EpochMeans(),  # before TensorBoard, which logs what it adds
            tf.keras.callbacks.BackupAndRestore(str(run_dir / "checkpoints" / kind)),
            tf.keras.callbacks.TensorBoard(str(run_dir / "logs" / kind), write_graph=False),
        ]
    history = model.fit(train_ds, validation_data=val_ds, epochs=train_config.epochs,
                        callbacks=callbacks, verbose=train_config.verbose, **fit_args)
    return model, history.history
