"""Batch scoring (serving/batch.py, `python -m serving batch`, serving/beam_pipeline.py).

Two real exports, trained and exported once each in-process:
- ``tiny``: synthetic, 200 users x 80 movies, k=30, n=10 (~10 s); used for resume, bad ids,
  the REST backend (against tests/tfserving_stub.py) and the Beam pipeline.
- ``ml100k``: MovieLens 100K (all 943 users), the run ``conftest.ml100k_run`` trains once for
  the end-to-end tests, exported here; skipped without the data.
"""
from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from tfserving_stub import TFServingStub  # noqa: E402

from serving import __main__ as cli  # noqa: E402
from serving import batch  # noqa: E402
from serving.backends import LocalBackend, ServingError  # noqa: E402
from serving.batch import _Progress, read_user_ids, score_users  # noqa: E402
from serving.client import RecommenderClient, make_client  # noqa: E402
from tfrs_movies.errors import DataError, UserError  # noqa: E402
from trainer.__main__ import main as trainer  # noqa: E402

N = 5


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(run dir, export dir) of a small synthetic model."""
    root = tmp_path_factory.mktemp("batch_tiny")
    run, exp = root / "run", root / "export"
    assert trainer(["train", "--dataset", "synthetic", "--users", "200", "--movies", "80",
                    "--ratings", "4000", "--epochs", "1", "--embedding-dim", "8",
                    "--output", str(run)]) == 0
    assert trainer(["export", "--run", str(run), "--export-dir", str(exp), "-k", "30"]) == 0
    return run, exp


@pytest.fixture(scope="module")
def ml100k(ml100k_run, tmp_path_factory):
    exp = tmp_path_factory.mktemp("batch_ml100k") / "export"
    assert trainer(["export", "--run", str(ml100k_run), "--export-dir", str(exp)]) == 0
    return ml100k_run, exp


@pytest.fixture(scope="session")
def tiny_backend(tiny):
    """One loaded LocalBackend of the tiny export, shared (loading takes seconds)."""
    backend = LocalBackend(tiny[1])
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def tiny_users(tiny, tmp_path_factory):
    """A users CSV: the 200 known users, 20 unknown ones, a duplicate and a blank line."""
    run, _ = tiny
    known = list(pd.read_parquet(run / "split" / "train.parquet")["user_id"].unique())
    ids = known + [f"new{i}" for i in range(20)] + [known[0]]
    path = tmp_path_factory.mktemp("batch_users") / "users.csv"
    path.write_text("user_id,segment\n" + "".join(f"{u},a\n" for u in ids) + "\n")
    return path, list(dict.fromkeys(ids))


@pytest.fixture(scope="session")
def tiny_local(tiny, tiny_backend, tiny_users, tmp_path_factory):
    """The uninterrupted local scoring of ``tiny_users`` (n=5, seen movies excluded)."""
    run, _ = tiny
    out = tmp_path_factory.mktemp("batch_local") / "recs.parquet"
    report = score_users(_client(tiny_backend), tiny_users[0], out, n=N,
                         exclude=run / "split" / "train.parquet", batch_size=16,
                         part_size=32, progress=False)
    assert report.users == len(tiny_users[1]) and report.duplicates == 1
    assert report.bad_ids == 0 and report.errors_path is None
    return out


class FlakyBackend:
    """Wraps a backend: the call after ``fail_after`` successful ones raises ``error``; ids
    starting with "bad" make a request fail with HTTP 400 like TF Serving's REST API."""

    def __init__(self, backend, fail_after: int | None = None, error: Exception | None = None):
        self.backend, self.fail_after, self.error = backend, fail_after, error
        self.calls = 0

    def predict(self, model, inputs, version=None, **signature):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise self.error or ServingError("UNAVAILABLE: server went away", code="UNAVAILABLE")
        self.calls += 1
        bad = [u for u in inputs["user_id"] if u.startswith("bad")]
        if bad:
            raise ServingError(f"HTTP 400: cannot parse user_id {bad[0]!r}", status=400)
        return self.backend.predict(model, inputs, version, **signature)

    def close(self):
        pass  # the wrapped backend is shared between tests


