"""Quality benchmark on MovieLens 100K: our default models against baselines run here.

Protocols (``--protocols``, each on its own seeded split of ``--data-dir``):
  top-n      per-user random 75/25 split, every rating a positive, train items excluded,
             k=10: nDCG/P/R/MAP@10, coverage and novelty of the *exported* recommender (what
             is served: retrieve 100, re-rank, top 10) and retrieval models, against popularity
             EASE (closed form, lambda=500) and DLAE (its denoising form, the re-ranker's
             item-item weights at their defaults) on the same split; mean and spread over
             ``--seeds`` (each seeds the split and the training).
  rating     random 90/10 split and the fixed u1.base/u1.test split: RMSE and MAE of the
             ranking model, against scikit-surprise SVD and SVD++ (extra ``[bench]``).
  tutorial   the TFRS basic-retrieval tutorial: random 80/20 split seeded 42, top-100
             accuracy against all movies, seen movies not excluded.
  new-users  20% of the users held out whole (the ``strong`` split): the model never sees
             them (no rating, no users-table row); half of each one's ratings, at random, is
             the history their request brings (``with_history``), the other half the test.
  fresh      per user by time: the first 60% train the model, the next 20% arrive after the
             export and are the request's history, the last 20% are the test; beside it the
             same model retrained on the first 80% (what a nightly retrain would serve,
             ``serving_default``).
  time       per user by time: the last 20% test, the model trained on the rest, served with
             ``serving_default`` (the history is in train).
  ablations  (``--ablations``) the top-n protocol with one lever of the default retrieval
             model changed at a time, and the re-ranker ablations below.
  re-ranker  (``--reranker-ablations``, also part of ``--ablations``) on the last seed's run:
             the exported recommender with its re-ranker retrained on the same lists without
             one feature family (``tfrs_movies.reranker.FAMILIES``), with the pairwise loss,
             and with no re-ranker at all (served order: predicted rating).

new-users, fresh and time score the exported recommender asked as a client would (the
history in the request, no other exclusions) against EASE and popularity on the same split,
given the same history (their train is the model's train plus the requests' histories;
histories and train movies are never listed); nDCG/P/R/MAP@10, mean and spread over
``--seeds``; ``TARGETS`` are checked and tabled. Below those rows: the exported retrieval
model asked the same way (the re-ranker's candidates, and their recall@100), and for
new-users the recommender asked through ``serving_default`` with the history as exclusions
(what a client could do before).

Our models are trained with the defaults of ``python -m trainer train`` (only the split
differs); nothing here is tuned on a test split. Run::

    python -m benchmarks.quality --data-dir ../shared/data/ml-100k --output bench/quality
    python -m benchmarks.quality --protocols new-users,fresh,time --seeds 42 --output /tmp/q

Writes ``quality.json`` (flat keys) and ``quality.md`` (the tables) into ``--output``, after
each protocol (a stopped run keeps what it measured).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import tfrs_movies  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import one_line_errors
from tfrs_movies import contract
from tfrs_movies import metrics as M
from tfrs_movies.config import DataConfig, ExportConfig, ModelConfig, TrainConfig
from tfrs_movies.errors import UserError
from tfrs_movies.reranker import FAMILIES, ReRankerConfig, ease_fit

PUBLISHED_TOPN = {"BiVAE": 0.475, "BPR": 0.442, "LightGCN": 0.420, "NCF": 0.396, "SAR": 0.382}
ABLATIONS = {
    "no history": {"use_history": False},
    "no side features": {"use_features": False},
    "ids only (no history, no features)": {"use_history": False, "use_features": False},
    "no logQ correction": {"logq_correction": False},
    "temperature 0.1": {"temperature": 0.1},
    "+256 sampled negatives": {"num_sampled_negatives": 256},
    "no user id embedding": {"use_user_id": False},
}


def _index(train: pd.DataFrame, test: pd.DataFrame, movies: list[str]):
    users = sorted(set(train["user_id"]) | set(test["user_id"]))
    user_pos = {u: i for i, u in enumerate(users)}
    movie_pos = {m: i for i, m in enumerate(movies)}

    def pairs(frame):
        keep = frame["movie_id"].isin(movie_pos)
        return (frame.loc[keep, "user_id"].map(user_pos).to_numpy(np.int64),
                frame.loc[keep, "movie_id"].map(movie_pos).to_numpy(np.int64))

    return users, user_pos, movie_pos, pairs(train), pairs(test)


def _relevant(test_pairs, users_with_test):
    frame = pd.DataFrame({"u": test_pairs[0], "m": test_pairs[1]})
    groups = frame.groupby("u")["m"].agg(lambda s: np.unique(s.to_numpy()))
    return [groups[u] for u in users_with_test]


def baselines_topn(train, test, movies, k=10, ease_lambda=500.0) -> dict:
    """Popularity, EASE and DLAE (EASE's denoising form: ``DLAE_ROW``) on the same split,
    train items excluded."""
    users, _, _, tr, te = _index(train, test, movies)
    evaluated = np.unique(te[0])
    relevant = _relevant(te, evaluated)
    out = {}
    pop = np.bincount(tr[1], minlength=len(movies)).astype(np.float64)
    scores = np.tile(pop, (len(users), 1))
    out["popularity"] = M.ranking_metrics(M.topk_from_scores(scores, tr, k)[evaluated], relevant, k)
    # The closed forms the served recommender's re-ranker reads as a feature: EASE, and
    # DLAE, its default.
    for row, lam, dropout in ((f"EASE (lambda={ease_lambda:g})", ease_lambda, 0.0),
                              (DLAE_ROW, *DLAE)):
        closed = ease_fit(train, np.asarray(users, dtype=str), np.asarray(movies, dtype=str),
                          lam, dropout=dropout)[0].astype(np.float64)
        out[row] = M.ranking_metrics(M.topk_from_scores(closed, tr, k)[evaluated], relevant, k)
    return out


def exported_topn(export_dir: Path, train, test, movies, k=10) -> dict:
    """nDCG/P/R/MAP@k, coverage and novelty of the exported recommender and retrieval models
    (train items are excluded in-graph by the export, so the client sends no exclusions)."""
    import tensorflow as tf

    users, user_pos, movie_pos, tr, te = _index(train, test, movies)
    evaluated = np.unique(te[0])
    relevant = _relevant(te, evaluated)
    out = {}
    seen = np.unique(tr[0] * len(movies) + tr[1])
    popularity = np.bincount(seen % len(movies), minlength=len(movies))
    for name in ("recommender", "retrieval"):
        fn = tf.saved_model.load(str(export_dir / name / "1")).signatures["serving_default"]
        ids = np.asarray(users)[evaluated]
        rows = []
        for i in range(0, len(ids), 512):
            batch = tf.constant(ids[i:i + 512])
            got = fn(user_id=batch, exclude_movie_ids=tf.fill([len(ids[i:i + 512]), 1], ""))
            rows.append(contract.decode(got["movie_ids"].numpy()))
        listed = np.vectorize(lambda m: movie_pos.get(m, -1))(np.concatenate(rows))
        topk = listed[:, :k]
        ceiling = {}
        if name == "retrieval":  # what the re-ranker can reach: its candidates' recall
            width = listed.shape[1]
            ceiling[f"recall@{width}"] = M.ranking_metrics(listed, relevant, width)[
                f"recall@{width}"]
        out[f"ours: exported {name}"] = {
            **M.ranking_metrics(topk, relevant, k), **ceiling,
            f"coverage@{k}": M.catalogue_coverage(topk, len(movies)),
            f"novelty@{k}": M.novelty(topk, popularity, np.unique(tr[0]).size)}
    return out


RERANKER_ABLATIONS = {
    **{f"re-ranker without its {family} features": {"without": (family,)}
       for family in FAMILIES},
    "re-ranker with the pairwise loss": {"loss": "pairwise"},
    "no re-ranker (served order: predicted rating)": None,
}


def reranker_ablations(trained, work: Path) -> dict:
    """The exported recommender's top-n metrics with each ``RERANKER_ABLATIONS`` change of the
    re-ranker, trained on the lists the run's own re-ranker learned from."""
    from tfrs_movies import reranker, reranker_lists
    from tfrs_movies.export import export

    served = trained.reranker
    base = served.config if served is not None else reranker.ReRankerConfig()
    seed = trained.train.seed
    found = reranker_lists.lists(trained.split.train, trained.movies, trained.users,
                                 trained.split.fold_in, trained.model,
                                 dataclasses.replace(trained.train, verbose=0), base, seed)
    split, movies, out = trained.split, trained.vocab.catalogue_movies, {}
    try:
        for label, change in RERANKER_ABLATIONS.items():
            family = (change or {}).get("without", ("",))[0]
            if family and not set(FAMILIES[family]) & set(base.used_features):
                continue  # a family this re-ranker does not read
            print(f"ablation: {label}")
            config = dataclasses.replace(base, **change) if change is not None else None
            trained.reranker = None
            if config is not None and found is not None:
                # The served re-ranker's tables (recent counts, sittings, EASE) are the run's
                # data: an ablation changes the head, not them.
                trained.reranker = dataclasses.replace(
                    served, model=reranker.train_on(found, config, seed))
            target = work / f"reranker-ablation-{len(out)}"
            export(trained, target, ExportConfig())
            measured = exported_topn(target, split.train, split.test, movies)
            out[f"ablation (seed {seed}): {label}"] = measured["ours: exported recommender"]
    finally:
        trained.reranker = served
    return out


def _train(data: DataConfig, out: Path, kind: str = "all", fit: TrainConfig | None = None,
           **model) -> Path:
    """Trains ``kind`` with ``python -m trainer train``'s defaults (``fit``: other settings,
    for tests) into ``out``, seeded by ``data.seed``."""
    from tfrs_movies.pipeline import train

    fit = dataclasses.replace(fit or TrainConfig(), model=kind, verbose=0, seed=data.seed)
    train(out, data, dataclasses.replace(ModelConfig(), **model), fit)
    return out


def _mean_and_spread(per_seed: list[dict]) -> tuple[dict, dict]:
    """{row: {metric: mean}}, {row: {metric: standard deviation}} over the seeds' results."""
    mean, spread = {}, {}
    for row in per_seed[0]:
        keys = [k for k, v in per_seed[0][row].items() if isinstance(v, float)]
        values = {k: np.asarray([r[row][k] for r in per_seed]) for k in keys}
        mean[row] = {k: float(v.mean()) for k, v in values.items()}
        spread[row] = {k: float(v.std()) for k, v in values.items()}
    return mean, spread


def surprise_rmse(train: pd.DataFrame, test: pd.DataFrame, seed: int = 42) -> dict:
    """scikit-surprise SVD and SVD++ (library defaults) on the same split; {} if missing."""
    try:
        import surprise
    except ImportError:
        print("scikit-surprise not installed (pip install '.[bench]'): skipping SVD rows")
        return {}
    reader = surprise.Reader(rating_scale=(1, 5))
    full = surprise.Dataset.load_from_df(train[["user_id", "movie_id", "user_rating"]], reader)
    trainset = full.build_full_trainset()
    testset = list(test[["user_id", "movie_id", "user_rating"]].itertuples(index=False, name=None))
    out = {}
    for name, algo in (("SVD", surprise.SVD(random_state=seed)),
                       ("SVD++", surprise.SVDpp(random_state=seed))):
        start = time.perf_counter()
        algo.fit(trainset)
        pred = np.asarray([p.est for p in algo.test(testset)])
        out[f"surprise {name}"] = M.rating_metrics(test["user_rating"].to_numpy(np.float64), pred)
        print(f"  surprise {name}: rmse {out[f'surprise {name}']['rmse']:.4f} "
              f"({time.perf_counter() - start:.0f}s)")
    return out


# The protocols of a run, in the order they run (``--protocols``); the last three send the
# user's history in the request (or train on it) and score the served recommender beside EASE.
PROTOCOLS = ("top-n", "rating", "tutorial", "new-users", "fresh", "time")
HISTORY_PROTOCOLS = ("new-users", "fresh", "time")
DESCRIBED = {
    "top-n": "top-n (per-user random 75/25)",
    "new-users": "new-users (20% of users held out whole; half their ratings in the request)",
    "fresh": "fresh (per user by time: 60% train, next 20% in the request, last 20% test)",
    "time": "time (per user by time: last 20% test)",
}
SERVED = "ours: exported recommender"  # every served row's label starts so (then: how asked)
RETRAINED = "ours: recommender retrained on the first 80% (serving_default)"
EASE_ROW = "EASE (lambda=500)"
# The re-ranker's item-item weights at their defaults, as a baseline of their own.
DLAE = (ReRankerConfig.ease_lambda, ReRankerConfig.ease_dropout)
DLAE_ROW = f"DLAE (lambda={DLAE[0]:g}, dropout={DLAE[1]:g})"
# (protocol, served row's nDCG@10 at least: a baseline row's plus a margin, or a number)
TARGETS = (("new-users", EASE_ROW, 0.01), ("fresh", RETRAINED, -0.005), ("fresh", EASE_ROW, 0.0),
           ("time", EASE_ROW, 0.03), ("top-n", EASE_ROW, 0.0), ("top-n", None, 0.50))


@dataclasses.dataclass
class Cut:
    """One seeded split of a history protocol; every part a ratings table (``RATING_COLUMNS``)
    with the dataset's rows in their order.

    Attributes:
      train: what the model is trained on.
      history: what the evaluated users' requests bring (empty where train holds it).
      test: what is scored; none of its (user, movie) pairs is in train or history.
      new_users: the users held out whole, sorted: the model must not know them.
    """

    train: pd.DataFrame
    history: pd.DataFrame
    test: pd.DataFrame
    new_users: tuple[str, ...] = ()

    @property
    def known(self) -> pd.DataFrame:
        """Train plus the requests' histories: what EASE and popularity fold in, and what no
        list may hold."""
        return pd.concat([self.train, self.history], ignore_index=True)


def split_new_users(ratings: pd.DataFrame, seed: int, users: float = 0.2,
                    history: float = 0.5) -> Cut:
    """``users`` of the users held out whole (the ``strong`` split of ``tfrs_movies.data``):
    ``history`` of each one's ratings, at random, is their request's history, the rest (at
    least one) their test; every other user's ratings are train."""
    from tfrs_movies.data import MovieLensData, make_split

    split = make_split(MovieLensData(ratings, pd.DataFrame(), pd.DataFrame(), "new-users"),
                       DataConfig(split="strong", test_fraction=users, fold_in_fraction=history,
                                  seed=seed))
    return Cut(split.train, split.fold_in, split.test, tuple(sorted(set(split.test["user_id"]))))


def split_by_time(ratings: pd.DataFrame, seed: int, train: float = 0.8,
                  history: float = 0.0) -> Cut:
    """Each user's ratings in time order (equal timestamps in a seeded order): the first
    ``train`` of them (rounded, at least one) train, the next ``history`` the request's
    history, the rest (at least one where the user has two) the test."""
    rng = np.random.default_rng(seed)
    codes = pd.factorize(ratings["user_id"])[0]
    order = np.lexsort((rng.random(len(ratings)), ratings["timestamp"].to_numpy(), codes))
    ranked = codes[order]
    rank = np.empty(len(codes), np.int64)
    rank[order] = np.arange(len(codes)) - np.searchsorted(ranked, ranked)
    count = np.bincount(codes)[codes]
    first = np.clip(np.round(train * count), 1, np.maximum(count - 1, 1))
    second = np.clip(np.round((train + history) * count), first, np.maximum(count - 1, first))
    part = (rank >= first).astype(np.int64) + (rank >= second)
    return Cut(*(ratings[part == p].reset_index(drop=True) for p in range(3)))


def split_fresh(ratings: pd.DataFrame, seed: int) -> Cut:
    """``fresh``: per user by time 60% train, 20% history, 20% test. Its train plus history
    is ``split_time``'s train (same seed, same order), so one model is its retrain on 80%."""
    return split_by_time(ratings, seed, 0.6, 0.2)


def split_time(ratings: pd.DataFrame, seed: int) -> Cut:
    """``time``: per user by time the last 20% test, the rest train (no request history)."""
    return split_by_time(ratings, seed, 0.8, 0.0)


def _histories(history: pd.DataFrame) -> dict[str, list[str]]:
    """Each user's movies, oldest first (equal times by movie id, as the vocabulary orders)."""
    ordered = history.sort_values(["user_id", "timestamp", "movie_id"], kind="stable")
    return ordered.groupby("user_id", sort=False)["movie_id"].agg(list).to_dict()


def ask(export_dir: Path, users, histories: list[list[str]],
        signature: str = contract.WITH_HISTORY, model: str = "recommender"):
    """What the export's ``model`` serves ``users`` [B], each with its ``histories`` entry
    (movie ids, oldest first) in the request and no other exclusions, asked as a client asks:
    (movie ids [B, N] object array, known [B] bool, the signature asked).

    An export without ``with_history`` (written before it) is asked through
    ``serving_default`` with the history as exclusions, what a client could do then."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(Path(export_dir) / model / "1"))
    used = signature if signature in loaded.signatures else contract.SIGNATURE
    fn = loaded.signatures[used]
    ids, known = [], []
    for i in range(0, len(users), 512):
        batch, lists = list(users[i:i + 512]), histories[i:i + 512]
        pad = np.full((len(batch), max(1, max(map(len, lists)))), contract.PAD, dtype=object)
        for row, movies in enumerate(lists):
            pad[row, :len(movies)] = movies
        rows, pad = tf.constant(np.asarray(batch, dtype=str)), tf.constant(pad.astype(str))
        if used == contract.WITH_HISTORY:
            got = fn(user_id=rows, history_movie_ids=pad,
                     exclude_movie_ids=tf.fill([len(batch), 1], contract.PAD))
        else:
            got = fn(user_id=rows, exclude_movie_ids=pad)
        ids.append(contract.decode(got["movie_ids"].numpy()))
        known.append(got["known"].numpy())
    return np.concatenate(ids), np.concatenate(known), used


def served_topn(export_dir: Path, cut: Cut, movies: list[str],
                signature: str = contract.WITH_HISTORY, k: int = 10,
                model: str = "recommender"):
    """The exported ``model`` asked (``ask``) for every test user of ``cut`` with their
    request history: (row label, {nDCG/P/R/MAP@k, coverage@k, known: the share of users not
    answered with the popularity fallback; for retrieval also recall@K, its K candidates'
    recall, the ceiling of the re-ranking}, the users asked, their ``known``)."""
    users, _, movie_pos, _, te = _index(cut.known, cut.test, movies)
    evaluated = np.unique(te[0])
    asked = np.asarray(users, dtype=object)[evaluated]
    histories = _histories(cut.history)
    ids, known, used = ask(export_dir, asked, [histories.get(u, []) for u in asked], signature,
                           model)
    listed = np.vectorize(lambda m: movie_pos.get(m, -1), otypes=[np.int64])(ids)
    topk, relevant = listed[:, :k], _relevant(te, evaluated)
    label = f"ours: exported {model} via "
    if used == contract.WITH_HISTORY:
        label += "with_history (the history in the request)"
    elif len(cut.history):
        label += "serving_default (the history as exclusions, as before with_history)"
    else:
        label += "serving_default"
    metrics = {**M.ranking_metrics(topk, relevant, k),
               f"coverage@{k}": M.catalogue_coverage(topk, len(movies)),
               "known": float(np.mean(known))}
    if model == "retrieval":
        width = listed.shape[1]
        metrics[f"recall@{width}"] = M.ranking_metrics(listed, relevant, width)[f"recall@{width}"]
    return label, metrics, asked, known


def train_on(ratings: pd.DataFrame, test: pd.DataFrame, data, folder: Path, seed: int,
             unknown: tuple[str, ...] = (), fit: TrainConfig | None = None):
    """Trains what is served (``--model all``, train's defaults) on ``ratings`` alone, with
    ``test`` as the run's test split, and exports it: (the run, its export dir). ``data``'s
    movies and users tables go with it, less the ``unknown`` users (held out whole: a new
    user brings no users-table row either)."""
    from tfrs_movies.export import export
    from tfrs_movies.runs import load_run

    folder.mkdir(parents=True, exist_ok=True)
    users = data.users[~data.users["user_id"].isin(set(unknown))]
    files = {}
    for name, frame in (("ratings", ratings), ("test", test), ("movies", data.movies),
                        ("users", users)):
        files[name] = str(folder / f"{name}.parquet")
        frame.to_parquet(files[name], index=False)
    config = DataConfig(dataset="csv", ratings=files["ratings"], test_ratings=files["test"],
                        movies=files["movies"], users=files["users"], seed=seed)
    trained = load_run(_train(config, folder / "run", fit=fit))
    export(trained, folder / "export", ExportConfig())
    return trained, folder / "export"


def _check_new_users(trained, cut: Cut, export_dir: Path, asked, known, label: str) -> int:
    """Raises if a new user is known to the run (the split would be wrong); returns how many
    answers' ``known`` differ from the contract's: through ``with_history`` true exactly
    where the request brings a history (also probed: one new user asked without and with
    theirs), through ``serving_default`` false."""
    seen = set(trained.vocab.user_ids) | set(trained.vocab.catalogue_users)
    leaked = [u for u in cut.new_users if u in seen]
    if leaked:
        raise RuntimeError(f"new-users: {len(leaked)} held-out users are known to the run "
                           f"(e.g. {leaked[0]!r})")
    histories = _histories(cut.history)
    probe = cut.new_users[0]
    _, got, used = ask(export_dir, [probe, probe], [[], histories.get(probe, [])])
    with_history = used == contract.WITH_HISTORY
    expected = np.asarray([with_history and bool(histories.get(u)) for u in asked])
    wrong = int(np.sum(known != expected)) + int(
        np.sum(got != np.asarray([False, with_history and bool(histories.get(probe))])))
    if wrong:
        print(f"  WARNING: {wrong} of {len(asked) + 2} new-user answers ({label}) have a "
              f"`known` the contract does not give")
    return wrong


def history_protocol(name: str, data, seed: int, work: Path, fit: TrainConfig | None = None,
                     first_80: dict | None = None) -> dict:
    """One seed of ``name`` (one of ``HISTORY_PROTOCOLS``) on ``data`` (``MovieLensData``):
    {row: metrics}, what is served first, then EASE, popularity, then what explains the
    served row: retrieval asked the same way (its candidates), and for ``new-users`` the
    recommender asked as before ``with_history``. ``first_80`` (seed -> export dir) shares
    the model trained on each user's first 80% between ``time`` and ``fresh``."""
    movies = sorted(str(m) for m in data.movies["movie_id"])
    first_80 = {} if first_80 is None else first_80

    def trained_on_first_80() -> Path:
        if seed not in first_80:
            cut = split_time(data.ratings, seed)
            first_80[seed] = train_on(cut.train, cut.test, data, work / f"first-80-{seed}",
                                      seed, fit=fit)[1]
        return first_80[seed]

    if name == "new-users":
        cut = split_new_users(data.ratings, seed)
        trained, exported = train_on(cut.train, cut.test, data, work / f"new-users-{seed}",
                                     seed, cut.new_users, fit)
        label, served, asked, known = served_topn(exported, cut, movies)
        served["known mismatches"] = float(
            _check_new_users(trained, cut, exported, asked, known, label))
        rows = {label: served}
    elif name == "fresh":
        cut = split_fresh(data.ratings, seed)
        exported = train_on(cut.train, cut.test, data, work / f"fresh-{seed}", seed, fit=fit)[1]
        label, served, _, _ = served_topn(exported, cut, movies)
        nightly = Cut(cut.known, cut.history.iloc[:0], cut.test)
        rows = {label: served, RETRAINED: served_topn(trained_on_first_80(), nightly, movies,
                                                      contract.SIGNATURE)[1]}
    elif name == "time":
        cut = split_time(data.ratings, seed)
        label, served, _, _ = served_topn(trained_on_first_80(), cut, movies, contract.SIGNATURE)
        rows = {label: served}
    else:
        raise ValueError(f"{name!r} is not one of {', '.join(HISTORY_PROTOCOLS)}")
    baselines = baselines_topn(cut.known, cut.test, movies)
    rows.update({row: baselines[row] for row in sorted(baselines, key="popularity".__eq__)})
    if name != "time":  # what the re-ranker starts from: retrieval asked the same way
        label, retrieved, _, _ = served_topn(exported, cut, movies, model="retrieval")
        rows[label] = retrieved
    if name == "new-users":  # what a client could do before with_history
        label, before, _, _ = served_topn(exported, cut, movies, contract.SIGNATURE)
        rows[label] = before
    return rows


def targets(results: dict) -> dict:
    """``TARGETS`` on the protocols ``results`` holds: {text: {goal, measured, met}}, nDCG@10
    means."""
    out = {}
    for protocol, baseline, margin in TARGETS:
        rows = results.get(protocol)
        served = next((r for r in rows or {} if r.startswith(SERVED)), None)
        if served is None or (baseline is not None and baseline not in rows):
            continue
        goal = margin if baseline is None else rows[baseline]["ndcg@10"] + margin
        measured = rows[served]["ndcg@10"]
        if baseline is None:
            than = f"{margin:.2f}"
        else:
            than = baseline + (f" {'+' if margin > 0 else '-'} {abs(margin):g}" if margin else "")
        out[f"{protocol}: served >= {than}"] = {"goal": goal, "measured": measured,
                                                 "met": float(measured >= goal)}
    return out


def run(data_dir: Path, output: Path | None = None, ablations: bool = False,
        seeds: tuple[int, ...] = (42,), reranker_only: bool = False,
        protocols: tuple[str, ...] = PROTOCOLS) -> dict:
    """Runs ``protocols`` (in ``PROTOCOLS`` order) and returns their results; with ``output``,
    writes ``quality.json`` and ``quality.md`` there after each one."""
    from tfrs_movies.evaluation import evaluate_retrieval
    from tfrs_movies.export import export
    from tfrs_movies.runs import load_run

    start = time.perf_counter()
    results: dict[str, dict] = {}
    work = Path(tempfile.mkdtemp(prefix="quality-"))
    base = DataConfig(data_dir=str(data_dir))
    dataset, first_80 = None, {}

    for protocol in (p for p in PROTOCOLS if p in protocols):
        if protocol == "top-n":
            per_seed = []
            for seed in seeds:
                print(f"top-n: per-user 75/25 split, seed {seed}")
                topn = dataclasses.replace(base, split="user", test_fraction=0.25, seed=seed)
                trained = load_run(_train(topn, work / f"topn-{seed}"))
                export(trained, work / f"topn-export-{seed}", ExportConfig())
                movies = trained.vocab.catalogue_movies
                split = trained.split
                per_seed.append({**exported_topn(work / f"topn-export-{seed}", split.train,
                                                 split.test, movies),
                                 **baselines_topn(split.train, split.test, movies)})
                print("  " + ", ".join(f"{row}: {m['ndcg@10']:.4f}"
                                       for row, m in per_seed[-1].items()))
            _seeded(results, "top-n", seeds, per_seed)
            if ablations or reranker_only:  # on the last seed's split
                results["top-n"].update(reranker_ablations(trained, work))
            if ablations:
                for label, change in ABLATIONS.items():
                    print(f"ablation: {label}")
                    ablated = load_run(_train(topn, work / f"ablation-{len(results)}-{label[:8]}",
                                              kind="retrieval", **change))
                    results["top-n"][f"ablation: {label}"] = evaluate_retrieval(
                        ablated.retrieval_model(), movies, split.train, split.test, 10)
        elif protocol == "rating":
            print("rating: random 90/10 split and u1.base/u1.test")
            results["rating"] = {}
            for label, data in (("random 90/10", dataclasses.replace(base, test_fraction=0.1)),
                                ("u1", dataclasses.replace(
                                    base, test_ratings=str(data_dir / "u1.test")))):
                rated = load_run(_train(data, work / f"rating-{label[:2]}", kind="ranking"))
                test = rated.split.test
                section = {"ours: ranking": rated_metrics(rated, test)}
                section.update(surprise_rmse(rated.split.train, test))
                results["rating"][label] = section
        elif protocol == "tutorial":
            print("tutorial: random 80/20 split seeded 42, top-100 accuracy, seen not excluded")
            tut = load_run(_train(base, work / "tutorial", kind="retrieval"))
            results["tutorial"] = {"ours: retrieval": {"top100_accuracy": evaluate_retrieval(
                tut.retrieval_model(), tut.vocab.catalogue_movies, tut.split.train,
                tut.split.test, 100, exclude_seen=False)["top100_accuracy"]}}
        else:
            from tfrs_movies import data as data_lib

            dataset = dataset or data_lib.load(base)
            per_seed = []
            for seed in seeds:
                print(f"{DESCRIBED[protocol]}, seed {seed}")
                per_seed.append(history_protocol(protocol, dataset, seed, work,
                                                 first_80=first_80))
                print("  " + ", ".join(f"{row}: {m['ndcg@10']:.4f}"
                                       for row, m in per_seed[-1].items()))
            _seeded(results, protocol, seeds, per_seed)
        results["targets"] = targets(results)
        if output is not None:
            write(output, results, time.perf_counter() - start)
    return results


def _seeded(results: dict, protocol: str, seeds, per_seed: list[dict]) -> None:
    """Puts the seeds' mean, spread and per-seed nDCG@10 of ``protocol`` into ``results``."""
    results[protocol], results[f"{protocol} spread"] = _mean_and_spread(per_seed)
    results[f"{protocol} seeds"] = {str(s): {row: m["ndcg@10"] for row, m in r.items()}
                                    for s, r in zip(seeds, per_seed)}


def rated_metrics(run, test) -> dict:
    from tfrs_movies.inference import predict_ratings

    return M.rating_metrics(test["user_rating"].to_numpy(np.float64),
                            predict_ratings(run.rating_model(), test).astype(np.float64))


def flatten(results: dict) -> dict:
    flat = {}
    for protocol, rows in results.items():
        for row, values in rows.items():
            if protocol == "rating":
                for model, metrics in values.items():
                    for key, value in metrics.items():
                        flat[f"{protocol}/{row}/{model}/{key}"] = value
            else:
                for key, value in values.items():
                    flat[f"{protocol}/{row}/{key}"] = value
    return flat


def _over(results: dict, protocol: str) -> str:
    seeds = len(results.get(f"{protocol} seeds", {})) or 1
    return f"{seeds} seed{'s' * (seeds != 1)}"


def _with_sd(results: dict, protocol: str, row: str, m: dict) -> str:
    sd = results.get(f"{protocol} spread", {}).get(row, {}).get("ndcg@10")
    return f"{m['ndcg@10']:.4f}{f' ± {sd:.4f}' if sd is not None else ''}"


def table(results: dict) -> str:
    """The markdown tables of the protocols ``results`` holds, what is served first."""
    lines = []
    history = [p for p in HISTORY_PROTOCOLS if results.get(p)]
    if history:
        lines += [f"| protocol | model | nDCG@10 (mean ± sd, {_over(results, history[0])}) | "
                  "P@10 | R@10 | MAP@10 | coverage@10 | known | candidates' recall |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for protocol in history:
            for model, m in results[protocol].items():
                ceiling = next((key for key in m if key.startswith("recall@")
                                and key != "recall@10"), None)
                extra = " | ".join(f"{m[key]:.4f}" if key in m else "" for key in
                                   ("coverage@10", "known", ceiling))
                if ceiling:
                    extra += f" ({ceiling.removeprefix('recall')})"
                lines.append(f"| {DESCRIBED[protocol]} | {model} | "
                             f"{_with_sd(results, protocol, model, m)} | "
                             f"{m['precision@10']:.4f} | {m['recall@10']:.4f} | "
                             f"{m['map@10']:.4f} | {extra} |")
        wrong = {p: m["known mismatches"] for p in history for r, m in results[p].items()
                 if m.get("known mismatches")}
        if wrong:
            lines.append("")
            lines.append("**`known` differs from the contract** (mean answers per seed): " +
                         ", ".join(f"{p} {v:g}" for p, v in wrong.items()))
        lines.append("")
    if results.get("top-n"):
        lines += [f"| protocol | model | nDCG@10 (mean ± sd, {_over(results, 'top-n')}) | P@10 "
                  "| R@10 | MAP@10 | coverage@10 | novelty@10 |",
                  "|---|---|---|---|---|---|---|---|"]
        for model, m in results["top-n"].items():
            extra = " | ".join(f"{m[key]:.4f}" if key in m else "" for key in
                               ("coverage@10", "novelty@10"))
            lines.append(f"| {DESCRIBED['top-n']} | {model} | "
                         f"{_with_sd(results, 'top-n', model, m)} | "
                         f"{m['precision@10']:.4f} | {m['recall@10']:.4f} | {m['map@10']:.4f} | "
                         f"{extra} |")
        for model, value in PUBLISHED_TOPN.items():
            lines.append(f"| {DESCRIBED['top-n']} | {model} (published, not run here) | "
                         f"{value:.3f} | | | | | |")
        lines.append("")
    if results.get("targets"):
        lines += ["| target (nDCG@10, mean over the seeds) | goal | measured | met |",
                  "|---|---:|---:|---|"]
        for text, t in results["targets"].items():
            lines.append(f"| {text} | {t['goal']:.4f} | {t['measured']:.4f} | "
                         f"{'yes' if t['met'] else '**no**'} |")
        lines.append("")
    if results.get("rating"):
        lines += ["| protocol | model | RMSE | MAE |", "|---|---|---|---|"]
        for split, rows in results["rating"].items():
            for model, m in rows.items():
                lines.append(f"| rating ({split}) | {model} | {m['rmse']:.4f} | {m['mae']:.4f} |")
        lines += ["| rating (u1) | GLocal-K (published, not run here) | 0.889 | |", ""]
    if results.get("tutorial"):
        lines += ["| protocol | model | top-100 accuracy |", "|---|---|---|"]
        for model, m in results["tutorial"].items():
            lines.append(f"| TFRS tutorial (80/20, seed 42) | {model} | "
                         f"{m['top100_accuracy']:.4f} |")
        lines.append("| TFRS tutorial (80/20, seed 42) | TFRS tutorial (published) | "
                     "0.233-0.238 |")
        lines += ["| TFRS tutorial (80/20, seed 42) | TFRS deep variant (published) | 0.29 |", ""]
    return "\n".join(lines[:-1] if lines and lines[-1] == "" else lines) + "\n"


def write(output: Path, results: dict, seconds: float) -> None:
    """``quality.json`` (flat keys, ``wall_seconds``) and ``quality.md`` into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    flat = flatten(results)
    flat["wall_seconds"] = round(seconds, 1)
    (output / "quality.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    (output / "quality.md").write_text(table(results))


def _protocols(text: str) -> tuple[str, ...]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in PROTOCOLS]
    if unknown or not names:
        raise UserError(f"--protocols {text!r}: choose from {', '.join(PROTOCOLS)} "
                        "(comma-separated)")
    return tuple(names)


def _main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k")
    parser.add_argument("--output", type=Path, default=Path("bench/quality"))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS),
                        help="comma-separated protocols to run (default: all, %(default)s)")
    parser.add_argument("--ablations", action="store_true",
                        help="add one row per lever of retrieval and of the re-ranker")
    parser.add_argument("--reranker-ablations", action="store_true",
                        help="add only the re-ranker's rows (last seed's run)")
    parser.add_argument("--seeds", default="42,7,3",
                        help="comma-separated seeds of the top-n, new-users, fresh and time "
                             "protocols (default: %(default)s)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    protocols = _protocols(args.protocols)
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    results = run(args.data_dir, args.output, args.ablations, seeds, args.reranker_ablations,
                  protocols)
    write(args.output, results, time.perf_counter() - start)
    print(table(results))
    print(f"wrote {args.output / 'quality.json'} and quality.md in "
          f"{time.perf_counter() - start:.0f}s")
    return 0


main = one_line_errors(_main)


if __name__ == "__main__":
    raise SystemExit(main())
