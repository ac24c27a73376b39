"""The train job: load data, split, build vocabularies, fit each model, evaluate, save.

Rerunning ``train`` on the same output directory resumes: finished models are kept, a model
that was interrupted continues from its last completed epoch (Keras ``BackupAndRestore``),
and the split and vocabulary are read back rather than recomputed.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies import config as cfg
from tfrs_movies import data as data_lib
from tfrs_movies import distribute
from tfrs_movies import kinds, reranker
from tfrs_movies import runs
from tfrs_movies.errors import UserError
from tfrs_movies.evaluation import evaluate
from tfrs_movies.features import FeatureSpace, Vocabulary
from tfrs_movies.lazy_adam import LazyAdam
from tfrs_movies.models import build_model

log = logging.getLogger(__name__)


def _batches(frame: pd.DataFrame, batch_size: int, shuffle_seed: int | None = None,
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
    "user_rating": [B]}`` (``_batches``), the last one partial; shuffled (a new order each
    time it is iterated or repeated) when ``shuffle_seed`` is given."""
    return _batches(frame, batch_size, shuffle_seed)


def distributed_dataset(strategy: tf.distribute.Strategy, frame: pd.DataFrame,
                        global_batch: int, shuffle_seed: int | None = None):
    """(dataset, steps per epoch) for ``strategy``: each input pipeline (one per worker)
    reads its shard of the rows and yields per-replica batches, repeated forever so that
    every worker runs the same number of steps (``len(frame) // global_batch``)."""
    def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
        shard = frame.iloc[context.input_pipeline_id::context.num_input_pipelines]
        return _batches(shard, context.get_per_replica_batch_size(global_batch), shuffle_seed,
                        drop_remainder=True, repeat=True)

    steps = max(1, len(frame) // global_batch)
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        return tf.keras.utils.experimental.DatasetCreator(per_worker), steps
    return strategy.distribute_datasets_from_function(per_worker), steps


def _distributed(strategy: tf.distribute.Strategy) -> bool:
    return strategy is not tf.distribute.get_strategy()


class Progress(tf.keras.callbacks.Callback):
    """A line every ``every`` seconds (steps, examples/s, ETA) and a summary at the end: the
    progress of long epochs where Keras prints one line per epoch (``verbose=2``).

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
        print(f"[{self.name}] epoch {self.epoch + 1}/{self.params['epochs']} step {batch + 1}"
              f"{'/' + str(per_epoch) if per_epoch else ''}: {rate:,.0f} examples/s{eta}",
              flush=True)

    def on_train_end(self, logs=None):
        seconds = time.perf_counter() - self.start
        rate = self.steps * self.batch_size / max(seconds, 1e-9)
        print(f"[{self.name}] {self.steps:,} steps of {self.batch_size} in {seconds:.1f} s: "
              f"{rate:,.0f} examples/s" + (" (validation included)" if self.validated else ""),
              flush=True)


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
    if _distributed(strategy):
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
        if _distributed(strategy):
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


def _prepare(run_dir: Path, data_config: cfg.DataConfig, model_config: cfg.ModelConfig,
             train_config: cfg.TrainConfig, write: bool = True):
    """Writes config, catalogue, split and vocabulary, or checks and reuses them on resume.

    With ``write=False`` (a non-chief worker) the same deterministic split and vocabulary are
    computed but nothing is written.
    """
    config_path = run_dir / "config.json"
    if config_path.exists():
        runs.check_format(run_dir)
        saved = cfg.load_configs(config_path)
        new = {"data": data_config, "model": model_config, "train": train_config}
        changed = [f"{section}.{key}: {getattr(saved[section], key)!r} -> {value!r}"
                   for section, conf in new.items()
                   for key, value in dataclasses.asdict(conf).items()
                   if key not in _RESUMABLE_CHANGES and getattr(saved[section], key) != value]
        if changed:
            raise UserError(f"{run_dir} holds a run with other settings ({'; '.join(changed)}); "
                            "pass the same flags to resume it, or a new --output")
        print(f"Resuming the run in {run_dir}")
        split = data_lib.load_split(run_dir)
        fit, validation = _validation(split, train_config, data_config.seed)
        return split, fit, validation, Vocabulary.load(run_dir / "vocab.json")

    dataset = data_lib.load(data_config)
    split = data_lib.make_split(dataset, data_config)
    fit, validation = _validation(split, train_config, data_config.seed)
    vocab = Vocabulary.build(fit, dataset.movies, dataset.users, split.fold_in)
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "catalog").mkdir(exist_ok=True)
        dataset.movies.to_parquet(run_dir / "catalog" / "movies.parquet")
        dataset.users.to_parquet(run_dir / "catalog" / "users.parquet")
        data_lib.save_split(split, run_dir)
        vocab.save(run_dir / "vocab.json")
        runs.write_format(run_dir)
        # config.json last: its presence marks a run whose inputs are complete.
        cfg.save_configs(config_path, data=data_config, model=model_config, train=train_config)
    print(f"{dataset.name}: {len(dataset.ratings):,} ratings, {len(dataset.users):,} users, "
          f"{len(dataset.movies):,} movies; split {data_config.split}: "
          f"train {len(split.train):,}, test {len(split.test):,}"
          + (f" (of which validation {len(validation):,})" if validation is not None else "")
          + (f", fold-in {len(split.fold_in):,}" if len(split.fold_in) else ""))
    return split, fit, validation, vocab


# Settings that may differ when a run is resumed: they change how, not what, is trained.
_RESUMABLE_CHANGES = ("verbose", "strategy")


def _validation(split, train_config: cfg.TrainConfig, seed: int):
    """(fit, validation): the train split minus a seeded per-user validation share, if asked."""
    if not train_config.validation_fraction:
        return split.train, None
    return data_lib.carve_validation(split.train, train_config.validation_fraction, seed)


def train(output: str | Path, data_config: cfg.DataConfig, model_config: cfg.ModelConfig,
          train_config: cfg.TrainConfig) -> dict:
    """Runs the whole train job into ``output`` and returns the metrics written there.

    Under ``multi-worker`` or ``parameter-server`` every worker calls this with the same
    arguments; only the chief writes ``output`` and evaluates (the others return ``{}``).
    """
    # First: multi-worker strategies must exist before any other TensorFlow op runs.
    strategy, role = distribute.make_strategy(train_config.strategy)
    print(f"Strategy {train_config.strategy}: {distribute.describe(strategy, role)}")
    run_dir = Path(output)
    split, fit, validation, vocab = _prepare(run_dir, data_config, model_config, train_config,
                                             write=role.chief)
    if not len(fit):
        raise UserError(f"the train split of {data_config.dataset} is empty")
    with strategy.scope():  # parameter-server: the lookup tables are replicated to workers
        space = FeatureSpace(vocab, max_history=model_config.max_history)
    models = {}
    for kind in kinds.trained_by(train_config.model):
        if runs.is_trained(run_dir, kind):
            print(f"[{kind}] already trained, loading {runs.weights_prefix(run_dir, kind)}")
            models[kind] = runs.build_trained(kind, space, model_config, run_dir)
            continue
        print(f"[{kind}] training on {len(fit):,} ratings for {train_config.epochs} epochs")
        model, _ = fit_model(kind, space, model_config, train_config, fit, validation, run_dir,
                             strategy=strategy)
        _save_weights(model, runs.weights_prefix(run_dir, kind), role)
        models[kind] = model
    if not role.chief:
        print(f"{role}: training done; the chief evaluates and writes {run_dir}")
        return {}
    if _distributed(strategy):
        run = runs.load_run(run_dir)  # evaluates single-process copies of the trained models
    else:
        run = runs.load_run(run_dir, require_trained=False)
        run.models = models
    if train_config.model == "all" and run.reranker is None:
        run.reranker = _fit_reranker(run, fit, model_config, train_config)
    metrics = evaluate(run)
    runs.write_json(run_dir / "metrics.json", metrics)
    return metrics


def _fit_reranker(run, fit: pd.DataFrame, model_config: cfg.ModelConfig,
                  train_config: cfg.TrainConfig):
    """Trains and saves the served recommender's second stage (``tfrs_movies.reranker``)."""
    users = len(set(run.vocab.catalog_users) | set(run.vocab.user_ids)) + 1
    config = reranker.ReRankerConfig.from_train(
        train_config, use_ease=reranker.ease_fits(users, len(run.vocab.catalog_movies)))
    print(f"[reranker] learning the served order from lists of {config.candidates} retrieved "
          f"movies{'' if config.use_ease else ' (catalogue too large for EASE: without it)'}")
    model = reranker.fit(fit, run.movies, run.users, run.split.fold_in, model_config,
                         dataclasses.replace(train_config, strategy="default", verbose=0), config,
                         train_config.seed)
    if model is not None:
        reranker.save(model, run.path)
    return model


def _save_weights(model, prefix: Path, role: distribute.Role) -> None:
    """Saves on every worker (saving may use collectives); non-chiefs write to a temp dir."""
    if role.chief:
        model.save_weights(str(prefix))
        return
    with tempfile.TemporaryDirectory() as scratch:
        model.save_weights(str(Path(scratch) / "weights"))
