"""Retrieval quality under ``--strategy mirrored`` against one process, on CPU.

    python -m benchmarks.distributed_quality --data-dir ../shared/data/ml-100k \\
        --strategy mirrored [--per-replica-negatives] [--seed 7] [--replicas 2]

Splits this machine's CPU into ``--replicas`` logical devices first (as ``tests/conftest.py``
does), so ``mirrored`` really runs that many replicas without a GPU, then trains the default
retrieval model on the random split and prints one JSON line with the test nDCG@10 and
recall@10. ``--strategy default`` is the one-process baseline (the logical devices are then
unused).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed_quality",
                                description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data/ml-100k")
    p.add_argument("--strategy", choices=("default", "mirrored"), default="mirrored")
    p.add_argument("--per-replica-negatives", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--replicas", type=int, default=2)
    args = p.parse_args(argv)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * args.replicas)

    from tfrs_movies import config as cfg
    from tfrs_movies.pipeline import train

    with tempfile.TemporaryDirectory(prefix="dist-quality-") as out:
        metrics = train(out, cfg.DataConfig(data_dir=args.data_dir),
                        cfg.ModelConfig(cross_replica_negatives=not args.per_replica_negatives),
                        cfg.TrainConfig(model="retrieval", strategy=args.strategy, verbose=0,
                                        seed=args.seed))
    print(json.dumps({"strategy": args.strategy,
                      "negatives": "per-replica" if args.per_replica_negatives else "gathered",
                      "seed": args.seed, "ndcg@10": round(metrics["retrieval"]["ndcg@10"], 4),
                      "recall@10": round(metrics["retrieval"]["recall@10"], 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
