"""The speed benchmarks' plumbing on tiny sizes: every section produces its keys and the table.

Timings themselves are never asserted (they belong to ``python -m benchmarks``); what is checked
is the arithmetic (examples per block, recall, percentiles) and that each section measures the
thing it names.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks import __main__ as bench
from benchmarks import (batch_speed, scann_speed, scann_trained, serving_cost, serving_speed,
                        serving_stages, speed_exports, train_speed)
from benchmarks.timing import median, percentile_ms, time_calls
from tfrs_movies.data.synthetic import synthetic
from tfrs_movies.errors import UserError


def test_examples_in_counts_the_partial_last_batch():
    # 10 rows in batches of 4: passes are 4, 4, 2
    assert train_speed.examples_in(10, 4, 0, 3) == 10
    assert train_speed.examples_in(10, 4, 2, 2) == 2 + 4
    assert train_speed.examples_in(8, 4, 0, 5) == 20


def test_percentiles_and_medians():
    assert percentile_ms([0.001] * 98 + [0.5, 0.5], 50) == pytest.approx(1.0)
    assert percentile_ms([0.001] * 98 + [0.5, 0.5], 99) > 100
    assert median([3, 1, 2]) == 2
    with pytest.raises(ValueError):
        median([])
    calls = []
    assert len(time_calls(calls.append, 4, warmup=2)) == 4 and calls == [0, 1, 0, 1, 2, 3]


def test_recall_at_k():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert scann_speed.recall_at_k(exact, exact) == 1.0
    assert scann_speed.recall_at_k(np.array([[3, 2, 9], [7, 8, 9]]), exact) == pytest.approx(1 / 3)


def test_scann_on_a_trained_models_candidates_reports_its_sweep_and_targets(monkeypatch):
    monkeypatch.setattr(scann_trained, "plan", lambda quick: scann_trained.Plan(
        users=300, movies=200, ratings=5000, steps=20, queries=40,
        settings=((1, 20), (14, 200))))
    got = scann_trained.run(quick=True)
    assert got["scann_trained_candidates"] == 200 and got["scann_trained_queries"] == 40
    assert got["scann_trained_params.leaves"] == 14  # about sqrt(candidates)
    assert got["scann_trained_sweep.14-200.recall_at_10"] >= 0.99  # every leaf searched
    assert got["scann_trained_train_examples"] == 20 * 256
    assert got["scann_target.recall_at_10.met"] == (got["scann_trained_recall_at_10"] >= 0.95)
    assert "ScaNN on a trained retrieval model's 200 candidate" in bench.table(got)


def test_scann_section_finds_the_exact_neighbours_when_searching_every_leaf(monkeypatch):
    monkeypatch.setattr(scann_speed, "plan", lambda quick: scann_speed.Plan(
        candidates=5000, queries=50, calls=2, leaves=20, settings=((1, 20), (20, 500))))
    monkeypatch.setattr(scann_speed, "matmul_gflops", lambda: 10.0)
    got = scann_speed.run(quick=True)
    assert got["scann_sweep.20-500.recall_at_10"] >= 0.99  # every leaf, wide re-scoring
    assert got["scann_sweep.1-20.recall_at_10"] < got["scann_sweep.20-500.recall_at_10"]
    assert (got["scann_params.leaves_to_search"], got["scann_params.reorder"]) in ((1, 20),
                                                                                 (20, 500))
    assert got["scann_recall_at_10"] >= scann_speed.RECALL_GOAL
    # 5000 x 32 multiply-adds at 10 G/s
    assert got["brute_force_bound_ms_per_query.batch1"] == pytest.approx(0.016)
    assert got["memory_read_gb_per_s"] > 0
    # one read of the 5000 x 32 float32 table (640,000 bytes) per call; the reported rate is
    # rounded to 0.1 GB/s, a few per cent at the ~2 GB/s a busy machine reads a small table at
    rate = got["memory_read_gb_per_s"]
    bound = got["brute_force_memory_bound_ms_per_query.batch1"]
    assert 0.64 / (rate + 0.05) - 1e-4 <= bound <= 0.64 / max(rate - 0.05, 1e-3) + 1e-4
    for batch in (1, 64):
        assert got[f"scann_ms_per_query.batch{batch}"] > 0
        assert got[f"brute_force_ms_per_query.batch{batch}"] > 0


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    work = tmp_path_factory.mktemp("speed")
    catalogue = speed_exports.Catalogue("tiny", users=120, movies=60, ratings=2400,
                                        fit_rows=1000)
    return speed_exports.build(catalogue, None, work)


def test_speed_export_holds_every_user(tiny_export):
    assert sorted(tiny_export.users) == sorted(f"u{i}" for i in range(1, 121))
    assert (tiny_export.dirs["brute-force"] / "recommender").is_dir()


def test_serving_section_measures_each_batch_and_thread_count(tiny_export):
    plan = serving_speed.Plan(calls=3, warmup=1, batches=(1, 4), threads=(1, 2),
                              loop_seconds=0.3)
    got = serving_speed.measure(tiny_export.dirs["brute-force"], tiny_export.users, "tiny", plan)
    for batch in (1, 4):
        key = f"recommender.tiny.batch{batch}"
        assert 0 < got[f"serving_p50_ms.{key}"] <= got[f"serving_p99_ms.{key}"]
        assert got[f"serving_signature_p50_ms.{key}"] > 0
        retrieval = got[f"serving_signature_p50_ms.retrieval.tiny.batch{batch}"]
        assert retrieval > 0 and got[f"serving_cost_ratio.tiny.batch{batch}"] == pytest.approx(
            got[f"serving_signature_p50_ms.{key}"] / retrieval, abs=0.011)
    for threads in (1, 2):
        assert got[f"serving_concurrent_rps.recommender.tiny.threads{threads}"] > 0


def test_serving_stages_time_every_stage_of_both_signatures(tiny_export):
    got = serving_stages.stages_of(tiny_export.run, batches=(1, 4), calls=2, length=7)
    assert sorted(got) == [1, 4]
    for stage, ms in got[4].items():
        assert ms > 0, stage
    assert "with_history: item-item candidates (70 of the K)" in got[4]
    assert "with_history: second re-ranker MLP" in got[4]
    assert "| with_history: rating head on the K candidates |" in serving_stages.table(got)


def test_cost_section_compares_the_served_path_with_retrieval(tiny_export, tmp_path):
    plan = serving_cost.Plan(calls=3, warmup=1, batches=(1, 5), memory_users=300, repeats=1,
                             history=7)
    export_dir = tiny_export.dirs["brute-force"]
    movies = serving_cost.histories(tiny_export.vocab, tiny_export.users, plan.history)
    stored = dict(zip(tiny_export.vocab.catalogue_users, tiny_export.vocab.history))
    assert movies.shape == (len(tiny_export.users), 7)
    catalogue = len(tiny_export.vocab.catalogue_movies)
    for user, row in zip(tiny_export.users, movies):  # movies the user has not rated, filled
        seen = set(stored.get(user, []))
        assert not set(row) & seen
        assert (row != "").sum() == min(7, catalogue - len(seen))
    got = serving_cost.latencies(export_dir, tiny_export.users, plan,
                                 dict(zip(tiny_export.users, movies)))
    for batch in (1, 5):
        ratio = (got[f"cost_p50_ms.recommender.batch{batch}"]
                 / got[f"cost_p50_ms.retrieval.batch{batch}"])
        assert got[f"cost_ratio.batch{batch}"] == pytest.approx(ratio, abs=0.01)
        ratio = (got[f"cost_p50_ms.recommender_with_history.batch{batch}"]
                 / got[f"cost_p50_ms.recommender.batch{batch}"])
        assert got[f"cost_history_ratio.batch{batch}"] == pytest.approx(ratio, abs=0.01)
        ratio = (got[f"cost_p50_ms.recommender_new_user.batch{batch}"]
                 / got[f"cost_p50_ms.recommender.batch{batch}"])
        assert got[f"cost_new_user_ratio.batch{batch}"] == pytest.approx(ratio, abs=0.01)
    serving_cost.memory_child(str(export_dir), tiny_export.users * 3, str(tmp_path / "m.json"))
    assert json.loads((tmp_path / "m.json").read_text())["growth_mb"] >= 0
    np.save(tmp_path / "h.npy", np.concatenate([movies] * 3))
    serving_cost.memory_child(str(export_dir), tiny_export.users * 3, str(tmp_path / "h.json"),
                              str(tmp_path / "h.npy"))
    assert json.loads((tmp_path / "h.json").read_text())["growth_mb"] >= 0
    assert serving_cost.batch_scoring(export_dir, tiny_export.users, tmp_path, 1) > 0
    for mode in ("signature", "batch"):
        serving_cost.first_pass_child(str(export_dir), tiny_export.users, mode,
                                      str(tmp_path / f"{mode}.json"))
        assert json.loads((tmp_path / f"{mode}.json").read_text())["users_per_s"] > 0


def test_batch_section_scores_every_user(monkeypatch, tmp_path):
    monkeypatch.setattr(batch_speed, "plan", lambda quick: batch_speed.Plan(
        users=150, movies=60, ratings=1500, repeats=1, baseline_users=5))
    got = batch_speed.run(None, tmp_path, quick=True)
    name = "synthetic-150-users"
    assert got[f"batch_users.{name}"] == 150
    assert got[f"batch_users_per_s.{name}"] > 0 and got[f"batch_users_per_s.{name}.one_by_one"] > 0


def test_top_k_speed_times_both_and_checks_they_agree(capsys):
    from benchmarks import top_k_speed

    assert top_k_speed.main(["--k", "10", "--calls", "1", "--shapes", "3x20480,2x500"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.endswith("identical: True") for line in lines)
    assert "(groups of 32)" in lines[0] and "(groups of -)" in lines[1]


def test_scann_shapes_sweep_prints_a_line_per_setting(tmp_path, capsys):
    from benchmarks import scann_shapes

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "e.npz", candidates=rng.normal(size=(300, 8)).astype(np.float32),
             queries=rng.normal(size=(20, 8)).astype(np.float32))
    assert scann_shapes.main(["--cache", str(tmp_path / "e.npz"), "--calls", "2",
                              "10:-:10-300", "0:-:0-300"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "recall@10" in line]
    assert len(lines) == 2
    # every leaf searched, or no partitions and all 300 re-scored: exact
    assert all("recall@10 1.0000" in line for line in lines), lines


def test_train_children_run_both_recipes(tmp_path):
    data = synthetic(80, 40, 1500)
    for name, table in (("ratings", data.ratings), ("movies", data.movies),
                        ("users", data.users)):
        table.to_parquet(tmp_path / f"{name}.parquet")
    for recipe in train_speed.RECIPES:
        for kind in train_speed.KINDS:
            result = tmp_path / f"{recipe}-{kind}.json"
            assert train_speed.main(["--child", "--recipe", recipe, "--kind", kind, "--data",
                                     str(tmp_path), "--steps", "2", "--repeats", "1",
                                     "--result", str(result)]) == 0
            got = json.loads(result.read_text())
            assert got["examples_per_s"] > 0 and got["peak_rss_mb"] > 0
            flat = train_speed.flatten(got, kind, "tiny", recipe)
            suffix = ".tutorial" if recipe == "tutorial" else ""
            assert f"train_examples_per_s.{kind}.tiny{suffix}" in flat


def test_table_renders_every_section():
    r = {"machine.cpu_count": 2, "run.quick": True, "run.date": "2026-11-23", "run.seconds": 5.0,
         "train_rows.ml100k": 80000}
    for kind in ("retrieval", "ranking"):
        r.update({f"train_examples_per_s.{kind}.ml100k": 9000.0,
                  f"train_examples_per_s.{kind}.ml100k.tutorial": 3000.0,
                  f"train_examples_per_s.{kind}.ml100k.ratio": 3.0,
                  f"peak_rss_mb.train.{kind}.ml100k": 900.0,
                  f"peak_rss_mb.train.{kind}.ml100k.tutorial": 800.0})
    for batch in (1, 64):
        r.update({f"serving_p50_ms.recommender.cat.scann.batch{batch}": 1.5,
                  f"serving_p99_ms.recommender.cat.scann.batch{batch}": 2.5,
                  f"brute_force_ms_per_query.batch{batch}": 10.0,
                  f"brute_force_bound_ms_per_query.batch{batch}": 1.0,
                  f"brute_force_bound_ratio.batch{batch}": 10.0,
                  f"scann_ms_per_query.batch{batch}": 0.5,
                  f"scann_speedup_vs_brute_force.batch{batch}": 20.0})
    for threads in (1, 8):
        r.update({f"serving_concurrent_rps.recommender.cat.threads{threads}": 100.0 * threads,
                  f"serving_concurrent_p50_ms.recommender.cat.threads{threads}": 5.0,
                  f"serving_concurrent_p99_ms.recommender.cat.threads{threads}": 9.0})
    r.update({"scann_recall_at_10": 0.97, "scann_candidates": 10**6, "scann_dims": 32,
              "scann_params.leaves": 1000, "scann_params.leaves_to_search": 40,
              "scann_params.reorder": 200, "scann_build_seconds": 50.0, "matmul_gflops": 80.0,
              "batch_users.s": 10, "batch_users_per_s.s.one_by_one": 100.0,
              "batch_users_per_s.s": 2000.0, "batch_users_per_s.s.ratio": 20.0})
    r.update({"cost_p50_ms.retrieval.batch64": 6.0, "cost_p50_ms.recommender.batch64": 7.5,
              "cost_ratio.batch64": 1.25, "cost_memory_growth_mb.users2000": 120.0,
              "cost_p50_ms.recommender_with_history.batch64": 9.0,
              "cost_history_ratio.batch64": 1.2, "cost_memory_growth_mb.history.users2000": 150.0,
              "cost_p50_ms.recommender_new_user.batch64": 12.0, "cost_new_user_ratio.batch64": 1.6,
              "cost_batch_users": 943, "cost_batch_users_per_s": 12000.0,
              "cost_first_pass_users_per_s.batch": 900.0,
              "cost_first_pass_users_per_s.signature": 1200.0, "cost_first_pass_ratio": 0.75})
    text = bench.table(r)
    assert ("| retrieve 100, re-rank, top 10 | 64 | 6.00 | 7.50 | 1.25 | 9.00 | 1.20 | 12.00 | "
            "1.60 |") in text
    assert "call of 2000 users grows peak memory by 120 MB (150 MB through with_history" in text
    assert "943 ML-100K users: 12,000 users/s" in text
    assert "reports 900 users/s where the bare signature, looped 128 users a call, gives " \
           "1,200 (first passes, loading excluded: 0.75)" in text
    assert "| ml100k (80,000 ratings) | retrieval | 9,000 | 3,000 | 3.00 | 900 / 800 |" in text
    assert "| cat.scann | 64 | 1.50 | 2.50 | - |" in text
    assert "| cat | 8 | 800.0 | 5.00 | 9.00 |" in text
    assert "recall@10 **0.9700**" in text
    assert "| 1 | 10.000 | 1.000 | 10.0 | - | 0.500 | 20.0x |" in text
    assert "| s | 10 | 2,000 | 100 | 20.0 |" in text


def test_cli_rejects_unknown_sections_and_missing_data(tmp_path):
    with pytest.raises(SystemExit, match="choose from"):
        bench.main(["--output", str(tmp_path), "--only", "train,gpu"])
    with pytest.raises(SystemExit, match="has no u.data"):
        bench.main(["--output", str(tmp_path), "--data-dir", str(tmp_path)])
    assert not (tmp_path / "speed.json").exists()


def test_quality_benchmarks_name_a_missing_data_dir_in_one_line(tmp_path, capsys):
    from benchmarks import quality, reranker_validation

    missing = tmp_path / "nowhere"
    for module in (quality, reranker_validation):
        out = tmp_path / module.__name__.split(".")[-1]
        assert module.main(["--data-dir", str(missing), "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(missing) in err and "Traceback" not in err
        assert not out.exists()


def test_synthetic_users_table_is_complete():
    # batch_speed relies on every synthetic user having ratings (a history to look up)
    data = synthetic(150, 60, 1500)
    assert pd.Series(data.ratings["user_id"]).nunique() == 150


def test_quality_table_gives_mean_and_spread_over_seeds():
    from benchmarks import quality

    rows = [{"ours: exported recommender": {"ndcg@10": v, "precision@10": 0.4, "recall@10": 0.2,
                                             "map@10": 0.1, "coverage@10": 0.3,
                                             "novelty@10": 2.0}} for v in (0.48, 0.50)]
    mean, spread = quality._mean_and_spread(rows)
    assert mean["ours: exported recommender"]["ndcg@10"] == pytest.approx(0.49)
    assert spread["ours: exported recommender"]["ndcg@10"] == pytest.approx(0.01)
    text = quality.table({"top-n": mean, "top-n spread": spread,
                          "top-n seeds": {"42": {}, "7": {}}, "rating": {}, "tutorial": {}})
    assert "nDCG@10 (mean ± sd, 2 seeds)" in text
    assert "| ours: exported recommender | 0.4900 ± 0.0100 | 0.4000 |" in text


def test_training_targets_are_checked_and_tabled():
    out = {"train_examples_per_s.retrieval.ml100k.ratio": 25.0,
           "train_large_tables_slowdown": 2.0}
    got = train_speed.targets(out)
    assert got["train_target.ml100k_vs_tutorial.met"] is True
    assert got["train_target.large_tables_slowdown.met"] is False
    assert "train_target.examples_per_s_10M" not in got  # no 10^7 ratings in this run
    text = bench.table({**out, **got})
    assert "| ML-100K retrieval examples/s / the TFRS tutorial recipe's | >= 20 | 25.00 | yes |" \
        in text
    assert "| >= 1.50 | 2.00 | **no** |" not in text and "| <= 1.50 | 2.00 | **no** |" in text


def test_epoch_table_extrapolates_from_examples_per_second():
    from benchmarks import epoch_time

    r = {"shape.ml-1m.users": 6040, "shape.ml-1m.movies": 3706, "shape.ml-1m.ratings": 1_000_209,
         "peak_rss_mb.ml-1m": 1500.0, "epoch_examples_per_s.ml-1m.batch256": 10_000.0,
         "epoch_minutes.ml-1m.batch256": 1.67, "epoch_examples_per_s.ml-1m.batch4096": 40_000.0,
         "epoch_minutes.ml-1m.batch4096": 0.42}
    assert "| ml-1m | 6,040 / 3,706 / 1,000,209 | 1.7 min (10,000) | 25 s (40,000) | 1,500 |" \
        in epoch_time.table(r)


def test_train_section_makes_each_datasets_measurements_only(monkeypatch, tmp_path):
    only = {"recipes": ("ours",), "kinds": ("retrieval",)}
    monkeypatch.setattr(train_speed, "datasets", lambda quick: [
        train_speed.Dataset("synthetic-1M-small-tables", train_speed.Plan(), 30, 20, 300, **only),
        train_speed.Dataset("synthetic-1M-large-tables", train_speed.Plan(), 90, 60, 300, **only)])
    calls = []

    def child(module, args):
        calls.append(args)
        rate = 100.0 if "small" in args[args.index("--data") + 1] else 80.0
        return {"examples_per_s": rate, "peak_rss_mb": 1.0, "warmup_seconds": 0.1,
                "vocab_seconds": 0.1, "feature_space_seconds": 0.1}

    monkeypatch.setattr(train_speed, "run_child", child)
    got = train_speed.run(None, tmp_path, quick=True)
    assert len(calls) == 2 and all("ours" in a and "retrieval" in a for a in calls)
    assert got["train_large_tables_slowdown"] == 1.25
    assert got["train_target.large_tables_slowdown.met"] is True


def test_job_scale_needs_a_catalogue_and_tabulates_the_ratio(tmp_path):
    from benchmarks import job_scale

    with pytest.raises(UserError, match="neither ml-100k/ nor ml-latest-small.zip"):
        job_scale.catalogues(tmp_path, tmp_path)
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("")
    found = job_scale.catalogues(tmp_path, tmp_path, synthetic=(30000,))
    assert list(found) == ["ml-100k", "synthetic, 30,000 movies"]
    assert found["synthetic, 30,000 movies"] == ["--dataset", "synthetic", "--movies", "30000",
                                                "--ratings", "100000", "--users", "943"]
    jobs = {"train": {"seconds": 100.0, "peak_mb": 1300}, "export": {"seconds": 20.0,
                                                                     "peak_mb": 1000},
            "recommend": {"seconds": 10.0, "peak_mb": 900}}
    bigger = {**jobs, "train": {"seconds": 220.0, "peak_mb": 2500}}
    text = job_scale.table({"a": jobs, "b": bigger})
    assert "| a | 100 | 20 | 1.00 | 10 | 1,300 / 1,000 / 900 |" in text
    assert "| b | 220 | 20 | 2.00 | 10 | 2,500 / 1,000 / 900 |" in text


def _tiny_ratings(users: int = 30, seed: int = 0) -> pd.DataFrame:
    """Users with 1 to 24 ratings each, timestamps with ties, rows shuffled."""
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", f"m{m}", float(rng.integers(1, 6)), int(rng.integers(0, 8)))
            for u in range(users) for m in rng.choice(40, size=1 + u % 24, replace=False)]
    frame = pd.DataFrame(rows, columns=["user_id", "movie_id", "user_rating", "timestamp"])
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _pairs(frame: pd.DataFrame) -> set:
    return set(zip(frame["user_id"], frame["movie_id"]))


def test_new_users_are_held_out_whole_and_half_their_ratings_are_the_request():
    from benchmarks import quality

    ratings = _tiny_ratings()
    cut = quality.split_new_users(ratings, seed=3)
    assert cut.new_users == tuple(sorted(set(cut.test["user_id"])))
    assert len(cut.new_users) == 6  # 20% of 30 users
    assert not set(cut.train["user_id"]) & set(cut.new_users)
    assert set(cut.history["user_id"]) <= set(cut.new_users)
    # the three parts partition the ratings
    assert len(cut.train) + len(cut.history) + len(cut.test) == len(ratings)
    assert _pairs(cut.train) | _pairs(cut.history) | _pairs(cut.test) == _pairs(ratings)
    for user in cut.new_users:
        n = int((ratings["user_id"] == user).sum())
        assert int((cut.history["user_id"] == user).sum()) == min(round(0.5 * n), n - 1)
    # seeded
    again = quality.split_new_users(ratings, seed=3)
    assert again.new_users == cut.new_users and again.history.equals(cut.history)
    assert quality.split_new_users(ratings, seed=4).new_users != cut.new_users


@pytest.mark.parametrize("seed", [0, 1])
def test_fresh_cuts_each_users_ratings_in_time_order(seed):
    from benchmarks import quality

    ratings = _tiny_ratings(seed=seed)
    cut = quality.split_fresh(ratings, seed)
    assert _pairs(cut.train) | _pairs(cut.history) | _pairs(cut.test) == _pairs(ratings)
    assert len(cut.train) + len(cut.history) + len(cut.test) == len(ratings)
    for user, theirs in ratings.groupby("user_id"):
        n = len(theirs)
        parts = [p[p["user_id"] == user] for p in (cut.train, cut.history, cut.test)]
        if n == 1:
            assert [len(p) for p in parts] == [1, 0, 0]
            continue
        train = max(1, round(0.6 * n))
        assert len(parts[0]) == min(train, n - 1)
        assert len(parts[0]) + len(parts[1]) == max(train, min(round(0.8 * n), n - 1))
        assert len(parts[2]) >= 1
        # in time order: nothing in a later part is older than anything in an earlier one
        for early, late in ((parts[0], parts[1]), (parts[1], parts[2]), (parts[0], parts[2])):
            if len(early) and len(late):
                assert early["timestamp"].max() <= late["timestamp"].min()


def test_time_tests_each_users_last_fifth_and_is_fresh_retrained_on_80():
    from benchmarks import quality

    ratings = _tiny_ratings()
    cut = quality.split_time(ratings, seed=5)
    assert not len(cut.history)
    for user, theirs in ratings.groupby("user_id"):
        test = cut.test[cut.test["user_id"] == user]
        train = cut.train[cut.train["user_id"] == user]
        assert len(test) == (0 if len(theirs) == 1 else len(theirs) - max(1, min(
            round(0.8 * len(theirs)), len(theirs) - 1)))
        if len(test):
            assert train["timestamp"].max() <= test["timestamp"].min()
    # fresh's train + request history is time's train, row for row: one model serves both as
    # the retrain on each user's first 80%
    fresh = quality.split_fresh(ratings, seed=5)
    assert _pairs(fresh.known) == _pairs(cut.train) and fresh.test.equals(cut.test)


def test_history_tables_lead_with_what_is_served_and_check_the_targets():
    from benchmarks import quality

    def row(ndcg, **extra):
        return {"ndcg@10": ndcg, "precision@10": 0.3, "recall@10": 0.2, "map@10": 0.1, **extra}

    served = f"{quality.SERVED} via with_history (the history in the request)"
    results = {
        "new-users": {served: row(0.64, known=1.0), quality.EASE_ROW: row(0.62),
                      "popularity": row(0.30)},
        "fresh": {served: row(0.40, known=1.0), quality.RETRAINED: row(0.41, known=1.0),
                  quality.EASE_ROW: row(0.38), "popularity": row(0.2)},
        "new-users seeds": {"42": {}}, "fresh seeds": {"42": {}},
        "new-users spread": {served: {"ndcg@10": 0.002}}}
    results["targets"] = quality.targets(results)
    got = results["targets"]
    assert got["new-users: served >= EASE (lambda=500) + 0.01"] == {
        "goal": pytest.approx(0.63), "measured": 0.64, "met": 1.0}
    assert got["fresh: served >= ours: recommender retrained on the first 80% (serving_default) "
               "- 0.005"]["met"] == 0.0
    assert got["fresh: served >= EASE (lambda=500)"]["met"] == 1.0
    assert not any(key.startswith(("time", "top-n")) for key in got)  # not run
    text = quality.table(results)
    lines = text.splitlines()
    assert lines[0].startswith("| protocol | model | nDCG@10 (mean ± sd, 1 seed) |")
    assert lines[2].startswith(f"| {quality.DESCRIBED['new-users']} | {served} | 0.6400 ± 0.0020 "
                               "| 0.3000 |")
    assert lines[3].startswith(f"| {quality.DESCRIBED['new-users']} | EASE (lambda=500) | 0.6200 |")
    assert "| fresh: served >= EASE (lambda=500) | 0.3800 | 0.4000 | yes |" in text
    assert "| 0.4050 | 0.4000 | **no** |" in text
    assert "RMSE" not in text and "top-100" not in text  # protocols not run
    flat = quality.flatten(results)
    assert flat[f"new-users/{served}/known"] == 1.0


def test_quality_protocols_flag_rejects_unknown_names(tmp_path, capsys):
    from benchmarks import quality

    out = tmp_path / "q"
    assert quality.main(["--protocols", "top-n,nightly", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'top-n,nightly'" in err and "new-users" in err and not out.exists()


def test_new_users_protocol_end_to_end_on_tiny_data(tmp_path, monkeypatch):
    """Split, train (one multitask model, 1 epoch: the plumbing, not the model, is tested
    here), export, ask with_history, score beside EASE and popularity."""
    from benchmarks import quality
    from tfrs_movies.config import TrainConfig

    train = quality._train
    monkeypatch.setattr(quality, "_train", lambda data, out, kind="all", fit=None:
                        train(data, out, "multitask", fit))
    data = synthetic(60, 30, 900, seed=0)
    rows = quality.history_protocol("new-users", data, 1, tmp_path,
                                    fit=TrainConfig(epochs=1, reranker_epochs=1))
    served, ease, dlae, popularity, retrieval, before = list(rows)
    assert before.endswith("via serving_default (the history as exclusions, as before "
                           "with_history)") and rows[before]["known"] == 0.0
    assert served.startswith(quality.SERVED) and (ease, dlae, popularity) == (
        quality.EASE_ROW, quality.DLAE_ROW, "popularity")
    assert retrieval.startswith("ours: exported retrieval via")
    assert 0.0 <= rows[retrieval]["recall@30"] <= 1.0  # K = min(100, the 30 movies)
    assert rows[served]["users"] == 12  # 20% of 60 users, each with a test rating
    assert rows[served]["known mismatches"] == 0.0
    assert rows[served]["known"] == (1.0 if "with_history" in served.split("(")[0] else 0.0)
    for metrics in rows.values():
        assert 0.0 <= metrics["ndcg@10"] <= 1.0


def test_ease_rank_compares_the_low_rank_form_with_the_weights(tiny_tables):
    """At full rank the form ranks as the weights do; at a lower one it is scored too."""
    from benchmarks import ease_rank

    ratings = tiny_tables[0]
    test = ratings.groupby("user_id").head(2)
    train = ratings.drop(test.index)
    movies = train["movie_id"].nunique()
    got = ease_rank.compare(train, test, [movies, 3], 20.0)
    assert got[f"rank {movies}"] == pytest.approx(got["exact"], abs=1e-6)
    assert got[f"rank {movies} correlation"] == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= got["rank 3"] <= 1.0 and "rank 3 correlation" in got
    dlae = ease_rank.compare(train, test, [movies], 20.0, dropout=0.5)
    assert dlae[f"rank {movies}"] == pytest.approx(dlae["exact"], abs=1e-6)


def test_item_item_benchmark_scores_each_fit_on_each_protocol():
    from benchmarks import item_item

    weights = item_item.parse_weights("ease:20,dlae:0.5:20")
    assert weights == [("EASE 20", 20.0, 0.0), ("DLAE 0.5 20", 20.0, 0.5)]
    for bad in ("ease", "dlae:0.5", "ridge:3", "ease:x"):
        with pytest.raises(UserError, match=f"--weights: '{bad}' is neither"):
            item_item.parse_weights(bad)
    data = synthetic(60, 30, 900, seed=0)
    movies = np.asarray(sorted(data.movies["movie_id"].astype(str)))
    for protocol in item_item.PROTOCOLS:
        got = item_item.compare(data.ratings, movies, protocol, 1, weights, 10.0)
        assert set(got) == {"EASE 20", "DLAE 0.5 20"}
        assert all(0.0 <= v <= 1.0 for v in got.values()) and got["EASE 20"] != got["DLAE 0.5 20"]
