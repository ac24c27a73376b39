"""``tune``: 2-trial searches on tiny synthetic data, failed trials, resume, hparams round trip."""
from __future__ import annotations

import dataclasses
import json

import pytest

from tfrs_movies import config as cfg
from tfrs_movies import data as data_lib
from tfrs_movies import reranker, reranker_lists, tuning
from tfrs_movies.errors import UserError
from trainer.__main__ import main

# 60 users x 40 movies, 1500 ratings: a trial is a few seconds, mostly graph tracing.
DATA = ["--dataset", "synthetic", "--users", "60", "--movies", "40", "--ratings", "1500"]
DATA_CONFIG = cfg.DataConfig(dataset="synthetic", synthetic_users=60, synthetic_movies=40,
                             synthetic_ratings=1500)
FIELDS = ({f.name for f in dataclasses.fields(cfg.ModelConfig)}
          | {f.name for f in dataclasses.fields(cfg.TrainConfig)})


def _trials(out):
    return {json.loads(p.read_text())["trial_id"]: json.loads(p.read_text())
            for p in (out / "trials").glob("trial_*/trial.json")}


@pytest.mark.parametrize("kind,tuner,objective", [("retrieval", "random", "val_ndcg@10"),
                                                  ("ranking", "hyperband", "val_rmse")])
def test_two_trial_search(kind, tuner, objective, tmp_path, capsys, monkeypatch):
    scored = []  # every frame a trial was scored on
    real = tuning._measure
    monkeypatch.setattr(tuning, "_measure", lambda k, model, data, goal: (
        scored.append(data.validation), real(k, model, data, goal))[1])
    out = tmp_path / "search"
    assert main(["tune", "--model", kind, "--tuner", tuner, "--max-trials", "2", "--epochs",
                 "2", "--output", str(out)] + DATA) == 0

    best = json.loads((out / "best_hyperparameters.json").read_text())
    # The searched values only: the model kind and the training length stay train's.
    assert set(best) <= FIELDS and not {"model", "epochs"} & set(best)
    assert "tower_layers" in best and isinstance(best["tower_layers"], list)
    assert ("temperature" in best) == (kind == "retrieval")
    assert ("use_bias" in best) == (kind == "ranking")
    model_config, _ = tuning.configs_with(cfg.ModelConfig(), cfg.TrainConfig(), best)
    assert model_config.tower_layers == tuple(best["tower_layers"])

    trials = _trials(out)
    assert len(trials) == 2 and all(t["status"] == "COMPLETED" for t in trials.values())
    results = json.loads((out / "results.json").read_text())
    scores = [t["score"] for t in trials.values()]
    assert results["best_value"] == (min(scores) if kind == "ranking" else max(scores))
    assert results["objective"] == objective
    assert 1 <= results["recommended_epochs"] <= 2 and results["best_hyperparameters"] == best

    # Scored on the validation share carved from train: never a test rating.
    split = data_lib.make_split(data_lib.load(DATA_CONFIG), DATA_CONFIG)
    test_pairs = set(zip(split.test["user_id"], split.test["movie_id"]))
    train_pairs = set(zip(split.train["user_id"], split.train["movie_id"]))
    assert len(scored) >= 2
    for frame in scored:
        pairs = set(zip(frame["user_id"], frame["movie_id"]))
        assert pairs <= train_pairs and not pairs & test_pairs

    printed = capsys.readouterr().out
    progress = [line for line in printed.splitlines() if line.startswith("[")]
    assert len(progress) == 2 and all(f" {objective}=" in line for line in progress)
    assert "2 of 2 trials completed" in printed and "best_hyperparameters.json" in printed
    assert f"--epochs {results['recommended_epochs']} (the tuned epoch count" in printed


def test_failed_trial_is_recorded_and_the_search_resumes(tmp_path, monkeypatch):
    calls = []
    real = tuning.fit_model

    def flaky(*args, **kwargs):  # 1st fit raises, 3rd is interrupted (Ctrl-C)
        calls.append(args[2])
        if len(calls) == 1:
            raise ValueError("boom in fit")
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tuning, "fit_model", flaky)
    out = tmp_path / "search"
    settings = dict(kind="retrieval", epochs=1, model_config=cfg.ModelConfig(embedding_dim=8))
    result = tuning.tune(out, DATA_CONFIG, max_trials=2, **settings)
    trials = _trials(out)
    assert [trials[i]["status"] for i in sorted(trials)] == ["FAILED", "COMPLETED"]
    assert "boom in fit" in trials[sorted(trials)[0]]["message"]
    assert result["recommended_epochs"] == 1 and "epochs" not in result["best_hyperparameters"]

    # A larger --max-trials extends the search; the interrupted trial runs again on rerun.
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(out, DATA_CONFIG, max_trials=3, **settings)
    tuning.tune(out, DATA_CONFIG, max_trials=3, **settings)
    trials = _trials(out)
    assert len(calls) == 4
    assert [trials[i]["status"] for i in sorted(trials)] == ["FAILED", "COMPLETED", "COMPLETED"]
    # ...and another search in the same directory is refused, naming what differs.
    with pytest.raises(UserError, match="epochs: 1 -> 2"):
        tuning.tune(out, DATA_CONFIG, "retrieval", max_trials=3, epochs=2)


