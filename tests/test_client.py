"""Tests for serving/: the Python client over local, REST and gRPC backends, and the CLI.

A session fixture writes a tiny export honoring the serving contract (``tfrs_movies.contract``):
SavedModels built from `tf.Module`s over a fixed catalogue of 5 movies and 3-d embeddings.
The REST and gRPC servers are the stand-ins in `tfserving_stub.py`, running those SavedModels.

Catalogue (movie: embedding, ranking bias):       Users (embedding; unknown ids use OOV):
  "1" Toy Story       [1, 0, 0]   0                u1  [3.0, 2.0, 0.5]
  "2" GoldenEye       [0, 1, 0]   0                u2  [0.5, 1.0, 3.0]
  "3" Four Rooms      [0, 0, 1]   0                u3  [2.0, 0.2, 1.0]
  "4" Get Shorty      [1, 1, 0]  -3                OOV [0.1, 0.2, 0.4]
  "5" Copycat         [0, 1, 1]   0
Retrieval score = user . movie, K=3 after masking exclusions. For u1 the scores are
  [3.0, 2.0, 0.5, 5.0, 2.5] -> top 3: "4" (5.0), "1" (3.0), "5" (2.5).
Ranking: rating = 1 + 4 * sigmoid(score - 2 + bias). For u1: "4" 3.0, "1" 3.924, "5" 3.490,
so the recommender (retrieve 3, rank, keep n=2) reorders u1's candidates to "1", "5".
Retrieval, the recommender and similar movies say ``known`` per row; every model but ranking
version 1 (standing in for an export older than it) has the ``lookup`` signature of the real
export (``serving_graph``'s catalogue ``find``).
Version 2 of retrieval and the recommender (version 1: an export older than it) also has
``with_history``: the query is the user's embedding (none for an unknown id) plus the sum of its
history's catalogue movies (OOV when neither exists: ``known`` false), the history excluded.
For "" with history ["1", "2"] the query is [1, 1, 0]: "4" 2.0, "5" 1.0, "3" 0.0; for u1 with
["3"] it is [3, 2, 1.5]: "4" 5.0, "5" 3.5, "1" 3.0.
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import types
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

sys.path.insert(0, os.path.dirname(__file__))
from tfserving_stub import GrpcPredictionService, TFServingStub  # noqa: E402

from serving import __main__ as cli  # noqa: E402
from serving.backends import LocalBackend, RestBackend, ServingError, tf_error_text  # noqa: E402
from serving.client import (NoHistorySignature, Recommendation, RecommenderClient,  # noqa: E402
                            make_client)
from tfrs_movies import contract, serving_graph  # noqa: E402
from tfrs_movies.contract import history_fallback_notice  # noqa: E402
from tfrs_movies.errors import UserError  # noqa: E402

MOVIES = ["1", "2", "3", "4", "5"]
TITLES = ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)",
          "Copycat (1995)"]
MOVIE_EMB = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]]
MOVIE_BIAS = [0.0, 0.0, 0.0, -3.0, 0.0]
USERS = ["u1", "u2", "u3"]
USER_EMB = [[3.0, 2.0, 0.5], [0.5, 1.0, 3.0], [2.0, 0.2, 1.0], [0.1, 0.2, 0.4]]  # last: OOV
K, N = 3, 2
SERVING_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "serving")
_HISTORY = contract.HISTORY_SIGNATURES


def _table(keys):
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.range(len(keys),
                                                                           dtype=tf.int64))
    return tf.lookup.StaticHashTable(init, default_value=-1)


class _Catalogue(tf.Module):
    def __init__(self):
        super().__init__()
        self.movies = tf.constant(MOVIES)
        self.titles = tf.constant(TITLES)
        self.movie_emb = tf.constant(MOVIE_EMB, tf.float32)
        self.movie_bias = tf.constant(MOVIE_BIAS, tf.float32)
        self.user_emb = tf.constant(USER_EMB, tf.float32)
        self.user_table = _table(USERS)
        self.movie_table = _table(MOVIES)
        self.catalogue = serving_graph.catalogue_of(types.SimpleNamespace(
            catalogue_movies=MOVIES, catalogue_titles=TITLES, movie_ids=MOVIES,
            movie_counts=[1] * len(MOVIES)))

    def user_vectors(self, user_id):
        index = self.user_table.lookup(user_id)
        oov = tf.constant(len(USERS), tf.int64)
        return tf.gather(self.user_emb, tf.where(index < 0, oov, index))

    def history_vectors(self, user_id, history):
        """(query [B, 3], known [B]) of a user with a history: see the module docstring."""
        known_user = self.user_table.lookup(user_id) >= 0
        index = self.movie_table.lookup(history)
        valid = index >= 0
        movies = tf.reduce_sum(tf.gather(self.movie_emb, tf.maximum(index, 0))
                               * tf.cast(valid, tf.float32)[:, :, None], 1)
        base = tf.where(known_user[:, None], self.user_vectors(user_id), 0.0)
        known = known_user | tf.reduce_any(valid, 1)
        return tf.where(known[:, None], base + movies, self.user_vectors(user_id)), known

    def retrieve(self, user_id, exclude, vectors=None):
        vectors = self.user_vectors(user_id) if vectors is None else vectors
        scores = tf.matmul(vectors, self.movie_emb, transpose_b=True)
        # "" never equals a movie id, so padding is masked wherever it sits.
        excluded = tf.reduce_any(tf.equal(exclude[:, :, None], self.movies[None, None, :]), 1)
        scores = tf.where(excluded, -math.inf, scores)
        top = tf.math.top_k(scores, k=K)
        return tf.gather(self.movies, top.indices), top.values, top.indices

    def rate(self, user_vec, movie_index):
        score = tf.reduce_sum(user_vec * tf.gather(self.movie_emb, movie_index), -1)
        return 1.0 + 4.0 * tf.sigmoid(score - 2.0 + tf.gather(self.movie_bias, movie_index))


class Retrieval(_Catalogue):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string,
                                                name="exclude_movie_ids")])
    def serve(self, user_id, exclude_movie_ids):
        ids, scores, _ = self.retrieve(user_id, exclude_movie_ids)
        return {"movie_ids": ids, "scores": scores, "known": self.user_table.lookup(user_id) >= 0}

    @tf.function(input_signature=serving_graph.input_specs(_HISTORY["retrieval"]))
    def serve_with_history(self, user_id, history_movie_ids, exclude_movie_ids):
        vectors, known = self.history_vectors(user_id, history_movie_ids)
        excluded = tf.concat([exclude_movie_ids, history_movie_ids], 1)
        ids, scores, _ = self.retrieve(user_id, excluded, vectors)
        return {"movie_ids": ids, "scores": scores, "known": known}


class Ranking(_Catalogue):
    def __init__(self, constant=None):
        super().__init__()
        self.constant = constant

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None], tf.string, name="movie_id")])
    def serve(self, user_id, movie_id):
        index = self.movie_table.lookup(movie_id)
        rating = self.rate(self.user_vectors(user_id), tf.maximum(index, 0))
        rating = tf.where(index < 0, 3.0, rating)  # unknown movie: the middle of the scale
        if self.constant is not None:  # version 1: a constant baseline
            rating = tf.fill(tf.shape(rating), self.constant)
        return {"rating": rating}


class Recommender(_Catalogue):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string,
                                                name="exclude_movie_ids")])
    def serve(self, user_id, exclude_movie_ids):
        return self.recommend(user_id, exclude_movie_ids, self.user_vectors(user_id),
                              self.user_table.lookup(user_id) >= 0)

    @tf.function(input_signature=serving_graph.input_specs(_HISTORY["recommender"]))
    def serve_with_history(self, user_id, history_movie_ids, exclude_movie_ids):
        vectors, known = self.history_vectors(user_id, history_movie_ids)
        return self.recommend(user_id, tf.concat([exclude_movie_ids, history_movie_ids], 1),
                              vectors, known)

    def recommend(self, user_id, exclude, vectors, known):
        ids, scores, index = self.retrieve(user_id, exclude, vectors)
        ratings = self.rate(vectors[:, None, :], index)
        best = tf.math.top_k(ratings, k=N).indices
        return {"movie_ids": tf.gather(ids, best, batch_dims=1),
                "titles": tf.gather(tf.gather(self.titles, index), best, batch_dims=1),
                "scores": tf.gather(scores, best, batch_dims=1),
                "ratings": tf.gather(ratings, best, batch_dims=1),
                "rank_scores": tf.gather(ratings, best, batch_dims=1),
                "known": known}


class SimilarMovies(_Catalogue):
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="movie_ids")])
    def serve(self, movie_ids):
        index = self.movie_table.lookup(movie_ids)
        valid = tf.cast(index >= 0, tf.float32)[:, :, None]
        seeds = tf.gather(self.movie_emb, tf.maximum(index, 0)) * valid
        query = tf.reduce_sum(seeds, 1) / tf.maximum(tf.reduce_sum(valid, 1), 1.0)
        unit = tf.math.l2_normalize(self.movie_emb, -1)
        scores = tf.matmul(tf.math.l2_normalize(query, -1), unit, transpose_b=True)
        is_seed = tf.reduce_any(tf.equal(movie_ids[:, :, None], self.movies[None, None, :]), 1)
        top = tf.math.top_k(tf.where(is_seed, -math.inf, scores), k=K)
        return {"movie_ids": tf.gather(self.movies, top.indices), "scores": top.values,
                "known": tf.reduce_any(index >= 0, axis=1)}


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("export")
    models = {("retrieval", 1): Retrieval(), ("retrieval", 2): Retrieval(),
              ("ranking", 1): Ranking(constant=3.0), ("ranking", 2): Ranking(),
              ("recommender", 1): Recommender(), ("recommender", 2): Recommender(),
              ("similar_movies", 1): SimilarMovies()}
    for (name, version), module in models.items():
        signatures = {"serving_default": module.serve}
        if (name, version) != ("ranking", 1):
            signatures["lookup"] = module.catalogue.find
        if name in _HISTORY and version == 2:
            signatures[contract.WITH_HISTORY] = module.serve_with_history
        tf.saved_model.save(module, str(root / name / str(version)), signatures=signatures)
    return str(root)


@pytest.fixture(scope="session")
def rest_stub(export_dir):
    with TFServingStub(export_dir) as stub:
        yield stub


@pytest.fixture(scope="session")
def grpc_service(export_dir):
    pytest.importorskip("grpc", reason="grpcio not installed (pip install '.[serving]')")
    pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc",
                        reason="tensorflow-serving-api not installed (pip install '.[serving]')")
    with GrpcPredictionService(export_dir) as service:
        yield service


@pytest.fixture(params=["local", "rest", "grpc"])
def client(request, export_dir) -> RecommenderClient:
    if request.param == "local":
        client = make_client(model_dir=export_dir)
    elif request.param == "rest":
        client = make_client(url=request.getfixturevalue("rest_stub").url, timeout=5)
    else:
        client = make_client(grpc=request.getfixturevalue("grpc_service").address, timeout=5)
    with client:
        yield client


# --- the client API, on every backend ------------------------------------------------------


def test_recommend_retrieves_then_ranks(client):
    (recs,) = client.recommend(["u1"])
    # Candidates "4", "1", "5"; "4"'s bias drops its rating to 3.0 so it is cut at n=2.
    assert [r.movie_id for r in recs] == ["1", "5"]
    assert recs[0] == Recommendation("1", "Toy Story (1995)", 3.0, pytest.approx(3.9242, 1e-4),
                                     pytest.approx(3.9242, 1e-4))
    assert recs[1].score == pytest.approx(2.5)
    assert recs[0].rating >= recs[1].rating


def test_recommend_excludes_and_pads_ragged_lists(client):
    # u1 without "1" and "4": candidates "5" (2.5), "2" (2.0), "3" (0.5).
    results = client.recommend(["u1", "u2", "nobody"], exclude=[["1", "4"], [], ["5"]])
    assert [r.movie_id for r in results[0]] == ["5", "2"]
    assert all(r.movie_id not in ("1", "4") for r in results[0])
    assert len(results) == 3 and all(len(row) == N for row in results)
    assert "5" not in [r.movie_id for r in results[2]]
    assert results.known == [True, True, False]  # "nobody" got the fallback
    assert client.retrieve(["nobody", "u3"]).known == [False, True]


def test_retrieve_scores_sorted_from_catalogue(client):
    rows = client.retrieve(["u1", "u2"], exclude=[["4"], []])
    # u1 without "4": 3.0, 2.5, 2.0; u2: "5" 4.0, "3" 3.0, "4" 1.5.
    assert rows[0] == [("1", 3.0), ("5", 2.5), ("2", 2.0)]
    assert rows[1] == [("5", 4.0), ("3", 3.0), ("4", 1.5)]
    assert client.retrieve(["u2"], n=1) == [[("5", 4.0)]]


def test_rank_uses_latest_version_and_broadcasts_one_user(client):
    ratings = client.rank(["u1"], ["1", "4", "unknown"])
    assert ratings.dtype == np.float32 and ratings.shape == (3,)
    np.testing.assert_allclose(ratings, [3.9242, 3.0, 3.0], atol=1e-4)
    np.testing.assert_allclose(client.rank(["u1", "u2"], ["1", "3"]), [3.9242, 3.9242],
                               atol=1e-4)


def test_rank_pinned_version(client):
    pinned = RecommenderClient(client.backend, versions={"ranking": 1})
    np.testing.assert_array_equal(pinned.rank(["u1"], ["1", "2"]), [3.0, 3.0])


def test_similar_single_seeds_and_averaged_seeds(client):
    single = client.similar(["1", "3"])
    # "1" = [1,0,0]: cosine with "4" [1,1,0] is 0.7071, with "2", "3", "5" it is 0.
    assert single[0][0] == ("4", pytest.approx(0.70710677))
    assert single[1][0] == ("5", pytest.approx(0.70710677))
    (averaged,) = client.similar([["1", "2"]])
    # mean([1,0,0], [0,1,0]) points at "4" (cosine 1.0); the seeds themselves are excluded.
    assert averaged[0] == ("4", pytest.approx(1.0))
    assert {m for m, _ in averaged} & {"1", "2"} == set()
    assert client.similar([["1", "nope"], ["nope"]]).known == [True, False]


def test_movies_are_named_by_id_or_title(client):
    assert client.resolve_movies(["4", "toy story (1995)", "GOLDEN"]) == ["4", "1", "2"]
    assert client.resolve_movies(["Copycat"], model="ranking") == ["5"]
    with pytest.raises(UserError, match=r"'\(1995\)' matches 5 movies \(part of their titles"):
        client.resolve_movies(["(1995)"], model="recommender")
    with pytest.raises(UserError, match="no movie with id or title '99999'"):
        client.resolve_movies(["1", "99999"])


def test_all_backends_return_identical_results(export_dir, rest_stub, grpc_service):
    clients = [make_client(model_dir=export_dir), make_client(url=rest_stub.url),
               make_client(grpc=grpc_service.address)]
    exclude = [["2"], [], ["1", "4", "3"]]
    results = [(c.recommend(["u1", "u2", "zz"], exclude), c.retrieve(["u3", "zz"], exclude[1:]),
                c.rank(["u1", "u2"], ["2", "5"]).tolist(), c.similar([["5"], ["2", "3"]]))
               for c in clients]
    for c in clients:
        c.close()
    # "zz" excludes 3 of 5 movies, so retrieval's top K=3 includes one masked (-inf) movie,
    # which the client drops on every backend (JSON carries it as -Infinity).
    assert results[0][1][1] == [("5", pytest.approx(0.6)), ("2", pytest.approx(0.2))]
    assert results[0] == results[1] == results[2]


# --- a history: the with_history signature -------------------------------------------------


def test_history_is_answered_by_with_history(client):
    results = client.recommend(["", "u1", "nobody"], history=[["1", "2"], ["3"], ["99999"]])
    # "" from its history alone; u1 from its embedding plus "3"'s; "nobody" with no catalogue
    # movie in its history: the fallback (OOV), known false. History movies never come back.
    assert [[r.movie_id for r in row] for row in results] == [["5", "3"], ["5", "1"],
                                                              ["5", "3"]]
    assert results[1][0].score == pytest.approx(3.5)
    assert results[1][0].rating == pytest.approx(1 + 4 / (1 + math.exp(-1.5)), 1e-5)
    assert results.known == [True, True, False]
    assert client.retrieve(["u1"], history=[["3"]]) == [[("4", 5.0), ("5", 3.5), ("1", 3.0)]]
    assert client.retrieve(["u1"], [["4"]], history=[["3"]]).known == [True]
    assert client.retrieve(["u1"], [["4"]], history=[["3"]])[0] == [("5", 3.5), ("1", 3.0),
                                                                   ("2", 2.0)]
    # An empty history is still a with_history request: u1 answers as serving_default does.
    assert client.retrieve(["u1"], history=[[]]) == client.retrieve(["u1"])
    _, version = client.recommend_with_version(["u1"], history=[["3"]])
    assert version in (2, None)  # REST cannot tell an unpinned request's version


def test_history_against_an_older_export_says_so(client):
    old = RecommenderClient(client.backend, versions={"recommender": 1, "retrieval": 1})
    for ask in (lambda: old.recommend(["u1"], history=[["3"]]),
                lambda: old.retrieve(["u1"], history=[["3"]])):
        with pytest.raises(NoHistorySignature) as err:
            ask()
        text = str(err.value)
        assert "export (version 1) is older than the history signature" in text
        assert "'with_history'" in text and "Traceback" not in text and "\n" not in text
    assert isinstance(err.value, UserError) and err.value.model == "retrieval"
    assert old.recommend(["u1"])[0][0].movie_id == "1"  # serving_default still answers


def test_history_against_an_older_labelled_export_over_rest_names_its_version(export_dir):
    with TFServingStub(export_dir, labels={"recommender": {"old": 1}}) as stub, make_client(
            url=stub.url, labels={"recommender": "old"}) as client:
        with pytest.raises(NoHistorySignature, match=r"recommender export \(version 1\)"):
            client.recommend(["u1"], history=[["3"]])


def test_history_padded_with_a_leading_blank_column_to_with_history():
    seen = {}

    class Recorder:
        def predict(self, model, inputs, version=None, signature="serving_default"):
            seen.update(inputs, signature=signature)
            return {"movie_ids": np.array([["1"], ["1"]], object),
                    "scores": np.ones((2, 1), "f4"), "known": np.array([True, True])}

    RecommenderClient(Recorder()).retrieve(["u1", ""], history=[["7", "8"], ["9"]])
    assert seen["signature"] == "with_history"
    assert seen["history_movie_ids"].tolist() == [["", "7", "8"], ["", "9", ""]]
    assert seen["user_id"].tolist() == ["u1", ""]


def test_the_router_passes_a_history_on(export_dir):
    from serving.router import Arm, Experiment, RoutedClient

    experiment = Experiment("e", (Arm("new", 1.0, version=2),))
    with RoutedClient(LocalBackend(export_dir), experiment) as routed:
        (row,) = routed.recommend([""], history=[["1", "2"]])
        with pytest.raises(UserError, match="history must be a list with one id list per user"):
            routed.recommend(["u1", "u2"], history=[["1"]])
    assert [r.movie_id for r in row.recommendations] == ["5", "3"]
    assert (row.known, row.version) == (True, 2)


def test_batch_sends_only_the_rows_with_a_history_to_with_history(export_dir, tmp_path):
    from serving.batch import score_users

    asked = []

    class Recording(LocalBackend):
        def predict(self, model, inputs, version=None, label=None, *,
                    signature="serving_default"):
            asked.append((signature, list(inputs["user_id"])))
            return super().predict(model, inputs, version, label, signature=signature)

    users = tmp_path / "users.csv"
    users.write_text("user_id,history\nu1,\nnew1,1|2\nnobody, 99999 \nu2,\nu1b,2|3\n"
                     "new1,4\n")  # new1 again: its first row's history counts
    pd = pytest.importorskip("pandas")
    parquet = tmp_path / "users.parquet"
    pd.DataFrame({"user_id": ["u1", "new1", "nobody", "u2", "u1b"],
                  "history": [[], [1, 2], [99999], None, [2, 3]]}).to_parquet(parquet)
    outs = []
    for source in (users, parquet):
        out = tmp_path / f"recs-{source.suffix[1:]}.parquet"
        asked.clear()
        report = score_users(RecommenderClient(Recording(export_dir)), source, out,
                             batch_size=8, progress=False)
        assert report.users == 5 and report.bad_ids == 0
        # The probe (before anything is written), then one request per signature.
        assert asked == [("with_history", ["1"]), ("serving_default", ["u1", "u2"]),
                         ("with_history", ["new1", "nobody", "u1b"])]
        outs.append(pd.read_parquet(out))
    recs = outs[0]
    pd.testing.assert_frame_equal(recs, outs[1])
    assert list(pd.unique(recs["user_id"])) == ["u1", "new1", "nobody", "u2", "u1b"]
    by_user = recs.groupby("user_id", sort=False)
    assert by_user["movie_id"].agg(list).to_dict() == {
        "u1": ["1", "5"], "new1": ["5", "3"], "nobody": ["5", "3"], "u2": ["5", "3"],
        "u1b": ["5", "1"]}  # u1b is unknown: its history alone is the query [0, 1, 1]
    assert by_user["known"].all().to_dict() == {"u1": True, "new1": True, "nobody": False,
                                                "u2": True, "u1b": True}


def test_batch_with_a_history_against_an_older_export_writes_nothing(export_dir, tmp_path):
    from serving.batch import score_users

    users = tmp_path / "users.csv"
    users.write_text("user_id,history\nu1,3\n")
    old = make_client(model_dir=export_dir, versions={"recommender": 1})
    with pytest.raises(NoHistorySignature, match=r"recommender export \(version 1\)"):
        score_users(old, users, tmp_path / "recs.parquet", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.csv"]
    assert cli.main(["batch", "--users", str(users), "--out", str(tmp_path / "r.csv"),
                     "--model-dir", export_dir, "--version", "1"]) == 2


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda c: c.recommend([]), "user_ids is empty"),
    (lambda c: c.recommend("u1"), "user_ids must be a list"),
    (lambda c: c.recommend(["u1", 7]), "user_ids[1] must be a str id, got int 7"),
    (lambda c: c.recommend([np.float64(1.5)]), "user_ids[0] must be a str id, got float64 1.5"),
    (lambda c: c.recommend(["u1"], [[np.int64(3)]]), "exclude[0][0] must be a str id, got int64 3"),
    (lambda c: c.recommend(["u1"], exclude=[["1"], ["2"]]), "one id list per user (1)"),
    (lambda c: c.recommend(["u1"], exclude=[[""]]), "exclude[0][0] is an empty id"),
    (lambda c: c.rank(["u1", "u2"], ["1", "2", "3"]), "as many user ids as movie ids"),
    (lambda c: c.similar([]), "non-empty list"),
    (lambda c: c.similar([["1"], []]), "movie_ids[1] is empty"),
    (lambda c: c.retrieve(["u1"], n=0), "n must be an int >= 1"),
    (lambda c: c.recommend(["u1", "u2"], history=[["1"]]),
     "history and user_ids must have as many rows: got 1 history lists for 2 user ids"),
    (lambda c: c.retrieve(["u1"], history="1"), "history must be a list"),
    (lambda c: c.retrieve(["u1"], history=[["1", ""]]), "history[0][1] is an empty id"),
    (lambda c: c.recommend([""]), "user_ids[0] is an empty id"),  # "" needs a history
    (lambda c: c.recommend([" "], history=[[]]), "user_ids[0] is an empty id"),
])
def test_bad_input_is_rejected_before_sending(call, message):
    class NoBackend:
        def predict(self, *args, **kwargs):
            raise AssertionError("nothing should be sent")

    with pytest.raises(UserError) as err:
        call(RecommenderClient(NoBackend()))
    assert message in str(err.value) and "np." not in str(err.value)


@pytest.mark.parametrize("kwargs", [{}, {"model_dir": "a", "url": "http://b:1"},
                                    {"url": "ftp://x"}, {"grpc": "http://x:1"}])
def test_make_client_needs_exactly_one_valid_backend(kwargs):
    with pytest.raises(UserError):
        make_client(**kwargs)


def test_exclusions_padded_with_leading_blank_column():
    seen = {}

    class Recorder:
        def predict(self, model, inputs, version=None):
            seen.update(inputs)
            return {"movie_ids": np.array([["1"]], object), "scores": np.ones((1, 1), "f4")}

    RecommenderClient(Recorder()).retrieve(["u1"], exclude=[["7", "8"]])
    # A batching TF Serving pads narrower requests with element [0, 0]: keep it "".
    assert seen["exclude_movie_ids"].tolist() == [["", "7", "8"]]


# --- local backend -------------------------------------------------------------------------


def test_local_backend_errors(export_dir, tmp_path):
    backend = LocalBackend(export_dir)
    assert backend.model_path("ranking").endswith(os.path.join("ranking", "2"))
    with pytest.raises(ServingError, match="no model 'nope'"):
        backend.predict("nope", {})
    with pytest.raises(ServingError, match="no version 9"):
        backend.predict("ranking", {}, version=9)
    with pytest.raises(ServingError, match="takes inputs"):
        backend.predict("ranking", {"user_id": np.array(["u1"], object)})
    with pytest.raises(UserError, match="does not exist"):
        LocalBackend(tmp_path / "missing")


# --- REST backend against the stand-in server ----------------------------------------------


def test_rest_retries_503_and_resets_with_backoff(rest_stub):
    delays = []
    backend = RestBackend(rest_stub.url, retries=3, backoff=0.01, sleep=delays.append)
    rest_stub.fail_next(1, 503)
    rest_stub.fail_next(1, reset=True)
    rest_stub.fail_next(1, 429, retry_after="0.5")
    out = backend.predict("ranking", {"user_id": np.array(["u1"], object),
                                      "movie_id": np.array(["1"], object)})
    np.testing.assert_allclose(out[""], [3.9242], atol=1e-4)  # sole output: name dropped
    assert delays == [0.01, 0.02, 0.5]  # exponential, then Retry-After


def test_rest_gives_up_after_retries(rest_stub):
    rest_stub.fail_next(3, 503)
    backend = RestBackend(rest_stub.url, retries=2, backoff=0, sleep=lambda s: None)
    with pytest.raises(ServingError) as err:
        backend.predict("ranking", {"user_id": np.array(["u1"], object),
                                    "movie_id": np.array(["1"], object)})
    assert err.value.status == 503 and "injected failure" in str(err.value)


@pytest.mark.parametrize("model, inputs, status, text", [
    ("ranking", {"user_id": [1], "movie_id": ["1"]}, 400, "Cannot convert [1]"),
    ("ranking", {"user_id": ["u1"]}, 400, "Missing or unexpected inputs"),
    ("nope", {"user_id": ["u1"]}, 404, "Servable not found for request: Latest(nope)"),
])
def test_rest_error_carries_server_text_and_status(rest_stub, model, inputs, status, text):
    before = len(rest_stub.requests)
    backend = RestBackend(rest_stub.url, sleep=lambda s: pytest.fail("4xx must not retry"))
    with pytest.raises(ServingError) as err:
        backend.predict(model, {k: np.array(v, object) for k, v in inputs.items()})
    assert err.value.status == status and text in str(err.value)
    assert len(rest_stub.requests) == before + 1


_MISMATCHED = {"user_id": ["u1", "u2"], "exclude_movie_ids": [[""], [""], [""]]}


def test_tf_errors_pass_on_whole_without_stack_noise(export_dir, rest_stub):
    # Batch sizes 2 and 3: TensorFlow's message starts "Graph execution error:", which was
    # all the stand-in used to pass on; the reason is on the lines after it.
    inputs = {k: np.array(v, object) for k, v in _MISMATCHED.items()}
    before = len(rest_stub.requests)
    with pytest.raises(ServingError) as rest:
        RestBackend(rest_stub.url, sleep=lambda s: pytest.fail("a 400 is never retried")
                    ).predict("retrieval", inputs)
    assert rest.value.status == 400 and len(rest_stub.requests) == before + 1
    with pytest.raises(ServingError) as local:
        LocalBackend(export_dir).predict("retrieval", inputs)
    for err in (rest.value, local.value):
        text = str(err)
        assert "[3,5]" in text and "[2,5] must be broadcastable" in text, text
        assert "Graph execution" not in text and "{{node" not in text and "\n" not in text
    noisy = ("Graph execution error:\n\nDetected at node x defined at (most recent call last):\n"
             '  File "a.py", line 1, in <module>\n    f()\nNode: \'x\'\nassertion failed: '
             "[user_id and movie_id need the same length]\nsecond line\n\t [[{{node x}}]] "
             "[Op:__inference_f_1]")
    assert tf_error_text(noisy) == ("assertion failed: [user_id and movie_id need the same "
                                    "length] second line")


def _raw_http(url: str, request: bytes) -> tuple[int, dict]:
    """Sends raw bytes to the stand-in; its status and JSON answer (it must answer)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_stub_answers_malformed_requests_with_400(rest_stub):
    path = "/v1/models/ranking:predict"
    body = json.dumps({"signature_name": ["serving_default"],
                       "inputs": {"user_id": ["u1"], "movie_id": ["1"]}}).encode()
    status, answer = _raw_http(rest_stub.url, b"POST " + path.encode() + b" HTTP/1.1\r\n"
                               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert status == 400 and "not of expected type: string (signature_name)" in answer["error"]
    status, answer = _raw_http(rest_stub.url, b"POST " + path.encode() + b" HTTP/1.1\r\n"
                               b"Content-Length: ten\r\n\r\n")
    assert status == 400 and "Invalid Content-Length header 'ten'" in answer["error"]
    status, answer = _raw_http(rest_stub.url, b"POST " + path.encode() + b" HTTP/1.1\r\n"
                               b"Content-Length: 2\r\n\r\n\xff\xfe")
    assert status == 400 and answer["error"].startswith("JSON Parse error")


def test_rest_rejected_then_dropped_is_not_retried():
    """A server that answers 400 as soon as it has the headers, then closes without reading
    the body: the client's send fails, but the answer is there and is what it reports."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            head = b""
            while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                head += chunk
            error = json.dumps({"error": "request too large: 8000000 bytes"}).encode()
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(error),
                                                                                   error))
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    backend = RestBackend(f"http://127.0.0.1:{listener.getsockname()[1]}", retries=3,
                          sleep=lambda s: pytest.fail("a rejected request is never retried"))
    try:
        with pytest.raises(ServingError) as err:
            backend.predict("ranking", {"user_id": np.array(["u" * 1000] * 8000, object)})
    finally:
        listener.close()
    assert err.value.status == 400 and "request too large: 8000000 bytes" in str(err.value)
    assert len(connections) == 1


def test_rest_dropped_without_answer_is_retried_then_said(rest_stub):
    rest_stub.fail_next(3, reset=True)
    backend = RestBackend(rest_stub.url, retries=2, backoff=0, sleep=lambda s: None)
    with pytest.raises(ServingError, match="closed the connection without answering, 3 times"):
        backend.predict("ranking", {"user_id": np.array(["u1"], object),
                                    "movie_id": np.array(["1"], object)})


def test_rest_version_in_url(rest_stub):
    backend = RestBackend(rest_stub.url)
    out = backend.predict("ranking", {"user_id": np.array(["u1"], object),
                                      "movie_id": np.array(["1"], object)}, version=1)
    assert out[""].tolist() == [3.0]
    assert rest_stub.requests[-1] == ("POST", "/v1/models/ranking/versions/1:predict")


def test_rest_timeout_is_not_retried(rest_stub):
    rest_stub.fail_next(1, delay=1.0)
    backend = RestBackend(rest_stub.url, timeout=0.2, sleep=lambda s: pytest.fail("no retry"))
    with pytest.raises(ServingError, match="within 0.2s"):
        backend.predict("ranking", {"user_id": np.array(["u1"], object),
                                    "movie_id": np.array(["1"], object)})


def test_rest_connection_refused_after_retries():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays = []
    backend = RestBackend(f"http://127.0.0.1:{port}", retries=2, backoff=0.01,
                          sleep=delays.append)
    with pytest.raises(ServingError, match="after 3 attempts"):
        backend.predict("ranking", {})
    assert delays == [0.01, 0.02]


def test_stub_speaks_row_format_and_status(rest_stub):
    # The client uses the columnar format; the stand-in also answers TF Serving's row format.
    body = json.dumps({"instances": [{"user_id": "u1", "exclude_movie_ids": [""]},
                                     {"user_id": "u2", "exclude_movie_ids": ["5"]}]}).encode()
    request = urllib.request.Request(rest_stub.url + "/v1/models/retrieval:predict", data=body)
    with urllib.request.urlopen(request, timeout=5) as response:
        predictions = json.loads(response.read())["predictions"]
    assert predictions[0]["movie_ids"] == ["4", "1", "5"]
    assert predictions[1]["movie_ids"][0] == "3"
    with urllib.request.urlopen(rest_stub.url + "/v1/models/ranking", timeout=5) as response:
        status = json.loads(response.read())["model_version_status"]
    assert [s["version"] for s in status] == ["1", "2"]


# --- gRPC backend against the in-process PredictionService ---------------------------------


def test_grpc_retries_unavailable_then_raises_details(grpc_service):
    from serving.backends import GrpcBackend

    delays = []
    backend = GrpcBackend(grpc_service.address, retries=2, backoff=0.01, sleep=delays.append)
    grpc_service.fail_next(2)
    out = backend.predict("ranking", {"user_id": np.array(["u1"], object),
                                      "movie_id": np.array(["1"], object)}, version=1)
    assert out["rating"].tolist() == [3.0] and delays == [0.01, 0.02]
    with pytest.raises(ServingError) as err:
        backend.predict("nope", {"user_id": np.array(["u1"], object)})
    assert err.value.code == "NOT_FOUND" and "Latest(nope)" in str(err.value)
    grpc_service.fail_next(1, delay=1.0)
    slow = GrpcBackend(grpc_service.address, timeout=0.2, sleep=lambda s: pytest.fail("retry"))
    with pytest.raises(ServingError, match="within 0.2s") as err:
        slow.predict("ranking", {"user_id": np.array(["u1"], object),
                                 "movie_id": np.array(["1"], object)})
    assert err.value.code == "DEADLINE_EXCEEDED"
    backend.close()
    slow.close()


# --- CLI -----------------------------------------------------------------------------------


def test_cli_recommend_table(export_dir, capsys):
    code = cli.main(["recommend", "--user", "u1", "--user", "u2", "--exclude", "4",
                     "--model-dir", export_dir, "-n", "1"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split() == ["user", "rank", "movie_id", "title", "score", "rating",
                              "rank_score"]
    assert out[1].split()[:3] == ["u1", "1", "1"] and "Toy Story (1995)" in out[1]
    assert len(out) == 3


def test_cli_similar_and_rank_over_rest(rest_stub, capsys):
    assert cli.main(["similar", "--movie", "1", "--movie", "GoldenEye (1995)", "--url",
                     rest_stub.url, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0] == {
        "movie_id": "4", "title": "Get Shorty (1995)", "score": pytest.approx(1.0)}
    assert cli.main(["rank", "--user", "u1", "--movie", "toy story", "--movie", "4",
                     "--url", rest_stub.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["u1", "1", "3.9242"] and out[2].split() == ["u1", "4", "3.0000"]


def test_cli_notices_unknown_users_and_older_exports(export_dir, capsys):
    assert cli.main(["recommend", "--user", "u1", "--user", "99999", "--model-dir",
                     export_dir]) == 0
    captured = capsys.readouterr()
    assert captured.err == ("notice: user '99999' is unknown to the model (not in its run's "
                            "data): showing the most popular movies instead (score: log(1 + "
                            "train ratings))\n")
    assert [line.split()[0] for line in captured.out.splitlines()[1:]] == ["u1"] * N + [
        "99999"] * N
    # Ranking version 1 predates the lookup signature: ids pass as given, with a notice.
    assert cli.main(["rank", "--user", "u1", "--movie", "1", "--model-dir", export_dir,
                     "--version", "1"]) == 0
    captured = capsys.readouterr()
    assert "has no 'lookup' signature" in captured.err and len(captured.err.splitlines()) == 1
    assert captured.out.splitlines()[1].split() == ["u1", "1", "3.0000"]


def test_cli_recommend_with_a_history_by_title(export_dir, rest_stub, capsys):
    # No --user: a new user ("-"), answered from the history ("1", "2" by title and id).
    assert cli.main(["recommend", "--history", "Toy Story (1995)", "--history", "2",
                     "--model-dir", export_dir]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert [line.split()[:3] for line in captured.out.splitlines()[1:]] == [
        ["-", "1", "5"], ["-", "2", "3"]]
    # One history for every --user; an unknown user with a catalogue history is known.
    assert cli.main(["recommend", "--user", "u1", "--user", "99999", "--history", "four rooms",
                     "--url", rest_stub.url, "--format", "json"]) == 0
    captured = capsys.readouterr()
    answer = json.loads(captured.out)
    assert [r["movie_id"] for r in answer["u1"]] == ["5", "1"]
    assert answer["99999"][0]["known"] is True and captured.err == ""


def test_cli_history_fallback_notice_and_older_export(export_dir, capsys):
    # The recommender's version 1 has no with_history: one line naming it, exit 2.
    assert cli.main(["recommend", "--history", "3", "--model-dir", export_dir,
                     "--version", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the recommender export (version 1) is older than the "
                          "history signature") and len(err.splitlines()) == 1
    assert history_fallback_notice(["9"]).startswith(
        "notice: user '9' is unknown to the model (not in its run's data) and none of its "
        "history movies is in the model's catalogue: showing the most popular movies")
    assert history_fallback_notice([]).startswith("notice: none of the history movies")


@pytest.mark.parametrize("argv, message, code", [
    (["recommend", "--user", "u1"], "one of the arguments --model-dir --url --grpc", 2),
    (["recommend", "--model-dir", "{export}"], "give --user ID, --history MOVIE, or both", 2),
    (["recommend", "--history", "99999", "--model-dir", "{export}"],
     "no movie with id or title '99999'", 2),
    (["recommend", "--user", "u1", "--url", "localhost:8501"], "url must look like", 2),
    (["recommend", "--user", "u1", "--model-dir", "/no/such/dir"], "does not exist", 2),
    (["rank", "--user", "u1", "--user", "u2", "--movie", "1", "--model-dir", "{export}"],
     "as many user ids as movie ids", 2),
    (["bogus"], "invalid choice: 'bogus'", 2),
    (["recommend", "--user", "u1", "--model-dir", "{export}", "-n", "0"],
     "argument -n: must be at least 1, got 0", 2),
    (["similar", "--movie", "99999", "--model-dir", "{export}"],
     "no movie with id or title '99999'", 2),
    (["recommend", "--user", "u1", "--exclude", "(1995)", "--model-dir", "{export}"],
     "'(1995)' matches 5 movies", 2),
])
def test_cli_user_errors_exit_2_with_one_line(export_dir, capsys, argv, message, code):
    argv = [a.replace("{export}", export_dir) for a in argv]
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_server_error_exits_1(rest_stub, capsys):
    rest_stub.fail_next(1, 500)
    assert cli.main(["similar", "--movie", "1", "--url", rest_stub.url]) == 1
    assert capsys.readouterr().err.startswith("serving error: HTTP 500")


# --- deployment files parse with TF Serving's own protos -----------------------------------


def test_readme_first_curl_matches_the_contract(rest_stub):
    """The first curl of serving/README.md, sent as it is to the stand-in (running the test
    export's retrieval model, which has the contract's inputs)."""
    import re

    with open(os.path.join(SERVING_DIR, "README.md")) as f:
        text = f.read()
    match = re.search(r"curl -s localhost:8501(/v1/models/\w+:predict) -d '([^']*)'", text)
    assert match and match[1] == "/v1/models/retrieval:predict"
    request = urllib.request.Request(rest_stub.url + match[1], data=match[2].encode())
    with urllib.request.urlopen(request, timeout=5) as response:
        outputs = json.loads(response.read())["outputs"]
    assert len(outputs["movie_ids"]) == 2 and len(outputs["scores"][0]) == K


def test_models_config_template_parses():
    config_pb2 = pytest.importorskip("tensorflow_serving.config.model_server_config_pb2")
    with open(os.path.join(SERVING_DIR, "models.config")) as f:
        config = text_format.Parse(f.read(), config_pb2.ModelServerConfig())
    models = {c.name: c for c in config.model_config_list.config}
    assert sorted(models) == ["ranking", "recommender", "retrieval", "similar_movies"]
    assert all(c.base_path == f"/models/{n}" and c.model_platform == "tensorflow"
               for n, c in models.items())


def _batching_parameters_class():
    """tensorflow_serving.BatchingParameters (session_bundle_config.proto, not in the pip
    package), rebuilt from its field list so the text proto can be parsed strictly."""
    pool = descriptor_pool.DescriptorPool()
    from google.protobuf import wrappers_pb2

    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    f = descriptor_pb2.FileDescriptorProto(name="batching.proto", package="tensorflow.serving",
                                           dependency=["google/protobuf/wrappers.proto"],
                                           syntax="proto3")
    msg = f.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate([
            ("max_batch_size", ".google.protobuf.Int64Value"),
            ("batch_timeout_micros", ".google.protobuf.Int64Value"),
            ("max_enqueued_batches", ".google.protobuf.Int64Value"),
            ("num_batch_threads", ".google.protobuf.Int64Value"),
            ("thread_pool_name", ".google.protobuf.StringValue"),
            ("allowed_batch_sizes", None), ("pad_variable_length_inputs", None)], start=1):
        if kind:
            msg.field.add(name=name, number=number, type=field.TYPE_MESSAGE, type_name=kind,
                          label=field.LABEL_OPTIONAL)
        elif name == "allowed_batch_sizes":
            msg.field.add(name=name, number=number, type=field.TYPE_INT64,
                          label=field.LABEL_REPEATED)
        else:
            msg.field.add(name=name, number=number, type=field.TYPE_BOOL,
                          label=field.LABEL_OPTIONAL)
    pool.Add(f)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def test_batching_parameters_parse_and_are_consistent():
    with open(os.path.join(SERVING_DIR, "batching_parameters.txt")) as f:
        params = text_format.Parse(f.read(), _batching_parameters_class()())
    sizes = list(params.allowed_batch_sizes)
    # TF Serving requires increasing sizes ending at max_batch_size.
    assert sizes == sorted(sizes) and sizes[-1] == params.max_batch_size.value
    assert params.num_batch_threads.value >= 1 and params.batch_timeout_micros.value > 0
    assert params.max_enqueued_batches.value >= params.num_batch_threads.value
    assert params.pad_variable_length_inputs


def test_compose_services():
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    with open(os.path.join(SERVING_DIR, "docker-compose.yml")) as f:
        services = yaml.safe_load(f)["services"]
    assert list(services)[0] == "cpu"  # the one to try first: stock image, nothing to build
    stock = services["cpu"]
    assert stock["image"] == "tensorflow/serving:2.20.0" and "build" not in stock
    assert set(stock["ports"]) == {"8501:8501", "8500:8500"}
    assert "--model_config_file=/models/models.config" in stock["command"]
    assert any(v.endswith(":/models:ro") for v in stock["volumes"])
    gpu, cpu = services["gpu"], services["cpu-scann"]
    assert gpu["image"] == "tensorflow/serving:2.20.0-gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "--enable_batching=true" in gpu["command"]
    assert set(gpu["ports"]) == {"8501:8501", "8500:8500"}
    assert set(cpu["ports"]) == {"8511:8501", "8510:8500"}
    assert os.path.isfile(os.path.join(SERVING_DIR, cpu["build"]["dockerfile"]))
