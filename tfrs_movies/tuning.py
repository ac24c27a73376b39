"""Hyperparameter search with KerasTuner over the one model builder (``training.fit_model``).

Sample::

    python -m trainer tune --model retrieval --data-dir ../shared/data/ml-100k \\
        --max-trials 20 --epochs 5 --output tune/retrieval
    python -m trainer train --data-dir ../shared/data/ml-100k \\
        --hparams tune/retrieval/best_hyperparameters.json --output runs/tuned

A trial takes values from ``search_space(kind)``, maps them to ModelConfig/TrainConfig fields in
``to_fields`` (the only place the two vocabularies meet), fits through ``fit_model`` and scores
the model on a per-user validation share carved out of the *train* split after every epoch
(full-ranking NDCG/Recall@K for retrieval, RMSE for ranking). The test split is never looked at.
KerasTuner only proposes values and keeps the records: ``run_trial`` is overridden (its
documented custom-training path) because KerasTuner 1.4.8 cannot build or save tf-keras models.

``reranker`` searches the served recommender's second stage (``tfrs_movies.reranker``: the
``reranker_*`` TrainConfig fields) and scores a trial by the served order's top-N metric: the
lists are built once per search from the validation share's cut of train
(``reranker_lists.validation_lists``: retrieval and rating models trained at ``epochs`` on the fit
part), and a trial only fits the small re-ranker on them (seconds), so there is no per-epoch
curve to pick from.
Its value is the mean over ``RERANKER_INITS`` initialisations: one initialisation moves
validation nDCG@10 by about as much as the settings do.

A trial's objective is the value of the model that ``train --hparams`` rebuilds: with a
constant learning rate the best epoch (training fewer epochs replays the same prefix), with
the cosine schedule the last one (the schedule spans all epochs). That epoch count is a
recommendation, ``recommended_epochs`` in ``results.json`` (and printed): it is applied only by
an explicit ``train --epochs N``. ``best_hyperparameters.json`` holds neither ``epochs`` nor
``model``, so ``train --hparams`` keeps its own model kind and training length (a re-ranker
search holds ``reranker_epochs``, the re-ranker's own, and has no ``recommended_epochs``).

``output`` holds:
  best_hyperparameters.json  the tuned ModelConfig/TrainConfig field values, for
                             ``train --hparams`` (the searched ones only)
  search.json                the search settings; a rerun must match them and resumes
  results.json               every trial (values, status, objective, epoch, seconds), the best,
                             its ``recommended_epochs``
  defaults.json              with ``compare_defaults``: the untuned configs, measured alike
  trials/                    KerasTuner's own records (oracle.json, trial_NN/trial.json)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import keras_tuner as kt

from tfrs_movies import config as cfg
from tfrs_movies import data as data_lib
from tfrs_movies import kinds, reranker, reranker_lists
from tfrs_movies.errors import UserError
from tfrs_movies.evaluation import evaluate_retrieval
from tfrs_movies.features import FeatureSpace, Vocabulary
from tfrs_movies.inference import predict_ratings
from tfrs_movies.metrics import rating_metrics
from tfrs_movies.runs import write_json
from tfrs_movies.training import fit_model

log = logging.getLogger(__name__)

# ``reranker`` is not a model kind: the served recommender's second stage, trained by ``all``.
RERANKER = "reranker"
KINDS = kinds.tunable() + (RERANKER,)
RERANKER_INITS = 3  # re-ranker initialisations a trial's value is the mean of
TUNERS = ("random", "hyperband", "bayesian")
DEFAULT_OBJECTIVES = {"retrieval": "ndcg@10", "ranking": "rmse", RERANKER: "ndcg@10"}
_RETRIEVAL_METRICS = ("ndcg", "recall", "precision", "map", "hit_rate")
_RANKING_METRICS = ("rmse", "mae")
# Choices spelled as strings because KerasTuner values are scalars; ``to_fields`` parses them.
_LAYER_FIELDS = ("tower_layers", "ranking_layers", "reranker_hidden")
_PROJECT = "trials"


def search_space(kind: str) -> kt.HyperParameters:
    """The values a ``kind`` trial draws; names are ModelConfig/TrainConfig field names.

    Ranges are for ML-100K. Every task loss is a mean over the batch, so ``l2`` and
    ``gravity`` weigh the same per-example loss in both models; gravity is a retrieval
    regularizer only. ``reranker``'s defaults are ``TrainConfig``'s.
    """
    hp = kt.HyperParameters()
    if _search(kind) == RERANKER:
        t = cfg.TrainConfig()
        hp.Choice("reranker_hidden", ["none", "8", "16,8", "32,16", "64,32"],
                  default=",".join(map(str, t.reranker_hidden)) or "none")
        hp.Choice("reranker_epochs", [10, 20, 40, 80], default=t.reranker_epochs)
        hp.Float("reranker_learning_rate", 3e-4, 3e-2, sampling="log",
                 default=t.reranker_learning_rate)
        hp.Choice("reranker_loss", list(cfg.RERANKER_LOSSES), default=t.reranker_loss)
        return hp
    hp.Choice("embedding_dim", [16, 32, 64, 128], default=64)
    hp.Choice("tower_layers", ["none", "128", "256,128"], default="none")
    hp.Float("learning_rate", 3e-4, 3e-2, sampling="log", default=3e-3)
    hp.Choice("lr_schedule", ["constant", "cosine"], default="constant")
    hp.Choice("l2", [0.0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3], default=0.0)
    search = _search(kind)
    if search == "retrieval":
        hp.Choice("gravity", [0.0, 0.01, 0.1, 1.0], default=0.0)
        # Tower dropout sits between hidden layers: without any it has nothing to act on.
        with hp.conditional_scope("tower_layers", ["128", "256,128"]):
            hp.Choice("dropout", [0.0, 0.1, 0.2, 0.3], default=0.0)
        hp.Float("temperature", 0.01, 1.0, sampling="log", default=0.1)
        hp.Choice("num_sampled_negatives", [0, 256, 1024], default=0)
    else:
        hp.Choice("dropout", [0.0, 0.1, 0.2, 0.3, 0.5], default=0.0)
        hp.Choice("ranking_layers", ["64", "128,64", "256,128", "256,128,64"], default="128,64")
        hp.Boolean("use_bias", default=True)
    return hp


def _search(kind: str) -> str:
    """The search space and objective family of ``kind`` (``kinds.Kind.search``)."""
    if kind not in KINDS:
        raise UserError(f"cannot tune model {kind!r}: choose one of {', '.join(KINDS)}")
    return RERANKER if kind == RERANKER else kinds.KINDS[kind].search


def to_fields(values: dict) -> dict:
    """KerasTuner values -> ModelConfig/TrainConfig field values (JSON types, lists for tuples).

    ``"256,128"`` -> ``[256, 128]``, ``"none"`` -> ``[]``; Hyperband's ``tuner/*`` bookkeeping
    is dropped.
    """
    fields = {}
    for name, value in values.items():
        if name.startswith("tuner/"):
            continue
        if name in _LAYER_FIELDS:
            value = [] if value == "none" else [int(units) for units in value.split(",")]
        fields[name] = value
    return fields


def configs_with(model_config: cfg.ModelConfig, train_config: cfg.TrainConfig, fields: dict):
    """(ModelConfig, TrainConfig) with ``fields`` (names from either) replacing their values."""
    model_keys = {f.name for f in dataclasses.fields(cfg.ModelConfig)}
    train_keys = {f.name for f in dataclasses.fields(cfg.TrainConfig)}
    unknown = sorted(set(fields) - model_keys - train_keys)
    if unknown:
        raise UserError(f"unknown config field(s) {', '.join(unknown)}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    model_fields = {k: v for k, v in fields.items() if k in model_keys}
    train_fields = {k: v for k, v in fields.items() if k in train_keys}
    return (dataclasses.replace(model_config, **model_fields),
            dataclasses.replace(train_config, **train_fields))


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a trial is scored by: ``metric`` (``ndcg@10``, ``rmse``...) on the validation share.

    ``name`` (``val_ndcg@10``) is the key in KerasTuner's records.
    """

    metric: str
    direction: str
    k: int | None = None

    @property
    def name(self) -> str:
        return f"val_{self.metric}"


