"""The train job, "train everything that is served": load the data, split it, build the
vocabulary, fit each model, fit the re-ranker on its lists, evaluate, and write the run.

``python -m trainer train``, the benchmarks and the distributed workers call ``train``.
Rerunning it on the same output directory resumes: finished models are kept, a model that was
interrupted continues from its last completed epoch (``training.fit_model``), and the split
and vocabulary are read back rather than recomputed.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import pandas as pd

from tfrs_movies import config as cfg
from tfrs_movies import data as data_lib
from tfrs_movies import (distribute, kinds, paths, reranker, reranker_lists, runs,
                         serving_graph, training)
from tfrs_movies.errors import UserError
from tfrs_movies.evaluation import evaluate
from tfrs_movies.features import FeatureSpace, Vocabulary

log = logging.getLogger(__name__)


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
        log.info(f"Resuming the run in {run_dir}")
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
    log.info(f"{dataset.name}: {len(dataset.ratings):,} ratings, {len(dataset.users):,} users, "
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
    log.info(f"Strategy {train_config.strategy}: {distribute.describe(strategy, role)}")
    run_dir = Path(output)
    if role.chief:
        paths.check_writable(run_dir)
    split, fit, validation, vocab = _prepare(run_dir, data_config, model_config, train_config,
                                             write=role.chief)
    if not len(fit):
        raise UserError(f"the train split of {data_config.dataset} is empty")
    with strategy.scope():  # parameter-server: the lookup tables are replicated to workers
        space = FeatureSpace(vocab, max_history=model_config.max_history)
    models = {}
    for kind in kinds.trained_by(train_config.model):
        if runs.is_trained(run_dir, kind):
            log.info(f"[{kind}] already trained, loading {runs.weights_prefix(run_dir, kind)}")
            models[kind] = runs.build_trained(kind, space, model_config, run_dir)
            continue
        epochs = train_config.epochs
        log.info(f"[{kind}] training on {len(fit):,} ratings for {epochs} "
                 f"epoch{'' if epochs == 1 else 's'}")
        model, _ = training.fit_model(kind, space, model_config, train_config, fit, validation,
                                      run_dir, strategy=strategy)
        _save_weights(model, runs.weights_prefix(run_dir, kind), role)
        models[kind] = model
    if not role.chief:
        log.info(f"{role}: training done; the chief evaluates and writes {run_dir}")
        return {}
    if training.distributed(strategy):
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
    users = len(set(run.vocab.catalogue_users) | set(run.vocab.user_ids)) + 1
    movies = len(run.vocab.catalogue_movies)
    config = reranker.ReRankerConfig.from_train(
        train_config, folds=reranker_lists.folds_for(train_config.reranker_folds, run.split),
        use_ease=reranker.ease_fits(users, movies))
    names = ("item-item, session and latest" if "latest_z" in config.used_features
             else "item-item and session")
    if not config.use_ease:
        families = f" (users x catalogue too large for the {names} tables: without them)"
    elif movies > config.ease_movies:
        families = (f" ({names} families fitted on the {config.ease_movies:,} most-rated of "
                    f"{movies:,} movies)")
    else:
        families = ""
    log.info(f"[reranker] learning the served order from lists of {config.candidates} retrieved "
             f"movies{families}")
    bundle = reranker_lists.fit(
        fit, run.movies, run.users, run.split.fold_in, model_config,
        dataclasses.replace(train_config, strategy="default", verbose=0), config,
        train_config.seed)
    if bundle is not None:
        # The serving graph's tables, computed once: export, evaluation and recommend load them.
        bundle = dataclasses.replace(bundle, tables=serving_graph.rerank_tables(bundle, run.vocab))
        reranker.save(bundle, run.path)
    return bundle


def _save_weights(model, prefix: Path, role: distribute.Role) -> None:
    """Saves on every worker (saving may use collectives); non-chiefs write to a temp dir."""
    if role.chief:
        model.save_weights(str(prefix))
        return
    with tempfile.TemporaryDirectory() as scratch:
        model.save_weights(str(Path(scratch) / "weights"))
