"""The TF Serving export layout: versions, models.config, atomic publish.

``export(run, export_dir, config)`` writes the serving modules of ``serving_graph`` as::

    DIR/models.config              model_config_list for the models below (``tf_serving_config``)
    DIR/retrieval/N/               SavedModels with the contract's ``serving_default`` and
    DIR/ranking/N/                 ``lookup`` signatures (``tfrs_movies.contract``)
    DIR/recommender/N/
    DIR/similar_movies/N/

A version is written under a hidden name and renamed into place, so a polling server never
sees half a model, and an existing version is never overwritten.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import tensorflow as tf

from tfrs_movies import contract
from tfrs_movies.config import ExportConfig
from tfrs_movies.errors import UserError
from tfrs_movies.serving_graph import build_modules, input_specs
from tfrs_movies.tf_serving_config import record_export

MODELS = contract.MODELS
log = logging.getLogger(__name__)


def _missing_models(run) -> list[str]:
    """Why each contract model the run cannot export is missing (empty: all four)."""
    missing = []
    if run.retrieval_model() is None:
        missing.append("retrieval and recommender (no retrieval model: train --model all, "
                       "retrieval or multitask)")
    if run.rating_model() is None:
        missing.append("ranking" + (" and recommender" if run.retrieval_model() is not None
                                    else "") + " (no rating model: train --model all, "
                       "ranking or multitask)")
    return missing


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _save(module: tf.Module, model_dir: Path, version: int, scann: bool) -> Path:
    """Saves into a hidden sibling and renames it into place: a polling server never sees
    half a version, and an existing version is never touched."""
    final = model_dir / str(version)
    tmp = model_dir / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if scann else None)
    tf.saved_model.save(module, str(tmp), options=options, signatures={
        contract.SIGNATURE: module.serve, contract.LOOKUP.name: module.catalogue.find})
    try:
        os.rename(tmp, final)  # fails rather than overwrite if another writer got there first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{final} already exists: versions are never overwritten") from None
    return final


def export(run, export_dir: str | Path, config: ExportConfig) -> dict[str, Path]:
    """Writes every model the run supports into ``export_dir``; returns name -> version dir."""
    export_dir = Path(export_dir)
    if config.version is not None:
        taken = [n for n in MODELS if (export_dir / n / str(config.version)).exists()]
        if taken:
            raise UserError(f"version {config.version} already exists for {', '.join(taken)} in "
                            f"{export_dir}: versions are never overwritten; omit --version to "
                            "write the next one")
    missing = _missing_models(run)
    if missing and not config.partial:
        raise UserError(f"{run.path} cannot give {'; '.join(missing)}: pass --partial to "
                        f"export the other models alone")
    start = time.perf_counter()
    modules = build_modules(run, config)
    log.info(f"Computed the serving tables in {time.perf_counter() - start:.1f}s")
    written = {}
    for name, module in modules.items():
        model_dir = export_dir / name
        model_dir.mkdir(parents=True, exist_ok=True)
        version = config.version or next_version(model_dir)
        start = time.perf_counter()
        scann = config.index == "scann" and name in ("retrieval", "recommender")
        if scann:
            module.serve(*[tf.zeros([1] * len(s.shape), tf.string) for s in input_specs(name)])
        written[name] = _save(module, model_dir, version, scann)
        log.info(f"[{name}] wrote {written[name]} ({time.perf_counter() - start:.1f}s)")
    for notice in record_export(export_dir, {n: int(p.name) for n, p in written.items()},
                                config.label, config.serving_root):
        log.info(notice)
    return written