def parse_objective(kind: str, text: str | None = None) -> Objective:
    """``ndcg@10``, ``recall@20``... (retrieval and reranker, maximized) or ``rmse``/``mae``
    (ranking)."""
    text = text or DEFAULT_OBJECTIVES[_search(kind)]
    metric = text.strip().lower().removeprefix("val_")
    if _search(kind) == "ranking":
        if metric not in _RANKING_METRICS:
            raise UserError(f"--objective {text!r}: for ranking use one of "
                            f"{', '.join(_RANKING_METRICS)}")
        return Objective(metric, "min")
    name, _, k = metric.partition("@")
    if name not in _RETRIEVAL_METRICS or not k.isdigit() or int(k) < 1:
        raise UserError(f"--objective {text!r}: for {kind} use METRIC@K with METRIC one of "
                        f"{', '.join(_RETRIEVAL_METRICS)} and K >= 1, e.g. ndcg@10")
    listed = reranker.ReRankerConfig().candidates
    if kind == RERANKER and int(k) > listed:
        raise UserError(f"--objective {text!r}: the re-ranker orders lists of {listed} "
                        f"candidates, so K can be at most {listed}")
    return Objective(f"{name}@{int(k)}", "max", int(k))


@dataclasses.dataclass
class _SearchData:
    """The train split, minus ``validation`` (per user, seeded), and its feature space; for a
    re-ranker search, ``lists``: (lists to learn on, lists to score on) from them."""

    fit: pd.DataFrame
    validation: pd.DataFrame
    space: FeatureSpace
    lists: tuple | None = None
    folds: str = "random"