def test_train_accepts_best_hyperparameters(tmp_path, capsys):
    search = tmp_path / "search"
    assert main(["tune", "--model", "retrieval", "--max-trials", "1", "--epochs", "1",
                 "--output", str(search)] + DATA) == 0
    best_path = search / "best_hyperparameters.json"
    best = json.loads(best_path.read_text())
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--hparams", str(best_path), "--output", str(run), "--model",
                 "retrieval", "--epochs", "1"] + DATA) == 0
    assert f"From {best_path}: " in capsys.readouterr().out
    saved = cfg.load_configs(run / "config.json")
    for key, value in best.items():
        section = "model" if hasattr(saved["model"], key) else "train"
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(saved[section], key) == expected, key
    assert saved["train"].model == "retrieval" and saved["train"].epochs == 1  # the flags'
    assert (run / "models" / "retrieval" / "weights.index").exists()

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**best, "embeding_dim": 32}))
    capsys.readouterr()
    assert main(["train", "--hparams", str(bad), "--output", str(tmp_path / "r2")] + DATA) == 2
    err = capsys.readouterr().err
    assert "embeding_dim" in err and str(bad) in err and "\n" not in err.strip()


def test_reranker_search_tunes_the_served_second_stage(tmp_path, capsys, monkeypatch):
    scored = []  # the validation frames the lists were labelled with
    real = reranker_lists.validation_lists
    monkeypatch.setattr(reranker_lists, "validation_lists", lambda fit, validation, *a, **k: (
        scored.append(validation), real(fit, validation, *a, **k))[1])
    out = tmp_path / "search"
    assert main(["tune", "--model", "reranker", "--max-trials", "2", "--epochs", "1",
                 "--output", str(out)] + DATA) == 0
    best = json.loads((out / "best_hyperparameters.json").read_text())
    assert best and all(key.startswith("reranker_") for key in best)
    results = json.loads((out / "results.json").read_text())
    trials = _trials(out)
    assert len(trials) == 2 and all(t["status"] == "COMPLETED" for t in trials.values())
    assert results["objective"] == "val_ndcg@10" and results["recommended_epochs"] is None
    assert results["best_value"] == max(t["score"] for t in trials.values())
    assert 0.0 < results["best_value"] <= 1.0

    # The lists are labelled with the validation share of train: never a test rating.
    split = data_lib.make_split(data_lib.load(DATA_CONFIG), DATA_CONFIG)
    assert len(scored) == 1  # built once per search, not per trial
    pairs = set(zip(scored[0]["user_id"], scored[0]["movie_id"]))
    assert pairs and pairs <= set(zip(split.train["user_id"], split.train["movie_id"]))
    assert not pairs & set(zip(split.test["user_id"], split.test["movie_id"]))
    printed = capsys.readouterr().out
    assert f"--hparams {out / 'best_hyperparameters.json'} (the re-ranker" in printed

    # train --hparams trains the served re-ranker with the tuned values.
    run = tmp_path / "run"
    assert main(["train", "--hparams", str(out / "best_hyperparameters.json"), "--epochs", "1",
                 "--output", str(run)] + DATA) == 0
    second = reranker.load(run)
    assert second is not None
    assert (list(second.config.hidden), second.config.epochs, second.config.loss,
            second.config.learning_rate) == (best["reranker_hidden"], best["reranker_epochs"],
                                              best["reranker_loss"],
                                              best["reranker_learning_rate"])

    # Hyperband's growing epochs have no meaning here; a bad value is one line naming it.
    capsys.readouterr()
    assert main(["tune", "--model", "reranker", "--tuner", "hyperband", "--output",
                 str(tmp_path / "h")] + DATA) == 2
    assert "hyperband" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"reranker_hidden": [16, 0]}))
    assert main(["train", "--hparams", str(bad), "--output", str(tmp_path / "r2")] + DATA) == 2
    err = capsys.readouterr().err
    assert "reranker_hidden" in err and str(bad) in err and "\n" not in err.strip()
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize("args,message", [
    (["--model", "retrieval", "--objective", "rmse"], "ndcg@10"),
    (["--model", "ranking", "--objective", "ndcg@10"], "rmse"),
    (["--model", "retrieval", "--max-trials", "0"], "--max-trials"),
    (["--model", "reranker", "--objective", "ndcg@200"], "at most 100"),
])
def test_bad_settings_are_one_line_errors(args, message, tmp_path, capsys):
    assert main(["tune", "--output", str(tmp_path / "s")] + args + DATA) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "\n" not in err.strip()


def test_search_space_maps_to_config_fields():
    for kind in tuning.KINDS:
        space = tuning.search_space(kind)
        values = {hp.name: hp.default for hp in space.space}
        values["tuner/epochs"] = 3
        fields = tuning.to_fields(values)
        assert set(fields) <= FIELDS and "tuner/epochs" not in fields
        model_config, _ = tuning.configs_with(cfg.ModelConfig(), cfg.TrainConfig(), fields)
        assert model_config.tower_layers == ()
    assert tuning.to_fields({"ranking_layers": "256,128"}) == {"ranking_layers": [256, 128]}
    # The re-ranker search starts from what train uses.
    defaults = tuning.to_fields({hp.name: hp.default
                                 for hp in tuning.search_space("reranker").space})
    _, train_config = tuning.configs_with(cfg.ModelConfig(), cfg.TrainConfig(), defaults)
    assert train_config == cfg.TrainConfig()
    assert tuning.parse_objective("retrieval", "Recall@20") == tuning.Objective(
        "recall@20", "max", 20)
