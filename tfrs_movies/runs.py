"""The run directory: everything a later job (evaluate, recommend, export) needs from training.

Layout::

    RUN/config.json              the exact DataConfig/ModelConfig/TrainConfig used
    RUN/catalog/{movies,users}.parquet   the dataset's movies and users (metadata tables)
    RUN/split/{train,test,fold_in}.parquet   the seeded split (so others evaluate on it too)
    RUN/vocab.json               the vocabulary built from train (+ fold-in) only
    RUN/models/KIND/weights.*    final weights of each trained model (retrieval, ranking, ...)
    RUN/models/reranker/         the learned second stage (``--model all``): config, weights
    RUN/checkpoints/KIND/        epoch backups while a model trains (resume after a kill)
    RUN/logs/KIND/               TensorBoard logs
    RUN/metrics.json             evaluation results, one section per model
    RUN/format.json              ``{"format": FORMAT}``: the layout of the model weights
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import tensorflow as tf

from tfrs_movies import config as cfg
from tfrs_movies import kinds, paths, reranker
from tfrs_movies.data import Split, load_split
from tfrs_movies.errors import UserError
from tfrs_movies.features import FeatureSpace, Vocabulary
from tfrs_movies.models import build_model


@dataclasses.dataclass
class Run:
    """A loaded run directory. ``models`` holds the trained models by kind."""

    path: Path
    data: cfg.DataConfig
    model: cfg.ModelConfig
    train: cfg.TrainConfig
    movies: pd.DataFrame
    users: pd.DataFrame
    split: Split
    vocab: Vocabulary
    space: FeatureSpace
    models: dict
    reranker: reranker.Bundle | None = None  # the served recommender's re-ranker, if trained

    def retrieval_model(self):
        """The first model whose towers retrieve (``retrieves``), or None."""
        return next((m for m in self.models.values() if m.retrieves), None)

    def rating_model(self):
        """The first model that predicts ratings (``rates``), or None."""
        return next((m for m in self.models.values() if m.rates), None)

    def embedding_model(self):
        """The model whose movie tower gives the movie embeddings for similarity."""
        return self.retrieval_model() or self.rating_model()

    def unfinished(self) -> list[str]:
        """What ``train`` has yet to write into this run (it was stopped): the models of its
        ``--model`` not trained yet, then ``re-ranker`` for ``--model all`` stopped before it
        (a finished run writes ``metrics.json`` last; it may have no re-ranker when no list
        had a positive). Empty for a finished run."""
        missing = [f"{kind} model" for kind in kinds.trained_by(self.train.model)
                   if kind not in self.models]
        if (self.train.model == "all" and self.reranker is None
                and not (self.path / "metrics.json").exists()):
            missing.append("re-ranker")
        return missing


def resume_hint(run_dir: str | Path) -> str:
    """How to finish a stopped run: the command that resumes it."""
    return (f"rerun `python -m trainer train --output {run_dir}` with the flags it was started "
            f"with (saved in {Path(run_dir) / 'config.json'}) to resume it")


# 2: tensor-shaped tasks and listwise rating heads (weights of format 1, unmarked, differ).
# 3: the re-ranker's recent family (five features, models/reranker/recent.npz).
# 4: the re-ranker's session family (six features, models/reranker/sittings.npz).
# 5: the re-ranker's rating family (seven features: the predicted stars).
FORMAT = 5


def write_format(run_dir: Path) -> None:
    write_json(Path(run_dir) / "format.json", {"format": FORMAT})


def check_format(run_dir: Path) -> None:
    """Refuses a run directory whose weights this version cannot read, in one line."""
    path = Path(run_dir) / "format.json"
    found = json.loads(path.read_text()).get("format") if path.exists() else 1
    if found != FORMAT:
        raise UserError(f"{run_dir} was written by another version of tfrs-movies (run format "
                        f"{found}, this version reads {FORMAT}): retrain it into a new "
                        f"directory with `python -m trainer train --output NEW_DIR` and the "
                        f"same flags")


def weights_prefix(run_dir: Path, kind: str) -> Path:
    return Path(run_dir) / "models" / kind / "weights"


def is_trained(run_dir: Path, kind: str) -> bool:
    return Path(f"{weights_prefix(run_dir, kind)}.index").exists()


def build_trained(kind: str, space: FeatureSpace, model_config: cfg.ModelConfig, run_dir: Path):
    """Builds a model of ``kind`` and restores its final weights from ``run_dir``."""
    model = build_model(kind, space, model_config)
    build_variables(model, space)
    model.load_weights(str(weights_prefix(run_dir, kind))).expect_partial()
    return model


def build_variables(model, space: FeatureSpace) -> None:
    """Runs one tiny batch so every variable exists (before restoring weights or a backup).

    Inside a distribution strategy's scope the batch runs in replica context (the task
    metrics can only be updated there).
    """
    some_user = space.vocab.user_ids[:1] or [""]
    some_movie = space.vocab.movie_ids[:1] or [""]
    batch = {
        "user_id": tf.constant(some_user * 2), "movie_id": tf.constant(some_movie * 2),
        "user_rating": tf.constant([space.vocab.rating_values[0]] * 2, tf.float32),
    }
    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
        # In a tf.function: eager replica calls are slow and TensorFlow warns about them.
        tf.distribute.get_strategy().run(tf.function(model.compute_loss), args=(batch,))
    else:
        model.compute_loss(batch, training=False)


def load_run(run_dir: str | Path, require_trained: bool = True) -> Run:
    """Loads a run directory written by ``training.train``, with its trained models."""
    path = Path(run_dir)
    if not (path / "config.json").exists():
        if not path.exists():
            raise UserError(f"{path}: no such run directory; train one with "
                            f"`python -m trainer train --output {path}`")
        if not path.is_dir():
            raise UserError(f"{path} is a file, not a run directory (the folder `python -m "
                            f"trainer train --output DIR` wrote)")
        if paths.kind_of_dir(path) == "export":
            raise UserError(f"{path} is an export (TF Serving models written by `trainer "
                            f"export`), not a run directory: give the run it was exported "
                            f"from (the --output of `trainer train`), or query the export with "
                            f"`python -m serving recommend --model-dir {path} --user ID`")
        raise UserError(f"{path}: not a run directory (no config.json); train one with "
                        f"`python -m trainer train --output {path}`")
    check_format(path)
    configs = cfg.load_configs(path / "config.json")
    vocab = Vocabulary.load(path / "vocab.json")
    space = FeatureSpace(vocab, max_history=configs["model"].max_history)
    models = {kind: build_trained(kind, space, configs["model"], path)
              for kind in kinds.trained_by(configs["train"].model) if is_trained(path, kind)}
    if require_trained and not models:
        raise UserError(f"{path} is unfinished: no model was trained yet (training stopped); "
                        f"{resume_hint(path)}")
    return Run(path=path, data=configs["data"], model=configs["model"], train=configs["train"],
               movies=pd.read_parquet(path / "catalog" / "movies.parquet"),
               users=pd.read_parquet(path / "catalog" / "users.parquet"),
               split=load_split(path), vocab=vocab, space=space, models=models,
               reranker=reranker.load(path))


def write_json(path: Path, values: dict) -> None:
    """Writes JSON atomically (a killed job never leaves half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
