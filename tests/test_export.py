"""Export: the serving contract, reloaded with TensorFlow (the graph TF Serving runs)."""
from __future__ import annotations

import errno
import os
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfrs_movies import contract, movie_names, reranker, reranker_lists, serving_graph
from tfrs_movies.config import ExportConfig, ModelConfig, TrainConfig
from tfrs_movies.errors import UserError
from tfrs_movies.export import export
from tfrs_movies.tf_serving_config import models_config
from tfrs_movies.index import GROUPED_TOP_MIN, BruteForce, Popular, ScaNN, group_size
from tfrs_movies.features import FeatureSpace, Vocabulary
from tfrs_movies.models import build_model
from tfrs_movies.reranker.item_item import ease_factors
from tfrs_movies.training import make_dataset


@pytest.fixture(scope="module")
def trained(tiny_tables):
    """A stand-in run: the attributes ``export`` reads, with two tiny trained models."""
    ratings, movies, users = tiny_tables
    train = ratings[ratings["user_id"] != "u0"]
    # ~4 years (the recent family's bins), each user's ratings in sittings of 3 (10 s apart,
    # 3000 s between sittings: the session family's).
    user, step = train["timestamp"] // 1000, train["timestamp"] % 1000
    train = train.assign(timestamp=user * 3_000_000 + step // 3 * 3000 + step % 3 * 10)
    space = FeatureSpace(Vocabulary.build(train, movies, users))
    models = {}
    for kind in ("retrieval", "ranking"):
        tf.keras.utils.set_random_seed(0)
        model = build_model(kind, space, ModelConfig(embedding_dim=8))
        model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
        model.fit(make_dataset(train, 64, shuffle_seed=0), epochs=2, verbose=0)
        models[kind] = model
    second = reranker_lists.fit(train, movies, users, train.iloc[:0], ModelConfig(embedding_dim=8),
                                TrainConfig(epochs=2, verbose=0, batch_size=64),
                                # Latest folds: the export reads all eight features.
                                reranker.ReRankerConfig(candidates=20, epochs=3, folds="latest"),
                                seed=0)
    return types.SimpleNamespace(
        vocab=space.vocab, retrieval_model=lambda: models["retrieval"],
        rating_model=lambda: models["ranking"], embedding_model=lambda: models["retrieval"],
        reranker=second)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    paths = export(trained, root / "bf", ExportConfig(k=20, n=5))
    import scann  # noqa: F401  (registers the ScaNN ops before loading)
    scann_paths = export(trained, root / "scann", ExportConfig(index="scann", k=20, n=5))
    loaded = {name: tf.saved_model.load(str(path)) for name, path in paths.items()}
    load = {name: m.signatures["serving_default"] for name, m in loaded.items()}
    load_scann = {name: tf.saved_model.load(str(path)).signatures["serving_default"]
                  for name, path in scann_paths.items() if name in ("retrieval", "recommender")}
    lookups = {name: m.signatures[contract.LOOKUP.name] for name, m in loaded.items()}
    return root, load, load_scann, lookups


@pytest.fixture(scope="module")
def with_history(exported):
    """The brute-force export's ``with_history`` signatures, by model."""
    root = exported[0]
    return {name: tf.saved_model.load(str(root / "bf" / name / "1")).signatures[
        contract.WITH_HISTORY] for name in contract.HISTORY_SIGNATURES}


def _strings(tensor) -> np.ndarray:
    return contract.decode(tensor.numpy())


def test_signatures_match_the_contract(exported, with_history):
    root, models, _, lookups = exported
    assert set(models) == set(lookups) == set(contract.MODELS)
    for name, signature in [*contract.SIGNATURES.items(),
                            *((f"{n}:lookup", contract.LOOKUP) for n in contract.MODELS),
                            *((f"{n}:history", s) for n, s in contract.HISTORY_SIGNATURES.items())]:
        model, _, kind = name.partition(":")
        fn = {"": models, "lookup": lookups, "history": with_history}[kind][model]
        specs = fn.structured_input_signature[1]
        assert set(specs) == set(signature.input_names)
        for t in signature.inputs:
            assert specs[t.name].dtype.name == t.dtype and specs[t.name].shape.rank == len(t.shape)
        assert set(fn.structured_outputs) == set(signature.output_names)
        for t in signature.outputs:
            got = fn.structured_outputs[t.name]
            assert got.dtype.name == t.dtype and got.shape.rank == len(t.shape), t.name
    text = (root / "bf" / "models.config").read_text()
    assert text == models_config(list(contract.MODELS), "/models")
    assert 'base_path: "/models/recommender"' in text
    assert not list((root / "bf").glob("*/.tmp-*"))


@pytest.mark.parametrize("name", ["retrieval", "recommender"])
def test_retrieval_excludes_and_sorts(exported, trained, name):
    _, models, _ = exported[:3]
    catalogue = set(trained.vocab.catalogue_movies)
    first = _strings(models[name](user_id=tf.constant(["u1"]),
                                  exclude_movie_ids=tf.constant([[""]]))["movie_ids"])[0]
    excluded = list(first[:3])
    out = models[name](user_id=tf.constant(["u1", "u2"]),
                       exclude_movie_ids=tf.constant([excluded, ["", "", ""]]))
    ids = _strings(out["movie_ids"])
    assert not set(excluded) & set(ids[0])
    assert set(ids.ravel()) <= catalogue
    order_key = "rank_scores" if name == "recommender" else "scores"
    values = out[order_key].numpy()
    assert np.all(np.diff(values, axis=1) <= 1e-6)
    if name == "recommender":
        assert out["titles"].shape == ids.shape
        titles = dict(zip(trained.vocab.catalogue_movies, trained.vocab.catalogue_titles))
        assert list(_strings(out["titles"])[1]) == [titles[m] for m in ids[1]]


@pytest.mark.parametrize("index", ["brute-force", "scann"])
@pytest.mark.parametrize("name", ["retrieval", "recommender"])
def test_a_users_rated_movies_are_never_served(exported, trained, index, name):
    _, models, scann = exported[:3]
    fn = (models if index == "brute-force" else scann)[name]
    vocab = trained.vocab
    users = vocab.user_ids[:10]
    ids = _strings(fn(user_id=tf.constant(users),
                      exclude_movie_ids=tf.fill([len(users), 1], ""))["movie_ids"])
    for user, row in zip(users, ids):
        seen = set(vocab.history[vocab.catalogue_users.index(user)])
        assert seen and not seen & set(row)


def test_keep_seen_serves_rated_movies(trained, tmp_path):
    paths = export(trained, tmp_path, ExportConfig(k=60, n=5, exclude_seen=False))
    fn = tf.saved_model.load(str(paths["retrieval"])).signatures["serving_default"]
    ids = _strings(fn(user_id=tf.constant(["u1"]), exclude_movie_ids=tf.constant([[""]]))[
        "movie_ids"])[0]
    seen = set(trained.vocab.history[trained.vocab.catalogue_users.index("u1")])
    assert seen <= set(ids)  # k covers the whole catalogue, so every rated movie is there


def test_unknown_user_gets_popular_unseen_movies(exported, trained):
    _, models, _ = exported[:3]
    counts = dict(zip(trained.vocab.movie_ids, trained.vocab.movie_counts))
    most_popular = max(counts, key=counts.get)
    out = models["retrieval"](user_id=tf.constant(["never-seen"]),
                              exclude_movie_ids=tf.constant([[most_popular]]))
    ids = list(_strings(out["movie_ids"])[0])
    assert out["known"].numpy().tolist() == [False]
    both = models["recommender"](user_id=tf.constant(["u1", "never-seen"]),
                                 exclude_movie_ids=tf.constant([[""], [""]]))
    assert both["known"].numpy().tolist() == [True, False]
    # Its candidates are the k=20 most popular (scores log(1 + count)), then re-ranked.
    twentieth = np.log1p(sorted(counts.values(), reverse=True)[19])
    assert np.all(both["scores"].numpy()[1] >= twentieth - 1e-5)
    assert most_popular not in ids
    ranked = sorted((m for m in counts if m != most_popular), key=lambda m: -counts[m])
    assert counts[ids[0]] == counts[ranked[0]]
    rating = models["ranking"](user_id=tf.constant(["never-seen"]), movie_id=tf.constant(["?"]))
    assert np.isfinite(rating["rating"].numpy()).all()


def test_similar_movies_averages_seeds_and_skips_them(exported):
    _, models, _ = exported[:3]
    out = models["similar_movies"](movie_ids=tf.constant([["m1", "m2"], ["m1", ""], ["?", ""]]))
    ids, scores = _strings(out["movie_ids"]), out["scores"].numpy()
    assert not {"m1", "m2"} & set(ids[0])
    assert "m1" not in ids[1]
    assert np.all(scores[:2] <= 1.0 + 1e-5)
    assert list(ids[0]) != list(ids[1])  # a second seed changes the neighbours
    assert np.all(np.isfinite(scores[2]))  # no known seed: popular movies, no crash
    assert out["known"].numpy().tolist() == [True, True, False]


def test_lookup_names_movies_by_id_or_title_on_every_model(exported, trained):
    # Titles are "Film {m % 9} of genre {g} ({1980 + m % 20})", one per movie m0..m59.
    lookups = exported[3]
    titles = dict(zip(trained.vocab.catalogue_movies, trained.vocab.catalogue_titles))
    counts = dict(zip(trained.vocab.movie_ids, trained.vocab.movie_counts))
    queries = ["m1", "FILM 1 OF GENRE", "(1981)", "of genre", "nothing", ".*", "m1 "]
    for name, fn in lookups.items():
        out = fn(query=tf.constant(queries))
        found = movie_names.from_outputs(queries, {k: v.numpy() for k, v in out.items()})
        assert [f.match for f in found] == [movie_names.ID, movie_names.PART, movie_names.PART,
                                            movie_names.PART, 0, 0, 0], name
        assert found[0].movie_ids == ("m1",)
        whole = fn(query=tf.constant([titles["m1"].upper()]))
        assert whole["match"].numpy()[0] == movie_names.TITLE
        assert _strings(whole["movie_ids"])[0][0] == "m1"
        assert set(found[2].movie_ids) == {"m1", "m21", "m41"} and found[2].count == 3
        assert found[3].count == 60 and len(found[3].movie_ids) == contract.LOOKUP_MATCHES
        listed = [counts.get(m, 0) for m in found[3].movie_ids]  # the most rated first
        assert listed == sorted(counts.values(), reverse=True)[:contract.LOOKUP_MATCHES]
        assert found[3].titles == tuple(titles[m] for m in found[3].movie_ids)
    assert movie_names.pick(found[0]) == "m1"
    with pytest.raises(UserError, match=r"'\(1981\)' matches 3 movies \(part of their titles"):
        movie_names.pick(found[2])
    with pytest.raises(UserError, match="matches 60 movies .* and 52 more"):
        movie_names.pick(found[3])
    with pytest.raises(UserError, match="no movie with id or title 'nothing'"):
        movie_names.pick(found[4])


def test_scann_agrees_with_brute_force(exported, trained):
    _, models, scann = exported[:3]
    users = tf.constant(trained.vocab.user_ids)
    no_exclusions = tf.fill([len(trained.vocab.user_ids), 1], "")
    exact = _strings(models["retrieval"](user_id=users,
                                         exclude_movie_ids=no_exclusions)["movie_ids"])
    approx = _strings(scann["retrieval"](user_id=users,
                                         exclude_movie_ids=no_exclusions)["movie_ids"])
    recall = np.mean([len(set(a[:10]) & set(e[:10])) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95


def test_versions_are_never_overwritten(trained, tmp_path):
    config = ExportConfig(k=10, n=3)
    export(trained, tmp_path, config)
    second = export(trained, tmp_path, config)
    assert second["ranking"].name == "2"
    marker = tmp_path / "ranking" / "1" / "saved_model.pb"
    before = marker.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        export(trained, tmp_path, ExportConfig(k=10, n=3, version=1))
    assert marker.read_bytes() == before
    assert not (tmp_path / "ranking" / "3").exists()


def test_popular_equals_masking_the_whole_catalogue():
    rng = np.random.default_rng(0)
    popularity = rng.integers(0, 6, size=300).astype(np.float64)  # many ties
    excluded = rng.integers(-1, 300, size=(7, 40))
    excluded[0] = np.argsort(-popularity, kind="stable")[:40]  # the 40 most popular
    got_scores, got = Popular(popularity)(tf.zeros([7, 1]), tf.constant(excluded), 25)
    full = np.tile(np.log1p(popularity).astype(np.float32), (7, 1))
    for row, ex in enumerate(excluded):
        full[row, ex[ex >= 0]] = -np.inf
    want_scores, want = tf.math.top_k(full, 25)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    np.testing.assert_array_equal(got_scores.numpy(), want_scores.numpy())
    assert not set(got.numpy()[0]) & set(excluded[0])


def _exact(embeddings, queries, excluded, k):
    """NumPy reference: top-k dot products with each row's exclusions at -inf."""
    scores = queries @ embeddings.T
    for row, ex in enumerate(excluded):
        scores[row, ex[ex >= 0]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("kind", ["brute-force", "scann"])
def test_index_is_exact_and_never_short(kind):
    """Both indexes give k allowed results while k remain, even when the exclusions swallow
    every candidate ScaNN's searched leaves hold (it then completes the row exactly)."""
    import scann  # noqa: F401

    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(500, 8)).astype(np.float32)
    queries = rng.normal(size=(4, 8)).astype(np.float32)
    _, best = _exact(embeddings, queries, np.full((4, 1), -1), 500)
    excluded = np.full((4, 480), -1)
    excluded[0] = best[0, :480]  # only 20 movies left, the worst ones for this user
    excluded[1, :300] = best[1, :300]
    excluded[2, :5] = best[2, :5]
    index = BruteForce(embeddings) if kind == "brute-force" else ScaNN(embeddings, k=10)
    scores, positions = index(tf.constant(queries), tf.constant(excluded), 10)
    want_scores, want = _exact(embeddings, queries, excluded, 10)
    if kind == "brute-force":
        np.testing.assert_array_equal(positions.numpy(), want)
    else:  # approximate, but never short and never excluded
        assert np.isfinite(scores.numpy()).all()
        for row in range(4):
            assert not set(positions.numpy()[row]) & set(excluded[row])
        np.testing.assert_array_equal(positions.numpy()[0], want[0])  # completed exactly
    np.testing.assert_allclose(scores.numpy()[0], want_scores[0], rtol=1e-5)
    # A few exclusions per row (the list is short next to the catalogue: the k + E best are
    # fetched, then the excluded dropped) give the exact answer too.
    few = best[:, :3].copy()
    few[3] = -1
    scores, positions = index(tf.constant(queries), tf.constant(few), 10)
    want_scores, want = _exact(embeddings, queries, few, 10)
    if kind == "brute-force":
        np.testing.assert_array_equal(positions.numpy(), want)
    assert not any(set(positions.numpy()[row]) & set(few[row]) for row in range(3))
    # Fewer allowed movies than k: the rest of the row is empty (-inf).
    scores, _ = index(tf.constant(queries[:1]), tf.constant([list(range(495))]), 10)
    assert np.isfinite(scores.numpy()[0]).sum() == 5


def test_brute_force_over_a_long_catalogue_answers_as_a_full_sort():
    """Past GROUPED_TOP_MIN columns the top k ranks group maxima first: the same positions,
    in the same order, as sorting every score (ties to the lower position), also with ties
    everywhere, exclusions short and long, and fewer allowed movies than k."""
    rng = np.random.default_rng(4)
    n = GROUPED_TOP_MIN + 480  # 10,480: groups of 16 for k = 100 plus the exclusions
    assert group_size(n, 101) == 16
    # Small integers: every dot product is exact in float32, and ties are everywhere.
    embeddings = rng.integers(-2, 3, size=(n, 3)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(5, 3)).astype(np.float32)
    queries[4] = 0.0  # one row of equal scores
    index = BruteForce(embeddings)
    few = rng.integers(-1, n, size=(5, 7))
    # 300 exclusions: k + E is too wide for the groups' first stage (the plain top k).
    wider = rng.integers(-1, n, size=(5, 300))
    for excluded in (few, np.full((5, 1), -1), wider):
        scores, positions = index(tf.constant(queries), tf.constant(excluded), 100)
        want_scores, want = _exact(embeddings, queries, excluded, 100)
        np.testing.assert_array_equal(positions.numpy(), want)
        np.testing.assert_array_equal(scores.numpy(), want_scores)
    # A prime catalogue size (20,483) has no groups: the plain top k.
    prime = np.concatenate([embeddings, embeddings[:3]])
    _, positions = BruteForce(prime)(tf.constant(queries), tf.constant(few), 100)
    np.testing.assert_array_equal(positions.numpy(), _exact(prime, queries, few, 100)[1])
    # A long list (the whole matrix masked, k static) leaving 3 movies for the first row.
    long = np.tile(np.arange(n - 3), (2, 1))
    long[1, 500:] = -1
    scores, positions = index(tf.constant(queries[:2]), tf.constant(long), 100)
    want_scores, want = _exact(embeddings, queries[:2], long, 100)
    np.testing.assert_array_equal(scores.numpy(), want_scores)
    np.testing.assert_array_equal(positions.numpy(), want)
    assert np.isfinite(scores.numpy()[0]).sum() == 3


@pytest.mark.parametrize("index", ["brute-force", "scann"])
def test_exports_answer_what_the_towers_answer(exported, trained, index):
    """For one run, the exported graphs (tables computed at export) return the ids and scores
    a direct evaluation of the towers gives: known and unknown users, with exclusions."""
    _, bf, scann = exported[:3]
    models = bf if index == "brute-force" else scann
    vocab = trained.vocab
    retrieval, ranking = trained.retrieval_model(), trained.rating_model()
    catalogue = np.asarray(vocab.catalogue_movies)
    users = list(vocab.user_ids[:6]) + ["u0", "never-seen"]  # u0: catalogue only, no ratings
    candidates = retrieval.movie_embedding(tf.constant(catalogue)).numpy()
    queries = retrieval.user_embedding(tf.constant(users)).numpy()
    seen = [set(vocab.history[vocab.catalogue_users.index(u)]) if u in vocab.catalogue_users
            else set() for u in users]
    first = np.argsort(-(queries @ candidates.T), axis=1, kind="stable")
    client_excluded = [list(catalogue[first[i, :2]]) if i % 2 else ["", ""]
                       for i in range(len(users))]
    excluded = [np.asarray([i for i, m in enumerate(catalogue) if m in seen[r]
                            or m in client_excluded[r]] or [-1]) for r in range(len(users))]
    width = max(map(len, excluded))
    excluded = np.stack([np.pad(e, (0, width - len(e)), constant_values=-1) for e in excluded])
    want_scores, want = _exact(candidates, queries, excluded, 20)
    request = dict(user_id=tf.constant(users), exclude_movie_ids=tf.constant(client_excluded))
    out = models["retrieval"](**request)
    known = slice(0, len(users) - 1)  # the last user gets the popularity fallback
    np.testing.assert_allclose(out["scores"].numpy()[known], want_scores[known], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(_strings(out["movie_ids"])[known], catalogue[want[known]])

    # The recommender: the re-ranker's features of those candidates, its order, then ratings.
    known_users = sorted(set(vocab.catalogue_users) | set(vocab.user_ids))
    pairs = pd.DataFrame([(u, m) for u, h in zip(vocab.catalogue_users, vocab.history) for m in h],
                         columns=["user_id", "movie_id"])
    config = trained.reranker.config
    ease, weights = reranker.ease_fit(pairs, np.asarray(known_users), catalogue,
                                      config.ease_lambda, dropout=config.ease_dropout)
    # The latest family: each history's movies weighted by recency (vocab order: oldest first).
    latest = reranker.latest_weights(pairs, np.asarray(known_users), catalogue,
                                     trained.reranker.config.latest_decay) @ weights
    counts = dict(zip(vocab.movie_ids, vocab.movie_counts))
    popularity = np.asarray([counts.get(m, 0) for m in catalogue], np.float32)
    bins, cumulative = trained.reranker.recent.tables(np.asarray(known_users), catalogue)
    assert len(set(bins)) > 1  # users at different times: the family is not popularity again
    sittings = trained.reranker.sittings
    session = reranker.session_scores(pairs, np.asarray(known_users), catalogue, sittings,
                                       trained.reranker.config.session_lambda)
    # Sittings of 3 movies (5 per user), then windows of 10 ratings at two offsets.
    sizes = np.bincount(sittings.sittings)
    n = len(sittings.sittings) // 3
    assert sizes[:sittings.sittings[n]].max() == 3 and sizes.max() == 10
    assert not np.allclose(session, ease)
    rec = models["recommender"](**request)
    for row, user in enumerate(users[:-1]):
        stars = ranking.predict_rating(tf.constant([user] * len(want[row])),
                                       tf.constant(catalogue[want[row]])).numpy()
        x = reranker.features(
            tf.constant(want_scores[row:row + 1]),
            tf.constant(ease[known_users.index(user)][want[row]][None]),
            tf.constant(popularity[want[row]][None]),
            reranker.recent_counts(tf.constant(bins[known_users.index(user)])[None],
                                   tf.constant(cumulative), tf.constant(want[row][None]),
                                   trained.reranker.recent.window),
            tf.constant(session[known_users.index(user)][want[row]][None]),
            tf.constant(stars[None]),
            tf.constant(latest[known_users.index(user)][want[row]][None], tf.float32))
        learned = trained.reranker.model(x).numpy()[0]
        order = np.argsort(-learned, kind="stable")[:5]
        np.testing.assert_allclose(rec["rank_scores"].numpy()[row], learned[order], rtol=1e-4,
                                   atol=1e-5)
        assert list(_strings(rec["movie_ids"])[row]) == list(catalogue[want[row][order]])
        np.testing.assert_allclose(rec["scores"].numpy()[row], want_scores[row][order],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rec["ratings"].numpy()[row], stars[order], rtol=1e-5)
    if index == "brute-force":
        pairs = tf.constant(users), tf.constant(list(catalogue[:7]) + ["?"])
        np.testing.assert_allclose(models["ranking"](user_id=pairs[0], movie_id=pairs[1])[
            "rating"].numpy(), ranking.predict_rating(*pairs).numpy(), rtol=1e-5)


def test_with_history_answers_what_the_towers_answer(exported, with_history, trained):
    """``with_history``: the towers run on the stored history followed by the request's, the
    re-ranker's item-item and session scores read the combined history, and the history's
    movies are never served. An unseen id (its candidates: retrieval's best K - E and the E
    best of its history's low-rank item-item scores), a known user with new and old movies in
    the request (the E best of the stored history's item-item scores plus the new movies'
    low-rank ones), and a known user with none (then the answer is serving_default's)."""
    _, models, _ = exported[:3]
    vocab = trained.vocab
    retrieval, ranking = trained.retrieval_model(), trained.rating_model()
    catalogue = np.asarray(vocab.catalogue_movies)
    stored = {u: list(h) for u, h in zip(vocab.catalogue_users, vocab.history)}
    known_user = vocab.user_ids[3]
    fresh = [m for m in catalogue if m not in stored[known_user]][:3]
    requests = [("never-seen", [catalogue[5], "not-a-movie", catalogue[9], catalogue[5]]),
                (known_user, [stored[known_user][0], *fresh]),
                (vocab.user_ids[4], [])]
    width = max(len(h) for _, h in requests)
    users = tf.constant([u for u, _ in requests])
    history = tf.constant([h + [""] * (width - len(h)) for _, h in requests])
    got = {name: fn(user_id=users, history_movie_ids=history,
                    exclude_movie_ids=tf.constant([[""], [fresh[0]], [""]]))
           for name, fn in with_history.items()}
    assert got["recommender"]["known"].numpy().tolist() == [True, True, True]

    known_users = sorted(set(vocab.catalogue_users) | set(vocab.user_ids))
    pairs = pd.DataFrame([(u, m) for u, h in stored.items() for m in h],
                         columns=["user_id", "movie_id"])
    config = trained.reranker.config
    _, ease = reranker.ease_fit(pairs, np.asarray(known_users), catalogue, config.ease_lambda,
                                dropout=config.ease_dropout)
    left, right = ease_factors(pairs, np.asarray(known_users), catalogue, ease,
                               config.ease_lambda, dropout=config.ease_dropout)
    from_history = trained.reranker.config.ease_candidates(20)
    assert from_history > 0 and trained.reranker.new_users is not None
    _, session = reranker.session_fit(pairs, np.asarray(known_users), catalogue,
                                      trained.reranker.sittings,
                                      trained.reranker.config.session_lambda)
    counts = dict(zip(vocab.movie_ids, vocab.movie_counts))
    popularity = np.asarray([counts.get(m, 0) for m in catalogue], np.float32)
    bins, cumulative = trained.reranker.recent.tables(np.asarray([""] + known_users), catalogue)
    candidates = retrieval.movie_embedding(tf.constant(catalogue)).numpy()
    for row, (user, extra) in enumerate(requests):
        request = tf.constant([extra + [""] * (width - len(extra))])
        query = retrieval.user_embedding(tf.constant([user]), history_movie_ids=request).numpy()
        both = set(stored.get(user, [])) | {m for m in extra if m in set(catalogue)}
        excluded = np.asarray([i for i, m in enumerate(catalogue) if m in both
                               or (row == 1 and m == fresh[0])])
        want_scores, want = _exact(candidates, query, excluded[None], 20)
        out = got["retrieval"]
        np.testing.assert_allclose(out["scores"].numpy()[row], want_scores[0], rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_array_equal(_strings(out["movie_ids"])[row], catalogue[want[0]])

        picked, scored = want[0], want_scores
        multi_hot = np.isin(catalogue, list(both)).astype(np.float64)
        # Latest: the stored history, then the request's new movies (each once, at its later
        # place); a stored movie sent again keeps its stored place.
        sent = [m for m in extra if m in set(catalogue) and m not in stored.get(user, [])]
        order_of = stored.get(user, []) + [m for i, m in enumerate(sent) if m not in sent[i + 1:]]
        recency = np.zeros(len(catalogue))
        recency[[list(catalogue).index(m) for m in order_of]] = np.exp(
            -np.arange(len(order_of))[::-1] / trained.reranker.config.latest_decay)
        new = np.isin(catalogue, sent)
        if sent:  # E of the K from the item-item scores of the stored history and the request's
            if user not in known_users:  # an unseen id's: EASE's, of its history
                item_item = (multi_hot @ left) @ right.T
            elif "latest_z" in trained.reranker.config.used_features:  # the latest family's
                item_item = (recency * ~new) @ ease + ((recency * new) @ left) @ right.T
            else:
                item_item = (multi_hot * ~new) @ ease + ((multi_hot * new) @ left) @ right.T
            item_item[excluded] = -np.inf
            item_item[picked[:-from_history]] = -np.inf
            added = np.argsort(-item_item, kind="stable")[:from_history]
            pool = np.concatenate([picked[:-from_history], added])
            pool_scores = np.concatenate([want_scores[0, :-from_history],
                                          candidates[added] @ query[0]])
            by_score = np.argsort(-pool_scores, kind="stable")
            picked, scored = pool[by_score], pool_scores[by_score][None]
            assert set(added) - set(want[0])  # the history brought movies retrieval did not
        users_in = ranking.rating_user(tf.constant([user]), history_movie_ids=request)
        stars = ranking.rate(users_in, ranking.rating_movie(tf.constant(catalogue[picked]))[None])
        bin_row = known_users.index(user) + 1 if user in known_users else 0
        x = reranker.features(
            tf.constant(scored), tf.constant((multi_hot @ ease)[picked][None], tf.float32),
            tf.constant(popularity[picked][None]),
            reranker.recent_counts(tf.constant(bins[bin_row])[None], tf.constant(cumulative),
                                   tf.constant(picked[None]), trained.reranker.recent.window),
            tf.constant((multi_hot @ session)[picked][None], tf.float32), stars,
            tf.constant((recency @ ease)[picked][None], tf.float32))
        # A list with item-item candidates is ordered by the re-ranker learned on such lists.
        ranker = trained.reranker.new_users if sent else trained.reranker.model
        learned = ranker(x).numpy()[0]
        order = np.argsort(-learned, kind="stable")[:5]
        rec = got["recommender"]
        assert list(_strings(rec["movie_ids"])[row]) == list(catalogue[picked[order]])
        np.testing.assert_allclose(rec["rank_scores"].numpy()[row], learned[order], rtol=1e-4,
                                   atol=1e-4)
        np.testing.assert_allclose(rec["ratings"].numpy()[row], stars.numpy()[0][order],
                                   rtol=1e-5)
    # A request whose every row the second model orders runs the rating head on the n
    # returned alone (that model reads no stars): the same answers as beside a plain row.
    assert "stars_z" not in trained.reranker.new_users.config_.used_features
    alone = with_history["recommender"](user_id=users[:2], history_movie_ids=history[:2],
                                        exclude_movie_ids=tf.constant([[""], [fresh[0]]]))
    np.testing.assert_array_equal(_strings(alone["movie_ids"]),
                                  _strings(got["recommender"]["movie_ids"])[:2])
    for name in ("rank_scores", "ratings", "scores"):
        np.testing.assert_allclose(alone[name].numpy(), got["recommender"][name].numpy()[:2],
                                   rtol=1e-5, atol=1e-5)
    # No history: the answer serving_default gives.
    plain = models["recommender"](user_id=users[2:], exclude_movie_ids=tf.constant([[""]]))
    np.testing.assert_array_equal(_strings(plain["movie_ids"]),
                                  _strings(got["recommender"]["movie_ids"])[2:])
    np.testing.assert_allclose(plain["rank_scores"].numpy(),
                               got["recommender"]["rank_scores"].numpy()[2:], rtol=1e-4,
                               atol=1e-4)


def test_with_history_falls_back_only_without_a_known_movie(with_history, trained):
    """An unseen id whose history names no catalogue movie gets the popularity fallback with
    ``known`` false; row counts must agree."""
    catalogue = trained.vocab.catalogue_movies
    fn = with_history["recommender"]
    out = fn(user_id=tf.constant(["new-1", "new-2", ""]),
             history_movie_ids=tf.constant([["?", ""], ["", ""], [catalogue[2], ""]]),
             exclude_movie_ids=tf.constant([[""], [""], [""]]))
    assert out["known"].numpy().tolist() == [False, False, True]
    assert catalogue[2] not in set(_strings(out["movie_ids"])[2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="user_id and history_movie_ids"):
        fn(user_id=tf.constant(["u1", "u2"]), history_movie_ids=tf.constant([[""]]),
           exclude_movie_ids=tf.constant([[""], [""]]))


def test_requests_larger_than_a_chunk_and_mismatched_inputs(exported, trained):
    """A request over ``MAX_ROWS_PER_CALL`` rows runs in chunks and answers as row by row;
    inputs of different lengths are refused with a message naming both."""
    _, models, _ = exported[:3]
    rows = contract.MAX_ROWS_PER_CALL + 7
    users = [trained.vocab.user_ids[i % len(trained.vocab.user_ids)] for i in range(rows)]
    big = models["recommender"](user_id=tf.constant(users),
                                exclude_movie_ids=tf.fill([rows, 1], ""))
    small = models["recommender"](user_id=tf.constant(users[-9:]),
                                  exclude_movie_ids=tf.fill([9, 1], ""))
    assert big["movie_ids"].shape == (rows, 5)
    np.testing.assert_array_equal(_strings(big["movie_ids"])[-9:], _strings(small["movie_ids"]))
    np.testing.assert_allclose(big["ratings"].numpy()[-9:], small["ratings"].numpy(), rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="user_id and exclude_movie_ids"):
        models["retrieval"](user_id=tf.constant(["u1", "u2"]),
                            exclude_movie_ids=tf.constant([[""]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="user_id and movie_id"):
        models["ranking"](user_id=tf.constant(["u1", "u2"]), movie_id=tf.constant(["m1"]))
    empty = models["retrieval"](user_id=tf.constant([], tf.string),
                                exclude_movie_ids=tf.zeros([0, 1], tf.string))
    assert empty["movie_ids"].shape[0] == 0


def test_bad_versions_and_missing_models_are_refused_before_anything_is_built(trained,
                                                                             tmp_path):
    for version in (-1, 0):
        with pytest.raises(UserError, match="positive integer"):
            ExportConfig(version=version)
    retrieval_only = types.SimpleNamespace(
        path=tmp_path / "run", vocab=trained.vocab, retrieval_model=trained.retrieval_model,
        rating_model=lambda: None, embedding_model=trained.retrieval_model)
    with pytest.raises(UserError, match="cannot give ranking and recommender .*--partial"):
        export(retrieval_only, tmp_path / "exp", ExportConfig(k=10, n=3))
    assert not (tmp_path / "exp").exists()
    written = export(retrieval_only, tmp_path / "exp", ExportConfig(k=10, n=3, partial=True))
    assert set(written) == {"retrieval", "similar_movies"}


def test_stars_from_the_frozen_table_are_the_heads_own(trained, monkeypatch):
    """The recommender gathers its candidates' stars from a table frozen at export when it
    fits, else runs the rating head on them: the same answers either way."""
    from tfrs_movies import serving_graph

    request = (tf.constant(list(trained.vocab.user_ids[:9]) + ["never-seen"]),
               tf.fill([10, 1], ""))
    tabled = serving_graph.build_modules(trained, ExportConfig(k=20, n=5))["recommender"]
    assert tabled.stars.table is not None
    monkeypatch.setattr(serving_graph, "MAX_TABLE_CELLS", 0)
    computed = serving_graph.build_modules(trained, ExportConfig(k=20, n=5))["recommender"]
    assert computed.stars.table is None
    want, got = computed.serve(*request), tabled.serve(*request)
    np.testing.assert_array_equal(got["movie_ids"].numpy(), want["movie_ids"].numpy())
    for name in ("ratings", "rank_scores", "scores"):
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-5, atol=1e-6)


def _fake_save(module, path, **kwargs):
    """A SavedModel's folder without the seconds a real save takes."""
    os.makedirs(path)
    (Path(path) / "saved_model.pb").write_bytes(b"ours")


def test_one_export_is_one_version_for_all_models(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(tf.saved_model, "save", _fake_save)
    (tmp_path / "ranking" / "4").mkdir(parents=True)  # e.g. partial exports of one model
    (tmp_path / "retrieval" / "2").mkdir(parents=True)
    written = export(trained, tmp_path, ExportConfig(k=10, n=3))
    assert set(written) == set(contract.MODELS)
    assert {path.name for path in written.values()} == {"5"}
    assert all((tmp_path / name / "5" / "saved_model.pb").exists() for name in contract.MODELS)
    assert not list(tmp_path.glob("*/.tmp-*"))


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     KeyboardInterrupt()], ids=["disk full", "ctrl-c"])
def test_a_failed_export_publishes_nothing_and_leaves_nothing(trained, tmp_path, monkeypatch,
                                                              failure):
    saves = []

    def fails_on_the_third(module, path, **kwargs):
        saves.append(path)
        if len(saves) == 3:
            raise failure
        _fake_save(module, path)

    monkeypatch.setattr(tf.saved_model, "save", fails_on_the_third)
    with pytest.raises(type(failure)):
        export(trained, tmp_path / "new" / "export", ExportConfig(k=10, n=3))
    assert len(saves) == 3 and not (tmp_path / "new").exists()  # the folders it made, too
    # Into an existing export: its versions and models.config stay as they were.
    monkeypatch.setattr(tf.saved_model, "save", _fake_save)
    export(trained, tmp_path / "export", ExportConfig(k=10, n=3))
    before = sorted((tmp_path / "export").rglob("*"))
    config = (tmp_path / "export" / "models.config").read_text()
    saves.clear()
    monkeypatch.setattr(tf.saved_model, "save", fails_on_the_third)
    with pytest.raises(type(failure)):
        export(trained, tmp_path / "export", ExportConfig(k=10, n=3))
    assert sorted((tmp_path / "export").rglob("*")) == before
    assert (tmp_path / "export" / "models.config").read_text() == config


def test_a_version_another_export_takes_meanwhile_publishes_nothing(trained, tmp_path,
                                                                   monkeypatch):
    def another_writer_meanwhile(module, path, **kwargs):
        _fake_save(module, path)
        if Path(path).parent.name == "similar_movies":  # the last save: ranking/1 appears
            (tmp_path / "ranking" / "1").mkdir()
            (tmp_path / "ranking" / "1" / "saved_model.pb").write_bytes(b"theirs")

    monkeypatch.setattr(tf.saved_model, "save", another_writer_meanwhile)
    with pytest.raises(UserError, match="another export wrote it meanwhile.*nothing was "
                                        "published"):
        export(trained, tmp_path, ExportConfig(k=10, n=3))
    assert (tmp_path / "ranking" / "1" / "saved_model.pb").read_bytes() == b"theirs"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [
        Path("ranking"), Path("ranking/1"), Path("ranking/1/saved_model.pb")]


def test_the_ranking_export_carries_no_stars_table(exported):
    """The [users, catalogue] stars table is the recommender's alone: the ranking model (one
    pair a row) runs the head and its SavedModel holds no such variable."""
    def saved(model):  # the checkpoint keys of a SavedModel's variables
        path = exported[0] / "bf" / model / "1" / "variables" / "variables"
        return [name for name, _ in tf.train.list_variables(str(path))]

    assert any(name.startswith("stars/table/") for name in saved("recommender"))
    assert not any("stars" in name for name in saved("ranking"))


def test_with_history_never_returns_a_movie_of_a_history_past_its_limit(trained):
    """None of a history's movies is returned, those older than the latest ``limit`` that the
    graph reads too."""
    modules = serving_graph.build_modules(trained, ExportConfig(k=20, n=5))
    modules["retrieval"].history.limit = 3  # the recommender's too: one _History
    sent = list(trained.vocab.catalogue_movies[:12])
    for name in contract.HISTORY_SIGNATURES:
        out = modules[name].serve_with_history(
            user_id=tf.constant(["", "u1"]), history_movie_ids=tf.constant([sent, sent]),
            exclude_movie_ids=tf.constant([[""], [""]]))
        returned = _strings(out["movie_ids"])
        assert not set(returned.ravel()) & set(sent), name
    # A row answers alike whatever the other rows: above, every row held item-item candidates
    # (the second re-ranker alone ran); beside a known user's plain row, both re-rankers run
    # (the scores' last bits follow the request's size: TensorFlow's kernels).
    mixed = modules["recommender"].serve_with_history(
        user_id=tf.constant(["", "u1", "u2"]),
        history_movie_ids=tf.constant([sent, sent, [""] * len(sent)]),
        exclude_movie_ids=tf.constant([[""], [""], [""]]))
    np.testing.assert_array_equal(mixed["movie_ids"].numpy()[:2], out["movie_ids"].numpy())
    np.testing.assert_allclose(mixed["rank_scores"].numpy()[:2], out["rank_scores"].numpy(),
                               rtol=1e-5)


def test_brute_force_vectors_are_the_candidates_kept_row_by_row_or_not(monkeypatch):
    from tfrs_movies import index as index_module

    embeddings = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    positions = np.asarray([[3, 0, 49], [7, 7, 1]])
    small = BruteForce(embeddings)
    monkeypatch.setattr(index_module, "ROW_COPY_MAX", embeddings.size - 1)
    large = BruteForce(embeddings)
    assert small.rows is not None and large.rows is None
    for index in (small, large):
        np.testing.assert_array_equal(index.vectors(tf.constant(positions)).numpy(),
                                      embeddings[positions])
