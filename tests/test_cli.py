"""The command lines themselves: help, quiet output, the hyperparameter merge, bad --hparams
and --output values, and evaluate's train-overlap warning (tiny synthetic data)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from serving.__main__ import build_parser as serving_parser
from tfrs_movies import cli, quiet
from tfrs_movies import config as cfg
from trainer import flags
from trainer.__main__ import _parser as trainer_parser
from trainer.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--users", "30", "--movies", "20", "--ratings", "400"]
TRAINER_COMMANDS = {"train", "evaluate", "recommend", "similar", "export", "tune", "analyze"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("make", [trainer_parser, serving_parser])
def test_every_flag_has_help_and_its_real_default(make):
    parser = make()
    commands = _subparsers(parser)
    if make is trainer_parser:
        assert set(commands) == TRAINER_COMMANDS
        listing = parser.format_help()
        assert all(name in listing for name in TRAINER_COMMANDS)
    for name, p in [("", parser), *commands.items()]:
        assert "`" not in p.format_help(), name  # no reStructuredText markup
        formatter = p._get_formatter()
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            where = f"{name} {'/'.join(action.option_strings)}"
            text = formatter._expand_help(action)
            assert action.help and text.strip(), f"{where}: no help"
            assert text.count("(default") <= 1, f"{where}: {text}"
            if action.nargs == 0:  # store_true / store_false: its help says what it does
                assert "(default:" not in text, f"{where}: {text}"
            value = cli.shown_default(action)
            if (action.nargs != 0 and not action.required and value is not None
                    and "default" not in (action.help or "")):
                assert text.endswith(f"(default: {cli.format_default(value)})"), where


def test_train_help_shows_the_config_defaults():
    """The defaults printed are those a run without the flag gets: the dataclasses'."""
    train = _subparsers(trainer_parser())["train"]
    fields = {**cfg.to_dict(cfg.DataConfig()), **cfg.to_dict(cfg.ModelConfig()),
              **cfg.to_dict(cfg.TrainConfig())}
    shown = {a.dest: cli.shown_default(a) for a in train._actions
             if hasattr(a, "shown_default")}
    assert len(shown) > 30
    for dest, value in shown.items():
        expected = fields[dest]
        assert (tuple(value) if isinstance(value, list) else value) == (
            tuple(expected) if isinstance(expected, list) else expected), dest
    text = " ".join(train.format_help().split())
    assert "--keep-seen" not in text and "(default: True)" not in text
    assert "(default: 128,64)" in text and "(default: 0.009)" in text


def _configs(argv: list[str]):
    args = trainer_parser().parse_args(["train", *argv])
    return flags.configs(vars(args), args.hparams, report=lambda line: None)


def test_flags_beat_the_hparams_file_beat_the_defaults(tmp_path):
    assert _configs([]) == (cfg.ModelConfig(), cfg.TrainConfig())
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"embedding_dim": 16, "use_features": True, "learning_rate": 0.001,
                                "tower_layers": [64], "epochs": 2}))
    lines = []
    args = trainer_parser().parse_args(["train", "--hparams", str(path), "--embed", "64",
                                        "--no-feat", "--epochs", "3"])
    model, train = flags.configs(vars(args), args.hparams, report=lines.append)
    # An abbreviated flag and a store_false flag given on the command line win over the file.
    assert model.embedding_dim == 64 and model.use_features is False
    assert train.epochs == 3
    # The file's other values win over the defaults; what neither sets stays default.
    assert train.learning_rate == 0.001 and model.tower_layers == (64,)
    assert train.model == cfg.TrainConfig().model and model.temperature == cfg.ModelConfig(
        ).temperature
    assert lines == [f"From {path}: learning_rate=0.001, tower_layers=64 (replaced by flags: "
                     "embedding_dim, epochs, use_features)"]


@pytest.mark.parametrize("content,message", [
    ('{"embedding_dim": "big"}', 'embedding_dim = "big" is not an integer'),
    ('{"learning_rate": null}', "learning_rate = null is not a finite number"),
    ("[1, 2]", "expected a JSON object"),
    ('{"embedding_dim": 0}', "embedding_dim must be >= 1, got 0"),
    ('{"epochs": 1', "not valid JSON"),
])
def test_bad_hparams_are_one_line_and_write_nothing(content, message, tmp_path, capsys):
    path = tmp_path / "hp.json"
    path.write_text(content)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--hparams", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert message in err and str(path) in err
    assert not out.exists()


