"""Flag groups shared by the ``python -m trainer`` subcommands, and their parsing into configs."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from tfrs_movies import config as cfg
from tfrs_movies.errors import UserError


def add_data_flags(p: argparse.ArgumentParser) -> None:
    d = cfg.DataConfig()
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, choices=cfg.DATASETS)
    g.add_argument("--data-dir", help="raw extracted MovieLens folder (default: env "
                   "TFRS_MOVIES_DATA_DIR; unset = read through TFDS)")
    g.add_argument("--tfds-manual-dir",
                   help="folder holding the official MovieLens zip (offline TFDS)")
    g.add_argument("--tfds-data-dir", help="where TFDS keeps prepared datasets")
    g.add_argument("--ratings", help="csv: interactions file user_id,movie_id,rating[,timestamp]"
                   f" (csv/parquet); synthetic: number of ratings (default {d.synthetic_ratings})")
    g.add_argument("--movies", help="csv: movies file movie_id[,title,genres]; synthetic: number "
                   f"of movies (default {d.synthetic_movies})")
    g.add_argument("--users", help="csv: users file user_id[,age,gender,occupation,zip_code]; "
                   f"synthetic: number of users (default {d.synthetic_users})")
    g.add_argument("--test-ratings", help="explicit test interactions instead of a split")
    g.add_argument("--min-movie-ratings", type=int, default=d.min_movie_ratings)
    g.add_argument("--rating-scale", type=scale, metavar="LOW,HIGH",
                   help="every rating must be in [LOW, HIGH], e.g. 1,5 (default: only ratings "
                   "far above the rest of the file's are refused)")
    g.add_argument("--split", default=d.split, choices=cfg.SPLITS)
    g.add_argument("--test-fraction", type=float, default=d.test_fraction)
    g.add_argument("--leave-last", type=int, default=d.leave_last)
    g.add_argument("--fold-in-fraction", type=float, default=d.fold_in_fraction)
    g.add_argument("--seed", type=int, default=d.seed, help="seeds data, split and training")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    m, t = cfg.ModelConfig(), cfg.TrainConfig()
    g = p.add_argument_group("model")
    g.add_argument("--model", default=t.model, choices=cfg.MODELS)
    g.add_argument("--embedding-dim", type=int, default=m.embedding_dim)
    g.add_argument("--tower-layers", type=ints, default=m.tower_layers, help="e.g. 128,64")
    g.add_argument("--no-features", dest="use_features", action="store_false")
    g.add_argument("--no-history", dest="use_history", action="store_false")
    g.add_argument("--temperature", type=float, default=m.temperature)
    g.add_argument("--num-sampled-negatives", type=int, default=m.num_sampled_negatives)
    g.add_argument("--per-replica-negatives", dest="cross_replica_negatives",
                   action="store_false", help="distributed retrieval: softmax over each "
                   "replica's own batch share instead of all replicas' candidates")
    g.add_argument("--l2", type=float, default=m.l2)
    g.add_argument("--gravity", type=float, default=m.gravity,
                   help="gravity regularizer weight on the id embeddings (mf-gravity: 1.0 if 0)")
    g.add_argument("--dropout", type=float, default=m.dropout)
    g.add_argument("--ranking-layers", type=ints, default=m.ranking_layers)
    g.add_argument("--ranking-head", default=m.ranking_head, choices=("regression", "classes"))
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=t.epochs)
    g.add_argument("--batch-size", type=int, default=t.batch_size)
    g.add_argument("--learning-rate", type=float, default=t.learning_rate)
    g.add_argument("--lr-schedule", default=t.lr_schedule, choices=("constant", "cosine"))
    g.add_argument("--validation-fraction", type=float, default=t.validation_fraction)
    g.add_argument("--early-stopping-patience", type=int, default=t.early_stopping_patience)
    g.add_argument("--eval-k", type=int, default=t.eval_k)
    g.add_argument("--strategy", default=t.strategy, choices=cfg.STRATEGIES,
                   help="tf.distribute strategy (multi-worker kinds read TF_CONFIG); "
                   "--batch-size is the global batch")
    g.add_argument("--hparams", help="JSON of ModelConfig/TrainConfig values (from `tune`); "
                   "they override the defaults, explicit flags override them")


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def scale(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 1,5), got {text!r}") from None
    return low, high


def pick(cls, values: dict, overrides: dict | None = None):
    names = {f.name for f in dataclasses.fields(cls)}
    chosen = {k: v for k, v in values.items() if k in names}
    chosen.update({k: v for k, v in (overrides or {}).items() if k in names})
    return cls(**chosen)


def data_config(values: dict) -> cfg.DataConfig:
    """DataConfig from flags; for ``synthetic``, --users/--movies/--ratings are sizes."""
    values = dict(values)
    if values["dataset"] == "synthetic":
        for flag in ("users", "movies", "ratings"):
            text = values.pop(flag)
            if text is not None:
                try:
                    values[f"synthetic_{flag}"] = int(float(text))
                except ValueError:
                    raise UserError(f"--{flag} {text!r}: with --dataset synthetic it is a "
                                    "count, e.g. --ratings 100000") from None
    return pick(cfg.DataConfig, values)


def hparams(path: str | None, argv_flags: set[str]) -> tuple[dict, dict]:
    """Values from ``--hparams FILE`` for the model and train configs, minus explicit flags."""
    if not path:
        return {}, {}
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--hparams {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"--hparams {path}: not valid JSON ({e})") from None
    model_keys = {f.name for f in dataclasses.fields(cfg.ModelConfig)}
    train_keys = {f.name for f in dataclasses.fields(cfg.TrainConfig)}
    unknown = sorted(set(raw) - model_keys - train_keys)
    if unknown:
        raise UserError(f"--hparams {path}: unknown key(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(model_keys | train_keys))}")
    raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()
           if k.replace("_", "-") not in argv_flags}
    return ({k: v for k, v in raw.items() if k in model_keys},
            {k: v for k, v in raw.items() if k in train_keys})
