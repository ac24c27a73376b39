"""Offline A/B comparison of two versions of one export on the same held-out users.

    from serving.compare import compare, format_report
    result = compare("exports/ml100k", "stable", "canary", "runs/ml100k/split/test.parquet",
                     train_ratings="runs/ml100k/split/train.parquet")
    print(format_report(result))

or ``python -m serving compare --model-dir DIR --a stable --b canary --test-ratings FILE``.

Protocol: every user of the test ratings file is answered by both versions (``a`` and ``b``,
each a version number or a label of the export's models.config, resolved once at the start)
through the in-process `LocalBackend`, ``n`` movies each from ``recommender`` (or
``retrieval``). The export itself leaves out the movies each user rated in its run's train
data, so the test file should be that run's held-out split; every test movie of a user is
relevant (binary relevance). Then, with the definitions of `tfrs_movies.metrics`:

- ``ndcg@n``, ``recall@n``, ``precision@n`` and ``novelty@n`` are means over the users (novelty:
  `metrics.novelty` of each user's list, the mean self-information ``-log2(popularity)`` of its
  movies; popularity is distinct users per movie over their number, from ``train_ratings``
  when given, else from the test file itself). b - a is the mean of the per-user differences
  and its interval the paired percentile bootstrap: users resampled with replacement
  ``resamples`` times (``numpy.random.default_rng(seed)``), the same resample for both.
- ``coverage@n``, the share of the catalogue in at least one list, is not a mean over users;
  each resample recomputes it for both versions. A resample holds only about 63% distinct
  users, so its coverage runs low; the interval is the resamples' percentile interval moved by
  their mean bias (centred like the estimate). The catalogue is every movie of the ratings
  files given or in a list of either version.
- ``changed``: the share of users whose top-n list differs (order or membership), and
  ``changed_sets``: whose set of movies differs.

An A/A comparison (one version against itself) has every difference and interval exactly 0.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from serving.backends import LocalBackend, ServingError
from serving.client import RecommenderClient
from tfrs_movies import metrics
from tfrs_movies.data.tabular import read_ratings_file
from tfrs_movies.errors import UserError
from tfrs_movies.tf_serving_config import parse_selector

MODELS = ("recommender", "retrieval")
PER_USER = ("ndcg", "recall", "precision", "novelty")


def _lists(client: RecommenderClient, model: str, users: list[str], n: int,
           batch_size: int) -> list[list[str]]:
    out = []
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        if model == "recommender":
            out += [[r.movie_id for r in row] for row in client.recommend(batch, n=n)]
        else:
            out += [[m for m, _ in row] for row in client.retrieve(batch, n=n)]
    return out


def _positions(lists: Sequence[Sequence[str]], index: dict[str, int], n: int) -> np.ndarray:
    """Movie id lists -> ``[U, n]`` int catalogue positions, -1 after a short list."""
    topk = np.full((len(lists), n), -1, np.int64)
    for u, row in enumerate(lists):
        topk[u, :len(row)] = [index[m] for m in row[:n]]
    return topk


def _popularity(ratings: pd.DataFrame, index: dict[str, int]) -> tuple[np.ndarray, int]:
    """Distinct users per catalogue position, and the number of users of ``ratings``."""
    pairs = ratings[["user_id", "movie_id"]].drop_duplicates()
    counts = pairs["movie_id"].value_counts()
    pop = np.zeros(len(index), np.int64)
    pop[[index[m] for m in counts.index]] = counts.to_numpy()
    return pop, int(pairs["user_id"].nunique())


def compare(model_dir: str | os.PathLike, a: str, b: str, test_ratings: str | os.PathLike, *,
            model: str = "recommender", n: int = 10,
            train_ratings: str | os.PathLike | None = None, resamples: int = 1000,
            seed: int = 0, confidence: float = 0.95, batch_size: int = 256) -> dict:
    """Compares versions ``a`` and ``b`` of ``model_dir`` (see the module docstring).

    Args:
      model_dir: the export dir.
      a, b: a version number (``"3"``) or a label of models.config (``"stable"``).
      test_ratings: held-out ratings (CSV/TSV/Parquet/u.data, as ``read_ratings_file``).
      model: ``recommender`` or ``retrieval``.
      n: list length (at most what the export returns).
      train_ratings: optional ratings for novelty's popularity (default: the test file).
      resamples, seed, confidence: the paired bootstrap.
      batch_size: users per request.

    Returns:
      A JSON-ready dict: ``a`` and ``b`` (asked, version, metrics), ``b_minus_a`` (per metric
      ``difference`` and ``interval`` [low, high]), ``changed``, ``changed_sets``, and the
      settings.
    """
    if model not in MODELS:
        raise UserError(f"compare ranks users' lists: model must be one of {', '.join(MODELS)}, "
                        f"got {model!r}")
    for name, value, low in (("n", n, 1), ("resamples", resamples, 1),
                             ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"{name} must be an int >= {low}, got {value!r}")
    if not 0 < confidence < 1:
        raise UserError(f"confidence must be in (0, 1), got {confidence!r}")
    selectors = {"a": parse_selector(a), "b": parse_selector(b)}
    test = read_ratings_file(test_ratings)
    train = read_ratings_file(train_ratings) if train_ratings is not None else None
    users = [str(u) for u in pd.unique(test["user_id"])]

    backend = LocalBackend(model_dir)
    sides, lists = {}, {}
    for side, (version, label) in selectors.items():
        # Resolved once: a promote during the comparison cannot mix two versions.
        try:
            path = backend.model_path(model, version, label)
        except ServingError as err:  # no such model, version or label in this export
            raise UserError(str(err)) from None
        resolved = int(os.path.basename(path))
        client = RecommenderClient(backend, versions={model: resolved})
        lists[side] = _lists(client, model, users, n, batch_size)
        longest = max(map(len, lists[side]), default=0)
        if longest < n:
            raise UserError(f"{path} returns at most {longest} movies per user, fewer than "
                            f"-n {n}: use -n {longest} or less")
        sides[side] = {"asked": str(a if side == "a" else b), "version": resolved}

    movie_ids = pd.unique(pd.concat(
        [test["movie_id"]] + ([train["movie_id"]] if train is not None else [])
        + [pd.Series([m for row in lists[s] for m in row], dtype=object) for s in lists]))
    index = {m: i for i, m in enumerate(movie_ids)}
    topk = {side: _positions(rows, index, n) for side, rows in lists.items()}
    by_user = test.groupby("user_id", sort=False)["movie_id"].apply(list)
    relevant = [np.array([index[m] for m in by_user[u]], np.int64) for u in users]
    popularity, pop_users = _popularity(train if train is not None else test, index)

    per_user = {}
    for side, rows in topk.items():
        per_user[side] = metrics.per_user_metrics(rows, relevant, n)
        per_user[side][f"novelty@{n}"] = np.array([
            metrics.novelty(row[None], popularity, pop_users) if (row >= 0).any() else np.nan
            for row in rows])
        if np.isnan(per_user[side][f"novelty@{n}"]).any():
            raise UserError(f"version {sides[side]['version']} returned an empty list for some "
                            f"users of {test_ratings}")
        sides[side].update({f"{m}@{n}": float(np.mean(per_user[side][f"{m}@{n}"]))
                            for m in PER_USER[:3]})
        sides[side][f"coverage@{n}"] = metrics.catalogue_coverage(rows, len(index))
        sides[side][f"novelty@{n}"] = float(np.mean(per_user[side][f"novelty@{n}"]))

    rng = np.random.default_rng(seed)
    diffs = {m: np.empty(resamples) for m in PER_USER + ("coverage",)}
    per_user_diff = {m: per_user["b"][f"{m}@{n}"] - per_user["a"][f"{m}@{n}"] for m in PER_USER}
    for r in range(resamples):
        rows = rng.integers(0, len(users), len(users))
        for m in PER_USER:
            diffs[m][r] = per_user_diff[m][rows].mean()
        diffs["coverage"][r] = (metrics.catalogue_coverage(topk["b"][rows], len(index))
                                - metrics.catalogue_coverage(topk["a"][rows], len(index)))
    tail = 100 * (1 - confidence) / 2
    b_minus_a = {}
    for m in PER_USER[:3] + ("coverage", "novelty"):
        key = f"{m}@{n}"
        difference = sides["b"][key] - sides["a"][key]
        low, high = np.percentile(diffs[m], [tail, 100 - tail])
        if m == "coverage":  # move the interval by the resamples' bias (module docstring)
            bias = float(np.mean(diffs[m])) - difference
            low, high = low - bias, high - bias
        b_minus_a[key] = {"difference": difference, "interval": [float(low), float(high)]}
    changed = [la != lb for la, lb in zip(lists["a"], lists["b"], strict=True)]
    changed_sets = [set(la) != set(lb) for la, lb in zip(lists["a"], lists["b"], strict=True)]
    return {
        "model_dir": os.fspath(model_dir), "model": model, "n": n, "users": len(users),
        "test_ratings": os.fspath(test_ratings),
        "popularity_from": os.fspath(train_ratings if train_ratings is not None
                                     else test_ratings),
        "catalogue": len(index),
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": confidence,
                      "method": "paired percentile bootstrap over users; coverage's interval "
                                "moved by the resamples' mean bias"},
        "a": sides["a"], "b": sides["b"], "b_minus_a": b_minus_a,
        "changed": float(np.mean(changed)), "changed_sets": float(np.mean(changed_sets)),
    }


def format_report(result: dict) -> str:
    """``compare``'s result as a small table."""
    n, a, b = result["n"], result["a"], result["b"]
    level = round(100 * result["bootstrap"]["confidence"])
    lines = [f"{result['model']} top-{n} on {result['users']:,} users of "
             f"{result['test_ratings']}",
             f"A = {a['asked']} (version {a['version']}), B = {b['asked']} (version "
             f"{b['version']}); {result['bootstrap']['resamples']} paired bootstrap resamples, "
             f"seed {result['bootstrap']['seed']}",
             f"{'metric':<14}{'A':>9}{'B':>9}{'B - A':>10}   {level}% interval"]
    for key, diff in result["b_minus_a"].items():
        low, high = diff["interval"]
        lines.append(f"{key:<14}{a[key]:>9.4f}{b[key]:>9.4f}{diff['difference']:>+10.4f}   "
                     f"[{low:+.4f}, {high:+.4f}]")
    lines.append(f"top-{n} changed for {100 * result['changed']:.1f}% of users (set of movies "
                 f"changed for {100 * result['changed_sets']:.1f}%); novelty popularity from "
                 f"{result['popularity_from']}")
    return "\n".join(lines)