def test_output_naming_a_file_is_one_line(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me\n")
    for argv in (["train", *TINY, "--output", str(a_file)],
                 ["train", *TINY, "--output", str(a_file / "run")],
                 ["tune", "--model", "retrieval", *TINY, "--output", str(a_file)],
                 ["analyze", "--run", str(tmp_path), "--output", str(a_file)],
                 ["evaluate", "--run", str(tmp_path), "--output", str(tmp_path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --output") and "\n" not in err, argv
    assert a_file.read_text() == "keep me\n"


def test_quiet_output_hides_and_restores(monkeypatch):
    monkeypatch.setattr(quiet, "_ASKED_LEVEL", None)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    logger = logging.getLogger("tensorflow")
    before = logger.level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet.output(verbose=False):
            assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"  # error-level C++ lines too
            assert not logger.isEnabledFor(logging.WARNING)
            warnings.warn("library noise")
        assert logger.level == before and not caught
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
        with quiet.output(verbose=True):
            assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
            warnings.warn("library noise")
        assert len(caught) == 1
    monkeypatch.setattr(quiet, "_ASKED_LEVEL", "1")  # the user's own setting is kept
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    with quiet.output(verbose=False):
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory):
    """A tiny run trained by ``python -m trainer train`` in a fresh process: (dir, stderr)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "train", *TINY, "--model", "retrieval", "--epochs",
         "1", "--embedding-dim", "4", "--batch-size", "64", "--output", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out, done.stdout, done.stderr


def test_training_prints_no_library_noise(quiet_run):
    _, stdout, stderr = quiet_run
    assert stderr == ""  # no cuInit line, no BackupAndRestore or slow-callback warning
    assert "Run written to" in stdout
    assert "(validation included)" not in stdout  # no validation in this run


def test_evaluate_counts_test_ratings_that_were_trained_on(quiet_run, tmp_path, capsys):
    run, _, _ = quiet_run
    train = pd.read_parquet(run / "split" / "train.parquet")
    test = pd.read_parquet(run / "split" / "test.parquet")
    mixed = pd.concat([train.head(30), test.head(10)])
    path = tmp_path / "test.csv"
    mixed.rename(columns={"user_rating": "rating"})[
        ["user_id", "movie_id", "rating", "timestamp"]].to_csv(path, index=False)
    out = tmp_path / "deep" / "metrics.json"  # its folder is created
    assert main(["evaluate", "--run", str(run), "--test-ratings", str(path),
                 "--output", str(out)]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: 30 of the 40 ratings") and "(75.0%)" in err
    assert "\n" not in err
    assert json.loads(out.read_text())["test_ratings_in_train"] == 30


def test_evaluate_on_another_file_keeps_the_runs_own_metrics(quiet_run, tmp_path, capsys):
    """Without --output, another file's metrics go beside the run's (named after that file,
    which they record); the run's own metrics.json is never replaced by them."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(quiet_run[0], run)
    own = (run / "metrics.json").read_text()
    test = pd.read_parquet(run / "split" / "test.parquet").head(20)
    path = tmp_path / "u1.test.csv"
    test.rename(columns={"user_rating": "rating"})[
        ["user_id", "movie_id", "rating", "timestamp"]].to_csv(path, index=False)
    assert main(["evaluate", "--run", str(run), "--test-ratings", str(path)]) == 0
    beside = run / "metrics-u1.test.csv.json"
    assert f"Metrics written to {beside}" in capsys.readouterr().out
    assert (run / "metrics.json").read_text() == own
    metrics = json.loads(beside.read_text())
    assert metrics["test_ratings"] == 20 and metrics["test_ratings_file"] == str(path.resolve())


def test_recommend_from_a_history(quiet_run, capsys):
    """``trainer recommend --history``: the in-memory ``serve_with_history`` (a retrieval-only
    run: the retrieval module's), titles resolved like ``similar``'s."""
    run, _, _ = quiet_run
    train = pd.read_parquet(run / "split" / "train.parquet")
    movies = pd.read_parquet(run / "catalog" / "movies.parquet").set_index("movie_id")
    first, second = train["movie_id"].value_counts().index[:2]
    title = movies.loc[first, "movie_title"]
    history = ["--history", title, "--history", second, "-n", "5"]
    assert main(["recommend", "--run", str(run), *history]) == 0
    out = capsys.readouterr().out
    assert "Top 5 for a new user with a history of 2 movies:" in out and "notice" not in out
    listed = [line.split()[1] for line in out.splitlines()[2:] if line.strip()]
    assert len(listed) == 5 and not {first, second} & set(listed)
    # An id the run never saw adds nothing to its history: the same list, no fallback notice.
    assert main(["recommend", "--run", str(run), "--user", "nobody", *history]) == 0
    out = capsys.readouterr().out
    assert "Top 5 for user nobody with a history of 2 movies:" in out and "notice" not in out
    assert [line.split()[1] for line in out.splitlines()[2:] if line.strip()] == listed
    assert main(["recommend", "--run", str(run)]) == 2
    assert "give --user ID, --history MOVIE, or both" in capsys.readouterr().err
