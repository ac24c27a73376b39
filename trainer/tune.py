"""``python -m trainer tune``: KerasTuner search for retrieval, ranking or re-ranker
hyperparameters.

Sample::

    python -m trainer tune --model retrieval --data-dir ../shared/data/ml-100k \\
        --max-trials 20 --epochs 5 --output tune/retrieval
    python -m trainer train --data-dir ../shared/data/ml-100k \\
        --hparams tune/retrieval/best_hyperparameters.json --epochs 4 --output runs/tuned
    python -m trainer tune --model reranker --data-dir ../shared/data/ml-100k \\
        --max-trials 20 --output tune/reranker

Trials are scored on a validation share of the train split (never on test). Rerunning with
the same --output resumes the search; a larger --max-trials extends it. The file holds the
searched values only; the best trial's epoch count is printed (``--epochs 4`` above) and
applied only when passed. ``reranker`` searches the served recommender's second stage (its
MLP, epochs, learning rate and loss), scored by the top-N order it gives the validation users.
"""
from __future__ import annotations

from tfrs_movies import cli, paths
from tfrs_movies import config as cfg
from tfrs_movies import kinds
from trainer import flags

# Kept here rather than imported from tfrs_movies.tuning so that parsing flags does not pull in
# KerasTuner; tuning.tune validates the same names.
_TUNERS = ("random", "hyperband", "bayesian")


def _tune(args, argv) -> None:
    output = flags.output_dir(args.output)
    values = vars(args)
    data = flags.data_config(values)
    paths.check_outputs([paths.Output("--output", output, tree=True)], flags.data_inputs(data))
    from tfrs_movies.tuning import tune

    train = cfg.TrainConfig(batch_size=args.batch_size, seed=data.seed)
    result = tune(output, data, args.model, tuner=args.tuner, max_trials=args.max_trials,
                  epochs=args.epochs, objective=args.objective,
                  validation_fraction=args.validation_fraction, train_config=train,
                  compare_defaults=args.compare_defaults)
    path = output / "best_hyperparameters.json"
    if result["recommended_epochs"] is None:  # a re-ranker search: its epochs are in the file
        print(f"Best values written to {path}; train with them (plus the same data flags): "
              f"python -m trainer train --hparams {path} (the re-ranker is trained by --model "
              f"all, train's default)")
        return
    print(f"Best values written to {path}; train with them (plus the same data flags): "
          f"python -m trainer train --hparams {path} --epochs {result['recommended_epochs']} "
          f"(the tuned epoch count; without --epochs, train's default "
          f"{cfg.TrainConfig().epochs})")


def register(subparsers) -> None:
    t = cfg.TrainConfig()
    p = subparsers.add_parser("tune", help="search hyperparameters with KerasTuner",
                              description=cli.summary(__doc__))
    p.add_argument("--model", required=True, choices=kinds.tunable() + ("reranker",),
                   help="which model's hyperparameters to search (reranker: the served "
                   "recommender's second stage, scored by its top-N order)")
    p.add_argument("--output", required=True,
                   help="search directory (rerun to resume; best_hyperparameters.json goes here)")
    p.add_argument("--tuner", default="random", choices=_TUNERS, help="search algorithm")
    p.add_argument("--max-trials", type=int, default=20,
                   help="trials in all, those already in --output included")
    p.add_argument("--epochs", type=int, default=t.epochs,
                   help="epochs per trial (hyperband: the most); the best epoch is recommended "
                   "(reranker: the epochs of the retrieval models its lists come from)")
    p.add_argument("--objective", help="retrieval and reranker: ndcg@K, recall@K, precision@K, "
                   "map@K or hit_rate@K; ranking: rmse or mae (default: ndcg@10, rmse)")
    p.add_argument("--validation-fraction", type=float, default=0.1,
                   help="share of each user's train ratings the trials are scored on")
    p.add_argument("--batch-size", type=int, default=t.batch_size, help="examples per step")
    p.add_argument("--compare-defaults", action="store_true",
                   help="also measure the default configuration the same way")
    flags.add_data_flags(p)
    p.set_defaults(func=_tune)
