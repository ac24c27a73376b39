"""``python -m trainer``: train, evaluate, recommend, similar, export, tune and analyze jobs.

Sample::

    python -m trainer train --data-dir ../shared/data/ml-100k --output runs/ml100k
    python -m trainer evaluate --run runs/ml100k
    python -m trainer recommend --run runs/ml100k --user 42 -n 10
    python -m trainer recommend --run runs/ml100k --history "Star Wars (1977)" Fargo 181
    python -m trainer similar --run runs/ml100k --movie "Star Wars (1977)"
    python -m trainer export --run runs/ml100k --export-dir exports/ml100k --index brute-force
    python -m trainer export --run runs/ml100k-v2 --export-dir exports/ml100k --label canary

Each subcommand parses flags into the config dataclasses and calls one library function;
mistakes the user can fix print one line and exit with status 2, a file the job cannot read or
write (disk full, read-only, no permission) one line naming it and exit 1, Ctrl-C one line and
exit 130. No output may be an input or one of the run's own files (``tfrs_movies.paths``).
TensorFlow's log noise is hidden unless ``--verbose`` (``tfrs_movies.quiet``).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import tfrs_movies  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from tfrs_movies import cli, paths, quiet
from tfrs_movies import config as cfg
from tfrs_movies.errors import UserError
from trainer import flags


def _train(args, argv) -> None:
    values = vars(args)
    output = flags.output_dir(args.output)
    data_config = flags.data_config(values)
    if paths.kind_of_dir(output) == "export":
        raise UserError(f"--output {args.output} is an export dir (trainer export wrote it), "
                        "not a run directory: choose another folder, e.g. runs/NAME")
    paths.check_outputs([paths.Output("--output", output, tree=True)],
                        flags.data_inputs(data_config, args.hparams))
    # Keras progress: a bar on a terminal, one line per epoch in a log file.
    model_config, train_config = flags.configs(
        values, args.hparams, overrides={"verbose": 1 if sys.stdout.isatty() else 2})
    from tfrs_movies.pipeline import train

    train(output, data_config, model_config, train_config)
    print(f"Run written to {output} (metrics in {output / 'metrics.json'})")


def _evaluate(args, argv) -> None:
    output = flags.output_file(args.output, create=False) if args.output else None
    if output:
        paths.check_outputs([paths.Output("--output", output)], [
            paths.Input("the --test-ratings file", args.test_ratings),
            paths.Input("the run", args.run,
                        tuple(p for p in paths.RUN_FILES if p != "metrics.json"))])
    from tfrs_movies.data.splits import shared_pairs
    from tfrs_movies.data.tabular import read_ratings_file
    from tfrs_movies.evaluation import evaluate
    from tfrs_movies.runs import load_run, write_json

    run = load_run(args.run)
    test = None
    trained_on = None
    if args.test_ratings:
        test = read_ratings_file(args.test_ratings)
        trained_on = shared_pairs(test, run.split.train)
        if trained_on:
            print(f"warning: {trained_on:,} of the {len(test):,} ratings of {args.test_ratings} "
                  f"({trained_on / len(test):.1%}) are in the run's train split (same user and "
                  "movie): the models were trained on them, so these metrics flatter them",
                  file=sys.stderr)
    metrics = evaluate(run, test)
    if trained_on is not None:
        metrics["test_ratings_in_train"] = trained_on
        metrics["test_ratings_file"] = str(Path(args.test_ratings).resolve())
    # The run's own metrics.json is its test split's: another file's go beside it, named after
    # that file (metrics-u1.test.json), unless --output says where.
    out = output or run.path / ("metrics.json" if test is None
                                else f"metrics-{Path(args.test_ratings).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)  # nothing is created before this
    write_json(out, metrics)
    print(f"Metrics written to {out}")


def _print_table(table) -> None:
    import pandas as pd

    # Columns aligned by terminal columns: CJK titles and emoji take two each.
    with pd.option_context("display.unicode.east_asian_width", True):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


def _recommend(args, argv) -> None:
    from tfrs_movies.recommend import recommend
    from tfrs_movies.runs import load_run

    if args.user is None and args.history is None:
        raise UserError("recommend: give --user ID, --history MOVIE, or both")
    user = args.user or ""
    table, notices = recommend(load_run(args.run), user, args.n, history=args.history)
    for notice in notices:
        print(notice)
    who = f"user {user}" if user else "a new user"
    if args.history is not None:
        who += f" with a history of {len(args.history)} movies"
    print(f"Top {len(table)} for {who}:")
    _print_table(table)


def _similar(args, argv) -> None:
    from tfrs_movies.recommend import similar
    from tfrs_movies.runs import load_run

    table, seeds = similar(load_run(args.run), args.movie, args.n)
    print(f"Movies similar to {', '.join(seeds)} (cosine):")
    _print_table(table)


def _export(args, argv) -> None:
    from tfrs_movies.export import export
    from tfrs_movies.runs import load_run

    config = cfg.ExportConfig(index=args.index, k=args.k, n=args.n, version=args.version,
                              exclude_seen=args.exclude_seen, serving_root=args.serving_root,
                              label=args.label, partial=args.partial)
    export_dir = flags.output_dir(args.export_dir, flag="--export-dir")
    paths.check_outputs(
        [paths.Output("--export-dir", export_dir),
         paths.Output("--export-dir", export_dir / paths.EXPORT_FILES[0])] + [
            paths.Output("--export-dir", export_dir / name, f"the {name} folder of --export-dir",
                         tree=True) for name in paths.EXPORT_FILES[1:]],
        [paths.Input("the run (--run)", args.run, paths.RUN_FILES)])
    if paths.kind_of_dir(export_dir) == "run":
        raise UserError(f"--export-dir {args.export_dir} is a run directory (train wrote it), "
                        "not an export dir: choose another folder, e.g. exports/NAME")
    if args.index == "scann":
        import scann  # noqa: F401  (registers the ScaNN ops)
    written = export(load_run(args.run), export_dir, config)
    version = sorted({p.name for p in written.values()})
    print(f"Exported version {', '.join(version)} of {', '.join(written)} to {args.export_dir} "
          f"(TF Serving config: {export_dir / 'models.config'})")


# What a job that stopped half-way (Ctrl-C, a full disk) kept, appended to its one line.
_STOPPED = {
    "train": "rerun the same command to resume from the last finished epoch",
    "tune": "rerun the same command to resume the search",
    "export": "nothing was published (the unfinished versions were removed)",
    "evaluate": "no metrics were written",
}


# Subcommands kept in their own modules (trainer/NAME.py), each with ``register(subparsers)``.
_COMMAND_MODULES: tuple[str, ...] = ("analyze", "tune")


def _command(sub, name: str, help: str, columns: tuple[tuple[str, str], ...] = ()
             ) -> argparse.ArgumentParser:
    """A subcommand; ``columns`` ((name, meaning), ...) explain its printed columns in its
    ``--help``."""
    return sub.add_parser(name, help=help, description=cli.describe(help, columns))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=cli.summary(__doc__),
                                     formatter_class=cli.HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _command(sub, "train", "train models and evaluate them")
    p.add_argument("--output", default="runs/latest", help="run directory (rerun to resume)")
    flags.add_data_flags(p)
    flags.add_model_flags(p)
    p.set_defaults(func=_train)

    p = _command(sub, "evaluate", "evaluate a run on its test split or on a file")
    p.add_argument("--run", required=True, help="run directory written by train")
    p.add_argument("--test-ratings", metavar="FILE", help="evaluate on these interactions "
                   "instead (pairs in the run's train split are counted and warned about)")
    p.add_argument("--output", metavar="FILE", help="metrics JSON (default: RUN/metrics.json)")
    p.set_defaults(func=_evaluate)

    p = _command(sub, "recommend", "top movies for a user (what the run's export answers)",
                 cli.RECOMMEND_COLUMNS)
    p.add_argument("--run", required=True, help="run directory written by train")
    p.add_argument("--user", help="user id (needed unless --history is given)")
    p.add_argument("--history", action="extend", nargs="+", metavar="MOVIE",
                   help="movie ids or titles the user rated, oldest first (without "
                   "--user: a new user); answered as the export's with_history signature is, "
                   "never listing these movies")
    cli.add_list_length_flag(p, 10, "movies listed")
    p.set_defaults(func=_recommend)

    p = _command(sub, "similar", "movies similar to one or more movies (cosine)",
                 cli.SIMILAR_COLUMNS)
    p.add_argument("--run", required=True, help="run directory written by train")
    p.add_argument("--movie", action="append", required=True,
                   help="movie id or title (whole or a part, ignoring case); repeatable")
    cli.add_list_length_flag(p, 10, "movies listed")
    p.set_defaults(func=_similar)

    e = cfg.ExportConfig()
    p = _command(sub, "export", "write TF Serving SavedModels for a run")
    p.add_argument("--run", required=True, help="run directory written by train")
    p.add_argument("--export-dir", required=True,
                   help="folder of the model folders and models.config")
    p.add_argument("--index", default=e.index, choices=("brute-force", "scann"),
                   help="retrieval index: exact (any device) or approximate ScaNN (CPU)")
    p.add_argument("--version", type=int, help="version number (default: the next free one)")
    p.add_argument("-n", type=int, default=e.n, action=cli.AtLeastOne,
                   help="movies each recommender and similar_movies answer lists: the most "
                   "that recommend/similar -n can show from this export")
    p.add_argument("-k", "--candidates", dest="k", type=int, default=e.k,
                   action=cli.AtLeastOne, help="candidates retrieved (the retrieval model's "
                   "list), which the recommender re-ranks; at least -n")
    p.add_argument("--keep-seen", dest="exclude_seen", action="store_false",
                   help="let retrieval/recommender return movies the user rated in train "
                   "(left out otherwise)")
    p.add_argument("--serving-root", default=e.serving_root,
                   help="where the export dir is mounted in the TF Serving container")
    p.add_argument("--label", metavar="NAME",
                   help="version label for the written version in models.config (e.g. stable, "
                        "canary; TF Serving then keeps the labelled versions loaded); see "
                        "'python -m serving promote'")
    p.add_argument("--partial", action="store_true",
                   help="export what the run supports when it lacks a model (e.g. no "
                   "recommender without a rating model) instead of stopping")
    p.set_defaults(func=_export)

    for module in _COMMAND_MODULES:
        importlib.import_module(f"trainer.{module}").register(sub)
    for p in sub.choices.values():
        p.formatter_class = cli.HelpFormatter
        cli.add_verbose_flag(p)
        p.set_defaults(interrupted=_STOPPED.get(p.prog.split()[-1], ""))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    try:
        with quiet.output(args.verbose_logs):
            args.func(args, argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted" + (f": {args.interrupted}" if args.interrupted else ""),
              file=sys.stderr)
        return 130
    except Exception as e:  # a file the job could not read or write: one line, exit 1
        failure = paths.io_error(e)
        if failure is None:
            raise
        print(f"error: {paths.os_error_line(failure)}"
              + (f"; {args.interrupted}" if args.interrupted else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
