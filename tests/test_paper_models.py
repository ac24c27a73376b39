"""The seed reports' model variants (``paper_models``) and the ``analyze`` job, on tiny data."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfrs_movies import runs
from tfrs_movies.config import MODELS, ModelConfig
from tfrs_movies.features import FeatureSpace, Vocabulary
from tfrs_movies.kinds import KINDS, model_class
from tfrs_movies.models import TwoTowers, build_model, gravity
from tfrs_movies.paper_models import DEFAULT_GRAVITY
from tfrs_movies.training import make_dataset
from trainer.__main__ import main

VARIANTS = ["mf", "mf-gravity", "softmax-history", "rating-classes"]
CONFIG = ModelConfig(embedding_dim=8, tower_layers=(16,), ranking_layers=(16,), dropout=0.1,
                     l2=1e-4)


@pytest.fixture(scope="module")
def space(tiny_tables):
    """u0 is no train user, but its ratings are fold-in history (as in the ``strong`` split)."""
    ratings, movies, users = tiny_tables
    held_out = ratings["user_id"] == "u0"
    return FeatureSpace(Vocabulary.build(ratings[~held_out], movies, users, ratings[held_out]))


def _fit(kind, space, ratings, config=CONFIG, epochs=2):
    tf.keras.utils.set_random_seed(1)
    model = build_model(kind, space, config)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    history = model.fit(make_dataset(ratings, 64, shuffle_seed=1), epochs=epochs, verbose=0)
    return model, history.history["loss"]


def test_every_kind_is_registered_once_and_built_through_its_base_class():
    assert set(VARIANTS) <= set(KINDS) and set(KINDS) | {"all"} == set(MODELS)
    for kind in KINDS:
        assert issubclass(model_class(kind), TwoTowers)


@pytest.mark.parametrize("kind", VARIANTS)
def test_variant_trains_embeds_and_reloads(tiny_tables, space, kind, tmp_path):
    ratings, _, _ = tiny_tables
    model, losses = _fit(kind, space, ratings)
    assert np.all(np.isfinite(losses))
    users, movies = tf.constant(["u1", "u0", "nobody"]), tf.constant(["m1", "m2", "nothing"])
    # mf folds the movie bias into the embeddings: [u, 1] . [v, b_m] (D + 1 wide); the config
    # still says D, the width of its towers.
    width = 9 if kind.startswith("mf") else 8
    assert model.config.embedding_dim == 8
    assert model.user_tower(space.user_features(users)).shape == (3, 8)
    assert model.user_embedding(users).shape == (3, width)
    assert model.movie_embedding(movies).shape == (3, width)
    assert model.retrieves == (kind != "rating-classes")
    assert model.rates == (kind != "softmax-history")
    if model.rates:
        rating = model.predict_rating(users, movies).numpy()
        assert rating.shape == (3,) and np.all((rating >= 1.0) & (rating <= 5.0))
    model.save_weights(str(runs.weights_prefix(tmp_path, kind)))
    again = runs.build_trained(kind, space, CONFIG, tmp_path)
    np.testing.assert_allclose(again.user_embedding(users), model.user_embedding(users), rtol=1e-6)
    np.testing.assert_allclose(again.movie_embedding(movies), model.movie_embedding(movies),
                               rtol=1e-6)


def test_mf_dot_product_ranks_like_its_predicted_rating(tiny_tables, space):
    model, _ = _fit("mf", space, tiny_tables[0])
    movies = tf.constant(space.vocab.movie_ids)
    dot = (model.movie_embedding(movies) @ tf.transpose(model.user_embedding(tf.constant(["u3"]))))
    rating = model.predict_rating(tf.constant(["u3"] * len(space.vocab.movie_ids)), movies)
    # Same order (sigmoid is monotonic; the user and global biases are shared by all movies).
    assert np.array_equal(np.argsort(-dot.numpy()[:, 0], kind="stable"),
                          np.argsort(-rating.numpy(), kind="stable"))


def test_gravity_shrinks_the_gravity_term(tiny_tables, space):
    ratings = tiny_tables[0]
    terms = {}
    for kind, weight in (("mf", 0.0), ("mf-gravity", 10.0)):
        model, _ = _fit(kind, space, ratings, ModelConfig(embedding_dim=8, gravity=weight), 5)
        assert model.config.gravity == weight
        terms[kind] = float(gravity(model.user_tower.id_embedding.embeddings,
                                    model.movie_tower.id_embedding.embeddings))
    assert terms["mf-gravity"] < 0.5 * terms["mf"]
    default = build_model("mf-gravity", space, ModelConfig(embedding_dim=4))
    assert default.config.gravity == DEFAULT_GRAVITY  # 0 would make it plain mf


def test_softmax_history_serves_new_users_from_history(tiny_tables, space):
    model, _ = _fit("softmax-history", space, tiny_tables[0])
    assert "u0" not in space.vocab.user_ids  # no id embedding to fall back on
    new, empty = model.user_embedding(tf.constant(["u0", "nobody"])).numpy()
    assert np.abs(new - empty).max() > 1e-3
    # The id is not an input: a train user is their history (and demographics) too.
    features = space.user_features(tf.constant(["u1"]))
    features["user_index"] = tf.constant([0], tf.int64)
    np.testing.assert_allclose(model.user_tower(features),
                               model.user_embedding(tf.constant(["u1"])))


def test_rating_classes_has_a_class_per_rating_value(tiny_tables, space):
    model, _ = _fit("rating-classes", space, tiny_tables[0])
    users = model.rating_user(tf.constant(["u1", "u2"]))
    movies = model.rating_movie(tf.constant(["m1", "m2", "m3", "m1", "m2", "m3"]))
    logits = model.head(users, tf.reshape(movies, [2, 3, -1]))
    assert logits.shape == (2, 3, len(space.vocab.rating_values))


def test_train_with_min_movie_ratings_then_analyze(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--dataset", "synthetic", "--users", "80", "--movies", "50", "--ratings",
            "2000", "--min-movie-ratings", "35", "--model", "mf", "--epochs", "2",
            "--embedding-dim", "8", "--batch-size", "128", "--validation-fraction", "0.2",
            "--output", str(run)]
    assert main(args) == 0
    rated = pd.concat([pd.read_parquet(run / "split" / f"{p}.parquet") for p in ("train", "test")])
    counts = rated["movie_id"].value_counts()
    assert counts.min() >= 35
    assert 0 < len(pd.read_parquet(run / "catalog" / "movies.parquet")) < 50
    assert set(json.loads((run / "metrics.json").read_text())["mf"]) >= {"ndcg@10", "rmse"}

    out = tmp_path / "analysis"
    top = counts.index[0]
    capsys.readouterr()
    assert main(["analyze", "--run", str(run), "--output", str(out), "--movie", top,
                 "-k", "5"]) == 0
    progress = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("[analyze")]
    assert len(progress) >= 5 and any("t-SNE" in line for line in progress)
    for name in ("report.md", "neighbours.png", "norm_popularity.png", "tsne.png",
                 "loss_curves.png", "projector/vectors.tsv", "projector/metadata.tsv",
                 "projector/projector_config.pbtxt"):
        assert (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    vectors = np.loadtxt(out / "projector" / "vectors.tsv", delimiter="\t", ndmin=2)
    metadata = pd.read_csv(out / "projector" / "metadata.tsv", sep="\t")
    assert vectors.shape == (len(metadata), 9) and list(metadata.columns) == [
        "title", "genres", "popularity"]
    report = (out / "report.md").read_text()
    for section in ("Nearest neighbours", "norm vs popularity", "t-SNE", "Loss curves",
                    "Recommendations for user", "By dot", "By cosine"):
        assert section in report, section
    # Read back from the TensorBoard logs: each epoch's mean batch loss, validation too.
    assert "| mf | train | 2 |" in report and "| mf | validation | 2 |" in report
    assert "| last batch |" not in report

    capsys.readouterr()
    assert main(["analyze", "--run", str(run), "--output", str(out), "--kind", "ranking"]) == 2
    assert "--kind 'ranking'" in capsys.readouterr().err


def test_analysis_plots_compare_honestly(tmp_path):
    """The neighbours' log axis starts at 1 (a bar near the others never looks like zero);
    the losses get one panel per model, with its validation curve when there is one."""
    from types import SimpleNamespace

    from tfrs_movies import analysis

    Figure, _ = analysis._plotting()
    movies = SimpleNamespace(titles=["A", "B"], position={"a": 0, "b": 1})
    neighbours = {seed: {measure: pd.DataFrame({"ratings": ratings})
                         for measure, ratings in (("dot", [300, 340]), ("cosine", [210, 214]))}
                  for seed in ("a", "b")}
    fig = analysis._plot_neighbours(Figure, tmp_path / "n.png", movies, neighbours)
    low, high = fig.axes[0].get_ylim()
    assert low == 1 and high > 320
    curves = {"ranking": {"train": [(0, 1.0), (1, 0.8)], "validation": [(0, 1.1), (1, 0.9)],
                          "tags": {"train": "epoch_mean_loss", "validation": "epoch_mean_loss"}},
              "retrieval": {"train": [(0, 4.6), (1, 4.4)], "tags": {"train": "epoch_loss"}}}
    fig = analysis._plot_losses(Figure, tmp_path / "l.png", curves)
    assert [ax.get_title() for ax in fig.axes] == ["ranking", "retrieval"]
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train", "validation"]
    assert [line.get_label() for line in fig.axes[1].get_lines()] == ["train (last batch)"]
