"""`python -m serving`: query the exported recommender from the command line.

    python -m serving recommend --user 42 --user 7 --exclude 50 --url http://localhost:8501 -n 5
    python -m serving recommend --history "Star Wars (1977)" Fargo 181 --model-dir export/
    python -m serving similar --movie 1 --movie "Star Wars (1977)" --model-dir export/
    python -m serving rank --user 42 --movie 50 --movie 181 --grpc localhost:8500
    python -m serving batch --users users.csv --out recs.parquet --model-dir export/ -n 10 \
        --exclude-seen runs/ml100k/split/train.parquet --resume
    python -m serving recommend --user 42 --url http://localhost:8501 --label canary
    python -m serving promote --export-dir export/ --label stable --version 3
    python -m serving compare --model-dir export/ --a stable --b canary \
        --test-ratings runs/ml100k/split/test.parquet --output compare.json

The query subcommands take exactly one backend: ``--model-dir DIR`` (load the SavedModels
here), ``--url URL`` (TF Serving REST) or ``--grpc HOST:PORT`` (TF Serving gRPC), and optionally
``--version N`` or ``--label NAME`` (a version label of the export's models.config). Mistakes a
user can fix print one line on stderr and exit 2; a server that fails or cannot be reached,
or a file that cannot be read or written (a full disk, a read-only folder), exits 1 in one line;
Ctrl-C exits 130. No output may be an input, or part of the export (``tfrs_movies.paths``). A
movie is named by its id or its title (whole or a part, ignoring case; resolved by
the model's ``lookup`` signature); an unknown user, or seeds none of which is known, get the
popular movies and a one-line notice on stderr. ``recommend --history MOVIE ...`` (repeatable,
oldest first) asks the export's ``with_history`` signature for every ``--user``, or for a new
user without one.
TensorFlow's log noise (``--model-dir``) is hidden unless ``--verbose``.

Adding a subcommand is one decorated function::

    @command("name", "one-line help", arg("--flag", help="..."), needs_client=True)
    def _name(args, client, out) -> None: ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TextIO

from serving.backends import check_choice
from serving.client import RecommenderClient, ServingError, make_client
from tfrs_movies import cli, contract, movie_names, paths, quiet
from tfrs_movies.errors import UserError

MODELS = ("retrieval", "ranking", "recommender", "similar_movies")
Handler = Callable[[argparse.Namespace, "RecommenderClient | None", TextIO], None]
_COMMANDS: list[tuple[str, str, tuple, bool, Handler]] = []


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """An ``add_argument`` call, as data for `command`."""
    return flags, kwargs


def command(name: str, help: str, *arguments, needs_client: bool = True,
            columns: tuple[tuple[str, str], ...] = ()):
    """Registers ``fn(args, client, out)`` as subcommand ``name`` with these arguments.

    With ``needs_client`` the subcommand also gets the backend flags and a connected
    `RecommenderClient`; otherwise ``client`` is None. ``columns`` ((name, meaning), ...)
    explain the printed columns in the subcommand's ``--help``.
    """
    def register(fn: Handler) -> Handler:
        description = cli.describe(help, columns)
        _COMMANDS.append((name, help, description, arguments, needs_client, fn))
        return fn
    return register


_USERS = arg("--user", dest="users", action="append", required=True, metavar="ID",
             help="user id (repeat for several users)")
_TOP_N = arg("-n", "-k", dest="n", type=int, default=None, metavar="N", action=cli.AtLeastOne,
             help="show at most N movies per query (default: all the export returns, the -n "
                  "it was exported with; -k: the same, as python -m trainer once named it)")
_REQUEST_LOG = arg("--request-log", metavar="FILE",
                   help="append what was shown to this JSONL request log (one record per user, "
                        "rotated at 64 MiB; see serving/request_log.py)")


@command("recommend", "best movies for users: retrieve candidates, then re-rank them",
         arg("--user", dest="users", action="append", default=[], metavar="ID",
             help="user id (repeat for several users; needed unless --history is given)"),
         arg("--history", action="extend", nargs="+", default=None, metavar="MOVIE",
             help="movie ids or titles the user rated, oldest first (applies to "
                  "every --user; without --user: a new user, shown as -); asks the export's "
                  "with_history signature and never recommends these movies"),
         arg("--exclude", action="append", default=[], metavar="MOVIE",
             help="movie id or title never to recommend, for every user (repeatable)"), _TOP_N,
         _REQUEST_LOG, columns=cli.RECOMMEND_COLUMNS)
def _recommend(args, client, out) -> None:
    if not args.users and args.history is None:
        raise UserError("recommend: give --user ID, --history MOVIE, or both")
    users = args.users or [contract.PAD]  # a history alone: a user the export never saw
    exclude = _movie_ids(client, args.exclude, "recommender") if args.exclude else []
    history = None if args.history is None else _movie_ids(client, args.history, "recommender")
    results = client.recommend(users, [exclude] * len(users), n=args.n,
                               history=None if history is None else [history] * len(users))
    _notice_limit(args, results, "recommender", "user")
    unknown = [u for u, known in zip(users, results.known, strict=True) if known is False]
    if history is None:
        _notice_unknown("user", unknown)
    elif unknown:
        print(contract.history_fallback_notice([u for u in unknown if u]), file=sys.stderr)
    per_user = list(zip(users, results, results.known, strict=True))
    rows = [(user or "-", i + 1, r.movie_id, r.title, r.score, r.rating, r.rank_score)
            for user, recs, _ in per_user for i, r in enumerate(recs)]
    _emit(args, out, ("user", "rank", "movie_id", "title", "score", "rating", "rank_score"), rows,
          {user: [{**asdict(r), "known": known} for r in recs]
           for user, recs, known in per_user})


@command("similar", "movies similar to seed movies (several seeds are averaged into one query)",
         arg("--movie", dest="movies", action="append", required=True, metavar="MOVIE",
             help="seed movie id or title (whole or a part, ignoring case; repeatable)"),
         _TOP_N, _REQUEST_LOG, columns=cli.SIMILAR_COLUMNS)
def _similar(args, client, out) -> None:
    seeds = _movie_ids(client, args.movies, "similar_movies")
    results = client.similar([seeds], n=args.n)
    _notice_limit(args, results, "similar_movies", "query")
    if results.known[0] is False:
        _notice_unknown("movie", seeds)
    (found,) = results
    titles = _titles(client, [m for m, _ in found])
    rows = [(i + 1, movie_id, titles.get(movie_id, ""), score)
            for i, (movie_id, score) in enumerate(found)]
    _emit(args, out, ("rank", "movie_id", "title", "score"), rows,
          [{"movie_id": m, "title": t, "score": s} for _, m, t, s in rows])


@command("rank", "predicted ratings for user/movie pairs (one --user pairs with every --movie)",
         _USERS, arg("--movie", dest="movies", action="append", required=True, metavar="MOVIE",
                     help="movie id or title (repeatable)"),
         columns=(("rating", "predicted stars, within the train ratings' range"),))
def _rank(args, client, out) -> None:
    movies = _movie_ids(client, args.movies, "ranking")
    ratings = client.rank(args.users, movies)
    users = args.users * len(args.movies) if len(args.users) == 1 else args.users
    rows = [(u, m, float(r)) for u, m, r in zip(users, movies, ratings, strict=True)]
    _emit(args, out, ("user", "movie_id", "rating"), rows,
          [{"user_id": u, "movie_id": m, "rating": r} for u, m, r in rows])


@command("batch", "recommendations for every user of a CSV/Parquet file, into Parquet or CSV",
         arg("--users", required=True, metavar="FILE",
             help="CSV/TSV/Parquet file with a user_id column and optionally a history "
                  "column (movie ids, oldest first: a list in Parquet, 50|181|1 in CSV)"),
         arg("--out", required=True, metavar="FILE",
             help="output: *.parquet, or *.csv; bad ids go to FILE.errors.csv"),
         arg("-n", "-k", dest="n", type=int, default=None, metavar="N", action=cli.AtLeastOne,
             help="recommendations per user (default: all the export returns)"),
         arg("--exclude-seen", metavar="RATINGS_FILE",
             help="never recommend a movie the user rated in this file (CSV, Parquet, u.data)"),
         arg("--batch-size", type=int, default=None, metavar="B",
             help="users per request (default: 256 from --model-dir, one in-graph call; "
                  "128 from a server, TF Serving's max batch size here)"),
         arg("--concurrency", type=int, default=None, metavar="C",
             help="requests in flight at once (default: 4 from --model-dir, 2 from a server)"),
         arg("--resume", action="store_true",
             help="continue an interrupted run with the same inputs"),
         arg("--overwrite", action="store_true",
             help="replace an existing --out, or start an interrupted run over (without it, "
                  "either is refused)"),
         arg("--no-progress", dest="progress", action="store_false",
             help="no progress line on stderr"))
def _batch(args, client, out) -> None:
    from serving.batch import check_existing, check_outputs, score_users

    check_outputs(args.out, {"users file": args.users,
                             "exclude file (--exclude-seen)": args.exclude_seen})
    check_existing(args.out, resume=args.resume, overwrite=args.overwrite)
    try:
        report = score_users(client, args.users, args.out, n=args.n, exclude=args.exclude_seen,
                             batch_size=args.batch_size, resume=args.resume,
                             progress=args.progress, concurrency=args.concurrency)
    except KeyboardInterrupt:
        raise SystemExit(130) from None  # score_users printed how to resume
    if args.format == "json":
        json.dump(asdict(report), out, indent=2)
        out.write("\n")
    else:
        out.write(report.summary() + "\n")


@command("promote", "point a version label (e.g. stable) at a version in an export's "
         "models.config, atomically",
         arg("--export-dir", required=True, metavar="DIR", help="the export dir"),
         arg("--label", required=True, metavar="NAME", help="the label, e.g. stable or canary"),
         arg("--version", required=True, type=int, metavar="N", help="the version to label"),
         needs_client=False)
def _promote(args, client, out) -> None:
    from tfrs_movies.tf_serving_config import promote

    notices = promote(args.export_dir, args.label, args.version)
    if args.format == "json":
        json.dump({"export_dir": args.export_dir, "label": args.label, "version": args.version,
                   "changes": notices}, out, indent=2)
        out.write("\n")
    else:
        out.write("".join(line + "\n" for line in notices))


@command("compare", "offline A/B: two versions of an export answer the same held-out users",
         arg("--model-dir", required=True, metavar="DIR", help="the export dir"),
         arg("--a", required=True, metavar="VERSION_OR_LABEL", help="version A, e.g. stable or 3"),
         arg("--b", required=True, metavar="VERSION_OR_LABEL", help="version B, e.g. canary or 4"),
         arg("--test-ratings", required=True, metavar="FILE",
             help="held-out ratings (CSV/TSV/Parquet/u.data): their users are asked, their "
                  "movies are the relevant ones"),
         arg("--train-ratings", metavar="FILE",
             help="ratings whose distinct users per movie are novelty's popularity (default: "
                  "the test ratings file itself)"),
         arg("--model", choices=("recommender", "retrieval"), default="recommender",
             help="which model's lists (default: recommender)"),
         arg("-n", "-k", dest="n", type=int, default=10, metavar="N", action=cli.AtLeastOne,
             help="list length (default 10)"),
         arg("--resamples", type=int, default=1000,
             help="paired bootstrap resamples over users (default 1000)"),
         arg("--seed", type=int, default=0, help="bootstrap seed (default 0)"),
         arg("--output", metavar="FILE.json", help="also write the full result as JSON"),
         needs_client=False)
def _compare(args, client, out) -> None:
    from serving.compare import compare, format_report

    if args.output:
        paths.check_parent(args.output, "--output")
        paths.check_outputs([paths.Output("--output", args.output)], [
            paths.Input("the --test-ratings file", args.test_ratings),
            paths.Input("the --train-ratings file", args.train_ratings),
            paths.Input("the export (--model-dir)", args.model_dir, paths.EXPORT_FILES)])
    result = compare(args.model_dir, args.a, args.b, args.test_ratings, model=args.model,
                     n=args.n, train_ratings=args.train_ratings, resamples=args.resamples,
                     seed=args.seed)
    if args.output:
        tmp = f"{args.output}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        os.replace(tmp, args.output)
    if args.format == "json":
        json.dump(result, out, indent=2)
        out.write("\n")
    else:
        out.write(format_report(result) + "\n")


class _Parser(argparse.ArgumentParser):
    """Turns argparse's usage errors into `UserError`, so they print as one line."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m serving", description=cli.summary(__doc__),
                     formatter_class=cli.HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help, description, arguments, needs_client, fn in _COMMANDS:
        p = sub.add_parser(name, help=help, description=description,
                           formatter_class=cli.HelpFormatter)
        for flags, kwargs in arguments:
            p.add_argument(*flags, **kwargs)
        if needs_client:
            _add_backend_args(p)
        p.add_argument("--format", choices=("table", "json"), default="table",
                       help="output format")
        cli.add_verbose_flag(p)
        p.set_defaults(run=fn, needs_client=needs_client)
    return parser


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    where = p.add_argument_group("backend (exactly one)").add_mutually_exclusive_group(
        required=True)
    where.add_argument("--model-dir", metavar="DIR", help="export dir to load in this process")
    where.add_argument("--url", metavar="URL", help="TF Serving REST root, http://HOST:8501")
    where.add_argument("--grpc", metavar="HOST:PORT", help="TF Serving gRPC address, HOST:8500")
    pin = p.add_argument_group("version (at most one; default: the latest)")
    pin = pin.add_mutually_exclusive_group()
    pin.add_argument("--version", type=int, metavar="N", help="ask every model for version N")
    pin.add_argument("--label", metavar="NAME",
                     help="ask for the version labelled NAME in models.config (stable, canary)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (remote)")
    p.add_argument("--retries", type=int, default=3,
                   help="retries after connection errors, 503/429 or UNAVAILABLE (remote)")


