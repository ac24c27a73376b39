"""The L2 weight on validation only: how ``default_l2`` of each model kind was chosen.

    python -m benchmarks.l2_validation --kind retrieval --l2 2e-3,4e-3 --seeds 42,3 --optimizer adam
    python -m benchmarks.l2_validation --kind ranking --l2 5e-4,1e-3 --seeds 42 --optimizer adam

Per seed, the quality benchmark's protocol split of ML-100K (retrieval: per-user 75/25, ranking:
random 90/10) has its train part cut again per user (retrieval 25%, ranking 10% held out); a
model with ``ModelConfig()`` defaults but ``l2`` trains on the rest (``fit_model``, the
defaults of ``TrainConfig``) and is scored on the held-out part: retrieval nDCG@10 with the
fit part's movies excluded, ranking RMSE. The test split is never read. Prints one line per
(seed, l2).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from tfrs_movies import data as data_lib
from tfrs_movies.config import OPTIMIZERS, DataConfig, ModelConfig, TrainConfig
from tfrs_movies.evaluation import evaluate_retrieval
from tfrs_movies.inference import predict_ratings
from tfrs_movies.features import FeatureSpace, Vocabulary
from tfrs_movies.metrics import rating_metrics
from tfrs_movies.training import fit_model


def score(kind: str, data_dir: Path, seed: int, l2: float,
          optimizer: str = TrainConfig.optimizer) -> float:
    """Validation nDCG@10 (retrieval) or RMSE (ranking) of ``kind`` trained with ``l2`` (and
    ``optimizer``, ``TrainConfig.optimizer``)."""
    held_out = 0.1 if kind == "ranking" else 0.25
    config = DataConfig(data_dir=str(data_dir), split="random" if kind == "ranking" else "user",
                        test_fraction=held_out, seed=seed)
    dataset = data_lib.load(config)
    split = data_lib.make_split(dataset, config)
    fit, validation = data_lib.carve_validation(split.train, held_out, seed)
    vocab = Vocabulary.build(fit, dataset.movies, dataset.users)
    model_config = dataclasses.replace(ModelConfig(), l2=l2)
    space = FeatureSpace(vocab, max_history=model_config.max_history)
    train_config = TrainConfig(verbose=0, seed=seed, optimizer=optimizer)
    model, _ = fit_model(kind, space, model_config, train_config, fit)
    if kind == "ranking":
        return rating_metrics(validation["user_rating"].to_numpy(np.float64),
                              predict_ratings(model, validation).astype(np.float64))["rmse"]
    return evaluate_retrieval(model, vocab.catalogue_movies, seen=fit, test=validation,
                              k=10)["ndcg@10"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k")
    parser.add_argument("--kind", choices=("retrieval", "ranking"), default="retrieval")
    parser.add_argument("--l2", default="5e-4,1e-3,2e-3,4e-3",
                        help="comma-separated L2 weights (default: %(default)s)")
    parser.add_argument("--seeds", default="42,3", help="default: %(default)s")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=TrainConfig.optimizer,
                        help="TrainConfig.optimizer (default: %(default)s)")
    args = parser.parse_args(argv)
    metric = "rmse" if args.kind == "ranking" else "ndcg@10"
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        for l2 in (float(v) for v in args.l2.split(",") if v.strip()):
            value = score(args.kind, args.data_dir, seed, l2, args.optimizer)
            print(f"{args.kind} seed {seed} l2 {l2:g} {args.optimizer}: validation {metric} "
                  f"{value:.4f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
