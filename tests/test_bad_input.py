"""Bad input to batch scoring loses nothing and answers in one line (serving/batch.py, its CLI,
serving/beam_pipeline.py), and ``python -m serving``'s other first-hour answers (a full disk,
Ctrl-C, -n beyond the export, wide titles). No model is trained or loaded: a fake backend
answers the recommender's contract, or the job stops before any model is needed.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from serving import __main__ as cli
from serving.batch import BatchReport, format_rate, read_user_ids, score_users
from serving.client import RecommenderClient


class FakeRecommender:
    """The recommender signature's outputs: movies "m1", "m2" for every user."""

    def __init__(self):
        self.calls = 0
        self.titles = ["One", "Two"]

    def predict(self, model, inputs, version=None):
        self.calls += 1
        b = len(inputs["user_id"])
        return {"movie_ids": np.array([["m1", "m2"]] * b, object),
                "titles": np.array([self.titles] * b, object),
                "scores": np.full((b, 2), 0.5, np.float32),
                "ratings": np.full((b, 2), 4.0, np.float32),
                "rank_scores": np.full((b, 2), 1.0, np.float32)}

    def close(self):
        pass


@pytest.fixture
def files(tmp_path):
    users = tmp_path / "users.csv"
    users.write_text("user_id\nu1\nu2\nu3\nu4\n")
    seen = tmp_path / "seen.csv"
    seen.write_text("user_id,movie_id,rating\nu1,m1,5\n")
    (tmp_path / "export" / "recommender" / "1").mkdir(parents=True)  # never loaded
    return tmp_path, users, seen


def _cli_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("users, out, exclude, what", [
    ("users.csv", "users.csv", None, "refusing to write --out: it is the users file"),
    ("users.csv", "sub/../users.csv", None, "it is the users file"),
    ("users.csv", "link.csv", None, "it is the users file"),  # a symlink to users.csv
    ("users.csv", "seen.csv", "seen.csv", "it is the exclude file (--exclude-seen)"),
    ("recs.csv.errors.csv", "recs.csv", None, "the bad-id file recs.csv.errors.csv of --out"),
    (".recs.csv.parts/users.csv", "recs.csv", None, "the work dir .recs.csv.parts of --out"),
    (".recs.csv.tmp-123", "recs.csv", None, "a temporary file of --out"),
])
def test_batch_refuses_to_write_its_inputs(files, capsys, users, out, exclude, what):
    root, users_file, seen = files
    (root / "sub").mkdir()
    (root / "link.csv").symlink_to(users_file)
    source = root / users
    if not source.exists():
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(users_file.read_bytes())
    before = {p: p.read_bytes() for p in (source, seen)}
    argv = ["batch", "--users", str(source), "--out", str(root / out),
            "--model-dir", str(root / "export"), "--no-progress"]
    if exclude:
        argv += ["--exclude-seen", str(root / exclude)]
    assert what in _cli_error(capsys, argv)
    assert {p: p.read_bytes() for p in before} == before  # nothing was overwritten


