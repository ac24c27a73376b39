"""Bad input to batch scoring loses nothing and answers in one line (serving/batch.py, its CLI,
serving/beam_pipeline.py). No model is trained or loaded: a fake backend answers the
recommender's contract, or the job stops before any model is needed.
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

    def predict(self, model, inputs, version=None):
        self.calls += 1
        b = len(inputs["user_id"])
        return {"movie_ids": np.array([["m1", "m2"]] * b, object),
                "titles": np.array([["One", "Two"]] * b, object),
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