def _prepare(data_config: cfg.DataConfig, validation_fraction: float, max_history: int,
             kind: str, model_config: cfg.ModelConfig,
             train_config: cfg.TrainConfig) -> _SearchData:
    dataset = data_lib.load(data_config)
    split = data_lib.make_split(dataset, data_config)
    # A re-ranker search asks what the run's re-ranker will: its folds (and so the validation
    # share) are each user's latest ratings where the test follows train in time.
    folds = (reranker_lists.folds_for(train_config.reranker_folds, split)
             if kind == RERANKER else "random")
    fit, validation = reranker_lists.carve(split.train, validation_fraction, data_config.seed,
                                           folds)
    if not len(validation):
        raise UserError(f"validation fraction {validation_fraction} of {len(split.train)} train "
                        f"ratings left no validation ratings; raise --validation-fraction")
    # Vocabulary from the fit part only, as training builds it from what it trains on.
    vocab = Vocabulary.build(fit, dataset.movies, dataset.users, split.fold_in)
    log.info(f"{dataset.name}: train split {len(split.train):,} ratings = fit {len(fit):,} + "
             f"validation {len(validation):,} (the {len(split.test):,} test ratings are not used)")
    found = None
    if kind == RERANKER:
        log.info(f"[reranker] building the lists every trial learns on and is scored on "
                 f"(retrieval models of {train_config.epochs} "
                 f"epoch{'' if train_config.epochs == 1 else 's'} on the fit part)")
        found = reranker_lists.validation_lists(
            fit, validation, dataset.movies, dataset.users, split.fold_in, model_config,
            train_config, reranker.ReRankerConfig.from_train(train_config, folds=folds),
            data_config.seed)
        if found is None:
            raise UserError("no re-ranker list holds a held-out movie of its user: too little "
                            "data to tune the re-ranker")
    return _SearchData(fit, validation, FeatureSpace(vocab, max_history=max_history), found,
                       folds)


