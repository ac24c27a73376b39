"""Flag groups shared by the ``python -m trainer`` subcommands, and their parsing into configs.

Every flag that sets a config field is parsed with ``default=argparse.SUPPRESS``: it is in the
namespace only when given on the command line (however abbreviated), so ``configs`` can let
explicit flags beat a ``--hparams`` file, and the file beat the defaults, which live in one
place, the config dataclasses (``--help`` shows them from there).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from tfrs_movies import cli, paths
from tfrs_movies import config as cfg
from tfrs_movies.errors import UserError

_MODEL_KEYS = frozenset(f.name for f in dataclasses.fields(cfg.ModelConfig))
_TRAIN_KEYS = frozenset(f.name for f in dataclasses.fields(cfg.TrainConfig))


def _flag(group, flag: str, default, help: str, **kwargs) -> None:
    """A config flag: absent from the namespace unless given; ``--help`` shows ``default``."""
    cli.set_shown_default(
        group.add_argument(flag, default=argparse.SUPPRESS, help=help, **kwargs), default)


def _switch(group, flag: str, dest: str, help: str) -> None:
    """A ``store_false`` config flag (absent unless given, so a file's value is kept)."""
    group.add_argument(flag, dest=dest, action="store_false", default=argparse.SUPPRESS,
                       help=help)


def add_data_flags(p: argparse.ArgumentParser) -> None:
    d = cfg.DataConfig()
    g = p.add_argument_group("data")
    _flag(g, "--dataset", d.dataset, "data source: a MovieLens version (from --data-dir or "
          "TFDS), csv files or a synthetic generator", choices=cfg.DATASETS)
    _flag(g, "--data-dir", None, "raw extracted MovieLens folder (default: env "
          "TFRS_MOVIES_DATA_DIR; unset = read through TFDS)", metavar="DIR")
    _flag(g, "--tfds-manual-dir", None,
          "folder holding the official MovieLens zip (offline TFDS)", metavar="DIR")
    _flag(g, "--tfds-data-dir", None, "where TFDS keeps prepared datasets (default: TFDS's)",
          metavar="DIR")
    _flag(g, "--ratings", None, "csv: interactions file user_id,movie_id,rating[,timestamp] "
          f"(csv/parquet); synthetic: number of ratings (default {d.synthetic_ratings})")
    _flag(g, "--movies", None, "csv: movies file movie_id[,title,genres]; synthetic: number "
          f"of movies (default {d.synthetic_movies})")
    _flag(g, "--users", None, "csv: users file user_id[,age,gender,occupation,zip_code]; "
          f"synthetic: number of users (default {d.synthetic_users})")
    _flag(g, "--test-ratings", None, "explicit test interactions instead of a split (train "
          "is every other rating)", metavar="FILE")
    _flag(g, "--min-movie-ratings", d.min_movie_ratings,
          "drop movies with fewer ratings than this, before splitting", type=int)
    _flag(g, "--rating-scale", None, "every rating must be in [LOW, HIGH], e.g. 1,5 (default: "
          "only ratings far above the rest of the file's are refused)", type=scale,
          metavar="LOW,HIGH")
    _flag(g, "--split", d.split, "how the test ratings are held out (docs/data.md)",
          choices=cfg.SPLITS)
    _flag(g, "--test-fraction", d.test_fraction, "share held out: of the ratings (random, "
          "user, temporal) or of the users (strong)", type=float)
    _flag(g, "--leave-last", d.leave_last, "ratings per user held out by --split leave-last",
          type=int)
    _flag(g, "--fold-in-fraction", d.fold_in_fraction, "share of a held-out user's ratings "
          "given to the model at evaluation (--split strong)", type=float)
    _flag(g, "--seed", d.seed, "seeds data, split and training", type=int)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    m, t = cfg.ModelConfig(), cfg.TrainConfig()
    g = p.add_argument_group("model")
    _flag(g, "--model", t.model, "what to train: all = retrieval and ranking (docs/models.md)",
          choices=cfg.MODELS)
    _flag(g, "--embedding-dim", m.embedding_dim, "width of the embeddings and tower outputs",
          type=int)
    _flag(g, "--tower-layers", m.tower_layers, "hidden layer sizes on each tower, e.g. 128,64",
          type=ints)
    _switch(g, "--no-features", "use_features",
            "ignore demographics, genres, titles and years (ids and history only)")
    _switch(g, "--no-history", "use_history",
            "leave the user's rated movies out of the user tower")
    _flag(g, "--new-user-rate", m.new_user_rate, "share of training examples whose user tower "
          "sees a new user (no id, no demographics, only the history), so that with_history "
          "requests for unseen ids get a trained embedding (0.3: new users +0.008 nDCG@10, "
          "known users -0.002; docs/quality.md)", type=float)
    _flag(g, "--new-user-weight", m.new_user_weight, "weight of a second retrieval loss for "
          "a user-tower head on the history alone, which queries unseen ids' with_history "
          "requests (0: none; docs/quality.md)", type=float)
    _flag(g, "--new-user-layers", m.new_user_layers, "hidden layer sizes of that head",
          type=ints)
    _flag(g, "--temperature", m.temperature, "softmax temperature of the retrieval task",
          type=float)
    _flag(g, "--num-sampled-negatives", m.num_sampled_negatives,
          "extra uniformly sampled negatives per batch (0: in-batch ones only)", type=int)
    _switch(g, "--per-replica-negatives", "cross_replica_negatives",
            "distributed retrieval: softmax over each replica's own batch share instead of "
            "all replicas' candidates")
    _flag(g, "--l2", m.l2, "L2 weight on the embedding tables (default: the model kind's, 1.5e-3 "
          "for retrieval, 5e-4 for ranking and multitask; 0 for mf, mf-gravity, softmax-history, "
          "rating-classes)", type=float)
    _flag(g, "--gravity", m.gravity,
          "gravity regularizer weight on the id embeddings (mf-gravity: 1.0 if 0)", type=float)
    _flag(g, "--dropout", m.dropout, "dropout rate in the towers and the ranking MLP",
          type=float)
    _flag(g, "--ranking-layers", m.ranking_layers, "hidden layer sizes of the ranking MLP",
          type=ints)
    _flag(g, "--ranking-head", m.ranking_head, "regression (MSE) or classes (softmax over the "
          "rating values)", choices=("regression", "classes"))
    g = p.add_argument_group("training")
    _flag(g, "--epochs", t.epochs, "passes over the train split", type=int)
    _flag(g, "--batch-size", t.batch_size, "examples per step, also the in-batch negatives "
          "(the global batch under --strategy)", type=int)
    _flag(g, "--learning-rate", t.learning_rate, "Adam learning rate (the peak, with cosine)",
          type=float)
    _flag(g, "--lr-schedule", t.lr_schedule, "constant, or cosine decay to 0 over all steps",
          choices=("constant", "cosine"))
    _flag(g, "--optimizer", t.optimizer, "lazy-adam: a step updates only the embedding rows "
          "its batch looked up; adam: every row, every step; auto: adam up to "
          f"{cfg.AUTO_DENSE_ROWS:,} users + movies, lazy-adam beyond", choices=cfg.OPTIMIZERS)
    _flag(g, "--validation-fraction", t.validation_fraction, "share of each user's train "
          "ratings held out for validation curves and early stopping (0: none)", type=float)
    _flag(g, "--early-stopping-patience", t.early_stopping_patience,
          "epochs without validation improvement before stopping (0: never)", type=int)
    _flag(g, "--eval-k", t.eval_k, "K of the top-K metrics in metrics.json", type=int)
    _flag(g, "--strategy", t.strategy, "tf.distribute strategy (multi-worker kinds read "
          "TF_CONFIG); --batch-size is the global batch", choices=cfg.STRATEGIES)
    g = p.add_argument_group("re-ranker (the served recommender's second stage, --model all)")
    _flag(g, "--reranker-hidden", t.reranker_hidden, "hidden layer sizes of its MLP, e.g. 32,16 "
          "(empty: linear)", type=ints)
    _flag(g, "--reranker-epochs", t.reranker_epochs, "its epochs over the training lists",
          type=int)
    _flag(g, "--reranker-learning-rate", t.reranker_learning_rate, "its Adam learning rate",
          type=float)
    _flag(g, "--reranker-loss", t.reranker_loss, "listwise (softmax over each list) or pairwise",
          choices=cfg.RERANKER_LOSSES)
    _flag(g, "--reranker-folds", t.reranker_folds, "which of each user's train ratings its "
          "lists hold out: random, latest (what next), or auto (latest when the test follows "
          "train in time)", choices=cfg.RERANKER_FOLDS)
    g = p.add_argument_group("hyperparameter file")
    g.add_argument("--hparams", metavar="FILE", help="JSON object of ModelConfig/TrainConfig "
                   "values (from tune): they replace the defaults; flags given replace them")


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
    """``cls`` from the ``values`` (and ``overrides``) naming its fields; the rest default."""
    names = {f.name for f in dataclasses.fields(cls)}
    chosen = {k: v for k, v in values.items() if k in names}
    chosen.update({k: v for k, v in (overrides or {}).items() if k in names})
    return cls(**chosen)


def data_config(values: dict) -> cfg.DataConfig:
    """DataConfig from flags; for ``synthetic``, --users/--movies/--ratings are sizes."""
    values = dict(values)
    if values.get("dataset") == "synthetic":
        for flag in ("users", "movies", "ratings"):
            text = values.pop(flag, None)
            if text is not None:
                try:
                    values[f"synthetic_{flag}"] = int(float(text))
                except ValueError:
                    raise UserError(f"--{flag} {text!r}: with --dataset synthetic it is a "
                                    "count, e.g. --ratings 100000") from None
    return pick(cfg.DataConfig, values)


def configs(values: dict, hparams_path: str | None = None, overrides: dict | None = None,
            report=print) -> tuple[cfg.ModelConfig, cfg.TrainConfig]:
    """The one merge of hyperparameters: flags given (the config fields in ``values``, a parsed
    namespace's dict) beat the ``hparams_path`` file, which beats the dataclass defaults.

    ``overrides`` (settings the CLI decides, such as Keras's ``verbose``) beat all three.
    ``report`` gets one line saying which file values were used and which flags replaced
    them. Everything is checked before anything is written.
    """
    explicit = {k: v for k, v in values.items() if k in _MODEL_KEYS | _TRAIN_KEYS}
    explicit.update(overrides or {})
    from_file = read_hparams(hparams_path) if hparams_path else {}
    merged = {**from_file, **explicit}
    try:
        model_config = pick(cfg.ModelConfig, merged)
        train_config = pick(cfg.TrainConfig, merged)
    except UserError as e:
        if not from_file:
            raise
        raise UserError(f"{e} (with the values of --hparams {hparams_path})") from None
    if from_file:
        used = [f"{k}={cli.format_default(v)}" for k, v in from_file.items() if k not in explicit]
        replaced = sorted(set(from_file) & set(explicit))
        report(f"From {hparams_path}: {', '.join(used) or 'nothing'}"
               + (f" (replaced by flags: {', '.join(replaced)})" if replaced else ""))
    return model_config, train_config


def read_hparams(path: str) -> dict:
    """The ``--hparams`` file's values, checked: a JSON object of ModelConfig/TrainConfig
    field names and values of the fields' types (lists for tuples, returned as tuples)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UserError(f"--hparams {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--hparams {path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise UserError(f"--hparams {path}: expected a JSON object of field values such as "
                        f'{{"embedding_dim": 64}}, got {json.dumps(raw)[:60]}')
    unknown = sorted(set(raw) - _MODEL_KEYS - _TRAIN_KEYS)
    if unknown:
        raise UserError(f"--hparams {path}: unknown key(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(_MODEL_KEYS | _TRAIN_KEYS))}")
    source = f"--hparams {path}"
    checked = {
        **cfg.check_types(cfg.ModelConfig, {k: v for k, v in raw.items() if k in _MODEL_KEYS},
                          source),
        **cfg.check_types(cfg.TrainConfig, {k: v for k, v in raw.items() if k in _TRAIN_KEYS},
                          source)}
    return {k: checked[k] for k in raw}  # in the file's order


def output_dir(path: str, flag: str = "--output") -> Path:
    """``path`` as a directory to write into, refused in one line if it (or a parent) is a
    file; nothing is created."""
    out = Path(path)
    for where in (out, *out.parents):
        if where.exists():
            if not where.is_dir():
                what = "is a file" if where == out else f"is inside {where}, a file"
                raise UserError(f"{flag} {path} {what}: give a directory")
            break
    return out


def output_file(path: str, flag: str = "--output", create: bool = True) -> Path:
    """``path`` as a file to (over)write: refused if it is a directory or below a file; its
    parent directories are created (unless not ``create``)."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"{flag} {path} is a directory: give a file name, e.g. "
                        f"{out / 'metrics.json'}")
    output_dir(str(out.parent), flag=f"{flag} {path}: its folder")
    if create:
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


def data_inputs(data: cfg.DataConfig, hparams: str | None = None) -> list[paths.Input]:
    """The files and folders a train or tune job reads (for `paths.check_outputs`)."""
    named = [("--data-dir", data.data_dir), ("--tfds-manual-dir", data.tfds_manual_dir),
             ("--test-ratings", data.test_ratings), ("--hparams", hparams)]
    if data.dataset != "synthetic":  # there --ratings, --movies, --users are counts
        named += [("--ratings", data.ratings), ("--movies", data.movies),
                  ("--users", data.users)]
    return [paths.Input(f"the {flag} input", path) for flag, path in named if path]
