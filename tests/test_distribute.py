"""--strategy: losses that distribute exactly, and training that really distributes on CPU.

``conftest`` splits the CPU into two logical devices, so ``mirrored`` runs two replicas here;
``multi-worker`` runs two local worker processes talking gRPC on ports chosen at run time.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfrs_movies import config as cfg
from tfrs_movies import distribute
from tfrs_movies.data.synthetic import synthetic
from tfrs_movies.errors import UserError
from tfrs_movies.features import FeatureSpace, Vocabulary
from tfrs_movies.models import build_model
from tfrs_movies.runs import build_variables, load_run
from tfrs_movies.pipeline import train

REPO = Path(__file__).resolve().parents[1]
# Small enough for seconds per run, large enough that 3 epochs learn something.
SIZES = ["--dataset", "synthetic", "--users", "300", "--movies", "200", "--ratings", "20000"]
DATA = cfg.DataConfig(dataset="synthetic", synthetic_users=300, synthetic_movies=200,
                      synthetic_ratings=20_000)
TRAIN = dict(epochs=3, verbose=0)
# Seed-to-seed spread of these runs is about 0.01 nDCG and 0.01 RMSE.
NDCG_TOLERANCE, RMSE_TOLERANCE = 0.04, 0.03


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single")
    return train(out, DATA, cfg.ModelConfig(), cfg.TrainConfig(model="all", **TRAIN))


def test_conftest_gives_two_cpu_replicas():
    strategy, role = distribute.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    assert role.chief


@pytest.mark.parametrize("kind", ["retrieval", "ranking", "mf-gravity", "rating-classes"])
def test_replica_gradients_sum_to_the_single_process_gradient(kind):
    """Per-replica losses, summed over 2 replicas, give exactly the one-process gradient of
    the whole batch: mean losses, regularizers and gathered in-batch negatives included."""
    data = synthetic(users=40, movies=30, ratings=600, seed=3)
    vocab = Vocabulary.build(data.ratings, data.movies, data.users)
    # new_user_rate 0: its random draw differs between the replicas and the one process.
    config = cfg.ModelConfig(embedding_dim=8, l2=1e-3, gravity=0.1 if kind != "ranking" else 0,
                             num_sampled_negatives=0, new_user_rate=0.0)
    rows = data.ratings.iloc[:64]
    batch = {"user_id": tf.constant(rows["user_id"].to_numpy(str)),
             "movie_id": tf.constant(rows["movie_id"].to_numpy(str)),
             "user_rating": tf.constant(rows["user_rating"].to_numpy("float32"))}

    space = FeatureSpace(vocab)
    single = build_model(kind, space, config)
    build_variables(single, space)
    expected = _gradients(single, batch)

    strategy, _ = distribute.make_strategy("mirrored")
    with strategy.scope():
        space = FeatureSpace(vocab)
        mirrored = build_model(kind, space, config)
        build_variables(mirrored, space)
    mirrored.set_weights(single.get_weights())
    halves = strategy.experimental_distribute_values_from_function(
        lambda ctx: {k: v[32 * ctx.replica_id_in_sync_group:][:32] for k, v in batch.items()})
    per_replica = strategy.run(tf.function(lambda b: _gradients(mirrored, b)), args=(halves,))
    got = strategy.reduce("SUM", per_replica, axis=None)
    assert len(got) == len(expected)
    for g, e, v in zip(got, expected, single.trainable_variables):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=2e-4, atol=1e-6, err_msg=v.name)


def _gradients(model, batch) -> list[tf.Tensor]:
    with tf.GradientTape() as tape:
        loss, regularization = model.losses_of(batch, training=True)
        total = loss + regularization
    return [tf.convert_to_tensor(g) for g in tape.gradient(total, model.trainable_variables)]


def test_mirrored_training_matches_single_process(tmp_path, single_process):
    metrics = train(tmp_path, DATA, cfg.ModelConfig(),
                    cfg.TrainConfig(model="all", strategy="mirrored", **TRAIN))
    _assert_close(metrics, single_process)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["strategy"] == "mirrored"
    # The metrics are those of single-process copies that `load_run` built from the saved
    # weights (what `export` loads too): the weights do not depend on the strategy.
    assert set(load_run(tmp_path).models) == {"retrieval", "ranking"}


def test_multi_worker_with_two_local_processes(tmp_path, single_process):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    codes, logs = _run_cluster(tmp_path, "multi-worker", cluster,
                               [("worker", 0), ("worker", 1)], wait_for=[0, 1],
                               model="retrieval")
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert "2 replica(s) in sync; this process: worker 0" in logs[0]
    assert "worker 1: training done" in logs[1]
    _assert_close(json.loads((tmp_path / "run" / "metrics.json").read_text()), single_process)


def test_parameter_server_with_local_chief_worker_and_ps(tmp_path, single_process):
    chief, worker, ps = (f"127.0.0.1:{p}" for p in _free_ports(3))
    cluster = {"chief": [chief], "worker": [worker], "ps": [ps]}
    # The worker and ps tasks serve until killed; the chief's exit ends the job.
    codes, logs = _run_cluster(tmp_path, "parameter-server", cluster,
                               [("chief", 0), ("worker", 0), ("ps", 0)], wait_for=[0],
                               model="ranking")
    assert codes[0] == 0, "\n\n".join(log[-3000:] for log in logs)
    assert "Serving as parameter-server cluster task ps 0" in logs[2]
    _assert_close(json.loads((tmp_path / "run" / "metrics.json").read_text()), single_process)


def _run_cluster(tmp_path: Path, strategy: str, cluster: dict, tasks: list[tuple[str, int]],
                 wait_for: list[int], model: str) -> tuple[list[int], list[str]]:
    """Starts one ``trainer train --model MODEL`` process per task (one model kind: the
    processes share 2 cores, and mirrored already covers ``all``); waits (bounded) for
    ``wait_for`` and kills the rest. Returns the exit codes of ``wait_for`` and every task's
    log."""
    procs, paths = [], []
    for task_type, index in tasks:
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": task_type, "index": index}}))
        paths.append(tmp_path / f"{task_type}{index}.log")
        with open(paths[-1], "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "trainer", "train", "--strategy", strategy,
                 "--model", model, "--epochs", "3", "--output", str(tmp_path / "run"), *SIZES],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [procs[i].wait(timeout=420) for i in wait_for]
    finally:
        for p in procs:  # bounded: a hung collective or a serving task never outlives the test
            p.kill()
            p.wait()
    return codes, [path.read_text() for path in paths]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _assert_close(metrics: dict, reference: dict) -> None:
    """The run's retrieval nDCG@10 and ranking RMSE, each that the run trained, match."""
    assert "retrieval" in metrics or "ranking" in metrics, metrics
    if "retrieval" in metrics:
        ndcg, ref_ndcg = metrics["retrieval"]["ndcg@10"], reference["retrieval"]["ndcg@10"]
        assert abs(ndcg - ref_ndcg) < NDCG_TOLERANCE, (ndcg, ref_ndcg)
    if "ranking" in metrics:
        rmse, ref_rmse = metrics["ranking"]["rmse"], reference["ranking"]["rmse"]
        assert abs(rmse - ref_rmse) < RMSE_TOLERANCE, (rmse, ref_rmse)


@pytest.mark.parametrize("text, message", [
    (None, "needs the cluster in the TF_CONFIG"),
    ("{not json", "TF_CONFIG '{not json'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
     "task index 3 is outside"),
])
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, text, message):
    if text is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(UserError, match=message):
        distribute.make_strategy("multi-worker")


def test_unknown_strategy_is_a_config_error():
    with pytest.raises(UserError, match="unknown strategy 'tpu'"):
        cfg.TrainConfig(strategy="tpu")


@pytest.mark.parametrize("task, chief", [
    ({"task_type": None}, True), ({"task_type": "worker", "task_id": 0}, True),
    ({"task_type": "worker", "task_id": 1}, False),
    ({"task_type": "worker", "task_id": 0, "has_chief_task": True}, False),
    ({"task_type": "chief"}, True),
])
def test_only_the_chief_writes(task, chief):
    assert distribute.Role(**task).chief is chief
