"""Shared pieces of the speed benchmarks: clocks, percentiles, machine facts, child processes.

Every speed figure is a median over repeats measured after a warm-up (the first calls of a
``tf.function`` trace and build kernels; they are never timed). Latencies are reported as
percentiles in milliseconds. Training runs in child processes so that each peak memory figure
(``ru_maxrss``) belongs to one measurement only.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def median(values) -> float:
    """Median of a non-empty sequence of numbers."""
    values = list(values)
    if not values:
        raise ValueError("median of no values")
    return float(np.median(values))


def percentile_ms(seconds, q: float) -> float:
    """The ``q``-th percentile (0-100) of durations in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(seconds, np.float64), q) * 1000.0)


def time_calls(fn: Callable[[int], object], calls: int, warmup: int = 5) -> list[float]:
    """Seconds taken by each of ``calls`` calls ``fn(i)``, after ``warmup`` untimed calls.

    ``fn`` must return only when its work is done (e.g. after ``.numpy()``), so the clock
    covers the whole request.
    """
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(calls):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``; KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """Where the figures were measured: flat ``machine.*`` keys."""
    import tensorflow as tf

    return {
        "machine.cpu_count": os.cpu_count(),
        "machine.cpu_model": cpu_model(),
        "machine.memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                   / 2**30, 1),
        "machine.platform": platform.platform(),
        "machine.python": platform.python_version(),
        "machine.tensorflow": tf.__version__,
        "machine.load_average_1m": round(os.getloadavg()[0], 2),
    }


def run_child(module: str, args: list[str], timeout: float | None = None) -> dict:
    """Runs ``python -m module ARGS --result FILE`` and returns the JSON it wrote to FILE.

    A fresh interpreter per measurement: no TensorFlow state, threads or memory peak carry
    over from earlier measurements. The child's output streams through to ours.
    """
    with tempfile.TemporaryDirectory(prefix="speed-child-") as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, "-m", module, *args, "--result", str(result)]
        repo = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
        done = subprocess.run(command, env=env, timeout=timeout, check=False)
        if done.returncode != 0 or not result.exists():
            raise RuntimeError(f"{' '.join(command)} failed with exit status {done.returncode}")
        return json.loads(result.read_text())


def write_result(path: str | os.PathLike, values: dict) -> None:
    """What a child writes for `run_child`: its figures plus its own peak memory."""
    Path(path).write_text(json.dumps({**values, "peak_rss_mb": round(peak_rss_mb(), 1)}))
