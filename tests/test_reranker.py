"""The re-ranker package: its features, losses, recent and session tables, and masks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfrs_movies import reranker


def test_reranker_features_are_normalized_within_each_list():
    scores = tf.constant([[3.0, 2.0, 1.0, float("-inf")], [9.0, 8.0, 7.0, 6.0]])
    ease = tf.constant([[1.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    x = reranker.features(scores, ease, tf.constant([[1.0, 9.0, 99.0, 0.0]] * 2),
                          tf.zeros([2, 4]), tf.zeros([2, 4]),
                          tf.constant([[4.5, 3.0, 1.5, 2.0], [1.0, 1.0, 1.0, 1.0]])).numpy()
    z = x[..., reranker.FEATURES.index("retrieval_z")]
    # The same list shifted by 6 scores the same z: only the order within a list counts.
    np.testing.assert_allclose(z[0, :3], [1.2247, 0.0, -1.2247], atol=1e-3)
    assert z[0, 3] == 0 and x[0, 3].tolist() == [0.0, x[0, 3, 1]] + [0.0] * 6  # empty slot
    np.testing.assert_allclose(z[1], [1.3416, 0.4472, -0.4472, -1.3416], atol=1e-3)
    rank = x[..., reranker.FEATURES.index("rank")]
    assert rank[0, 0] == 0 and np.all(np.diff(rank[1]) > 0)
    popularity = x[..., reranker.FEATURES.index("popularity_z")]
    assert popularity[0, 0] < popularity[0, 1] < popularity[0, 2]  # log(1 + ratings), z-scored
    stars = x[..., reranker.FEATURES.index("stars_z")]
    np.testing.assert_allclose(stars[0, :3], [1.2247, 0.0, -1.2247], atol=1e-3)
    np.testing.assert_allclose(stars[1], 0.0, atol=1e-6)  # the same stars: nothing to tell


def test_listwise_loss_shares_the_target_among_positives():
    scores = tf.constant([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    labels = tf.constant([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    log_p = tf.nn.log_softmax(scores).numpy()
    want = [-(log_p[0, 0] + log_p[0, 1]) / 2, -log_p[1, 2]]
    np.testing.assert_allclose(reranker.listwise_loss(labels, scores).numpy(), want, rtol=1e-6)


def test_pairwise_loss_averages_every_positive_against_every_negative():
    scores = tf.constant([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    labels = tf.constant([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # the second list: no pair
    want = [(np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2, 0.0]
    np.testing.assert_allclose(reranker.pairwise_loss(labels, scores).numpy(), want, rtol=1e-6)


def test_recent_counts_a_candidates_ratings_around_the_users_time():
    day = 86400
    ratings = pd.DataFrame(
        [("p1", "a", 0), ("p2", "a", 1), ("p3", "a", 30), ("p3", "b", 30), ("p4", "b", 31),
         ("x", "c", 29), ("x", "e", 30), ("x", "f", 31), ("y", "c", 0)],
        columns=["user_id", "movie_id", "timestamp"]).assign(timestamp=lambda f: f.timestamp * day)
    recent = reranker.Recent.build(ratings, window_days=7)  # 7-day bins, one bin either side
    bins, cumulative = recent.tables(np.asarray(["x", "y", "?"]), np.asarray(["a", "b", "d"]))
    assert bins.tolist() == [4, 0, 4]  # median days 30 and 0; an unknown user: the last bin
    counts = reranker.recent_counts(tf.constant(bins), tf.constant(cumulative),
                                    tf.constant([[0, 1, 2]] * 3), recent.window).numpy()
    # x (days 21-41): a once (day 30), b twice; y (days 0-13): a twice; d: never rated.
    assert counts.tolist() == [[1, 2, 0], [2, 0, 0], [1, 2, 0]]
    # Ten years are at most MAX_RECENT_BINS wider bins (29 days: still one either side).
    decade = reranker.Recent.build(ratings.assign(timestamp=ratings.timestamp * 118), 14)
    assert decade.cumulative.shape[1] <= reranker.MAX_RECENT_BINS + 2 and decade.window == 1


def test_session_scores_are_ease_fitted_on_sittings():
    # u1 sits twice (a gap of 61 s > 60), u2 once: sittings {a, b}, {c}, {a, c}.
    ratings = pd.DataFrame([("u1", "a", 0), ("u1", "b", 60), ("u1", "c", 121),
                            ("u2", "c", 5), ("u2", "a", 30)],
                           columns=["user_id", "movie_id", "timestamp"])
    sittings = reranker.Sittings.build(ratings, gap_seconds=60)
    assert sittings.movie_ids.tolist() == ["a", "b", "c", "c", "a"]
    assert sittings.sittings.tolist() == [0, 0, 1, 2, 2]
    movies, lam = np.asarray(["a", "b", "c", "d"]), 2.0
    x = np.asarray([[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0]], float)  # sittings x movies
    p = np.linalg.inv(x.T @ x + lam * np.eye(4))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    history = np.asarray([[1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]], float)  # u1, u2, unknown
    got = reranker.session_scores(ratings, np.asarray(["u1", "u2", "?"]), movies, sittings, lam)
    np.testing.assert_allclose(got, history @ b, rtol=1e-5, atol=1e-6)
    assert got[2].tolist() == [0.0] * 4 and got[:, 3].tolist() == [0.0] * 3  # "d": never rated
    # One sitting per user (every gap within it): the same weights as EASE on users' rows.
    whole = reranker.Sittings.build(ratings, gap_seconds=10**6)
    np.testing.assert_allclose(
        reranker.session_scores(ratings, np.asarray(["u1", "u2"]), movies, whole, lam),
        reranker.ease_scores(ratings, np.asarray(["u1", "u2"]), movies, lam), rtol=1e-5)


def test_latest_weights_count_back_from_each_users_latest_movie():
    ratings = pd.DataFrame([("u1", "a", 5), ("u1", "b", 1), ("u1", "c", 3), ("u1", "b", 9),
                            ("u2", "c", 0), ("x", "a", 0)],
                           columns=["user_id", "movie_id", "timestamp"])
    got = reranker.latest_weights(ratings, np.asarray(["u1", "u2", "?"]),
                                  np.asarray(["a", "b", "c", "d"]), decay=2.0)
    # u1 in time order: b, c, a, b again (b counts at its later place): c, a, b.
    np.testing.assert_allclose(got[0], [np.exp(-0.5), 1.0, np.exp(-1.0), 0.0])
    np.testing.assert_allclose(got[1:], [[0, 0, 1.0, 0], [0, 0, 0, 0]])
    # Without timestamps, row order is time order.
    np.testing.assert_allclose(reranker.latest_weights(
        ratings.drop(columns="timestamp"), np.asarray(["u1"]), np.asarray(["a", "b", "c"]),
        2.0)[0], [np.exp(-1.0), 1.0, np.exp(-0.5)])


def test_past_ease_movies_the_item_item_families_are_fitted_on_the_most_rated():
    rng = np.random.default_rng(5)
    movies = np.asarray([f"m{i}" for i in range(8)])
    users = np.asarray([f"u{i}" for i in range(12)])
    # Movie i is rated by about (8 - i) / 8 of the users: m0 the most, m7 the least.
    rated = rng.random((12, 8)) < np.linspace(0.9, 0.15, 8)
    rows, cols = np.nonzero(rated)
    known = pd.DataFrame({"user_id": users[rows], "movie_id": movies[cols],
                          "timestamp": rng.permutation(len(rows)) * 100})
    counts = rated.sum(axis=0)
    head = reranker.most_rated(known, movies, 5)
    assert head.tolist() == sorted(np.argsort(-counts, kind="stable")[:5].tolist())
    assert reranker.most_rated(known, movies, 8).tolist() == list(range(8))
    recent = reranker.Recent.build(known, 14)
    sittings = reranker.Sittings.build(known, 60, 4)
    config = reranker.ReRankerConfig(folds="latest", ease_movies=5)
    tables = reranker.FeatureTables.build(known, users, movies, config, recent, sittings)
    on_head = reranker.FeatureTables.build(known, users, movies[head],
                                           dataclasses.replace(config, ease_movies=8),
                                           recent, sittings)
    tail = np.setdiff1d(np.arange(8), head)
    for name in ("ease", "session", "latest"):
        got = getattr(tables, name)
        assert got.shape == (12, 8) and not got[:, tail].any()
        if name != "latest":  # in float32 (no weights kept) against float64: equal to 1e-5
            np.testing.assert_allclose(got[:, head], getattr(on_head, name), rtol=1e-5,
                                       atol=1e-6)
    # The latest family counts back over every movie a user rated later, fitted or not.
    every = reranker.latest_weights(known, users, movies, config.latest_decay)
    np.testing.assert_array_equal(
        reranker.latest_weights(known, users, movies, config.latest_decay, columns=head),
        every[:, head])
    weights = reranker.ease_fit(known, users, movies[head], config.ease_lambda,
                                dropout=config.ease_dropout)[1]
    np.testing.assert_allclose(tables.latest[:, head], every[:, head] @ weights, rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(tables.latest[:, head], on_head.latest)
    # A request's history cannot use weights over part of the catalogue: none are kept, and
    # such tables still count as complete.
    assert tables.ease_weights is None and on_head.ease_weights is not None
    assert tables.fits(users, movies, config.ease_movies) and not tables.fits(users, movies)
    for bad in (0, reranker.MAX_EASE_MOVIES + 1):
        with pytest.raises(ValueError, match=f"ease_movies must be within 1..10000, got {bad}"):
            reranker.ReRankerConfig(ease_movies=bad)


def test_the_model_of_history_lists_reads_all_but_history_without():
    config = reranker.ReRankerConfig(hidden=())
    second = config.for_history_lists()
    assert second.used_features == tuple(f for f in config.used_features if f != "stars_z")
    model = reranker.build(second)
    assert model.out.kernel.shape[0] == 6
    x = np.random.default_rng(0).normal(size=(1, 3, len(reranker.FEATURES))).astype(np.float32)
    changed = x.copy()
    changed[..., reranker.FEATURES.index("stars_z")] += 5.0
    np.testing.assert_array_equal(model(x).numpy(), model(changed).numpy())
    every = dataclasses.replace(config, history_without=())
    assert every.for_history_lists() is every
    with pytest.raises(ValueError, match="leaves the model of history lists no feature"):
        reranker.ReRankerConfig(features=("stars_z",)).for_history_lists()
    with pytest.raises(ValueError, match="unknown feature families \\['stars'\\]"):
        reranker.ReRankerConfig(history_without=("stars",))


def test_rerankers_on_random_folds_and_saved_before_the_latest_family_read_seven():
    old = reranker.ReRankerConfig(features=reranker.config.WITHOUT_LATEST, hidden=())
    model = reranker.build(old)
    x = np.random.default_rng(0).normal(size=(1, 3, len(reranker.FEATURES))).astype(np.float32)
    changed = x.copy()
    changed[..., reranker.FEATURES.index("latest_z")] += 5.0
    np.testing.assert_array_equal(model(x).numpy(), model(changed).numpy())
    assert model.out.kernel.shape[0] == 7
    latest = reranker.ReRankerConfig(hidden=(), folds="latest")
    assert reranker.build(latest).out.kernel.shape[0] == 8
    assert reranker.ReRankerConfig().used_features == reranker.config.WITHOUT_LATEST
    # Latest folds read all eight, also when set on a random-fold config.
    assert dataclasses.replace(reranker.ReRankerConfig(), folds="latest").used_features == \
        reranker.FEATURES


def test_ease_weights_are_computed_in_the_gram_matrix_own_memory():
    from tfrs_movies.reranker.item_item import ease_from_gram

    rng = np.random.default_rng(3)
    # 600 movies: more than one 512-row block of the triangle's mirroring, not a multiple.
    x = (rng.random((200, 600)) < 0.05).astype(np.float64)
    lam = 4.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(600))
    want = -p / np.diag(p)
    np.fill_diagonal(want, 0.0)
    gram = x.T @ x
    got = ease_from_gram(gram, lam)
    assert np.shares_memory(got, gram)  # no [N, N] copy
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    fortran = np.asfortranarray(x.T @ x)  # as a sparse product's toarray() gives it
    got = ease_from_gram(fortran, lam)
    assert np.shares_memory(got, fortran)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # In float32 (the fits whose weights the export does not keep), in its own memory too.
    single = (x.T @ x).astype(np.float32)
    got = ease_from_gram(single, lam)
    assert got.dtype == np.float32 and np.shares_memory(got, single)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="lambda=-100"):
        ease_from_gram(x.T @ x, -100.0)
    # DLAE: each movie's L2 weight lam + p / (1 - p) times its ratings, no constraint.
    dropout = 0.6
    regulariser = lam + dropout / (1 - dropout) * np.diag(x.T @ x)
    p = np.linalg.inv(x.T @ x + np.diag(regulariser))
    want = -p * regulariser[None, :]
    np.fill_diagonal(want, 0.0)
    gram = x.T @ x
    got = ease_from_gram(gram, lam, dropout)
    assert np.shares_memory(got, gram)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="dropout must be within \\[0, 1\\), got 1.0"):
        ease_from_gram(x.T @ x, lam, 1.0)
    with pytest.raises(ValueError, match="ease_dropout within \\[0, 1\\), got 300.0 and -0.1"):
        reranker.ReRankerConfig(ease_dropout=-0.1)


def test_session_rows_add_windows_of_consecutive_ratings():
    # u1 rates a..e one second apart (one sitting), u2 rates c, a an hour apart (two).
    ratings = pd.DataFrame([("u1", m, t) for t, m in enumerate("abcde")]
                           + [("u2", "c", 0), ("u2", "a", 3600)],
                           columns=["user_id", "movie_id", "timestamp"])
    rows = reranker.Sittings.build(ratings, gap_seconds=60, window=4)
    got = pd.DataFrame({"row": rows.sittings, "movie": rows.movie_ids}).groupby(
        "row", sort=True)["movie"].agg("".join).tolist()
    # Sittings; windows of 4 from each user's first rating; from their third (offset 2).
    # Windows ignore time: u2's two sittings share one.
    assert got == ["abcde", "c", "a", "abcd", "e", "ca", "ab", "cde", "ca"]
    assert rows.sittings.tolist() == sorted(rows.sittings.tolist())
    # The windows are more rows of one EASE.
    movies, lam = np.asarray(list("abcde")), 2.0
    x = np.zeros((len(got), 5))
    for r, letters in enumerate(got):
        x[r, ["abcde".index(m) for m in letters]] = 1.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(5))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    history = np.asarray([[1, 1, 1, 1, 1], [1, 0, 1, 0, 0]], float)
    np.testing.assert_allclose(
        reranker.session_scores(ratings, np.asarray(["u1", "u2"]), movies, rows, lam),
        history @ b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="session_window >= 0"):
        reranker.ReRankerConfig(session_window=-1)


def test_a_left_out_family_changes_nothing_the_reranker_scores():
    model = reranker.build(reranker.ReRankerConfig(without=("item-item",)))
    x = np.random.default_rng(0).normal(size=(2, 5, len(reranker.FEATURES))).astype(np.float32)
    other = x.copy()
    other[..., reranker.FEATURES.index("ease_z")] += 3.0
    np.testing.assert_array_equal(model(x).numpy(), model(other).numpy())
    other[..., reranker.FEATURES.index("retrieval_z")] += 3.0
    assert not np.allclose(model(x).numpy(), model(other).numpy())
    with pytest.raises(ValueError, match="unknown feature families \\['genre'\\]"):
        reranker.ReRankerConfig(without=("genre",))


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_ease_factors_score_a_history_as_the_weights_do_outside_it(dropout):
    """At full rank the low-rank form is the weights (EASE's, or DLAE's with ``dropout``),
    off the history's own movies; at a lower rank it keeps the largest eigenvalues' share
    (closer than a random rank-r form)."""
    from tfrs_movies.reranker.item_item import ease_factors

    rng = np.random.default_rng(5)
    rows = [(f"u{u}", f"m{m:02d}") for u in range(120)
            for m in rng.choice(40, rng.integers(3, 15), replace=False)]
    known = pd.DataFrame(rows, columns=["user_id", "movie_id"])
    users, movies = np.unique(known["user_id"]), np.unique(known["movie_id"])
    _, weights = reranker.ease_fit(known, users, movies, 20.0, dropout=dropout)
    history = np.zeros(len(movies))
    history[[2, 7, 30]] = 1.0
    outside = history == 0
    left, right = ease_factors(known, users, movies, weights, 20.0, rank=len(movies),
                               dropout=dropout)
    assert left.shape == right.shape == (len(movies), len(movies))
    np.testing.assert_allclose(((history @ left) @ right.T)[outside],
                               (history @ weights)[outside], atol=1e-5)
    left, right = ease_factors(known, users, movies, weights, 20.0, rank=20, dropout=dropout)
    assert left.shape == (len(movies), 20)
    error = np.abs((history @ left) @ right.T - history @ weights)[outside].max()
    assert error < np.abs(history @ weights)[outside].max()


def test_item_item_candidates_take_the_last_slots_and_keep_retrieval_order():
    """``with_item_item``: retrieval keeps its best K - E, the E best item-item movies not
    kept and not blocked fill the rest, and the list is sorted by retrieval score."""
    scores = tf.constant([[0.9, 0.8, 0.7, 0.6], [0.5, float("-inf"), float("-inf"),
                                                  float("-inf")]])
    positions = tf.constant([[0, 1, 2, 3], [4, 0, 0, 0]], tf.int64)
    # Movie 5 is the best item-item movie of row 0 but blocked; 3 is retrieval's, not kept.
    item_item = tf.constant([[9.0, 8.0, 1.0, 7.0, 6.0, 10.0], [1.0, 2.0, 3.0, 4.0, 0.0, 5.0]])
    blocked = tf.constant([[5, -1], [-1, -1]], tf.int64)
    retrieval = tf.constant([0.1, 0.2, 0.3, 0.65, 0.95, 0.4])
    got_scores, got = reranker.with_item_item(
        scores, positions, item_item, blocked, 2,
        lambda p: tf.gather(retrieval, p))
    assert got.numpy().tolist()[0] == [4, 0, 1, 3]  # 2 dropped; 3 and 4 added, by score
    np.testing.assert_allclose(got_scores.numpy()[0], [0.95, 0.9, 0.8, 0.65])
    # Row 1: one retrieved movie kept (4), the item-item best (5, 3) added, an empty slot.
    assert got.numpy().tolist()[1][:3] == [3, 4, 5]
    assert np.isinf(got_scores.numpy()[1, 3])


def test_item_item_candidate_settings_are_checked():
    for field, value in (("ease_share", 1.0), ("ease_share", -0.1), ("history_lists", 1.5)):
        with pytest.raises(ValueError, match=field):
            reranker.ReRankerConfig(**{field: value})
    assert reranker.ReRankerConfig().ease_candidates(100) == 70
    assert reranker.ReRankerConfig(ease_share=0.0).ease_candidates(100) == 0
