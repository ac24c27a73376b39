"""``python -m trainer analyze``: plots, a markdown report and Projector files for a run.

Sample::

    python -m trainer analyze --run runs/ml100k --output runs/ml100k/analysis \\
        --movie "Star Wars (1977)" --movie 1 --user 42

Writes ``report.md``, ``neighbours.png``, ``norm_popularity.png``, ``tsne.png``,
``loss_curves.png`` and ``projector/`` (see ``tfrs_movies.analysis``).
"""
from __future__ import annotations

from tfrs_movies import cli, paths
from trainer import flags


def _analyze(args, argv) -> None:
    output = flags.output_dir(args.output)
    paths.check_outputs([paths.Output("--output", output)],
                        [paths.Input("the run (--run)", args.run, paths.RUN_FILES)])
    from tfrs_movies.analysis import analyze
    from tfrs_movies.runs import load_run

    print(f"Loading the run in {args.run}", flush=True)
    written = analyze(load_run(args.run), output, movies=args.movie, user=args.user,
                      kind=args.kind, k=args.n, progress=lambda line: print(line, flush=True))
    print(f"Wrote {len(written)} files to {args.output} (start with {written['report']})")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze", help="embedding analysis of a run: neighbours, norms, t-SNE, losses",
        description=cli.summary(__doc__))
    p.add_argument("--run", required=True, help="run directory written by train")
    p.add_argument("--output", required=True, help="folder for the plots, report.md, projector/")
    p.add_argument("--movie", action="append",
                   help="id or title whose neighbours to list; repeatable (default: the three "
                   "most rated movies)")
    p.add_argument("--user", help="user whose recommendations to list (default: a test user "
                   "of median activity)")
    p.add_argument("--kind", help="which of the run's models (default: the retrieval one, "
                   "else the rating one)")
    cli.add_list_length_flag(p, 10, "neighbours and recommendations listed")
    p.set_defaults(func=_analyze)
