"""models.config: labels round-trip, TF Serving parses what we write, export and promote rules,
atomic rewrites. Plain files only (version folders are empty directories)."""
from __future__ import annotations

import os

import pytest
from google.protobuf import text_format

from tfrs_movies import tf_serving_config as mc
from tfrs_movies.config import ExportConfig
from tfrs_movies.errors import DataError, UserError

MODELS = ("retrieval", "ranking", "recommender", "similar_movies")


def _export(root, version, label=None, models=MODELS):
    """What ``export`` does to models.config, without TensorFlow: version dirs, then the file."""
    for name in models:
        (root / name / str(version)).mkdir(parents=True)
    return mc.record_export(root, {name: version for name in models}, label)


def _state(root, model="recommender"):
    entry = mc.entry_for(root, model)
    return entry.versions, dict(entry.labels)


def test_render_parse_round_trip_and_tf_serving_reads_it():
    entries = [mc.ModelEntry("recommender", "/models/recommender", (1, 2),
                             (("canary", 2), ("stable", 1))),
               mc.ModelEntry("ranking", "/models/ranking")]
    text = mc.render(entries)
    assert mc.parse(text) == entries
    config_pb2 = pytest.importorskip("tensorflow_serving.config.model_server_config_pb2")
    proto = text_format.Parse(text, config_pb2.ModelServerConfig())
    first = proto.model_config_list.config[0]
    assert dict(first.version_labels) == {"canary": 2, "stable": 1}
    assert list(first.model_version_policy.specific.versions) == [1, 2]
    assert not proto.model_config_list.config[1].HasField("model_version_policy")


def test_parse_reads_tf_serving_spellings_and_comments():
    text = """# hand written
    model_config_list: {
      config: { name: 'recommender', base_path: "/m/recommender", model_platform: "tensorflow",
                model_version_policy: { specific: { versions: 4; versions: 3 } }
                version_labels: { key: 'stable' value: 3 } }
    }"""
    (entry,) = mc.parse(text)
    assert entry.versions == (3, 4) and entry.label("stable") == 3


