"""Re-ranker choices on validation only: how the served re-ranker's defaults were chosen.

    python -m benchmarks.reranker_validation --data-dir ../shared/data/ml-100k \\
        --output bench/reranker-validation [--seeds 42,3,7] [--reranker-seeds 0,1,2] \\
        [--l2 X] [--default-only]

Per seed, the top-n protocol's train split (per-user 75/25) is cut again per user into a fit
part and a validation part (25%); the test split is never read. The re-ranker learns on lists
built from the fit part exactly as ``train`` builds them from train (``reranker_lists.lists``: a
retriever and a rating model on its fold A, fold B the positives); it is scored on the
validation users' lists of a retriever and a rating model trained on the whole fit part, with
EASE and popularity from the fit part (what the export does with train). Each ``VARIANTS``
entry changes one ``ReRankerConfig`` field of the default; its figure is the mean validation
nDCG@10 over the data seeds and, per data seed, over ``--reranker-seeds`` (the re-ranker's own
initialisation), so a difference is not one lucky initialisation. Rows ``retrieval order`` and
``EASE order`` sort the same candidates by one feature. ``--l2`` sets the retrieval models' L2
(how the served path was checked when retrieval's ``default_l2`` changed); ``--default-only``
scores only the default re-ranker; ``--ease-movies 1682,1000`` scores it (and the EASE order)
with the item-item families fitted on that many most-rated movies, each on lists of its own
(``ReRankerConfig.ease_movies``: how catalogues past EASE's limit keep the family).

Writes ``reranker_validation.json`` and ``reranker_validation.md`` into ``--output``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import one_line_errors
from tfrs_movies import data as data_lib
from tfrs_movies import reranker, reranker_lists
from tfrs_movies.config import DataConfig, ModelConfig, TrainConfig

VARIANTS = {
    "default": {},
    **{f"without its {family} features": {"without": (family,)}
       for family in reranker.FAMILIES
       if set(reranker.FAMILIES[family]) & set(reranker.ReRankerConfig().used_features)},
    "with its latest features": {"features": reranker.FEATURES},
    "pairwise loss": {"loss": "pairwise"},
    "10 epochs": {"epochs": 10},
    "40 epochs": {"epochs": 40},
    "hidden (32, 16)": {"hidden": (32, 16)},
    "hidden (8,)": {"hidden": (8,)},
    "learning rate 1e-3": {"learning_rate": 1e-3},
}
K = 10


def _ndcg(found: reranker.Lists, scores: np.ndarray) -> float:
    return reranker.top_n(found, scores, K)[f"ndcg@{K}"]


def one_seed(data_dir: Path, seed: int, reranker_seeds: tuple[int, ...],
             l2: float | None = None, variants: dict = VARIANTS,
             ease_movies: int = reranker.MAX_EASE_MOVIES) -> dict[str, float]:
    config = DataConfig(data_dir=str(data_dir), split="user", test_fraction=0.25, seed=seed)
    dataset = data_lib.load(config)
    split = data_lib.make_split(dataset, config)
    fit, validation = data_lib.carve_validation(split.train, 0.25, seed)
    model_config = ModelConfig(l2=l2)  # None: the retrieval kind's default
    train_config = TrainConfig(verbose=0, seed=seed)
    print(f"seed {seed}: fit {len(fit):,} ratings, validation {len(validation):,}", flush=True)
    # No variant changes what the lists hold.
    default = reranker.ReRankerConfig(ease_movies=ease_movies)
    # The lists hold every feature's column (the latest family's too), each variant's model
    # reads its own.
    train_lists, scored = reranker_lists.validation_lists(
        fit, validation, dataset.movies, dataset.users, split.fold_in, model_config,
        train_config, dataclasses.replace(default, features=reranker.FEATURES), seed)
    column = list(reranker.FEATURES)
    out = {"retrieval order": _ndcg(scored, scored.features[..., column.index("retrieval_z")]),
           "EASE order": _ndcg(scored, scored.features[..., column.index("ease_z")])}
    for label, change in variants.items():
        config_ = dataclasses.replace(default, **change)
        values = [_ndcg(scored, reranker.train_on(train_lists, config_, s)(
            scored.features).numpy()) for s in reranker_seeds]
        out[label] = float(np.mean(values))
        print(f"  {label}: {out[label]:.4f} ({', '.join(f'{v:.4f}' for v in values)})",
              flush=True)
    return out


def _main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k")
    parser.add_argument("--output", type=Path, default=Path("bench/reranker-validation"))
    parser.add_argument("--seeds", default="42,3,7",
                        help="data seeds (split and training; default: %(default)s)")
    parser.add_argument("--reranker-seeds", default="0,1,2",
                        help="re-ranker initialisations per data seed (default: %(default)s)")
    parser.add_argument("--l2", type=float, default=None,
                        help="the retrieval models' L2 (default: the retrieval kind's)")
    parser.add_argument("--default-only", action="store_true",
                        help="score the default re-ranker only, not every variant")
    parser.add_argument("--ease-movies", default="",
                        help="comma-separated: the default re-ranker (and EASE order) with the "
                             "item-item families fitted on this many most-rated movies, each "
                             "on its own lists (implies --default-only)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    inits = tuple(int(s) for s in args.reranker_seeds.split(",") if s.strip())
    variants = {"default": {}} if args.default_only else VARIANTS
    sizes = [int(m) for m in args.ease_movies.split(",") if m.strip()]
    if sizes:
        # Each size builds lists of its own (their retrieval order is the same each time).
        per_seed = {seed: {row if row == "retrieval order" else
                           f"{row}, EASE on the {m:,} most-rated movies": value
                           for m in sizes for row, value in one_seed(
                               args.data_dir, seed, inits, args.l2, {"default": {}}, m).items()}
                    for seed in seeds}
    else:
        per_seed = {seed: one_seed(args.data_dir, seed, inits, args.l2, variants)
                    for seed in seeds}
    rows = list(next(iter(per_seed.values())))
    mean = {row: float(np.mean([per_seed[s][row] for s in seeds])) for row in rows}
    lines = [f"| re-ranker (validation, one change from the default) | nDCG@{K} mean | "
             + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|---|" + "---|" * len(seeds)]
    lines += [f"| {row} | {mean[row]:.4f} | "
              + " | ".join(f"{per_seed[s][row]:.4f}" for s in seeds) + " |" for row in rows]
    args.output.mkdir(parents=True, exist_ok=True)
    result = {"mean": mean, "per_seed": {str(s): v for s, v in per_seed.items()}, "l2": args.l2,
              "reranker_seeds": list(inits), "wall_seconds": round(time.perf_counter() - start, 1)}
    (args.output / "reranker_validation.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "reranker_validation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.output / 'reranker_validation.json'} in {result['wall_seconds']:.0f}s")
    return 0


main = one_line_errors(_main)


if __name__ == "__main__":
    raise SystemExit(main())
