"""Shared fixtures: tiny seeded MovieLens-shaped tables and the path of the real ML-100K."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so `--strategy mirrored` really runs two replicas in the tests
# (test_distribute); it has to happen before TensorFlow initializes its devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML_100K = SHARED_DATA / "ml-100k"


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    if not (ML_100K / "u.data").exists():
        pytest.skip(f"real MovieLens 100K not found at {ML_100K}")
    return ML_100K


# One quick ML-100K training, shared by the end-to-end tests (test_trainer, test_batch).
ML_100K_TINY_TRAIN = ["--epochs", "1", "--embedding-dim", "16", "--batch-size", "1024",
                      "--learning-rate", "0.005"]


@pytest.fixture(scope="session")
def ml100k_run(ml100k_dir, tmp_path_factory) -> Path:
    """A run trained once on ML-100K by ``trainer train`` (``ML_100K_TINY_TRAIN``); read-only
    for the tests that share it (copy it before changing anything)."""
    from trainer.__main__ import main

    out = tmp_path_factory.mktemp("runs") / "ml100k"
    assert main(["train", "--data-dir", str(ml100k_dir), "--output", str(out),
                 *ML_100K_TINY_TRAIN]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_tables():
    """40 users x 60 movies, ~600 ratings; users prefer movies of their favourite genre.

    Returns (ratings, movies, users) in the schema of ``tfrs_movies.data.schema``.
    """
    rng = np.random.default_rng(7)
    n_users, n_movies = 40, 60
    movie_genre = rng.integers(0, 4, n_movies)
    user_genre = rng.integers(0, 4, n_users)
    rows = []
    for u in range(n_users):
        liked = np.flatnonzero(movie_genre == user_genre[u])
        other = np.flatnonzero(movie_genre != user_genre[u])
        picks = np.concatenate([rng.choice(liked, min(10, len(liked)), replace=False),
                                rng.choice(other, 5, replace=False)])
        for t, m in enumerate(picks):
            rating = 5.0 if movie_genre[m] == user_genre[u] else float(rng.integers(1, 3))
            rows.append((f"u{u}", f"m{m}", rating, 1000 * u + t))
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "user_rating", "timestamp"])
    ratings["user_rating"] = ratings["user_rating"].astype(np.float32)
    movies = pd.DataFrame({
        "movie_id": [f"m{m}" for m in range(n_movies)],
        "movie_title": [f"Film {m % 9} of genre {g} ({1980 + m % 20})"
                        for m, g in enumerate(movie_genre)],
        "movie_genres": [[int(g), 7] for g in movie_genre],
    })
    users = pd.DataFrame({
        "user_id": [f"u{u}" for u in range(n_users)],
        "user_gender": rng.random(n_users) > 0.5,
        "bucketized_user_age": rng.choice([18.0, 25.0, 35.0], n_users).astype(np.float32),
        "user_occupation_label": rng.integers(0, 22, n_users),
        "user_zip_code": [f"{rng.integers(0, 10)}2345" for _ in range(n_users)],
    })
    return ratings, movies, users


# Files that share a session fixture run in one worker process, so it is built once.
_SHARED_WORKER = {"tests/test_trainer.py": "ml100k_run", "tests/test_batch.py": "ml100k_run"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist (``-n 2`` in setup.cfg) sends whole test files to a worker, as
    ``--dist loadfile`` does, keeping the files of ``_SHARED_WORKER`` together: module and
    shared session fixtures (trained runs, exports) are built once, not once per worker."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return _SHARED_WORKER.get(path, path)

    return FileScheduling(config, log)
