"""tfrs_movies.paths: one check of every command's outputs against its inputs and against a
run's or an export's own files, run and export folders told apart, one line for a file error;
and each CLI's refusals, before anything is trained or loaded (fake run and export folders)."""
from __future__ import annotations

import errno
import os

import pytest
import tensorflow as tf

from serving import __main__ as serving_cli
from tfrs_movies import paths
from tfrs_movies.config import ExportConfig
from tfrs_movies.errors import UserError
from trainer.__main__ import main as trainer


def _fake_run(path):
    for name in ("config.json", "format.json", "vocab.json"):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("{}")
    (path / "split").mkdir()
    (path / "models").mkdir()
    return path


def _fake_export(path):
    (path / "recommender" / "1").mkdir(parents=True)
    (path / "models.config").write_text("model_config_list {}\n")
    return path


def _snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_an_output_may_not_be_an_input_hold_one_or_be_part_of_one(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("x\n")
    (tmp_path / "link.csv").symlink_to(data)
    os.link(data, tmp_path / "hard.csv")
    run = _fake_run(tmp_path / "run")
    reads = [paths.Input("the ratings file", str(data)),
             paths.Input("the run", str(run), paths.RUN_FILES)]

    def refused(*writes):
        with pytest.raises(UserError) as caught:
            paths.check_outputs(list(writes), reads)
        return str(caught.value)

    for same in (data, tmp_path / "sub" / ".." / "data.csv", tmp_path / "link.csv",
                 tmp_path / "hard.csv"):
        if same.parent.name == "sub":
            (tmp_path / "sub").mkdir(exist_ok=True)
        assert refused(paths.Output("--out", same)) == (
            f"refusing to write --out: it is the ratings file {str(data)!r}, an input of this "
            "job; choose another --out")
    assert "the ratings file" in refused(paths.Output("--output", tmp_path, tree=True))
    assert "is inside it" in refused(paths.Output("--output", tmp_path, tree=True))
    message = refused(paths.Output("--output", run / "split" / "test.parquet"))
    assert "part of the run" in message and "(its split)" in message
    assert "it is the run" in refused(paths.Output("--export-dir", run))
    # Beside the inputs, inside a run but none of its own files, a folder without inputs: fine.
    paths.check_outputs([paths.Output("--out", tmp_path / "recs.csv"),
                         paths.Output("--output", run / "analysis", tree=True),
                         paths.Output("--output", run / "metrics-2.json"),
                         paths.Output("--output", tmp_path / "new", tree=True)], reads)
    # Values that are not paths (a list of ids, None) are skipped.
    paths.check_outputs([paths.Output("--out", data)], [paths.Input("the ids", ["u1"]),
                                                        paths.Input("the exclusions", None)])


def test_a_missing_folder_and_a_file_in_the_way_are_told_apart(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserError, match=r"'.*afile' is a file, not a folder"):
        paths.check_parent(afile / "out.parquet", "--out")
    with pytest.raises(UserError, match=r"'.*afile' is a file, not a folder"):
        paths.check_parent(afile / "deeper" / "out.parquet", "--out")
    with pytest.raises(UserError, match="output folder .* does not exist"):
        paths.check_parent(tmp_path / "nope" / "out.parquet", "--out")
    paths.check_parent(tmp_path / "out.parquet", "--out")


def test_runs_and_exports_are_recognised(tmp_path):
    assert paths.kind_of_dir(_fake_run(tmp_path / "run")) == "run"
    assert paths.kind_of_dir(_fake_export(tmp_path / "export")) == "export"
    (tmp_path / "bare" / "retrieval" / "3").mkdir(parents=True)  # no models.config yet
    assert paths.kind_of_dir(tmp_path / "bare") == "export"
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")  # some other tool's folder
    assert paths.kind_of_dir(tmp_path / "plain") is None
    assert paths.kind_of_dir(tmp_path / "missing") is None


def test_a_file_error_is_one_line_with_the_path_and_the_reason():
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/x/models/ranking")
    err.add_note("rerun to resume")
    assert paths.os_error_line(err) == (
        "runs/x/models/ranking: No space left on device (rerun to resume)")
    assert paths.os_error_line(PermissionError(errno.EROFS, "Read-only file system", "a.csv",
                                               None, "b.csv")) == (
        "a.csv -> b.csv: Read-only file system")
    # Arrow's errors carry no errno or path: their own text.
    assert paths.os_error_line(OSError("Error writing bytes to file. Detail: [errno 28] No "
                                       "space left on device")).startswith("Error writing")
    assert paths.io_error(err) is err and paths.io_error(ValueError("x")) is None
    full = paths.io_error(tf.errors.ResourceExhaustedError(
        None, None, "exports/x/ranking/.tmp-1/variables; No space left on device"))
    assert full.errno == errno.ENOSPC and "exports/x/ranking/.tmp-1" in full.strerror
    denied = paths.io_error(tf.errors.PermissionDeniedError(None, None, "runs/x: denied"))
    assert denied.errno == errno.EACCES
    assert paths.io_error(tf.errors.ResourceExhaustedError(
        None, None, "OOM when allocating tensor with shape[100000,64]")) is None
    assert paths.io_error(tf.errors.InvalidArgumentError(None, None, "bad shape")) is None


@pytest.fixture
def layout(tmp_path):
    """A fake run, a fake export, a ratings file and a plain file in ``tmp_path``."""
    run = _fake_run(tmp_path / "run")
    export = _fake_export(tmp_path / "export")
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("user_id,movie_id,rating\nu1,m1,5\n")
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    return tmp_path, run, export, ratings, afile


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "csv", "--ratings", "{ratings}", "--output", "{root}"],
     "refusing to write into --output '{root}': the --ratings input '{ratings}' is inside it"),
    (["train", "--data-dir", "{root}", "--output", "{root}"], "it is the --data-dir input"),
    (["train", "--dataset", "synthetic", "--output", "{export}"], "is an export dir"),
    (["evaluate", "--run", "{run}", "--output", "{run}/config.json"],
     "is part of the run '{run}' (its config.json)"),
    (["evaluate", "--run", "{run}", "--test-ratings", "{ratings}", "--output", "{ratings}"],
     "it is the --test-ratings file"),
    (["export", "--run", "{run}", "--export-dir", "{run}"], "it is the run (--run) '{run}'"),
    (["export", "--run", "{run}", "--export-dir", "{run}/models/x"], "(its models)"),
    (["export", "--run", "{root}/retrieval", "--export-dir", "{root}"],
     "refusing to write the retrieval folder of --export-dir: it is the run (--run) "
     "'{root}/retrieval'"),
    (["export", "--run", "{export}", "--export-dir", "{run}"], "is a run directory"),
    (["export", "--run", "{run}", "--export-dir", "{afile}/x"], "is inside {afile}, a file"),
    (["analyze", "--run", "{run}", "--output", "{run}/split"], "(its split)"),
    (["recommend", "--run", "{export}", "--user", "1"], "is an export (TF Serving models"),
    (["similar", "--run", "{root}/nothing", "--movie", "1"], "no such run directory"),
])
def test_trainer_refusals_name_the_paths_and_write_nothing(layout, capsys, argv, message):
    root, run, export, ratings, afile = layout
    names = {"root": root, "run": run, "export": export, "ratings": ratings, "afile": afile}
    if "{root}/retrieval" in argv:
        _fake_run(root / "retrieval")
    before = _snapshot(root)
    assert trainer([a.format(**names) for a in argv]) == 2
    assert message.format(**names) in _one_line(capsys)
    assert _snapshot(root) == before


