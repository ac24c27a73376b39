"""The index's whole-catalogue top k against ``tf.math.top_k``, in one process.

    python -m benchmarks.top_k_speed [--k 104] [--shapes 1x1000000,64x1000000,128x10000]

For each ``BxN`` shape, random normal scores: the median ms of ``tf.math.top_k`` and of
``index._top_k_of_rows`` (what brute force ranks with: the grouped top k where a divisor of N
in 8..128 exists past ``GROUPED_TOP_MIN`` columns and k + E is a small share of the groups,
else ``tf.math.top_k`` itself), each traced once, then called ``--calls`` times alternating.
Checks that both give the same values and indices. Prints one line per shape.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import one_line_errors
from benchmarks.timing import median
from tfrs_movies import index

SHAPES = "1x1000000,64x1000000,64x100000,256x30000,128x10000"


def _main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=104, help="k (default: %(default)s, the "
                        "recommender's 100 candidates plus a few exclusions)")
    parser.add_argument("--shapes", default=SHAPES, help="comma-separated BxN (default: "
                        "%(default)s)")
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args(argv)
    import tensorflow as tf

    for shape in args.shapes.split(","):
        b, n = (int(v) for v in shape.lower().split("x"))
        scores = tf.constant(np.random.default_rng(0).normal(size=(b, n)).astype(np.float32))
        fns = {"tf.math.top_k": tf.function(lambda s: tuple(tf.math.top_k(s, args.k))),
               "index": tf.function(lambda s: tuple(index._top_k_of_rows(s, args.k)))}
        got = {name: fn(scores) for name, fn in fns.items()}
        same = all(np.array_equal(a.numpy(), b_.numpy())
                   for a, b_ in zip(got["tf.math.top_k"], got["index"]))
        seconds = {name: [] for name in fns}
        for _ in range(args.calls):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(scores)[0].numpy()
                seconds[name].append(time.perf_counter() - start)
        plain, ours = (median(seconds[name]) * 1000 for name in fns)
        print(f"[{b}, {n}] k={args.k}: tf.math.top_k {plain:.2f} ms, index {ours:.2f} ms "
              f"(groups of {index.group_size(n, args.k) or '-'}), {plain / ours:.2f}x, "
              f"identical: {same}", flush=True)
    return 0


main = one_line_errors(_main)


if __name__ == "__main__":
    raise SystemExit(main())