def _measure(kind: str, model, data: _SearchData, objective: Objective) -> float:
    if _search(kind) == "retrieval":
        catalogue = data.space.vocab.catalogue_movies
        result = evaluate_retrieval(model, catalogue, seen=data.fit, test=data.validation,
                                    k=objective.k)
        name = objective.metric.split("@")[0]
        return result[f"{name}@{min(objective.k, len(catalogue))}"]
    truth = data.validation["user_rating"].to_numpy(np.float64)
    predicted = predict_ratings(model, data.validation).astype(np.float64)
    return rating_metrics(truth, predicted)[objective.metric]


class _ScoreEachEpoch(tf.keras.callbacks.Callback):
    """Scores the validation share after every epoch; a non-finite loss fails the trial."""

    def __init__(self, measure):
        super().__init__()
        self.measure = measure
        self.values: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise kt.errors.FailedTrialError(f"training diverged: loss {loss} at epoch {epoch + 1}")
        # evaluation.embed wraps the towers in a fresh tf.function per call; TensorFlow's
        # "frequent retracing" warning would fire every epoch, so it is muted while scoring.
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            self.values.append(float(self.measure(self.model)))
        finally:
            logger.setLevel(level)


def _run_reranker(train_config: cfg.TrainConfig, data: _SearchData,
                  objective: Objective) -> dict:
    """Re-rankers of ``train_config``'s settings (``RERANKER_INITS`` initialisations) fitted
    to the search's learning lists, scored by their order of the scoring lists: ``value`` is
    the mean, ``values`` each one's; ``epoch`` is the re-ranker's own ``reranker_epochs``."""
    start = time.perf_counter()
    learn, scored = data.lists
    config = reranker.ReRankerConfig.from_train(train_config, folds=data.folds)
    values = []
    for init in range(RERANKER_INITS):
        try:
            model = reranker.train_on(learn, config, train_config.seed + init)
            scores = model(scored.features).numpy()
        finally:
            tf.keras.backend.clear_session()
        values.append(float(reranker.top_n(scored, scores, objective.k)[objective.metric]))
    value = float(np.mean(values))
    if not math.isfinite(value):
        raise kt.errors.FailedTrialError(f"{objective.metric} is {value}")
    return {"value": value, "epoch": config.epochs, "values": values,
            "seconds": round(time.perf_counter() - start, 1)}


def run_config(kind: str, model_config: cfg.ModelConfig, train_config: cfg.TrainConfig,
               data: _SearchData, objective: Objective) -> dict:
    """Fits one configuration and scores it: ``{"value", "epoch", "values" (per epoch),
    "seconds"}``; ``epoch`` (1-based) is the one ``train --hparams`` should run (module doc)."""
    if kind == RERANKER:
        return _run_reranker(train_config, data, objective)
    start = time.perf_counter()
    score = _ScoreEachEpoch(lambda model: _measure(kind, model, data, objective))
    try:
        fit_model(kind, data.space, model_config, train_config, data.fit, callbacks=[score])
    finally:
        tf.keras.backend.clear_session()  # frees the trial's graphs before the next one
    values = np.asarray(score.values, np.float64)
    if train_config.lr_schedule == "cosine":
        epoch = len(values)
    else:
        finite = np.where(np.isfinite(values), values, np.nan)
        if np.isnan(finite).all():
            raise kt.errors.FailedTrialError(f"{objective.metric} is not finite at any epoch")
        epoch = 1 + int(np.nanargmax(finite) if objective.direction == "max"
                        else np.nanargmin(finite))
    value = float(values[epoch - 1])
    if not math.isfinite(value):
        raise kt.errors.FailedTrialError(f"{objective.metric} is {value} at epoch {epoch}")
    return {"value": value, "epoch": epoch, "values": values.tolist(),
            "seconds": round(time.perf_counter() - start, 1)}


