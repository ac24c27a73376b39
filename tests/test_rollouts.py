"""Rollouts: requests by label on every backend, the router, the request log and compare.

The export here is two versions of a `recommender` that answers fixed lists, so which version
answered is visible in the ids: version 1 ("good") gives each of 200 users two of their three
held-out movies among 10, version 2 ("popular") gives everyone movies m0..m9. Labels:
stable -> 1, canary -> 2. `test_export_with_labels` writes a real (tiny, untrained) export.
"""
from __future__ import annotations

import io
import json
import os
import sys
import types

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from tfserving_stub import GrpcPredictionService, TFServingStub  # noqa: E402

from serving import __main__ as cli  # noqa: E402
from serving.backends import LocalBackend, ServingError  # noqa: E402
from serving.client import make_client  # noqa: E402
from serving.compare import compare  # noqa: E402
from serving.request_log import RequestLog, records, segments  # noqa: E402
from serving.router import Experiment, RoutedClient, bucket  # noqa: E402
from tfrs_movies import tf_serving_config as mc  # noqa: E402
from tfrs_movies.errors import UserError  # noqa: E402

N_USERS, N_MOVIES, N = 200, 50, 10
POPULAR = [f"m{i}" for i in range(N)]


class Lists(tf.Module):
    """The recommender signature, answering a fixed list per user (others: ``default``)."""

    def __init__(self, lists: dict[str, list[str]], default: list[str]):
        super().__init__()
        users = list(lists)
        init = tf.lookup.KeyValueTensorInitializer(tf.constant(users or ["-"]),
                                                   tf.range(max(len(users), 1), dtype=tf.int64))
        self.table = tf.lookup.StaticHashTable(init, default_value=len(users))
        self.rows = tf.constant([lists[u] for u in users] + [default])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string,
                                                name="exclude_movie_ids")])
    def serve(self, user_id, exclude_movie_ids):
        ids = tf.gather(self.rows, self.table.lookup(user_id))
        scores = tf.tile(tf.cast(tf.range(N, 0, -1), tf.float32)[None], [tf.shape(ids)[0], 1])
        return {"movie_ids": ids, "titles": ids, "scores": scores, "ratings": scores / 2,
                "rank_scores": scores}


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Three held-out movies per user, as a ratings CSV, and the "good" lists."""
    rng = np.random.default_rng(3)
    rows, good = [], {}
    for u in range(N_USERS):
        test = rng.choice(N_MOVIES, 3, replace=False)
        others = [m for m in rng.permutation(N_MOVIES) if m not in test][:N - 2]
        ids = [f"m{m}" for m in rng.permutation(list(test[:2]) + others)]
        good[f"u{u}"] = ids
        rows += [(f"u{u}", f"m{m}", 4.0) for m in test]
    path = tmp_path_factory.mktemp("ratings") / "test.csv"
    pd.DataFrame(rows, columns=["user_id", "movie_id", "rating"]).to_csv(path, index=False)
    return str(path), good


@pytest.fixture(scope="module")
def export_dir(held_out, tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    for version, module in ((1, Lists(held_out[1], POPULAR)), (2, Lists({}, POPULAR))):
        tf.saved_model.save(module, str(root / "recommender" / str(version)),
                            signatures={"serving_default": module.serve})
        mc.record_export(root, {"recommender": version}, "stable" if version == 1 else "canary")
    return str(root)


@pytest.fixture(scope="module")
def servers(export_dir):
    pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")
    with TFServingStub(export_dir) as rest, GrpcPredictionService(export_dir) as grpc:
        yield rest, grpc


def _client(kind, export_dir, servers, **kw):
    if kind == "local":
        return make_client(model_dir=export_dir, **kw)
    if kind == "rest":
        return make_client(url=servers[0].url, timeout=5, **kw)
    return make_client(grpc=servers[1].address, timeout=5, **kw)


# --- labels on every backend ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "rest", "grpc"])
def test_requests_by_label_and_version(kind, export_dir, servers, held_out):
    good = held_out[1]["u1"]
    for pins, ids, version in (({"labels": {"recommender": "stable"}}, good, 1),
                               ({"labels": {"recommender": "canary"}}, POPULAR, 2),
                               ({"versions": {"recommender": 1}}, good, 1),
                               ({}, POPULAR, None if kind == "rest" else 2)):
        with _client(kind, export_dir, servers, **pins) as client:
            results, answered = client.recommend_with_version(["u1"])
        assert [r.movie_id for r in results[0]] == ids
        assert answered == version
    if kind == "rest":
        assert ("POST", "/v1/models/recommender/labels/canary:predict") in servers[0].requests
        assert ("GET", "/v1/models/recommender/labels/canary") in servers[0].requests


@pytest.mark.parametrize("kind", ["local", "rest", "grpc"])
def test_unknown_label_is_a_clear_error(kind, export_dir, servers):
    with _client(kind, export_dir, servers, labels={"recommender": "beta"}) as client:
        with pytest.raises(ServingError, match="Unrecognized servable version label: beta") as err:
            client.recommend(["u1"])
    assert err.value.status == 400 or err.value.code == "INVALID_ARGUMENT"


def test_a_promote_reaches_running_servers(export_dir, servers, tmp_path):
    root = tmp_path / "export"  # the same SavedModels, a models.config of its own
    root.mkdir()
    os.symlink(os.path.join(export_dir, "recommender"), root / "recommender")
    mc.record_export(root, {"recommender": 1}, "stable")
    mc.record_export(root, {"recommender": 2}, "canary")
    local = make_client(model_dir=str(root), labels={"recommender": "stable"})
    with TFServingStub(str(root)) as stub:
        rest = make_client(url=stub.url, labels={"recommender": "stable"})
        assert rest.recommend(["u1"])[0][0].movie_id != POPULAR[0]
        mc.promote(root, "stable", 2)
        assert [r.movie_id for r in rest.recommend(["u1"])[0]] == POPULAR
    assert [r.movie_id for r in local.recommend(["u1"])[0]] == POPULAR


def test_a_version_and_a_label_are_exclusive(export_dir):
    with pytest.raises(UserError, match="not both"):
        make_client(model_dir=export_dir, versions={"recommender": 1},
                    labels={"recommender": "stable"})
    with pytest.raises(UserError, match="not valid"):
        LocalBackend(export_dir).predict("recommender", {}, label="Stable")


def test_export_with_labels(tiny_tables, tmp_path):
    """``export`` with a label: version_labels in models.config, served by label.

    The run is an untrained tiny two-tower model offering only its movie embeddings, so only
    ``similar_movies`` is written (the cheapest real export; the label logic is the same for
    every model, see test_model_config.py)."""
    from tfrs_movies.config import ExportConfig, ModelConfig
    from tfrs_movies.export import export
    from tfrs_movies.features import FeatureSpace, Vocabulary
    from tfrs_movies.models import build_model

    space = FeatureSpace(Vocabulary.build(*tiny_tables))
    tf.keras.utils.set_random_seed(0)
    model = build_model("retrieval", space, ModelConfig(embedding_dim=4))
    run = types.SimpleNamespace(vocab=space.vocab, retrieval_model=lambda: None,
                                rating_model=lambda: None, embedding_model=lambda: model)
    export(run, tmp_path, ExportConfig(k=5, n=5, label="stable", partial=True))
    export(run, tmp_path, ExportConfig(k=3, n=3, label="canary", partial=True))
    (entry,) = mc.read(tmp_path)
    assert (entry.name, entry.versions, dict(entry.labels)) == (
        "similar_movies", (1, 2), {"stable": 1, "canary": 2})
    for label, k in (("stable", 5), ("canary", 3)):
        out = io.StringIO()
        assert cli.main(["similar", "--movie", "m1", "--model-dir", str(tmp_path), "--label",
                         label, "--format", "json"], out) == 0
        assert len(json.loads(out.getvalue())) == k


# --- CLI ------------------------------------------------------------------------------------


def test_cli_label_version_and_promote(export_dir, tmp_path, capsys):
    def recommend(*flags):
        out = io.StringIO()
        code = cli.main(["recommend", "--user", "u1", "--model-dir", export_dir,
                         "--format", "json", *flags], out)
        return code, out.getvalue()

    assert [r["movie_id"] for r in json.loads(recommend("--label", "canary")[1])["u1"]] \
        == POPULAR
    assert json.loads(recommend("--version", "1")[1])["u1"][0]["movie_id"] != POPULAR[0]
    assert recommend("--version", "1", "--label", "stable")[0] == 2
    assert "not allowed with argument" in capsys.readouterr().err
    log = tmp_path / "shown.jsonl"
    assert recommend("--label", "stable", "--request-log", str(log))[0] == 0
    (record,) = records(log)
    assert (record["label"], record["version"], record["user_id"]) == ("stable", 1, "u1")

    export = tmp_path / "e"
    for version in (1, 2):
        (export / "recommender" / str(version)).mkdir(parents=True)
    mc.record_export(export, {"recommender": 1}, "stable")
    out = io.StringIO()
    assert cli.main(["promote", "--export-dir", str(export), "--label", "stable",
                     "--version", "2"], out) == 0
    assert "stable -> version 2" in out.getvalue()
    assert cli.main(["promote", "--export-dir", str(export), "--label", "stable",
                     "--version", "7"], io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


# --- router -----------------------------------------------------------------------------------


def test_router_shares_and_stickiness_on_100k_ids():
    ids = [f"user-{i}" for i in range(100_000)]
    experiment = Experiment.split("ranker-v2", {"stable": 0.9, "canary": 0.1})
    arms = [experiment.assign(u).name for u in ids]
    canary = np.mean([a == "canary" for a in arms])
    assert abs(canary - 0.1) < 0.005  # 5 standard deviations of a binomial share
    # Sticky: another process (a new Experiment object) assigns every id the same arm.
    again = Experiment.split("ranker-v2", {"stable": 0.9, "canary": 0.1})
    assert [again.assign(u).name for u in ids[:20_000]] == arms[:20_000]
    # Ramping the last arm up only moves users into it.
    ramped = Experiment.split("ranker-v2", {"stable": 0.8, "canary": 0.2})
    moved = [ramped.assign(u).name for u in ids[:20_000]]
    assert all(m == "canary" for a, m in zip(arms, moved) if a == "canary")
    assert abs(np.mean([m == "canary" for m in moved]) - 0.2) < 0.015
    # Another experiment splits the same users independently.
    other = np.array([bucket("other", u) < 0.1 for u in ids])
    assert abs(np.mean(other[np.array(arms) == "canary"]) - 0.1) < 0.02


@pytest.mark.parametrize("shares, message", [({"stable": 0.9, "canary": 0.2}, "add up to 1.1"),
                                             ({"stable": 1.0, "canary": 0.0}, "must be in"),
                                             ({"Stable": 1.0}, "not valid")])
def test_router_rejects_bad_splits(shares, message):
    with pytest.raises(UserError, match=message):
        Experiment.split("e", shares)


def test_routed_client_records_arm_and_version_and_logs_it(export_dir, servers, tmp_path,
                                                           held_out):
    experiment = Experiment.split("exp", {"stable": 0.5, "canary": 0.5})
    users = [f"u{i}" for i in range(20)]
    log = RequestLog(tmp_path / "requests.jsonl", clock=lambda: 1_700_000_000.25)
    backend = make_client(grpc=servers[1].address).backend
    with RoutedClient(backend, experiment, request_log=log) as client:
        routed = client.recommend(users, n=3)
    assert [r.user_id for r in routed] == users
    assert {r.arm for r in routed} == {"stable", "canary"}
    for r in routed:
        expected = held_out[1][r.user_id] if r.arm == "stable" else POPULAR
        assert (r.label, r.version) == (r.arm, 1 if r.arm == "stable" else 2)
        assert [m.movie_id for m in r.recommendations] == expected[:3]
        assert r.arm == experiment.assign(r.user_id).name
    logged = {rec["user_id"]: rec for rec in records(tmp_path / "requests.jsonl")}
    assert sorted(logged) == sorted(users)
    first = logged[routed[0].user_id]
    assert list(first) == ["time", "request_id", "user_id", "model", "version", "label", "arm",
                           "experiment", "movie_ids"]
    assert first["time"] == "2023-11-14T22:13:20.250000Z" and first["experiment"] == "exp"
    assert first["movie_ids"] == [m.movie_id for m in routed[0].recommendations]


def test_request_log_rotates_by_size(tmp_path):
    path = tmp_path / "shown.jsonl"
    with RequestLog(path, max_bytes=400, keep=2) as log:
        for i in range(12):
            log.log("recommender", [f"u{i}"], [["m1", "m2"]], version=3)
    files = segments(path)
    assert [p.name for p in files][-1] == "shown.jsonl" and len(files) == 3
    assert all(p.stat().st_size <= 400 for p in files)
    users = [r["user_id"] for r in records(path)]
    assert users == [f"u{i}" for i in range(12 - len(users), 12)]  # oldest segments dropped
    numbers = [int(p.name.split(".")[1]) for p in files[:-1]]
    assert numbers == sorted(numbers) and numbers[0] > 1


def test_similar_queries_are_logged_with_their_seeds(tmp_path):
    class Similar:
        def predict(self, model, inputs, version=None):
            return {"movie_ids": np.array([["m9", ""]], object),
                    "scores": np.array([[0.5, -np.inf]], np.float32)}

        def close(self):
            pass

    from serving.client import RecommenderClient

    log = RequestLog(tmp_path / "log.jsonl")
    RecommenderClient(Similar(), request_log=log).similar([["m1", "m2"]])
    (record,) = records(tmp_path / "log.jsonl")
    assert record["user_id"] is None and record["seed_ids"] == ["m1", "m2"]
    assert record["movie_ids"] == ["m9"] and record["model"] == "similar_movies"


# --- compare -------------------------------------------------------------------------------


def test_compare_a_a_contains_zero(export_dir, held_out):
    result = compare(export_dir, "stable", "1", held_out[0], resamples=200)
    assert result["a"]["version"] == result["b"]["version"] == 1
    for diff in result["b_minus_a"].values():
        low, high = diff["interval"]
        assert low <= 0 <= high and diff["difference"] == 0
    assert result["changed"] == 0 and result["users"] == N_USERS


def test_compare_a_worse_version_shows_a_negative_interval(export_dir, held_out, tmp_path):
    out = io.StringIO()
    path = tmp_path / "ab.json"
    assert cli.main(["compare", "--model-dir", export_dir, "--a", "stable", "--b", "canary",
                     "--test-ratings", held_out[0], "--resamples", "300", "--output",
                     str(path)], out) == 0
    assert "ndcg@10" in out.getvalue() and "changed for 100.0% of users" in out.getvalue()
    result = json.loads(path.read_text())
    for metric in ("ndcg@10", "recall@10", "precision@10"):
        low, high = result["b_minus_a"][metric]["interval"]
        assert low <= result["b_minus_a"][metric]["difference"] <= high < 0
    assert result["a"]["recall@10"] == pytest.approx(2 / 3)  # two of three held-out movies
    # The same ten movies for everyone cover less of the catalogue and are less novel.
    assert result["b"]["coverage@10"] == pytest.approx(N / N_MOVIES)
    assert result["b_minus_a"]["coverage@10"]["interval"][1] < 0
    assert result["changed"] == 1.0
    # Same seed, same interval.
    again = compare(export_dir, "stable", "canary", held_out[0], resamples=300)
    assert again["b_minus_a"] == result["b_minus_a"]


def test_compare_refuses_what_it_cannot_answer(export_dir, held_out):
    with pytest.raises(UserError, match="at most 10 movies"):
        compare(export_dir, "stable", "canary", held_out[0], n=11)
    with pytest.raises(UserError, match="model must be one of"):
        compare(export_dir, "stable", "canary", held_out[0], model="ranking")
    with pytest.raises(UserError, match="label: beta"):
        compare(export_dir, "stable", "beta", held_out[0])