def _make_client(args: argparse.Namespace) -> RecommenderClient:
    from serving.request_log import RequestLog

    check_choice(args.version, args.label)
    pins = {"versions": {m: args.version for m in MODELS} if args.version else None,
            "labels": {m: args.label for m in MODELS} if args.label else None}
    log = getattr(args, "request_log", None)
    if log:
        paths.check_outputs([paths.Output("--request-log", log)], [
            paths.Input("the export (--model-dir)", args.model_dir, paths.EXPORT_FILES)])
    pins["request_log"] = RequestLog(log) if log else None
    if args.model_dir:
        return make_client(model_dir=args.model_dir, **pins)
    return make_client(url=args.url, grpc=args.grpc, timeout=args.timeout, retries=args.retries,
                       **pins)


def _movie_ids(client: RecommenderClient, names: list[str], model: str) -> list[str]:
    """The ids ``names`` (ids or titles) stand for, from ``model``'s lookup signature; an
    export written before it had one gets the names as ids, with a notice."""
    try:
        return client.resolve_movies(names, model=model)
    except ServingError as err:
        if f"{contract.LOOKUP.name}" not in str(err) or not (
                err.status in (400, 404) or err.code in ("NOT_FOUND", "INVALID_ARGUMENT")):
            raise
        print(f"notice: this {model} export has no {contract.LOOKUP.name!r} signature (it is "
              "older): movies are passed as ids, unchecked; re-export to name them by title",
              file=sys.stderr)
        return list(names)