@pytest.mark.parametrize("text, message", [
    ("model_config_list { config { name: \"r\" base_path: \"/r\" logging_config {} } }",
     "line 1: config field 'logging_config' is not one tfrs-movies reads"),
    ("model_config_list {\n config {\n name: \"r\"\n}\n}", "line 2: config has no base_path"),
    ("model_config_list {\n config { name: \"r\" base_path: \"/r\"\n", "never closed"),
    ("model_config_list { config { name: \"r\" base_path: \"/r\" model_version_policy "
     "{ all {} } } }", "model_version_policy 'all' is not supported"),
    ("model_config_list { config { name: 7 base_path: \"/r\" } }", "name must be a quoted"),
])
def test_parse_errors_name_the_line(text, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        mc.parse(text, "DIR/models.config")


@pytest.mark.parametrize("label", ["Stable", "3", "", "can ary", "a/b", "x" * 65])
def test_bad_labels_are_refused_everywhere(label, tmp_path):
    with pytest.raises(UserError, match="not valid"):
        ExportConfig(label=label)
    with pytest.raises(UserError, match="not valid"):
        mc.promote(tmp_path, label, 1)


def test_selectors_are_versions_or_labels():
    assert mc.parse_selector("12") == (12, None)
    assert mc.parse_selector("canary") == (None, "canary")
    with pytest.raises(UserError):
        mc.parse_selector("0")


def test_export_without_labels_keeps_the_default_policy(tmp_path):
    _export(tmp_path, 1)
    _export(tmp_path, 2)
    assert (tmp_path / "models.config").read_text() == mc.models_config(list(MODELS), "/models")


def test_export_labels_a_new_label_and_keeps_the_served_version(tmp_path):
    _export(tmp_path, 1)  # default policy: TF Serving serves version 1
    assert _export(tmp_path, 2, "canary") == []
    for name in MODELS:  # every model of that version
        assert _state(tmp_path, name) == ((1, 2), {"canary": 2})


def test_export_onto_a_label_in_use_waits_for_promote(tmp_path):
    _export(tmp_path, 1, "stable")
    _export(tmp_path, 2, "canary")
    notices = _export(tmp_path, 3, "canary")
    assert len(notices) == len(MODELS) and "promote" in notices[0]
    # TF Serving would reject the whole file for a label in use on an unloaded version.
    assert _state(tmp_path) == ((1, 2, 3), {"stable": 1, "canary": 2})


def test_promote_keeps_the_previous_version_until_the_next_promote(tmp_path):
    _export(tmp_path, 1, "stable")
    _export(tmp_path, 2, "canary")
    notices = mc.promote(tmp_path, "stable", 2)
    assert "(was 1, kept loaded)" in notices[0]
    assert _state(tmp_path) == ((1, 2), {"stable": 2, "canary": 2})
    _export(tmp_path, 3, "canary")  # waits: canary is in use on 2
    mc.promote(tmp_path, "canary", 3)  # 3 is loaded now: moves; 1 is dropped
    assert _state(tmp_path) == ((2, 3), {"stable": 2, "canary": 3})
    mc.promote(tmp_path, "stable", 2)  # no change
    assert _state(tmp_path) == ((2, 3), {"stable": 2, "canary": 3})


def test_promote_onto_an_unlisted_version_takes_two_steps(tmp_path):
    _export(tmp_path, 1, "stable")
    for name in MODELS:  # a version written without touching models.config
        (tmp_path / name / "2").mkdir()
    first = mc.promote(tmp_path, "stable", 2)
    assert "run this promote again" in first[0]
    assert _state(tmp_path) == ((1, 2), {"stable": 1})
    mc.promote(tmp_path, "stable", 2)
    assert _state(tmp_path) == ((1, 2), {"stable": 2})


def test_promote_a_rollback_keeps_newer_versions(tmp_path):
    _export(tmp_path, 1, "stable")
    _export(tmp_path, 2, "canary")
    mc.promote(tmp_path, "stable", 2)
    mc.promote(tmp_path, "stable", 1)  # roll back
    assert _state(tmp_path) == ((1, 2), {"stable": 1, "canary": 2})


def test_promote_only_labels_models_that_have_the_version(tmp_path):
    _export(tmp_path, 1, "stable")
    _export(tmp_path, 2, "canary", models=("ranking",))
    mc.promote(tmp_path, "stable", 2)
    assert _state(tmp_path, "ranking") == ((1, 2), {"stable": 2, "canary": 2})
    assert _state(tmp_path, "recommender") == ((1,), {"stable": 1})
    with pytest.raises(UserError, match="has version 9 on disk"):
        mc.promote(tmp_path, "stable", 9)
    with pytest.raises(UserError, match="export into"):
        mc.promote(tmp_path / "recommender", "stable", 1)


def test_promote_is_atomic(tmp_path, monkeypatch):
    _export(tmp_path, 1, "stable")
    _export(tmp_path, 2, "canary")
    path = tmp_path / "models.config"
    before = path.read_text()
    with open(path) as reader:  # a server that opened the file before the rename ...
        mc.promote(tmp_path, "stable", 2)
        assert reader.read() == before  # ... still reads the whole old file
    assert mc.entry_for(tmp_path, "recommender").label("stable") == 2
    after = path.read_text()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        mc.promote(tmp_path, "stable", 1)
    assert path.read_text() == after  # untouched, and no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        ".models.config.lock", "models.config"]


def test_resolve_label_follows_the_file(tmp_path):
    _export(tmp_path, 1, "stable")
    _export(tmp_path, 2, "canary")
    assert mc.resolve_label(tmp_path, "ranking", "canary") == 2
    mc.promote(tmp_path, "canary", 1)
    assert mc.resolve_label(tmp_path, "ranking", "canary") == 1  # re-read after the change
    with pytest.raises(mc.UnknownLabel, match="labels: canary, stable"):
        mc.resolve_label(tmp_path, "ranking", "beta")