def _client(backend, **kw) -> RecommenderClient:
    return RecommenderClient(FlakyBackend(backend, **kw))


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["user_id", "rank"]).reset_index(drop=True)


def _check_ranks(frame: pd.DataFrame, n: int) -> None:
    """Every user's ranks are 1..n in order and no movie repeats for a user."""
    ranks = frame.groupby("user_id", sort=False)["rank"].agg(list)
    assert all(r == list(range(1, n + 1)) for r in ranks), ranks[ranks.map(len) != n].head()
    assert not frame.duplicated(["user_id", "movie_id"]).any()


# --- ML-100K, local backend, through the CLI ----------------------------------------------


def test_ml100k_all_users_through_the_cli(ml100k, ml100k_dir, tmp_path, capsys):
    run, exp = ml100k
    users = pd.read_csv(ml100k_dir / "u.user", sep="|", header=None)[0].astype(str)
    pd.DataFrame({"user_id": users}).to_parquet(tmp_path / "users.parquet")
    out, train = tmp_path / "recs.parquet", run / "split" / "train.parquet"
    assert cli.main(["batch", "--users", str(tmp_path / "users.parquet"), "--out", str(out),
                     "--model-dir", str(exp), "-n", "10", "--exclude-seen", str(train),
                     "--no-progress"]) == 0
    assert "for 943 users" in capsys.readouterr().out
    recs = pd.read_parquet(out)
    assert list(recs.columns) == ["user_id", "rank", "movie_id", "title", "score", "rating",
                                  "rank_score", "known"]
    assert recs["known"].all()  # every ML-100K user is in the run
    assert len(recs) == 943 * 10 and recs["user_id"].nunique() == 943
    assert list(pd.unique(recs["user_id"])) == list(users)  # input order
    _check_ranks(recs, 10)
    seen = pd.read_parquet(train)[["user_id", "movie_id"]]
    assert recs.merge(seen, on=["user_id", "movie_id"]).empty  # nothing already rated
    assert (recs["title"].str.len() > 0).all() and recs["title"].str.contains(r"\(19").mean() > .9
    assert not list(tmp_path.glob(".*"))  # no work dir or temp file left


def test_rows_are_what_the_client_recommends(tiny, tiny_backend, tiny_local):
    run, _ = tiny
    recs = pd.read_parquet(tiny_local)
    seen = pd.read_parquet(run / "split" / "train.parquet").groupby("user_id")["movie_id"]
    users = ["u1", "u7", "new3"]
    expected = _client(tiny_backend).recommend(
        users, [list(seen.get_group(u)) if u in seen.groups else [] for u in users], n=N)
    for user, recommendations in zip(users, expected, strict=True):
        got = recs[recs["user_id"] == user]
        assert got["rank"].tolist() == list(range(1, len(recommendations) + 1))
        assert got["movie_id"].tolist() == [r.movie_id for r in recommendations]
        assert got["title"].tolist() == [r.title for r in recommendations]
        # Scores can differ in the last bit: the client call batches 3 users, the file 16.
        assert got["score"].tolist() == pytest.approx([r.score for r in recommendations],
                                                      rel=1e-5, abs=1e-6)
        assert got["rating"].tolist() == pytest.approx([r.rating for r in recommendations],
                                                       rel=1e-5)
    # "new3" is unknown to the export: every row of it says so, like the client's flag.
    assert expected.known == [True, True, False]
    for user, known in zip(users, expected.known, strict=True):
        assert recs.loc[recs["user_id"] == user, "known"].tolist() == [known] * N
    assert recs.loc[recs["user_id"].str.startswith("new"), "known"].eq(False).all()
    assert recs.loc[~recs["user_id"].str.startswith("new"), "known"].all()


# --- resume ---------------------------------------------------------------------------------


