"""What the served path costs next to retrieval alone, measured in one process.

    python -m benchmarks --only cost --output bench/speed

On the ML-100K export of `speed_exports` (brute force; retrieve 100, rank, top 10):

  cost_p50_ms.MODEL.batchB          median latency of the ``MODEL`` signature (``retrieval``
                                    or ``recommender``) for B known users; the two models'
                                    calls alternate, so drift of the machine hits both alike
  cost_ratio.batchB                 recommender / retrieval of those medians
  cost_p50_ms.recommender_with_history.batchB   the recommender's ``with_history`` signature
                                    for the same B known users, each bringing ``history``
                                    (50) movies they have not rated (alternating with the two
                                    above)
  cost_history_ratio.batchB         with_history / the recommender's serving_default
  cost_p50_ms.recommender_new_user.batchB   the same with_history requests from an unseen
                                    id (""): the path a new user takes (the towers on the
                                    history alone, item-item candidates added)
  cost_new_user_ratio.batchB        that / the recommender's serving_default (reported; the
                                    target is the known users')
  cost_memory_growth_mb.history.usersU   as below, for one with_history call of U users
  cost_memory_growth_mb.usersU      peak resident memory during one recommender call of U
                                    users, minus the resident memory before it (a fresh child
                                    process: the model loaded and warmed up on one user, then
                                    the kernel's peak counter reset)
  cost_batch_users_per_s            ``serving.batch.score_users`` over every ML-100K user
                                    (943), top 10, local backend, median of ``repeats``
  cost_first_pass_users_per_s.signature   a fresh process (a child) loads the recommender
                                    and calls its signature on every user, 128 at a time:
                                    users per second of that first pass, loading excluded
  cost_first_pass_users_per_s.batch the rate ``python -m serving batch`` reports in a fresh
                                    process (``score_users`` on a new local client: its
                                    first pass, the model's load reported apart)
  cost_first_pass_ratio             batch / signature
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import speed_exports
from benchmarks.timing import median, run_child, write_result
from benchmarks.train_speed import Target, targets
from tfrs_movies import contract

MODELS = ("retrieval", "recommender")
HISTORY = "recommender_with_history"
NEW_USER = "recommender_new_user"

TARGETS = (
    *(Target(f"recommender_vs_retrieval.batch{b}", f"cost_ratio.batch{b}", "<=", goal,
             f"recommender / retrieval p50, batch {b}")
      for b, goal in ((1, 1.6), (64, 1.5), (256, 1.5))),
    *(Target(f"history_vs_known.batch{b}", f"cost_history_ratio.batch{b}", "<=", 1.5,
             f"recommender with_history (H = 50) / serving_default p50, batch {b}")
      for b in (64, 256)),
    Target("memory.users2000", "cost_memory_growth_mb.users2000", "<=", 400,
           "peak memory growth of one 2,000-user recommender call (MB)"),
    Target("history_memory.users2000", "cost_memory_growth_mb.history.users2000", "<=", 400,
           "peak memory growth of one 2,000-user with_history call, H = 50 (MB)"),
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Attributes: calls per batch size (after warm-up), batch sizes, users of the memory
    call, batch-scoring repeats."""

    calls: int = 100
    warmup: int = 5
    batches: tuple[int, ...] = (1, 64, 256)
    memory_users: int = 2000
    repeats: int = 3
    history: int = 50


def plan(quick: bool) -> Plan:
    return Plan(calls=30, repeats=2) if quick else Plan()


def histories(vocab, users: list[str], length: int, seed: int = 0) -> np.ndarray:
    """[len(users), length] str: for each user, ``length`` catalogue movies they have not rated
    (drawn at random; the rated ones the export already knows)."""
    catalogue = np.asarray(vocab.catalogue_movies, dtype=object)
    stored = dict(zip(vocab.catalogue_users, vocab.history))
    rng = np.random.default_rng(seed)
    out = np.full((len(users), length), "", dtype=object)
    for row, user in enumerate(users):
        seen = set(stored.get(user, []))
        picks = [m for m in rng.permutation(catalogue)[:length + len(seen)] if m not in seen]
        out[row, :min(length, len(picks))] = picks[:length]
    return out.astype(str)


