"""The TF Serving export layout: versions, models.config, atomic publish.

``export(run, export_dir, config)`` writes the serving modules of ``serving_graph`` as::

    DIR/models.config              model_config_list for the models below (``tf_serving_config``)
    DIR/retrieval/N/               SavedModels with the contract's ``serving_default`` and
    DIR/ranking/N/                 ``lookup`` signatures (``tfrs_movies.contract``)
    DIR/recommender/N/
    DIR/similar_movies/N/

One export is one version number for all its models, the next free one in every model's
folder. Each model is saved under a hidden name; once all are saved they are renamed into place
(a polling server never sees half a model) and models.config is updated; a failure on the way
removes what the export wrote, so it publishes all its models or none. An existing version is
never overwritten.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import tensorflow as tf

from tfrs_movies import contract, paths
from tfrs_movies.config import ExportConfig
from tfrs_movies.errors import UserError
from tfrs_movies.runs import resume_hint
from tfrs_movies.serving_graph import build_modules, input_specs
from tfrs_movies.tf_serving_config import record_export

MODELS = contract.MODELS
log = logging.getLogger(__name__)


def _missing_models(run) -> list[str]:
    """Why each contract model the run cannot export is missing (empty: all four)."""
    missing = []
    stopped = _unfinished(run)
    if run.retrieval_model() is None:
        missing.append("retrieval and recommender (" + (
            "its retrieval model is not trained yet" if "retrieval model" in stopped else
            "no retrieval model: train --model all, retrieval or multitask") + ")")
    if run.rating_model() is None:
        missing.append("ranking" + (" and recommender" if run.retrieval_model() is not None
                                    else "") + " (" + (
            "its ranking model is not trained yet" if "ranking model" in stopped else
            "no rating model: train --model all, ranking or multitask") + ")")
    return missing


def _unfinished(run) -> list[str]:
    """What the run's training has yet to write (`runs.Run.unfinished`); nothing for a
    stand-in without that method."""
    return list(getattr(run, "unfinished", lambda: [])())


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def next_export_version(export_dir: Path) -> int:
    """One more than the highest version of any model in ``export_dir``: an export writes one
    version number for all its models, free in every model's folder."""
    return max((next_version(export_dir / name) for name in MODELS), default=1)


def _save(module: tf.Module, tmp: Path, scann: bool) -> None:
    """Saves ``module`` as a SavedModel into ``tmp`` (a hidden folder beside the versions);
    TensorFlow's errors for a file it cannot write become `OSError` naming ``tmp``."""
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if scann else None)
    signatures = {contract.SIGNATURE: module.serve, contract.LOOKUP.name: module.catalogue.find}
    if hasattr(module, "serve_with_history"):
        signatures[contract.WITH_HISTORY] = module.serve_with_history
    try:
        tf.saved_model.save(module, str(tmp), options=options, signatures=signatures)
    except (tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError) as err:
        failure = paths.io_error(err)
        if failure is None:
            raise
        raise OSError(failure.errno, failure.strerror, str(tmp)) from err


def export(run, export_dir: str | Path, config: ExportConfig) -> dict[str, Path]:
    """Writes every model the run supports into ``export_dir``; returns name -> version dir.

    One export is one version number for all its models (``config.version``, else one more
    than the highest version of any model there). Every model is first saved under a hidden
    name; only when all are saved are they renamed into place and ``models.config`` updated.
    A failure (a full disk, Ctrl-C, a version another writer took) removes what this export
    wrote, so it publishes all its models or none.
    """
    export_dir = Path(export_dir)
    if config.version is not None:
        taken = [n for n in MODELS if (export_dir / n / str(config.version)).exists()]
        if taken:
            raise UserError(f"version {config.version} already exists for {', '.join(taken)} in "
                            f"{export_dir}: versions are never overwritten; omit --version to "
                            "write the next one")
    missing = _missing_models(run)
    stopped = _unfinished(run)
    if missing and not config.partial:
        if any(kind.endswith("model") for kind in stopped):
            raise UserError(f"{run.path} is unfinished: it cannot give {'; '.join(missing)}; "
                            f"{resume_hint(run.path)}, or pass --partial to export the other "
                            f"models alone")
        raise UserError(f"{run.path} cannot give {'; '.join(missing)}: pass --partial to "
                        f"export the other models alone")
    if "re-ranker" in stopped:
        log.info(f"notice: {run.path} is unfinished (training stopped before the re-ranker): "
                 f"the recommender orders by predicted rating; {resume_hint(run.path)}")
    paths.check_writable(export_dir)
    start = time.perf_counter()
    modules = build_modules(run, config)
    log.info(f"Computed the serving tables in {time.perf_counter() - start:.1f}s")
    version = config.version or next_export_version(export_dir)
    saved: dict[str, Path] = {}  # name -> hidden folder, until published
    published: dict[str, Path] = {}
    created = [d for d in (*reversed(export_dir.parents), export_dir,
                           *(export_dir / name for name in modules)) if not d.exists()]
    try:
        for name, module in modules.items():
            model_dir = export_dir / name
            model_dir.mkdir(parents=True, exist_ok=True)
            tmp = model_dir / f".tmp-{version}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            saved[name] = tmp
            start = time.perf_counter()
            scann = config.index == "scann" and name in ("retrieval", "recommender")
            if scann:
                module.serve(*[tf.zeros([1] * len(s.shape), tf.string)
                               for s in input_specs(name)])
            _save(module, tmp, scann)
            log.info(f"[{name}] saved version {version} ({time.perf_counter() - start:.1f}s)")
        for name, tmp in saved.items():
            final = tmp.parent / str(version)
            try:
                os.rename(tmp, final)  # fails rather than overwrite another writer's version
            except OSError as err:
                if not final.exists():
                    raise
                raise UserError(f"{final} already exists (another export wrote it meanwhile): "
                                f"versions are never overwritten; nothing was published") from err
            published[name] = final
        notices = record_export(export_dir, {n: version for n in published}, config.label,
                                config.serving_root)
    except BaseException:
        for final in published.values():  # back out: all models or none
            shutil.rmtree(final, ignore_errors=True)
        for tmp in saved.values():
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(created):  # the folders this export made, if left empty
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    for notice in notices:
        log.info(notice)
    return published