def test_resume_after_a_killed_run_equals_an_uninterrupted_run(tiny, tiny_backend, tiny_users,
                                                               tiny_local, tmp_path):
    run, _ = tiny
    out, train = tmp_path / "recs.parquet", run / "split" / "train.parquet"
    kw = dict(n=N, exclude=train, batch_size=16, part_size=32, progress=False)
    # 220 users = 7 parts of 2 requests; the "kill" hits the 6th request (inside part 2).
    flaky = FlakyBackend(tiny_backend, fail_after=5)
    with pytest.raises(ServingError, match="2 parts|64/220 users are saved.*resume"):
        score_users(RecommenderClient(flaky), tiny_users[0], out, **kw)
    work = tmp_path / ".recs.parquet.parts"
    assert sorted(p.name for p in work.glob("part-*.parquet")) == ["part-000000.parquet",
                                                                  "part-000001.parquet"]
    assert not out.exists()
    counting = FlakyBackend(tiny_backend)
    report = score_users(RecommenderClient(counting), tiny_users[0], out, resume=True, **kw)
    assert counting.calls == 14 - 4 and report.resumed_users == 64
    assert report.users == 220 and not work.exists()
    recs = pd.read_parquet(out)
    assert list(pd.unique(recs["user_id"])) == tiny_users[1]  # every user once, in order
    _check_ranks(recs, N)
    pd.testing.assert_frame_equal(recs, pd.read_parquet(tiny_local))


def test_resume_refuses_other_inputs_and_a_plain_rerun_starts_over(tiny_backend, tiny_users,
                                                                  tmp_path):
    out = tmp_path / "recs.csv"
    kw = dict(batch_size=16, part_size=32, progress=False)
    with pytest.raises(ServingError):
        score_users(_client(tiny_backend, fail_after=3), tiny_users[0], out, n=N, **kw)
    with _client(tiny_backend) as client:
        with pytest.raises(UserError, match="different -n"):
            score_users(client, tiny_users[0], out, n=N + 1, resume=True, **kw)
        with pytest.raises(UserError, match="different the input ids"):
            score_users(client, tiny_users[1][:50], out, n=N, resume=True, **kw)
        report = score_users(client, tiny_users[0], out, n=N + 1, **kw)  # no resume: fresh
    assert report.resumed_users == 0 and report.users == 220
    recs = pd.read_csv(out, dtype={"user_id": str, "movie_id": str})
    assert len(recs) == 220 * (N + 1)


def test_the_default_batch_size_follows_the_backend(tiny_backend, tiny_users, tmp_path,
                                                   monkeypatch):
    """A local model gets requests of up to ``LOCAL_BATCH_SIZE`` (one in-graph call), a server
    of up to ``DEFAULT_BATCH_SIZE`` (TF Serving's batcher)."""
    sizes = []
    predict = tiny_backend.predict

    def recording(model, inputs, *args, **kwargs):
        sizes.append(len(inputs["user_id"]))
        return predict(model, inputs, *args, **kwargs)

    monkeypatch.setattr(tiny_backend, "predict", recording)
    assert (batch.LOCAL_BATCH_SIZE, batch.DEFAULT_BATCH_SIZE) == (256, 128)
    users, ids = tiny_users
    score_users(RecommenderClient(tiny_backend), users, tmp_path / "local.parquet", n=N,
                progress=False, concurrency=1)
    assert sizes == [len(ids)] and 128 < len(ids) <= 256  # every distinct id in one request
    sizes.clear()
    score_users(_client(tiny_backend), users, tmp_path / "server.parquet", n=N,
                progress=False, concurrency=1)
    assert sizes == [128, len(ids) - 128]


