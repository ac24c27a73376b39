"""A first hour with both CLIs on a tiny CSV run whose ids and titles are not ASCII (accents,
CJK, emoji): UTF-8 everywhere and tables aligned by terminal columns, an unfinished run said
as such, the list length flag the same on both CLIs, a full disk and Ctrl-C in one line.

One run (``--model all``, one epoch, ~25 s) is trained in-process for the module; the tests
that change it work on copies.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from serving import __main__ as serving_cli
from tfrs_movies import cli, reranker
from trainer.__main__ import main as trainer

GENRES = ("Comedy", "Drama", "Animation", "Romance")
TITLES = ("千と千尋の神隠し (2001)", "Amélie (2001)", "Café 😀 Society (2016)", "Ça (1994)",
          "東京物語 (1953)", "Plain Title (1999)")


def _user(u: int) -> str:
    return ("ユーザー{}", "josé{}", "u{}😀")[u % 3].format(u)


def _movie(m: int) -> str:
    return f"映画{m}" if m % 2 else f"m{m}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """ratings.csv and movies.csv: 30 users x 24 movies, non-ASCII ids and titles."""
    root = tmp_path_factory.mktemp("unicode_data")
    rng = np.random.default_rng(3)
    genre = np.arange(24) % len(GENRES)
    rows = []
    for u in range(30):
        liked = rng.choice(np.flatnonzero(genre == u % len(GENRES)), 4, replace=False)
        for t, m in enumerate([*liked, *rng.choice(24, 8, replace=False)]):
            rows.append((_user(u), _movie(int(m)), 5 if genre[m] == u % 4 else 2, 1000 * u + t))
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])
    ratings.drop_duplicates(["user_id", "movie_id"]).to_csv(root / "ratings.csv", index=False)
    pd.DataFrame({"movie_id": [_movie(m) for m in range(24)],
                  "title": [TITLES[m] if m < len(TITLES) else f"Film {m} (1990)"
                            for m in range(24)],
                  "genres": [GENRES[g] for g in genre]}).to_csv(root / "movies.csv", index=False)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """(run dir, what train printed)."""
    run = tmp_path_factory.mktemp("unicode_run") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert trainer(["train", "--dataset", "csv", "--ratings", str(data / "ratings.csv"),
                        "--movies", str(data / "movies.csv"), "--epochs", "1",
                        "--embedding-dim", "4", "--batch-size", "64", "--reranker-epochs", "2",
                        "--output", str(run)]) == 0
    return run, printed.getvalue()


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("unicode_export") / "export"
    assert trainer(["export", "--run", str(trained[0]), "--export-dir", str(export_dir),
                    "-n", "6"]) == 0
    return export_dir


def _aligned(lines: list[str]) -> None:
    """Every line of a table whose last column is right-aligned ends at one terminal column."""
    assert len({cli.width(line) for line in lines}) == 1, "\n" + "\n".join(lines)


def test_train_says_one_epoch_and_evaluates_non_ascii_ids(trained, tmp_path):
    run, printed = trained
    assert "for 1 epoch\n" in printed and "1 epochs" not in printed
    assert "[recommender, as served] ndcg@10=" in printed  # evaluate_served decoded the ids
    assert (run / "metrics.json").exists()
    # A random split: the re-ranker's lists hold out random ratings, without the latest family.
    loaded = reranker.load(run)
    assert loaded.config.folds == "random" and "latest_z" not in loaded.config.used_features
    # Unseen ids' lists have their own model, saved and loaded beside the first.
    assert loaded.new_users is not None and loaded.new_users is not loaded.model
    # It reads no predicted stars (``history_without``); one saved before that field read all.
    assert loaded.new_users.config_.used_features == tuple(
        f for f in loaded.config.used_features if f != "stars_z")
    every = dataclasses.replace(loaded.config, history_without=())
    reranker.save(reranker.Bundle(reranker.build(every), loaded.recent, loaded.sittings,
                                  new_users=reranker.build(every)), tmp_path)
    path = reranker.weights_path(tmp_path).parent / "config.json"
    saved = json.loads(path.read_text())
    assert saved["ease_dropout"] == loaded.config.ease_dropout > 0  # DLAE's weights
    del saved["history_without"], saved["ease_dropout"]
    path.write_text(json.dumps(saved))
    old = reranker.load(tmp_path)
    assert old.new_users.config_.used_features == loaded.config.used_features
    assert old.config.ease_dropout == 0.0  # saved before the field: EASE's weights


def test_recommend_and_similar_print_utf8_aligned(trained, capsys):
    run, _ = trained
    user = _user(3)
    assert trainer(["recommend", "--run", str(run), "--user", user, "-n", "6"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"Top 6 for user {user}:"
    table = lines[1:]
    _aligned(table)
    shown = " ".join(table)
    assert any(title in shown for title in TITLES[:5])  # some non-ASCII title is printed
    # A title named by a part of it, ignoring case and accents as typed; -k still works.
    assert trainer(["similar", "--run", str(run), "--movie", "amélie", "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"Movies similar to {_movie(1)} (cosine):" and len(lines) == 6
    _aligned(lines[1:])


def test_the_list_length_flag_names_what_was_typed(trained, capsys):
    run, _ = trained
    for flag in ("-k", "-n"):
        with pytest.raises(SystemExit) as stop:
            trainer(["similar", "--run", str(run), "--movie", "m1", flag, "0"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: must be at least 1, got 0" in err
    assert trainer(["recommend", "--run", str(run), "--user", _user(1), "-k", "3"]) == 0
    by_k = capsys.readouterr().out
    assert trainer(["recommend", "--run", str(run), "--user", _user(1), "-n", "3"]) == 0
    assert capsys.readouterr().out == by_k


def test_an_export_serves_utf8_to_both_clis_and_batch(trained, exported, tmp_path, capsys):
    run, _ = trained
    user = _user(4)
    assert serving_cli.main(["recommend", "--model-dir", str(exported), "--user", user]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    _aligned(lines)
    assert len(lines) == 7 and all(line.startswith(user) for line in lines[1:])
    assert trainer(["recommend", "--run", str(run), "--user", user, "-n", "6"]) == 0
    from_run = capsys.readouterr().out
    served = [line.split()[2] for line in lines[1:]]  # movie ids, in order
    assert served == [line.split()[1] for line in from_run.strip().splitlines()[2:]]
    users = tmp_path / "users.csv"
    users.write_text("user_id\n" + "".join(f"{_user(u)}\n" for u in range(5)),
                     encoding="utf-8")
    out = tmp_path / "recs.csv"
    assert serving_cli.main(["batch", "--users", str(users), "--out", str(out), "--model-dir",
                             str(exported), "--no-progress"]) == 0
    recs = pd.read_csv(out)
    assert list(recs["user_id"].unique()) == [_user(u) for u in range(5)]
    assert set(recs["title"]) & set(TITLES[:5])
    assert set(recs["movie_id"]) & {_movie(m) for m in range(1, 24, 2)}


def test_an_unfinished_run_says_so_and_how_to_resume(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    for stopped in ("models/ranking", "models/reranker", "metrics.json"):
        target = run / stopped
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    resume = f"rerun `python -m trainer train --output {run}` with the flags it was started with"
    assert trainer(["recommend", "--run", str(run), "--user", _user(2), "-n", "3"]) == 0
    out = capsys.readouterr().out
    notice = out.splitlines()[0]
    assert notice.startswith(f"notice: {run} is unfinished (no ranking model or re-ranker yet): "
                             "answering from retrieval alone")
    assert resume in notice
    assert trainer(["export", "--run", str(run), "--export-dir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run} is unfinished: it cannot give ranking and recommender "
                          "(its ranking model is not trained yet)")
    assert resume in err and "or pass --partial" in err
    assert not (tmp_path / "e").exists()
    shutil.rmtree(run / "models" / "retrieval")
    assert trainer(["recommend", "--run", str(run), "--user", _user(2)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run} is unfinished: no model was trained yet") and resume in err


def test_a_full_disk_during_export_publishes_nothing(trained, exported, capsys, monkeypatch):
    run, _ = trained
    before = sorted(exported.rglob("*"))
    config = (exported / "models.config").read_text()
    real_save = tf.saved_model.save
    saved = []

    def full_on_the_third(module, path, **kwargs):
        saved.append(path)
        if len(saved) == 3:
            raise tf.errors.ResourceExhaustedError(
                None, None, f"{path}/variables/variables.data-00000-of-00001.tempstate; No "
                "space left on device")
        return real_save(module, path, **kwargs)

    monkeypatch.setattr(tf.saved_model, "save", full_on_the_third)
    assert trainer(["export", "--run", str(run), "--export-dir", str(exported)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"error: {exported}/recommender/.tmp-2-") and "No space left" in err
    assert err.endswith("; nothing was published (the unfinished versions were removed)")
    assert sorted(exported.rglob("*")) == before  # version 1 only, no temporary left
    assert (exported / "models.config").read_text() == config


def test_ctrl_c_and_a_read_only_disk_are_one_line(trained, tmp_path, capsys, monkeypatch):
    run, _ = trained

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tfrs_movies.pipeline.train", interrupted)
    assert trainer(["train", "--dataset", "synthetic", "--output", str(tmp_path / "r")]) == 130
    assert capsys.readouterr().err == (
        "interrupted: rerun the same command to resume from the last finished epoch\n")

    def read_only(path, values):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr("tfrs_movies.runs.write_json", read_only)
    out = tmp_path / "metrics.json"
    assert trainer(["evaluate", "--run", str(run), "--output", str(out)]) == 1
    assert capsys.readouterr().err == (
        f"error: {out}: Read-only file system; no metrics were written\n")
