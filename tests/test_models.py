"""Vocabulary, FeatureSpace, towers and models on tiny seeded tables."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfrs_movies.config import ModelConfig
from tfrs_movies.errors import UserError
from tfrs_movies.features import FeatureSpace, Vocabulary
from tfrs_movies.models import build_model
from tfrs_movies.training import make_dataset


@pytest.fixture(scope="module")
def space(tiny_tables):
    ratings, movies, users = tiny_tables
    train = ratings[ratings["user_id"] != "u0"]  # u0 only in the catalogue, not in train
    return FeatureSpace(Vocabulary.build(train, movies, users))


def test_vocabulary_comes_from_train_only(tiny_tables, space):
    ratings, movies, users = tiny_tables
    vocab = space.vocab
    assert "u0" not in vocab.user_ids and "u0" in vocab.catalogue_users
    assert set(vocab.movie_ids) <= set(ratings.loc[ratings["user_id"] != "u0", "movie_id"])
    assert len(vocab.catalogue_movies) == len(movies)
    assert vocab.rating_range == (1.0, 5.0)
    # u0 has no train ratings, so no history.
    assert vocab.history[vocab.catalogue_users.index("u0")] == []


def test_vocabulary_round_trip(tmp_path, space):
    space.vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json") == space.vocab


def test_feature_lookup_shapes_and_unknown_ids(space):
    users = space.user_features(tf.constant(["u1", "nobody"]))
    assert users["user_index"].numpy()[1] == 0  # OOV
    assert set(users) == {"user_index", "gender", "age", "occupation", "zip", "history"}
    assert users["history"].row_lengths().numpy()[1] == 0
    movies = space.movie_features(tf.constant(["m1", "nothing"]))
    assert movies["genres"].shape == (2, 21)
    assert movies["genres"].numpy()[1].sum() == 0
    assert space.titles_of(tf.constant(["m1", "nothing"])).numpy()[1] == b""


def test_a_requests_history_follows_the_stored_one(space):
    """``history_movie_ids``: the stored history, then the request's movies not already in it
    (each once, at its latest place; unknown ids and "" left out), the latest max_history."""
    vocab = space.vocab
    stored = vocab.history[vocab.catalogue_users.index("u1")]
    fresh = [m for m in vocab.movie_ids if m not in stored][:3]
    index = {m: i + 1 for i, m in enumerate(vocab.movie_ids)}
    request = tf.constant([[fresh[0], stored[0], "nothing", fresh[1], fresh[0], ""],
                           [fresh[2], "", "", "", "", ""]])
    got = space.user_features(tf.constant(["u1", "nobody"]), history_movie_ids=request)
    want = [index[m] for m in stored[1:]] + [index[stored[0]], index[fresh[1]], index[fresh[0]]]
    assert got["history"][0].numpy().tolist() == want
    assert got["history"][1].numpy().tolist() == [index[fresh[2]]]
    short = FeatureSpace(vocab, max_history=2).user_features(tf.constant(["u1"]),
                                                             history_movie_ids=request[:1])
    assert short["history"][0].numpy().tolist() == [index[fresh[1]], index[fresh[0]]]


def test_new_user_rate_trains_the_unknown_users_row_on_a_share_of_examples(space):
    """``new_user_rate``: in training, that share of the examples sees its user as a new one
    (the unknown id's row and demographics, its own history); never outside training."""
    tower = build_model("retrieval", space, ModelConfig(embedding_dim=8, l2=0.0,
                                                        new_user_rate=0.3)).user_tower
    users = tf.constant(["u1"] * 400)
    features = space.user_features(users)
    as_new = {**features, **{k: tf.zeros_like(v) for k, v in features.items()
                             if k != "history"}}
    known, new = tower(features).numpy(), tower(as_new).numpy()
    assert not np.allclose(known[0], new[0])
    tf.random.set_seed(0)
    trained = tower(features, training=True).numpy()
    is_new = np.all(np.isclose(trained, new[0]), axis=1)
    assert np.all(is_new | np.all(np.isclose(trained, known[0]), axis=1))
    assert 0.2 < is_new.mean() < 0.4
    with pytest.raises(UserError, match="new_user_rate"):
        ModelConfig(new_user_rate=1.0)


def test_a_new_user_head_queries_unseen_ids_and_learns_on_every_example(tiny_tables, space):
    """``new_user_weight``: a retrieval model's user tower gets a second head on the history
    alone, which queries the ids the model has never seen (known ids keep the tower's own) and
    learns from a second loss on every example; ranking models, the papers' models and
    weight 0 get none."""
    config = ModelConfig(embedding_dim=8, new_user_weight=0.5)
    assert build_model("ranking", space, config).user_tower.new_user_head is None
    assert build_model("retrieval", space, ModelConfig(embedding_dim=8, new_user_weight=0.0)
                       ).user_tower.new_user_head is None
    assert build_model("softmax-history", space, config).user_tower.new_user_head is None
    tf.keras.utils.set_random_seed(4)
    model = build_model("retrieval", space, config)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    users = tf.constant(["u1", "nobody"])
    history = tf.constant([["", ""], list(space.vocab.movie_ids[:2])])
    model.user_embedding(users, history_movie_ids=history)
    head = model.user_tower.new_user_head
    before = [w.numpy() for w in head.weights]
    model.fit(make_dataset(tiny_tables[0], 64, shuffle_seed=4), epochs=1, verbose=0)
    assert all(not np.allclose(b, w.numpy()) for b, w in zip(before, head.weights))
    tower, new = model.user_tower(space.user_features(users, history_movie_ids=history),
                                  with_new_user=True)
    got = model.user_embedding(users, history_movie_ids=history).numpy()
    np.testing.assert_allclose(got[0], tower.numpy()[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], new.numpy()[1], rtol=1e-6)
    assert not np.allclose(new.numpy()[1], tower.numpy()[1])
    # The head weighs recent movies more (the tower's mean bag has no order).
    backwards = tf.reverse(history, axis=[1])
    again, other = model.user_tower(space.user_features(users, history_movie_ids=backwards),
                                    with_new_user=True)
    np.testing.assert_allclose(again.numpy()[1], tower.numpy()[1], rtol=1e-5)
    assert not np.allclose(other.numpy()[1], new.numpy()[1])
    with pytest.raises(UserError, match="new_user_weight"):
        ModelConfig(new_user_weight=-0.1)


def test_a_run_saved_before_the_new_user_head_loads_without_one(tmp_path):
    """A run's config.json written before ``new_user_weight`` existed was trained without the
    head: it loads as weight 0 (its checkpoint has no head), where a new run keeps its own."""
    import dataclasses
    import json

    from tfrs_movies.config import load_configs, save_configs

    save_configs(tmp_path / "new.json", model=ModelConfig())
    assert load_configs(tmp_path / "new.json")["model"] == ModelConfig()
    old = dataclasses.asdict(ModelConfig())
    del old["new_user_weight"], old["new_user_layers"]
    (tmp_path / "old.json").write_text(json.dumps({"model": old}))
    loaded = load_configs(tmp_path / "old.json")["model"]
    assert loaded.new_user_weight == 0.0 and ModelConfig().new_user_weight > 0


def test_history_excludes_the_target(space):
    history = space.vocab.history[space.vocab.catalogue_users.index("u1")]
    target, stranger = history[0], "nothing"
    users = tf.constant(["u1", "u1", "u0"])
    features = space.user_features(users, tf.constant([target, stranger, target]))
    target_index = space.movie_lookup(tf.constant([target])).numpy()[0]
    # Only where the history holds the target (u0 has no history, "nothing" is no movie).
    assert features["history_exclude"].numpy().tolist() == [target_index, 0, 0]

    # The tower's bag is the mean of the other rows (the L2 on the looked-up rows, too).
    tower = build_model("retrieval", space, ModelConfig(embedding_dim=8, l2=1e-3)).user_tower
    tower(space.user_features(users))
    rows = tower.history.embeddings.numpy()
    ids = space.user_features(tf.constant(["u1"]))["history"].flat_values.numpy()
    kept = ids[ids != target_index]
    bag = tower._bag("history", features["history"], None, features["history_exclude"])
    np.testing.assert_allclose(bag.numpy()[0], rows[kept].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bag.numpy()[1], rows[ids].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bag.numpy()[2], 0.0)
    penalties = []
    tower._bag("history", features["history"], penalties, features["history_exclude"])
    inverse = tower.row_l2.inverse["history"].numpy()
    expected = (np.square(rows[kept]).sum(1) * inverse[kept]).sum()
    np.testing.assert_allclose(penalties[0].numpy()[0], expected, rtol=1e-5)


CONFIGS = {
    "full": ModelConfig(embedding_dim=8),
    "ids-only": ModelConfig(embedding_dim=8, use_features=False, use_history=False),
    "deep-sampled": ModelConfig(embedding_dim=8, tower_layers=(16,), num_sampled_negatives=7,
                                gravity=0.1,
                                dropout=0.1, l2=1e-4, ranking_head="classes"),
}


@pytest.mark.parametrize("kind", ["retrieval", "ranking", "multitask"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_models_train_and_embed(tiny_tables, space, kind, name):
    ratings, _, _ = tiny_tables
    tf.keras.utils.set_random_seed(1)
    model = build_model(kind, space, CONFIGS[name])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    history = model.fit(make_dataset(ratings, 64, shuffle_seed=1), epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert model.user_embedding(tf.constant(["u1", "nobody"])).shape == (2, 8)
    assert model.movie_embedding(tf.constant(["m1", "nothing"])).shape == (2, 8)
    if kind != "retrieval":
        rating = model.predict_rating(tf.constant(["u1", "nobody"]), tf.constant(["m1", "x"]))
        assert rating.shape == (2,)
        assert np.all((rating.numpy() >= 1.0) & (rating.numpy() <= 5.0))


def test_retrieval_learns_genre_preference(tiny_tables, space):
    """Users rate movies of their genre; after training, those should outscore the rest."""
    ratings, movies, _ = tiny_tables
    tf.keras.utils.set_random_seed(3)
    model = build_model("retrieval", space, ModelConfig(embedding_dim=16))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    liked = ratings[ratings["user_rating"] == 5.0]
    model.fit(make_dataset(liked, 32, shuffle_seed=3), epochs=15, verbose=0)
    genre = dict(zip(movies["movie_id"], [g[0] for g in movies["movie_genres"]]))
    user_genre = liked.groupby("user_id")["movie_id"].first().map(genre)
    users = list(user_genre.index)
    scores = (model.user_embedding(tf.constant(users)).numpy()
              @ model.movie_embedding(tf.constant(list(genre))).numpy().T)
    same = np.array([[genre[m] == user_genre[u] for m in genre] for u in users])
    assert scores[same].mean() > scores[~same].mean() + 0.5 * scores.std()


def test_weights_round_trip(tmp_path, tiny_tables, space):
    from tfrs_movies.runs import build_trained, weights_prefix

    ratings, _, _ = tiny_tables
    config = CONFIGS["full"]
    model = build_model("multitask", space, config)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    model.fit(make_dataset(ratings, 64), epochs=1, verbose=0)
    weights_prefix(tmp_path, "multitask").parent.mkdir(parents=True)
    model.save_weights(str(weights_prefix(tmp_path, "multitask")))
    loaded = build_trained("multitask", space, config, tmp_path)
    users, movies = tf.constant(["u1", "u2"]), tf.constant(["m1", "m2"])
    np.testing.assert_allclose(loaded.user_embedding(users), model.user_embedding(users), rtol=1e-6)
    np.testing.assert_allclose(loaded.predict_rating(users, movies),
                               model.predict_rating(users, movies), rtol=1e-6)


def test_gravity_equals_the_dense_definition():
    from tfrs_movies.models import gravity

    rng = np.random.default_rng(0)
    users, movies = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    dense = np.sum((users @ movies.T) ** 2) / (5 * 7)
    got = gravity(tf.constant(users, tf.float32), tf.constant(movies, tf.float32)).numpy()
    assert got == pytest.approx(dense, rel=1e-5)


@pytest.mark.parametrize("kind", ["ranking", "multitask"])
def test_listwise_rate_equals_pairs(tiny_tables, space, kind):
    """``rate`` on [B, K] lists gives what ``predict_rating`` gives each pair (K = 1)."""
    tf.keras.utils.set_random_seed(2)
    model = build_model(kind, space, CONFIGS["full"])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    model.fit(make_dataset(tiny_tables[0], 64, shuffle_seed=2), epochs=1, verbose=0)
    users, movies = ["u1", "u2"], ["m1", "m2", "m3", "nothing"]
    lists = model.rate(model.rating_user(tf.constant(users)),
                       tf.stack([model.rating_movie(tf.constant(movies))] * 2))
    pairs = model.predict_rating(tf.constant([u for u in users for _ in movies]),
                                 tf.constant(movies * 2))
    np.testing.assert_allclose(lists.numpy().ravel(), pairs.numpy(), rtol=1e-5)


@pytest.mark.parametrize("name", ["full", "deep-sampled"])
def test_multitask_runs_each_tower_once_per_step(tiny_tables, space, name):
    model = build_model("multitask", space, CONFIGS[name])
    calls = {"user_tower": 0, "movie_tower": 0}
    for tower in calls:
        layer = getattr(model, tower)
        original = layer.call

        def counted(*args, _original=original, _tower=tower, **kwargs):
            calls[_tower] += 1
            return _original(*args, **kwargs)

        layer.call = counted
    batch = next(iter(make_dataset(tiny_tables[0], 16)))
    model.compute_loss(batch, training=True)
    assert calls == {"user_tower": 1, "movie_tower": 1}


def test_l2_is_on_looked_up_rows_and_estimates_the_whole_table_l2(tiny_tables, space):
    """Embedding gradients stay row-sparse, and over every train example at once the
    per-row penalty equals l2 * sum ||W||^2 of the rows train examples look up (up to the
    one history row an example drops: its own movie)."""
    ratings = tiny_tables[0]
    train = ratings[ratings["user_id"] != "u0"]
    # No new-user examples: they look up the unknown row, which no train example's own id does.
    model = build_model("retrieval", space, ModelConfig(embedding_dim=8, l2=1e-3,
                                                        new_user_rate=0.0))
    batch = next(iter(make_dataset(train, len(train))))
    with tf.GradientTape() as tape:
        loss, regularization = model.losses_of(batch, training=True)
        total = loss + regularization
    tables = {v.name: v for tower in (model.user_tower, model.movie_tower)
              for v in (t.embeddings for t in tower._tables().values())}
    gradients = dict(zip([v.name for v in model.trainable_variables],
                         tape.gradient(total, model.trainable_variables)))
    assert all(isinstance(gradients[name], tf.IndexedSlices) for name in tables)
    whole = 0.0
    for tower in (model.user_tower, model.movie_tower):
        for feature, table in tower._tables().items():
            used = space.example_occurrences(feature, table.input_dim) > 0
            whole += 1e-3 * float(tf.reduce_sum(tf.square(table.embeddings[used])))
    assert float(regularization) == pytest.approx(whole, rel=0.05)


def test_optimizer_choice():
    import types

    from tfrs_movies.config import AUTO_DENSE_ROWS, TrainConfig
    from tfrs_movies.errors import UserError
    from tfrs_movies.lazy_adam import LazyAdam
    from tfrs_movies.training import make_optimizer

    small = types.SimpleNamespace(num_users=AUTO_DENSE_ROWS - 10, num_movies=10)
    large = types.SimpleNamespace(num_users=AUTO_DENSE_ROWS, num_movies=10)
    adam = tf.keras.optimizers.Adam
    for optimizer, space, expected in (("auto", small, adam), ("auto", large, LazyAdam),
                                       ("lazy-adam", small, LazyAdam), ("adam", large, adam)):
        got = make_optimizer(TrainConfig(optimizer=optimizer), 10, space)
        assert type(got) is expected, (optimizer, space)
    with pytest.raises(UserError, match="unknown optimizer 'sgd'"):
        TrainConfig(optimizer="sgd")


def test_lazy_adam_updates_only_the_rows_a_batch_touched():
    from tfrs_movies.lazy_adam import LazyAdam

    table = tf.Variable(tf.ones([5, 2]))
    dense = tf.Variable(tf.ones([3]))
    twin = tf.Variable(tf.ones([3]))
    lazy, plain = LazyAdam(0.1), tf.keras.optimizers.Adam(0.1)
    for rows in ([1, 3, 3], [1]):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, rows) ** 2) + tf.reduce_sum(dense ** 2)
        lazy.apply_gradients(zip(tape.gradient(loss, [table, dense]), [table, dense]))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(twin ** 2)
        plain.apply_gradients([(tape.gradient(loss, twin), twin)])
    np.testing.assert_array_equal(table.numpy()[[0, 2, 4]], 1.0)  # untouched rows, moments
    moments = [v for v in lazy.variables if v.shape == table.shape]  # m and v
    assert len(moments) == 2
    for moment in moments:
        np.testing.assert_array_equal(moment.numpy()[[0, 2, 4]], 0.0)
    # row 3 moved once (step 1), row 1 twice: Adam's first steps move by about the rate
    np.testing.assert_allclose(table.numpy()[3], 0.9, rtol=1e-3)
    np.testing.assert_allclose(table.numpy()[1], 0.8, rtol=1e-2)
    np.testing.assert_allclose(dense.numpy(), twin.numpy(), rtol=1e-6)  # dense: plain Adam


def test_batches_shuffle_per_pass_and_fill_a_batch_from_few_rows():
    import pandas as pd

    from tfrs_movies.training import batches
    frame = pd.DataFrame({"user_id": [f"u{i % 3}" for i in range(10)],
                          "movie_id": [f"m{i}" for i in range(10)],
                          "user_rating": np.arange(10, dtype=np.float32)})
    ratings = lambda ds: [b["user_rating"].numpy().astype(int).tolist() for b in ds]  # noqa: E731
    ds = make_dataset(frame, 4, shuffle_seed=42)
    first, second = ratings(ds), ratings(ds)
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(10)) and first != second
    assert ratings(make_dataset(frame, 4, shuffle_seed=42)) == first  # fixed by the seed
    assert ratings(make_dataset(frame, 4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # A shard smaller than its batch still fills one (distributed input repeats such passes).
    small = ratings(batches(frame.iloc[:3], 8, 1, drop_remainder=True))
    assert [len(b) for b in small] == [8] and set(small[0]) == {0, 1, 2}