def latencies(export_dir: Path, users: list[str], settings: Plan, history: dict) -> dict:
    """p50 per model and batch, the models' calls alternating; plus their ratios. ``history``:
    user -> the movies their with_history requests bring."""
    import time

    import tensorflow as tf

    loaded = {m: tf.saved_model.load(str(export_dir / m / "1")) for m in MODELS}
    fns = {m: loaded[m].signatures[contract.SIGNATURE] for m in MODELS}
    with_history = loaded["recommender"].signatures[contract.WITH_HISTORY]
    rng = np.random.default_rng(0)
    out = {}
    for batch in settings.batches:
        seconds = {m: [] for m in (*MODELS, HISTORY, NEW_USER)}
        empty = tf.fill([batch, 1], "")
        for i in range(settings.warmup + settings.calls):
            picked = list(rng.choice(users, batch))
            request = tf.constant(picked)
            movies = tf.constant(np.stack([history[u] for u in picked]))
            for m in (*MODELS, HISTORY, NEW_USER):
                start = time.perf_counter()
                if m in (HISTORY, NEW_USER):
                    got = with_history(user_id=request if m == HISTORY else empty[:, 0],
                                       history_movie_ids=movies, exclude_movie_ids=empty)
                else:
                    got = fns[m](user_id=request, exclude_movie_ids=empty)
                got["movie_ids"].numpy()
                if i >= settings.warmup:
                    seconds[m].append(time.perf_counter() - start)
        for m in (*MODELS, HISTORY, NEW_USER):
            out[f"cost_p50_ms.{m}.batch{batch}"] = round(median(seconds[m]) * 1000, 3)
        out[f"cost_ratio.batch{batch}"] = round(
            out[f"cost_p50_ms.recommender.batch{batch}"]
            / out[f"cost_p50_ms.retrieval.batch{batch}"], 2)
        for m, key in ((HISTORY, "cost_history_ratio"), (NEW_USER, "cost_new_user_ratio")):
            out[f"{key}.batch{batch}"] = round(
                out[f"cost_p50_ms.{m}.batch{batch}"]
                / out[f"cost_p50_ms.recommender.batch{batch}"], 2)
    return out


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(export_dir: str, users: list[str], result: str,
                 history: str | None = None) -> None:
    """One recommender call of ``len(users)`` users (``history``: a .npy of their [U, H]
    movies, through ``with_history``); writes the peak growth in MB."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(Path(export_dir) / "recommender" / "1"))
    if history:
        fn = loaded.signatures[contract.WITH_HISTORY]
        movies = np.load(history)

        def call(n):
            return fn(user_id=tf.constant(users[:n]), history_movie_ids=tf.constant(movies[:n]),
                      exclude_movie_ids=tf.fill([n, 1], ""))
    else:
        fn = loaded.signatures[contract.SIGNATURE]

        def call(n):
            return fn(user_id=tf.constant(users[:n]), exclude_movie_ids=tf.fill([n, 1], ""))
    call(1)
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before = _rss_kb("VmRSS")
    call(len(users))["movie_ids"].numpy()
    write_result(result, {"growth_mb": round((_rss_kb("VmHWM") - before) / 1024, 1)})


def first_pass_child(export_dir: str, users: list[str], mode: str, result: str) -> None:
    """In this fresh process, every user once: through the bare signature (``signature``,
    128 users a call) or through ``score_users`` as the batch CLI runs it (``batch``)."""
    import time

    if mode == "signature":
        import tensorflow as tf

        fn = tf.saved_model.load(str(Path(export_dir) / "recommender" / "1")).signatures[
            "serving_default"]
        start = time.perf_counter()
        for i in range(0, len(users), 128):
            chunk = users[i:i + 128]
            fn(user_id=tf.constant(chunk), exclude_movie_ids=tf.fill([len(chunk), 1], ""))[
                "movie_ids"].numpy()
        rate = len(users) / (time.perf_counter() - start)
    else:
        from serving.batch import score_users
        from serving.client import make_client

        with tempfile.TemporaryDirectory(prefix="cost-") as tmp:
            with make_client(model_dir=export_dir) as client:
                rate = score_users(client, users, Path(tmp) / "recs.parquet", n=10,
                                   progress=False).users_per_second
    write_result(result, {"users_per_s": round(rate, 1)})


def batch_scoring(export_dir: Path, users: list[str], work: Path, repeats: int) -> float:
    from serving.batch import score_users
    from serving.client import make_client

    with tempfile.TemporaryDirectory(prefix="cost-", dir=work) as tmp:
        ids = Path(tmp) / "users.parquet"
        pd.DataFrame({"user_id": users}).to_parquet(ids)
        with make_client(model_dir=str(export_dir)) as client:
            client.recommend(users[:128], n=1)  # loaded and traced before the clock starts
            client.recommend(users[:1], n=1)
            rates = [score_users(client, ids, Path(tmp) / f"recs-{i}.parquet", n=10,
                                 progress=False).users_per_second for i in range(repeats)]
    return median(rates)


def run(data_dir: Path, work: Path, quick: bool) -> dict:
    settings = plan(quick)
    print("cost: exporting ml100k", flush=True)
    exported = speed_exports.build(speed_exports.Catalogue("ml100k"), data_dir, work)
    export_dir = exported.dirs["brute-force"]
    users = sorted(exported.users)
    history = dict(zip(users, histories(exported.vocab, users, settings.history)))
    out = latencies(export_dir, users, settings, history)
    memory_users = [users[i % len(users)] for i in range(settings.memory_users)]
    movies = work / "cost-histories.npy"
    np.save(movies, np.stack([history[u] for u in memory_users]))
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=work, delete=False) as f:
        f.write("\n".join(memory_users))
    for key, extra in (("", []), ("history.", ["--history", str(movies)])):
        out[f"cost_memory_growth_mb.{key}users{settings.memory_users}"] = run_child(
            "benchmarks.serving_cost", ["--export-dir", str(export_dir), "--users-file", f.name,
                                        *extra])["growth_mb"]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=work, delete=False) as f:
        f.write("\n".join(users))
    out["cost_batch_users_per_s"] = round(batch_scoring(export_dir, users, work,
                                                        settings.repeats), 1)
    for mode in ("signature", "batch"):
        out[f"cost_first_pass_users_per_s.{mode}"] = run_child(
            "benchmarks.serving_cost", ["--export-dir", str(export_dir), "--users-file", f.name,
                                        "--first-pass", mode])["users_per_s"]
    out["cost_first_pass_ratio"] = round(out["cost_first_pass_users_per_s.batch"]
                                         / out["cost_first_pass_users_per_s.signature"], 2)
    out["cost_batch_users"] = len(users)
    out.update(targets(out, TARGETS, prefix="cost_target"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_cost",
                                description="child: the memory of one recommender call, or "
                                "a first pass over every user")
    p.add_argument("--export-dir", required=True)
    p.add_argument("--users-file", required=True, help="one user id per line")
    p.add_argument("--first-pass", choices=("signature", "batch"))
    p.add_argument("--history", help="the memory of a with_history call: a .npy of the "
                   "users' [U, H] movies")
    p.add_argument("--result", required=True)
    args = p.parse_args(argv)
    users = Path(args.users_file).read_text().split("\n")
    if args.first_pass:
        first_pass_child(args.export_dir, users, args.first_pass, args.result)
    else:
        memory_child(args.export_dir, users, args.result, args.history)
    return 0


if __name__ == "__main__":
    sys.exit(main())
