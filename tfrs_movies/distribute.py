"""``--strategy``: the same train job under TensorFlow's own distribution engine.

``default``          one process, TensorFlow's default strategy (no distribution).
``mirrored``         one process, one replica per visible GPU; with no GPU, one per logical
                     CPU device (``tf.config.set_logical_device_configuration``), else CPU:0.
``multi-worker``     ``MultiWorkerMirroredStrategy``: every worker runs the same command with
                     its own ``TF_CONFIG``; gradients are all-reduced each step.
``parameter-server`` ``ParameterServerStrategy``: the chief runs the train job and sends steps
                     to the workers; ``worker`` and ``ps`` tasks serve until they are killed.

``TF_CONFIG`` is read from the environment as TensorFlow documents it, e.g.
``{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}``.

The batch size is global: each step consumes ``batch_size`` examples split evenly over the
replicas. Every task loss is a mean over that global batch and regularizers are divided by the
replica count, so the summed replica gradients equal the single-process gradient (tested).
Retrieval's in-batch negatives are gathered across replicas by default
(``ModelConfig.cross_replica_negatives``): each softmax sees all ``batch_size`` candidates,
as in one process; ``--per-replica-negatives`` keeps each replica's own share only.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os

import tensorflow as tf

from tfrs_movies.config import STRATEGIES
from tfrs_movies.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Role:
    """This process's place in the cluster; the ``chief`` writes the run dir and evaluates."""

    task_type: str | None = None  # None: a single process
    task_id: int = 0
    has_chief_task: bool = False  # without a "chief" task, worker 0 is the chief

    @property
    def chief(self) -> bool:
        if self.task_type in (None, "chief"):
            return True
        return self.task_type == "worker" and self.task_id == 0 and not self.has_chief_task

    def __str__(self) -> str:
        return "single process" if self.task_type is None else f"{self.task_type} {self.task_id}"


def tf_config() -> dict:
    """The parsed ``TF_CONFIG`` environment variable; a clear error when absent or malformed."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise UserError("this --strategy needs the cluster in the TF_CONFIG environment variable, "
                        'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
                        '"task": {"type": "worker", "index": 0}}\'')
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, task_id = task["type"], int(task["index"])
        members = cluster[task_type]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"TF_CONFIG {text!r}: expected {{'cluster': {{TYPE: [host:port, ...]}}, "
                        f"'task': {{'type': TYPE, 'index': N}}}} ({type(e).__name__}: {e})"
                        ) from None
    if not 0 <= task_id < len(members):
        raise UserError(f"TF_CONFIG task index {task_id} is outside cluster[{task_type!r}] "
                        f"({len(members)} entries)")
    return config


def role_from_tf_config() -> Role:
    config = tf_config()
    cluster, task = config["cluster"], config["task"]
    return Role(task_type=task["type"], task_id=int(task["index"]),
                has_chief_task="chief" in cluster)


def make_strategy(name: str) -> tuple[tf.distribute.Strategy, Role]:
    """Creates the strategy ``name`` (call it before any other TensorFlow op runs).

    For ``parameter-server``, a ``worker`` or ``ps`` task never returns: it serves the chief
    until it is killed.
    """
    if name == "default":
        return tf.distribute.get_strategy(), Role()
    if name == "mirrored":
        return _mirrored(), Role()
    if name == "multi-worker":
        role = role_from_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy(), role
    if name == "parameter-server":
        role = role_from_tf_config()
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if role.task_type in ("worker", "ps"):
            _serve(resolver, role)
        num_ps = len(tf_config()["cluster"].get("ps", []))
        if not num_ps:
            raise UserError("--strategy parameter-server needs at least one 'ps' task in "
                            "TF_CONFIG's cluster")
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=256 << 10, max_shards=num_ps)
        return tf.distribute.experimental.ParameterServerStrategy(
            resolver, variable_partitioner=partitioner), role
    raise UserError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")


@functools.cache
def _mirrored() -> tf.distribute.MirroredStrategy:
    """Over every GPU, else every logical CPU device. One per process: two strategies over
    the same devices would share collective instance keys."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])


def _serve(resolver, role: Role) -> None:
    """Runs this parameter-server cluster task until the process is killed."""
    log.info(f"Serving as parameter-server cluster task {role}; stop it when the chief is done")
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=role.task_type,
                                  task_index=role.task_id, protocol=resolver.rpc_layer or "grpc",
                                  start=True)
    server.join()
    raise SystemExit(0)


def describe(strategy: tf.distribute.Strategy, role: Role) -> str:
    """One line for the job log: the strategy, its replicas and this process's role."""
    kind = type(strategy).__name__
    if kind == "_DefaultDistributionStrategy":
        return "single process, no distribution"
    return f"{kind}: {strategy.num_replicas_in_sync} replica(s) in sync; this process: {role}"


def replicas() -> int:
    """Replicas the current step is split over (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def global_mean(per_replica_sum: tf.Tensor, local_batch: tf.Tensor) -> tf.Tensor:
    """The mean over the *global* batch from one replica's sum over its share of it.

    Replica gradients are summed, so each replica contributes ``sum / (local_batch * R)``;
    with one replica this is the plain batch mean.
    """
    denominator = tf.cast(local_batch, tf.float32) * float(replicas())
    return tf.cast(per_replica_sum, tf.float32) / denominator


def per_replica_share(value: tf.Tensor) -> tf.Tensor:
    """A term every replica computes in full (a regularizer), divided by the replica count so
    the summed gradients count it once."""
    return value / float(replicas())