def test_the_default_requests_in_flight_follow_the_backend(tiny_backend, tiny_users, tmp_path,
                                                         monkeypatch):
    """``LOCAL_CONCURRENCY`` requests in flight to a local model, ``DEFAULT_CONCURRENCY`` to a
    server: that many calls wait together at a barrier (a broken barrier fails the run), and
    no more ever run at once."""
    predict = tiny_backend.predict
    lock, state = threading.Lock(), {}

    def recording(model, inputs, *args, **kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            first = state["calls"] < state["wanted"]
            state["calls"] += 1
        try:
            if first:  # the first ones meet only if they are in flight together
                state["barrier"].wait(timeout=60)
            return predict(model, inputs, *args, **kwargs)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(tiny_backend, "predict", recording)
    assert (batch.LOCAL_CONCURRENCY, batch.DEFAULT_CONCURRENCY) == (4, 2)
    users, _ = tiny_users
    for client, wanted, name in ((RecommenderClient(tiny_backend), 4, "local"),
                                 (_client(tiny_backend), 2, "server")):
        state.update(now=0, most=0, calls=0, wanted=wanted, barrier=threading.Barrier(wanted))
        score_users(client, users, tmp_path / f"{name}.parquet", n=N, batch_size=16,
                    progress=False)
        assert state["most"] == wanted and state["calls"] > wanted


# --- bad ids --------------------------------------------------------------------------------


def test_bad_ids_go_to_the_side_file(tiny_backend, tmp_path):
    users = tmp_path / "users.csv"
    users.write_text("user_id,name\nu1,a\n  ,b\nbad-1,c\nu2,d\n\"x\x01y\",e\nnew7,f\nbad-2,g\n"
                     "u3,h\n")
    out = tmp_path / "recs.parquet"
    client = _client(tiny_backend)
    report = score_users(client, users, out, n=N, batch_size=4, progress=False)
    assert report.users == 4 and report.bad_ids == 4
    errors = pd.read_csv(report.errors_path, dtype=str, keep_default_na=False)
    assert errors["user_id"].tolist() == ["", "x\x01y", "bad-1", "bad-2"]
    assert "line 3: empty user_id" in errors["error"][0]
    assert "control character" in errors["error"][1]
    assert "HTTP 400" in errors["error"][2] and "bad-1" in errors["error"][2]
    recs = pd.read_parquet(out)
    assert list(pd.unique(recs["user_id"])) == ["u1", "u2", "new7", "u3"]
    _check_ranks(recs, N)
    # A later clean run removes the stale side file.
    users.write_text("user_id\nu1\n")
    assert score_users(client, users, out, n=N, progress=False).errors_path is None
    assert not (tmp_path / "recs.parquet.errors.csv").exists()


def test_a_server_rejecting_everything_stops_the_run(tiny_backend, tmp_path):
    refusing = _client(tiny_backend, fail_after=0,
                       error=ServingError("model takes inputs ['x']", status=400))
    with pytest.raises(ServingError, match="rejects every request.*resume"):
        score_users(refusing, ["u1", "u2", "u3"], tmp_path / "r.parquet",
                    progress=False)


def test_input_and_argument_errors_name_the_problem(tiny, tiny_backend, tmp_path):
    _, exp = tiny
    (tmp_path / "ids.csv").write_text("customer\n1\n")
    with _client(tiny_backend) as client:
        with pytest.raises(DataError, match="ids.csv: missing column.*user_id.*customer"):
            score_users(client, tmp_path / "ids.csv", tmp_path / "r.parquet")
        with pytest.raises(UserError, match=r"\*.parquet.*\*.csv.*'.json'"):
            score_users(client, ["u1"], tmp_path / "r.json")
        with pytest.raises(UserError, match="batch_size must be an int >= 1"):
            score_users(client, ["u1"], tmp_path / "r.csv", batch_size=0)
    assert cli.main(["batch", "--users", str(tmp_path / "ids.csv"), "--out",
                     str(tmp_path / "r.parquet"), "--model-dir", str(exp)]) == 2


def test_read_user_ids_from_parquet_numbers(tmp_path):
    path = tmp_path / "users.parquet"
    pd.DataFrame({"userId": [7.0, None, 7.0, 8.5, 9.0]}).to_parquet(path)
    ids = read_user_ids(path)
    assert ids.ids == ["7", "9"] and ids.duplicates == 1
    assert [e[1] for e in ids.errors] == [f"{path}: row 2: missing user_id",
                                          f"{path}: row 4: user_id 8.5 is not a whole number"]


def test_progress_line_on_a_terminal_and_off_it():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    now = [0.0]
    tty = Tty()
    bar = _Progress(943_000, 0, tty, clock=lambda: now[0])
    now[0] = 10.0
    bar.update(12_345)
    assert tty.getvalue() == "\rusers 12,345/943,000  1,234 users/s  ETA 0:12:34\x1b[K"
    now[0] = 12.0  # later lines measure from the first part on (model loading excluded)
    bar.update(4_000)
    assert tty.getvalue().endswith("\rusers 16,345/943,000  2,000 users/s  ETA 0:07:43\x1b[K")
    log = io.StringIO()
    bar = _Progress(1000, 0, log, clock=lambda: now[0])
    for _ in range(20):  # 20 updates within a second: a line per 10%, not per update
        bar.update(50)
    bar.close()
    assert len(log.getvalue().splitlines()) == 10


# --- REST backend against the TF Serving stand-in ---------------------------------------------


def test_rest_backend_against_the_stand_in_server(tiny, tiny_users, tiny_local, tmp_path):
    run, exp = tiny
    out = tmp_path / "recs.csv"
    with TFServingStub(str(exp)) as stub, make_client(url=stub.url, timeout=30,
                                                      backoff=0.01) as client:
        stub.fail_next(2, 503)  # a busy server: retried by the client, not a failure
        report = score_users(client, tiny_users[0], out, n=N,
                             exclude=run / "split" / "train.parquet", batch_size=16,
                             part_size=32, progress=False, concurrency=4)
        predicts = [p for m, p in stub.requests if m == "POST"]
    assert report.users == 220 and len(predicts) == 14 + 2
    assert all(p == "/v1/models/recommender:predict" for p in predicts)
    recs = pd.read_csv(out, dtype={"user_id": str, "movie_id": str, "title": str,
                                   "score": np.float32, "rating": np.float32})
    pd.testing.assert_frame_equal(recs, pd.read_parquet(tiny_local), check_dtype=False)


# --- Beam pipeline on the DirectRunner ------------------------------------------------------


def test_beam_pipeline_equals_the_local_scorer(tiny, tiny_users, tiny_local, tmp_path, capsys):
    pytest.importorskip("apache_beam", reason="Apache Beam not installed "
                                              "(pip install 'tfrs-movies[beam]')")
    from serving import beam_pipeline

    run, exp = tiny
    users = tmp_path / "users.csv"
    users.write_text(tiny_users[0].read_text() + ",b\n\"x\x02\",c\n")  # two bad ids
    out = tmp_path / "recs.parquet"
    assert beam_pipeline.run([
        "--users", str(users), "--out", str(out), "--model-dir", str(exp), "-n", str(N),
        "--exclude-seen", str(run / "split" / "train.parquet"), "--batch-size", "16",
        "--runner", "DirectRunner"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]  # as the local scorer's
    assert summary.startswith(f"wrote {220 * N:,} recommendations for 220 users to {out} in ")
    assert summary.endswith(f"; 1 duplicate ids skipped; 2 bad ids listed in {out}.errors.csv")
    beam, local = _sorted(pd.read_parquet(out)), _sorted(pd.read_parquet(tiny_local))
    # Same ids, ranks and titles; scores may differ in the last bit with other batch sizes.
    pd.testing.assert_frame_equal(beam, local, check_exact=False, rtol=1e-6)
    errors = pd.read_csv(f"{out}.errors.csv", dtype=str, keep_default_na=False)
    assert sorted(errors["user_id"]) == ["", "x\x02"]


def test_beam_copies_a_remote_model_dir_to_each_worker(tiny):
    pytest.importorskip("apache_beam", reason="Apache Beam not installed")
    from serving.beam_pipeline import _local_model_dir

    _, exp = tiny
    local = _local_model_dir(str(exp), copy=True)  # what a gs:// export dir goes through
    original = exp / "recommender" / "1"
    files = sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())
    copied = Path(local) / "recommender" / "1"
    assert files and files == sorted(p.relative_to(copied) for p in copied.rglob("*")
                                     if p.is_file())
    assert all((copied / f).read_bytes() == (original / f).read_bytes() for f in files)


# --- a history column: the with_history signature (tiny export) ------------------------------


@pytest.fixture(scope="session")
def history_users(tiny, tmp_path_factory):
    """A users CSV with a history column: 12 new users with 3 catalogue movies each
    (``|``-separated), 4 known users without one, a new user whose history is unknown ids."""
    run, _ = tiny
    train = pd.read_parquet(run / "split" / "train.parquet")
    movies = list(train["movie_id"].unique())
    rows = [(f"fresh{i}", "|".join(movies[3 * i:3 * i + 3])) for i in range(12)]
    rows += [(u, "") for u in train["user_id"].unique()[:4]] + [("lost", "nope1|nope2")]
    path = tmp_path_factory.mktemp("history_users") / "users.csv"
    path.write_text("user_id,history\n" + "".join(f"{u},{h}\n" for u, h in rows))
    return path, {u: [m for m in h.split("|") if m] for u, h in rows}


def test_history_column_is_scored_through_with_history(tiny_backend, history_users, tmp_path):
    path, histories = history_users
    out = tmp_path / "recs.parquet"
    client = _client(tiny_backend)
    report = score_users(client, path, out, n=N, batch_size=8, progress=False)
    assert report.users == len(histories) and report.bad_ids == 0
    recs = pd.read_parquet(out)
    assert list(pd.unique(recs["user_id"])) == list(histories)  # input order
    _check_ranks(recs, N)
    users = list(histories)
    expected = client.recommend(users, n=N, history=[histories[u] for u in users])
    plain = client.recommend(users, n=N)
    for user, with_history, without in zip(users, expected, plain, strict=True):
        got = recs.loc[recs["user_id"] == user, "movie_id"].tolist()
        # A history's rows are the with_history answer; rows without one serving_default's.
        assert got == [r.movie_id for r in (with_history if histories[user] else without)]
        assert not set(got) & set(histories[user])
    known = recs.groupby("user_id", sort=False)["known"].all()
    # New users with catalogue movies are answered from them; "lost" is the fallback.
    assert known.to_dict() == {u: u != "lost" for u in users}
    assert expected.known == [u != "lost" for u in users]


def test_history_requests_chunk_and_refuse_mismatched_rows(tiny, tiny_backend):
    run, _ = tiny
    movies = list(pd.read_parquet(run / "split" / "train.parquet")["movie_id"].unique())
    client = RecommenderClient(tiny_backend)
    rows = 300  # more than contract.MAX_ROWS_PER_CALL: chunked inside the graph
    users = [f"fresh{i}" for i in range(rows)]
    history = [[movies[i % len(movies)], movies[(i * 7 + 1) % len(movies)]] for i in range(rows)]
    many = client.retrieve(users, history=history)
    assert len(many) == rows and all(many.known)
    for i in (0, 255, 256, 299):
        (one,) = client.retrieve([users[i]], history=[history[i]])
        assert [m for m, _ in many[i]] == [m for m, _ in one]
    inputs = {"user_id": np.array(["u1", "u2"], object),
              "history_movie_ids": np.array([[movies[0]]] * 3, object),
              "exclude_movie_ids": np.array([[""], [""]], object)}
    with pytest.raises(ServingError) as err:
        tiny_backend.predict("recommender", inputs, signature="with_history")
    assert "user_id" in str(err.value) and "history_movie_ids" in str(err.value)


def test_beam_reads_a_history_column(tiny, history_users, tmp_path, tiny_backend):
    pytest.importorskip("apache_beam", reason="Apache Beam not installed")
    from serving import beam_pipeline

    _, exp = tiny
    path, histories = history_users
    local, out = tmp_path / "local.parquet", tmp_path / "beam.parquet"
    score_users(_client(tiny_backend), path, local, n=N, batch_size=8, progress=False)
    assert beam_pipeline.run(["--users", str(path), "--out", str(out), "--model-dir", str(exp),
                              "-n", str(N), "--batch-size", "8", "--runner",
                              "DirectRunner"]) == 0
    beam, expected = _sorted(pd.read_parquet(out)), _sorted(pd.read_parquet(local))
    pd.testing.assert_frame_equal(beam, expected, check_exact=False, rtol=1e-6)