class ConfigTuner(kt.Tuner):
    """A KerasTuner ``Tuner`` whose trials run ``run_config``; any oracle drives it.

    KerasTuner never builds, fits or saves a model here: ``run_trial`` returns
    ``{objective.name: value, "best_epoch": epoch}`` and writes ``trial_NN/history.json``.
    A trial that raises is recorded (status FAILED, traceback in its trial.json) and the
    search goes on; ``max_consecutive_failed_trials`` in a row stop it.
    """

    def __init__(self, oracle, *, kind: str, data: _SearchData, objective: Objective,
                 model_config: cfg.ModelConfig, train_config: cfg.TrainConfig, **kwargs):
        self.kind = kind
        self.data = data
        self.objective_ = objective
        self.model_config = model_config
        self.train_config = train_config
        super().__init__(oracle=oracle, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        values = trial.hyperparameters.values
        fields = to_fields(values)
        if self.kind != RERANKER:
            # Hyperband gives each round its own budget; the trial trains from scratch to it.
            fields["epochs"] = int(values.get("tuner/epochs", self.train_config.epochs))
        model_config, train_config = configs_with(self.model_config, self.train_config, fields)
        result = run_config(self.kind, model_config, train_config, self.data, self.objective_)
        write_json(Path(self.get_trial_dir(trial.trial_id)) / "history.json",
                   {"fields": fields, self.objective_.name: result})
        return {self.objective_.name: result["value"], "best_epoch": result["epoch"]}

    def on_trial_end(self, trial):
        super().on_trial_end(trial)  # the oracle scores it or marks it FAILED
        log.info(_trial_line(self, self.oracle.get_trial(trial.trial_id)))


def _history(tuner: ConfigTuner, trial) -> dict:
    path = Path(tuner.project_dir) / f"trial_{trial.trial_id}" / "history.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _row(tuner: ConfigTuner, trial) -> dict:
    """One trial as a flat dict: id, status, objective, epoch, seconds, then its values."""
    name = tuner.objective_.name
    done = trial.status == "COMPLETED"
    result = _history(tuner, trial).get(name, {})
    row = {"trial": trial.trial_id, "status": trial.status,
           name: float(trial.score) if done and trial.score is not None else None,
           "epochs": int(trial.metrics.get_last_value("best_epoch")) if done else None,
           "seconds": result.get("seconds")}
    return {**row, **_values(trial)}


def _values(trial) -> dict:
    """A trial's values for display: layer lists as ``256,128``/``none``, Hyperband's budget."""
    values = {k: ",".join(map(str, v)) or "none" if isinstance(v, list) else v
              for k, v in to_fields(trial.hyperparameters.values).items()}
    if "tuner/epochs" in trial.hyperparameters.values:
        values["budget"] = trial.hyperparameters.values["tuner/epochs"]
    return values


def _trial_line(tuner: ConfigTuner, trial) -> str:
    row = _row(tuner, trial)
    total = tuner.oracle.max_trials or "?"
    ended = len(tuner.oracle.end_order)
    head = f"[{ended}/{total}] trial {trial.trial_id}"
    values = "  ".join(f"{k}={_short(v)}" for k, v in _values(trial).items())
    if trial.status != "COMPLETED":
        lines = (trial.message or "").strip().splitlines()
        why = lines[-1] if lines else "no result"
        record = Path(tuner.project_dir) / f"trial_{trial.trial_id}" / "trial.json"
        return f"{head} {trial.status}: {why}  ({values}; record: {record})"
    name = tuner.objective_.name
    return f"{head} {name}={row[name]:.4f} at epoch {row['epochs']}  {row['seconds']}s  {values}"


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _oracle(tuner: str, objective: Objective, space: kt.HyperParameters, max_trials: int,
            epochs: int, seed: int):
    common = dict(objective=kt.Objective(objective.name, objective.direction),
                  hyperparameters=space, allow_new_entries=False, tune_new_entries=False,
                  seed=seed, max_retries_per_trial=0, max_consecutive_failed_trials=3)
    if tuner == "random":
        return kt.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if tuner == "hyperband":
        oracle = kt.oracles.HyperbandOracle(max_epochs=epochs, factor=3, **common)
        oracle.max_trials = max_trials  # Hyperband has no cap of its own; the base oracle checks it
        return oracle
    if tuner == "bayesian":
        try:
            return kt.oracles.BayesianOptimizationOracle(
                max_trials=max_trials, num_initial_points=max(2, max_trials // 3), **common)
        except ImportError:
            raise UserError("--tuner bayesian needs scipy and scikit-learn "
                            "(pip install 'keras-tuner[bayesian]')") from None
    raise UserError(f"unknown tuner {tuner!r}: choose one of {', '.join(TUNERS)}")


def _check_settings(out: Path, settings: dict) -> None:
    """Writes ``search.json``, or checks that a rerun asks for the same search."""
    path = out / "search.json"
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back
    if path.exists():
        saved = json.loads(path.read_text())
        changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items()
                   if saved.get(k) != v]
        if changed:
            raise UserError(f"{out} holds a search with other settings ({'; '.join(changed)}); "
                            "pass the same flags to resume it (only --max-trials may grow), "
                            "or a new --output")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def tune(output: str | Path, data_config: cfg.DataConfig, kind: str, tuner: str = "random",
         max_trials: int = 20, epochs: int = 10, objective: str | None = None,
         validation_fraction: float = 0.1, model_config: cfg.ModelConfig | None = None,
         train_config: cfg.TrainConfig | None = None, compare_defaults: bool = False) -> dict:
    """Searches ``search_space(kind)``; returns what ``output/results.json`` holds: among others
    ``best_hyperparameters`` (as written to ``best_hyperparameters.json``) and
    ``recommended_epochs`` (the best trial's epoch count, module doc).

    ``max_trials`` counts every trial in ``output``, earlier runs included: a rerun resumes
    (an interrupted trial runs again) and a larger ``max_trials`` extends the search.
    ``epochs`` is each trial's budget (Hyperband's most). ``model_config``/``train_config``
    give the values that are not tuned (defaults: the dataclass defaults, ``seed`` from the
    data config). With ``compare_defaults`` the untuned configs are measured the same way.
    """
    _search(kind)
    if tuner not in TUNERS:
        raise UserError(f"unknown tuner {tuner!r}: choose one of {', '.join(TUNERS)}")
    if max_trials < 1 or epochs < 1:
        raise UserError(f"need --max-trials >= 1 and --epochs >= 1, got {max_trials} and {epochs}")
    if not 0.0 < validation_fraction < 1.0:
        raise UserError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    if kind == RERANKER and tuner == "hyperband":
        raise UserError("--tuner hyperband grows each trial's epochs, but a re-ranker trial "
                        "trains in seconds and searches its own epochs: use random or bayesian")
    goal = parse_objective(kind, objective)
    oracle = _oracle(tuner, goal, search_space(kind), max_trials, epochs, data_config.seed)
    model_config = model_config or cfg.ModelConfig()
    train_config = dataclasses.replace(train_config or cfg.TrainConfig(seed=data_config.seed),
                                       model="all" if kind == RERANKER else kind,
                                       epochs=epochs, validation_fraction=0.0,
                                       early_stopping_patience=0, verbose=0)
    out = Path(output)
    _check_settings(out, {"kind": kind, "tuner": tuner, "epochs": epochs,
                          "objective": goal.metric, "validation_fraction": validation_fraction,
                          "data": cfg.to_dict(data_config), "model": cfg.to_dict(model_config),
                          "train": cfg.to_dict(train_config)})
    data = _prepare(data_config, validation_fraction, model_config.max_history, kind,
                    model_config, train_config)
    search = ConfigTuner(oracle, kind=kind, data=data, objective=goal, model_config=model_config,
                         train_config=train_config, directory=str(out), project_name=_PROJECT,
                         overwrite=False)
    search.oracle.verbose = 0  # one line per trial is printed by ConfigTuner instead
    log.info(f"Tuning {kind} ({tuner}, {goal.name} {goal.direction}imized, up to {epochs} "
             f"epoch{'' if epochs == 1 else 's'} per trial): {len(search.oracle.trials)} of "
             f"{max_trials} trials already in {out}")
    try:
        search.search()
    except RuntimeError as e:
        if "consecutive failures" not in str(e):
            raise
        raise UserError(f"tuning stopped: {search.oracle.max_consecutive_failed_trials} trials "
                        f"in a row failed; records in {search.project_dir}") from None
    return _finish(search, out, goal, compare_defaults, model_config, train_config)


def _finish(search: ConfigTuner, out: Path, goal: Objective, compare_defaults: bool,
            model_config: cfg.ModelConfig, train_config: cfg.TrainConfig) -> dict:
    """Writes best_hyperparameters.json, results.json (and defaults.json); prints the table;
    returns what results.json holds."""
    trials = sorted(search.oracle.trials.values(), key=lambda t: int(t.trial_id))
    done = [t for t in trials if t.status == "COMPLETED"]
    if not done:
        raise UserError(f"no trial completed; see the records in {search.project_dir}")
    best = search.oracle.get_best_trials(1)[0]
    # Only the searched values: the model kind and the epoch count stay train's to choose.
    values = to_fields(best.hyperparameters.values)
    epochs = (None if search.kind == RERANKER  # its epochs are one of its searched values
              else int(best.metrics.get_last_value("best_epoch")))
    configs_with(model_config, train_config, values)  # the file must build valid configs
    write_json(out / "best_hyperparameters.json", values)

    rows = [_row(search, t) for t in trials]
    table = pd.DataFrame(rows).sort_values(goal.name, ascending=goal.direction == "min",
                                           na_position="last")
    log.info(f"\n{len(done)} of {len(trials)} trials completed; {goal.name} on the validation "
             "share (best first):")
    log.info(table.to_string(index=False, na_rep="-",
                             float_format=lambda x: f"{x:.4g}"))
    summary = {"objective": goal.name, "direction": goal.direction, "best_trial": best.trial_id,
               "best_value": float(best.score), "best_hyperparameters": values,
               "recommended_epochs": epochs, "trials": rows}
    log.info(f"Best: trial {best.trial_id}, {goal.name}={best.score:.4f}"
             f"{'' if epochs is None else f' at epoch {epochs}'} "
             f"({', '.join(f'{k}={_short(v)}' for k, v in values.items())})")
    if compare_defaults:
        baseline = _defaults(search, out, goal, model_config, train_config)
        gain = best.score - baseline["value"]
        if goal.direction == "min":
            gain = -gain
        summary["defaults"] = baseline
        where = ("" if search.kind == RERANKER else f" at epoch {baseline['epoch']} (final "
                 f"epoch {baseline['values'][-1]:.4f})")
        log.info(f"Defaults: {goal.name}={baseline['value']:.4f}{where}; the best trial is "
                 f"{'better' if gain > 0 else 'worse'} by {abs(gain):.4f} "
                 f"({100 * abs(gain) / abs(baseline['value']):.1f}%)")
    write_json(out / "results.json", summary)
    return summary


def _defaults(search: ConfigTuner, out: Path, goal: Objective, model_config: cfg.ModelConfig,
              train_config: cfg.TrainConfig) -> dict:
    """The untuned configs through ``run_config`` (cached in defaults.json across reruns)."""
    path = out / "defaults.json"
    if path.exists():
        return json.loads(path.read_text())
    epochs = train_config.epochs
    what = "" if search.kind == RERANKER else f" ({epochs} epoch{'' if epochs == 1 else 's'})"
    log.info(f"Measuring the default configuration{what}...")
    result = run_config(search.kind, model_config, train_config, search.data, goal)
    write_json(path, result)
    return result