def _titles(client: RecommenderClient, ids: list[str]) -> dict[str, str]:
    """Titles of catalogue ``ids`` (similar_movies' lookup); none from an older export."""
    if not ids:
        return {}
    try:
        found = client.lookup(ids, model="similar_movies")
    except ServingError:
        return {}
    return {f.query: f.titles[0] for f in found if f.match == movie_names.ID and f.titles}


def _notice_limit(args, results, model: str, per: str) -> None:
    """A notice when ``-n`` asks for more movies than the export lists per query."""
    if args.n is not None and results.limit is not None and args.n > results.limit:
        flag = getattr(args, "n_flag", None) or "-n"
        print(f"notice: {flag} {args.n}: this {model} export lists at most {results.limit} "
              f"movies per {per} (it was exported with -n {results.limit}); showing up to "
              f"{results.limit} (export again with a larger -n for more)", file=sys.stderr)


def _notice_unknown(what: str, ids: list[str]) -> None:
    if ids:
        print(contract.fallback_notice(what, ids), file=sys.stderr)


def _emit(args, out: TextIO, headers: tuple[str, ...], rows: list[tuple], payload) -> None:
    if args.format == "json":
        json.dump(payload, out, indent=2)
        out.write("\n")
        return
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    # Padded by terminal columns: CJK titles and emoji take two each (cli.width).
    widths = [max([cli.width(h)] + [cli.width(row[i]) for row in cells])
              for i, h in enumerate(headers)]
    numeric = [bool(rows) and isinstance(rows[0][i], (int, float)) for i in range(len(headers))]
    for line in [list(headers)] + cells:
        padded = (cli.pad(c, w, right=num)
                  for c, w, num in zip(line, widths, numeric, strict=True))
        out.write("  ".join(padded).rstrip() + "\n")
    if not rows:
        out.write("(no results)\n")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Runs one subcommand; returns the exit code (0 ok, 1 serving failure, 2 user error)."""
    out = out or sys.stdout
    try:
        args = build_parser().parse_args(argv)
        with quiet.output(args.verbose_logs):
            client = _make_client(args) if args.needs_client else None
            try:
                args.run(args, client, out)
            finally:
                if client is not None:
                    client.close()
    except UserError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except ServingError as err:
        print(f"serving error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a file it could not read or write: one line, exit 1
        failure = paths.io_error(err)
        if failure is None:
            raise
        print(f"error: {paths.os_error_line(failure)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
