"""``python -m trainer``: train, evaluate, recommend, similar (and export) jobs.

Sample::

    python -m trainer train --data-dir ../shared/data/ml-100k --output runs/ml100k
    python -m trainer evaluate --run runs/ml100k
    python -m trainer recommend --run runs/ml100k --user 42 -k 10
    python -m trainer similar --run runs/ml100k --movie "Star Wars (1977)"
    python -m trainer export --run runs/ml100k --export-dir exports/ml100k --index brute-force

Each subcommand parses flags into the config dataclasses and calls one library function;
mistakes the user can fix print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import tfrs_movies  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from tfrs_movies import config as cfg
from tfrs_movies.errors import UserError


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    d = cfg.DataConfig()
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, choices=cfg.DATASETS)
    g.add_argument("--data-dir", help="raw extracted MovieLens folder (default: env "
                   "TFRS_MOVIES_DATA_DIR; unset = read through TFDS)")
    g.add_argument("--tfds-manual-dir", help="folder holding the official MovieLens zip (offline TFDS)")
    g.add_argument("--tfds-data-dir", help="where TFDS keeps prepared datasets")
    g.add_argument("--ratings", help="csv: interactions file user_id,movie_id,rating[,timestamp]"
                   f" (csv/parquet); synthetic: number of ratings (default {d.synthetic_ratings})")
    g.add_argument("--movies", help="csv: movies file movie_id[,title,genres]; synthetic: number "
                   f"of movies (default {d.synthetic_movies})")
    g.add_argument("--users", help="csv: users file user_id[,age,gender,occupation,zip_code]; "
                   f"synthetic: number of users (default {d.synthetic_users})")
    g.add_argument("--test-ratings", help="explicit test interactions instead of a split")
    g.add_argument("--min-movie-ratings", type=int, default=d.min_movie_ratings)
    g.add_argument("--split", default=d.split, choices=cfg.SPLITS)
    g.add_argument("--test-fraction", type=float, default=d.test_fraction)
    g.add_argument("--leave-last", type=int, default=d.leave_last)
    g.add_argument("--fold-in-fraction", type=float, default=d.fold_in_fraction)
    g.add_argument("--seed", type=int, default=d.seed, help="seeds data, split and training")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    m, t = cfg.ModelConfig(), cfg.TrainConfig()
    g = p.add_argument_group("model")
    g.add_argument("--model", default=t.model, choices=cfg.MODELS)
    g.add_argument("--embedding-dim", type=int, default=m.embedding_dim)
    g.add_argument("--tower-layers", type=_ints, default=m.tower_layers, help="e.g. 128,64")
    g.add_argument("--no-features", dest="use_features", action="store_false")
    g.add_argument("--no-history", dest="use_history", action="store_false")
    g.add_argument("--temperature", type=float, default=m.temperature)
    g.add_argument("--num-sampled-negatives", type=int, default=m.num_sampled_negatives)
    g.add_argument("--l2", type=float, default=m.l2)
    g.add_argument("--dropout", type=float, default=m.dropout)
    g.add_argument("--ranking-layers", type=_ints, default=m.ranking_layers)
    g.add_argument("--ranking-head", default=m.ranking_head, choices=("regression", "classes"))
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=t.epochs)
    g.add_argument("--batch-size", type=int, default=t.batch_size)
    g.add_argument("--learning-rate", type=float, default=t.learning_rate)
    g.add_argument("--lr-schedule", default=t.lr_schedule, choices=("constant", "cosine"))
    g.add_argument("--validation-fraction", type=float, default=t.validation_fraction)
    g.add_argument("--early-stopping-patience", type=int, default=t.early_stopping_patience)
    g.add_argument("--eval-k", type=int, default=t.eval_k)
    g.add_argument("--hparams", help="JSON of ModelConfig/TrainConfig values (from `tune`); "
                   "they override the defaults, explicit flags override them")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _pick(cls, values: dict, overrides: dict | None = None):
    names = {f.name for f in dataclasses.fields(cls)}
    chosen = {k: v for k, v in values.items() if k in names}
    chosen.update({k: v for k, v in (overrides or {}).items() if k in names})
    return cls(**chosen)


def _data_config(values: dict) -> cfg.DataConfig:
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
    return _pick(cfg.DataConfig, values)


def _hparams(path: str | None, argv_flags: set[str]) -> tuple[dict, dict]:
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


def _train(args, argv) -> None:
    from tfrs_movies.training import train

    values = vars(args)
    explicit = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    model_hp, train_hp = _hparams(args.hparams, explicit)
    values["verbose"] = 1 if sys.stdout.isatty() else 2
    train(args.output, _data_config(values), _pick(cfg.ModelConfig, values, model_hp),
          _pick(cfg.TrainConfig, values, train_hp))
    print(f"Run written to {args.output} (metrics in {Path(args.output) / 'metrics.json'})")


def _evaluate(args, argv) -> None:
    from tfrs_movies.data.tabular import read_ratings_file
    from tfrs_movies.evaluation import evaluate
    from tfrs_movies.runs import load_run, write_json

    run = load_run(args.run)
    test = None
    if args.test_ratings:
        test = read_ratings_file(args.test_ratings)
    metrics = evaluate(run, test)
    out = Path(args.output) if args.output else run.path / "metrics.json"
    write_json(out, metrics)
    print(f"Metrics written to {out}")


def _print_table(table) -> None:
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


def _recommend(args, argv) -> None:
    from tfrs_movies.recommend import recommend
    from tfrs_movies.runs import load_run

    table, notice = recommend(load_run(args.run), args.user, args.k)
    if notice:
        print(notice)
    print(f"Top {len(table)} for user {args.user}:")
    _print_table(table)


def _similar(args, argv) -> None:
    from tfrs_movies.recommend import similar
    from tfrs_movies.runs import load_run

    table, seeds = similar(load_run(args.run), args.movie, args.k)
    print(f"Movies similar to {', '.join(seeds)} (cosine):")
    _print_table(table)


def _export(args, argv) -> None:
    from tfrs_movies.export import export
    from tfrs_movies.runs import load_run

    if args.index == "scann":
        import scann  # noqa: F401  (registers the ScaNN ops)
    config = cfg.ExportConfig(index=args.index, k=args.k, n=args.n, version=args.version,
                              serving_root=args.serving_root)
    written = export(load_run(args.run), args.export_dir, config)
    print(f"Exported {', '.join(written)} to {args.export_dir} "
          f"(TF Serving config: {Path(args.export_dir) / 'models.config'})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train models and evaluate them",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output", default="runs/latest", help="run directory (rerun to resume)")
    _add_data_flags(p)
    _add_model_flags(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a run on its test split or on a file")
    p.add_argument("--run", required=True)
    p.add_argument("--test-ratings", help="evaluate on these interactions instead")
    p.add_argument("--output", help="metrics JSON (default RUN/metrics.json)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("recommend", help="top movies for a user")
    p.add_argument("--run", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("-k", type=int, default=10)
    p.set_defaults(func=_recommend)

    p = sub.add_parser("similar", help="movies similar to one or more movies (cosine)")
    p.add_argument("--run", required=True)
    p.add_argument("--movie", action="append", required=True, help="id or title; repeatable")
    p.add_argument("-k", type=int, default=10)
    p.set_defaults(func=_similar)

    e = cfg.ExportConfig()
    p = sub.add_parser("export", help="write TF Serving SavedModels for a run",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--export-dir", required=True)
    p.add_argument("--index", default=e.index, choices=("brute-force", "scann"))
    p.add_argument("--version", type=int, help="version number (default: the next free one)")
    p.add_argument("-k", type=int, default=e.k, help="candidates retrieved")
    p.add_argument("-n", type=int, default=e.n, help="recommendations returned after ranking")
    p.add_argument("--serving-root", default=e.serving_root,
                   help="where the export dir is mounted in the TF Serving container")
    p.set_defaults(func=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    try:
        args.func(args, argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