def test_a_corrupted_manifest_is_one_line(files, capsys):
    root, users, _ = files
    work = root / ".recs.parquet.parts"
    work.mkdir()
    argv = ["batch", "--users", str(users), "--out", str(root / "recs.parquet"),
            "--model-dir", str(root / "export"), "--resume", "--no-progress"]
    for text in ("{not json", "[1, 2]", b"\xff\xfe"):
        (work / "manifest.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        err = _cli_error(capsys, argv)
        assert "manifest.json is unreadable or corrupted" in err
        assert f"delete {work} or run again without --resume" in err


def test_a_tiny_run_reports_an_honest_rate(files):
    root, users, _ = files
    backend = FakeRecommender()
    report = score_users(RecommenderClient(backend), users, root / "recs.parquet",
                         progress=False)
    assert report.users == 4 and report.rows == 8 and backend.calls == 1
    assert "users/s" not in report.summary()  # well under a second: no rate to speak of
    slow = BatchReport("recs.parquet", 4, 8, 0, None, 0, 0, 3.2, 4 / 3.2)
    assert slow.summary() == "wrote 8 recommendations for 4 users to recs.parquet in 3.2s " \
                             "(1.2 users/s)"
    assert [format_rate(r) for r in (0.4, 1.25, 12.34, 1234.5)] == ["0.4", "1.2", "12.3",
                                                                    "1,234"]


def test_ids_in_errors_print_as_text():
    ids = read_user_ids([np.float64(1.5), "u1", np.int64(7), None])
    assert ids.ids == ["u1", "7"]
    reasons = [reason for _, reason in ids.errors]
    assert reasons == ["user_ids[0]: user_id must be text, got float64 1.5",
                       "user_ids[3]: missing user_id"]


def test_beam_refuses_to_write_its_inputs(files, capsys):
    pytest.importorskip("apache_beam", reason="Apache Beam not installed")
    from serving import beam_pipeline

    root, users, seen = files
    assert beam_pipeline.run(["--users", str(users), "--out", str(users), "--model-dir",
                              str(root / "export")]) == 2
    assert "it is the users file" in capsys.readouterr().err
    assert beam_pipeline.run(["--users", str(users), "--out", str(root / "seen.csv"),
                              "--exclude-seen", str(seen), "--model-dir",
                              str(root / "export")]) == 2
    assert "it is the exclude file" in capsys.readouterr().err
    assert users.read_text() == "user_id\nu1\nu2\nu3\nu4\n"
    assert pd.read_csv(seen).shape == (1, 3) and os.path.isfile(seen)


@pytest.fixture
def fake_client(monkeypatch):
    """``python -m serving`` answered by `FakeRecommender` (no model is loaded)."""
    backend = FakeRecommender()
    monkeypatch.setattr(cli, "_make_client", lambda args: RecommenderClient(backend))
    return backend


def _batch_argv(root, users, *extra):
    return ["batch", "--users", str(users), "--out", str(root / "recs.parquet"),
            "--model-dir", str(root / "export"), "--no-progress", *extra]


def test_batch_never_replaces_or_restarts_without_being_asked(files, fake_client, capsys):
    root, users, _ = files
    out = root / "recs.parquet"
    assert cli.main(_batch_argv(root, users)) == 0
    written = out.read_bytes()
    assert f"--out {str(out)!r} exists: pass --overwrite to replace it" in _cli_error(
        capsys, _batch_argv(root, users))
    assert "nothing to resume" in _cli_error(capsys, _batch_argv(root, users, "--resume"))
    assert "not both" in _cli_error(capsys, _batch_argv(root, users, "--resume", "--overwrite"))
    assert out.read_bytes() == written
    assert cli.main(_batch_argv(root, users, "--overwrite")) == 0
    # An interrupted run's parts: refused without --resume or --overwrite, continued with one.
    work = root / ".recs.parquet.parts"
    work.mkdir()
    (work / "manifest.json").write_text("{}")
    err = _cli_error(capsys, _batch_argv(root, users))
    assert "an interrupted run" in err and "--resume to continue it, or --overwrite" in err
    assert cli.main(_batch_argv(root, users, "--overwrite")) == 0
    assert not work.exists() and len(pd.read_parquet(out)) == 8


def test_a_full_disk_stops_batch_in_one_line_and_resume_finishes(files, fake_client, capsys,
                                                                 monkeypatch):
    import errno

    import pyarrow.parquet as pq

    root = files[0]
    users = root / "many.csv"  # two parts of 4,096 users
    users.write_text("user_id\n" + "".join(f"u{i}\n" for i in range(5000)))
    real_write = pq.write_table
    calls = []

    def full_after_one_part(table, where, *args, **kwargs):
        calls.append(where)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", full_after_one_part)
    argv = _batch_argv(root, users)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and "part-000001.parquet" in err
    assert "No space left on device" in err and "4,096/5,000 users are saved" in err
    assert "run again with resume (--resume)" in err
    assert not (root / "recs.parquet").exists()
    monkeypatch.setattr(pq, "write_table", real_write)
    assert cli.main(argv + ["--resume"]) == 0
    assert "4,096 users kept from the interrupted run" in capsys.readouterr().out
    assert pd.read_parquet(root / "recs.parquet")["user_id"].nunique() == 5000


def test_a_read_only_folder_is_one_line_naming_it(files, fake_client, capsys, monkeypatch):
    import errno
    from pathlib import Path

    root, users, _ = files

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert cli.main(_batch_argv(root, users)) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {root / '.recs.parquet.parts'}: Read-only file system"


def test_asking_for_more_than_the_export_lists_says_so(files, fake_client, capsys):
    root = files[0]
    for flag in ("-n", "-k"):
        assert cli.main(["recommend", "--user", "u1", "--model-dir", str(root / "export"),
                         flag, "100000"]) == 0
        captured = capsys.readouterr()
        assert captured.err.strip() == (
            f"notice: {flag} 100000: this recommender export lists at most 2 movies per user "
            "(it was exported with -n 2); showing up to 2 (export again with a larger -n for "
            "more)")
        assert len(captured.out.strip().splitlines()) == 3
    assert cli.main(["recommend", "--user", "u1", "--model-dir", str(root / "export"),
                     "-n", "2"]) == 0
    assert capsys.readouterr().err == ""
    err = _cli_error(capsys, ["recommend", "--user", "u1", "--model-dir",
                              str(root / "export"), "-k", "0"])
    assert "argument -k: must be at least 1, got 0" in err


def test_wide_titles_keep_the_columns_aligned(files, fake_client, capsys):
    from tfrs_movies import cli as shared

    root = files[0]
    fake_client.titles = ["千と千尋の神隠し (2001)", "Amélie 😀 (2001)"]
    assert cli.main(["recommend", "--user", "ユーザー", "--model-dir", str(root / "export")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "千と千尋の神隠し (2001)" in lines[1] and "Amélie 😀 (2001)" in lines[2]
    # The last column is right-aligned: every line ends at the same terminal column, and the
    # title column starts at the same one.
    assert len({shared.width(line) for line in lines}) == 1
    starts = {shared.width(line[:line.index(t)]) for line, t in zip(
        lines, ["title", *fake_client.titles])}
    assert len(starts) == 1


def test_ctrl_c_is_one_line_and_exit_130(files, fake_client, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(RecommenderClient, "recommend", interrupted)
    assert cli.main(["recommend", "--user", "u1", "--model-dir",
                     str(files[0] / "export")]) == 130
    assert capsys.readouterr().err == "interrupted\n"