@pytest.mark.parametrize("argv, message", [
    (["compare", "--model-dir", "{export}", "--a", "1", "--b", "2", "--test-ratings",
      "{ratings}", "--output", "{ratings}"], "it is the --test-ratings file"),
    (["compare", "--model-dir", "{export}", "--a", "1", "--b", "2", "--test-ratings",
      "{ratings}", "--output", "{export}/models.config"], "(its models.config)"),
    (["compare", "--model-dir", "{export}", "--a", "1", "--b", "2", "--test-ratings",
      "{ratings}", "--output", "{afile}/out.json"], "'{afile}' is a file, not a folder"),
    (["recommend", "--model-dir", "{export}", "--user", "u1", "--request-log",
      "{export}/recommender/log.jsonl"], "(its recommender)"),
    (["batch", "--model-dir", "{export}", "--users", "{ratings}", "--out",
      "{export}/recommender/recs.parquet"], "(its recommender)"),
    (["batch", "--model-dir", "{export}", "--users", "{ratings}", "--out",
      "{afile}/out.parquet"], "--out '{afile}/out.parquet': '{afile}' is a file, not a folder"),
    (["recommend", "--model-dir", "{run}", "--user", "u1"], "is a run directory"),
])
def test_serving_refusals_name_the_paths_and_write_nothing(layout, capsys, argv, message):
    root, run, export, ratings, afile = layout
    names = {"root": root, "run": run, "export": export, "ratings": ratings, "afile": afile}
    before = _snapshot(root)
    assert serving_cli.main([a.format(**names) for a in argv]) == 2
    assert message.format(**names) in _one_line(capsys)
    assert _snapshot(root) == before


def test_a_read_only_destination_is_found_before_any_work(tmp_path, monkeypatch):
    """The nearest existing folder of what a job would write is checked first: a read-only
    file system (or a folder it may not write) is one `OSError` naming that folder, and the
    export computes nothing."""
    import types

    from tfrs_movies import export as export_lib

    real = os.statvfs

    def read_only(path):
        got = real(path)
        return types.SimpleNamespace(f_flag=got.f_flag | os.ST_RDONLY)

    paths.check_writable(tmp_path / "new" / "deeper")  # a writable disk: nothing to say
    monkeypatch.setattr(paths.os, "statvfs", read_only)
    with pytest.raises(OSError) as err:
        paths.check_writable(tmp_path / "new" / "deeper")
    assert err.value.errno == errno.EROFS and err.value.filename == str(tmp_path)

    def never(*args):
        raise AssertionError("the serving tables were computed for a read-only destination")

    monkeypatch.setattr(export_lib, "build_modules", never)
    run = types.SimpleNamespace(path=tmp_path / "run", retrieval_model=lambda: object(),
                                rating_model=lambda: object(), unfinished=lambda: [])
    with pytest.raises(OSError, match="Read-only file system"):
        export_lib.export(run, tmp_path / "exports", ExportConfig())
    assert not (tmp_path / "exports").exists()
