"""TF Serving's ``models.config`` for an export dir: render, parse, version labels, promote.

No TensorFlow here: the exporter, ``python -m serving promote``, the local backend (which
resolves a label to a version through this file) and the tests all share it.

The file is the text proto of ``tensorflow.serving.ModelServerConfig`` that
``tensorflow_model_server --model_config_file=DIR/models.config`` reads (and re-reads every
``--model_config_file_poll_wait_seconds``). Without labels every model gets TF Serving's default
policy (serve the highest version on disk); once a label is used, the model lists the versions
to keep loaded and the labels::

    config {
      name: "recommender"
      base_path: "/models/recommender"
      model_platform: "tensorflow"
      model_version_policy {
        specific {
          versions: 1
          versions: 2
        }
      }
      version_labels {
        key: "canary"
        value: 2
      }
      version_labels {
        key: "stable"
        value: 1
      }
    }

TF Serving's rule for labels shapes the two operations below. It accepts a label on a version
it has not loaded yet only for a label not in use (and only with
``--allow_version_labels_for_unavailable_models=true``); moving a label in use onto a version
it has not loaded makes it reject the whole file, so that version would never load. Hence:

- ``record_export`` (``trainer export --label L``) adds the new version to every written model's
  loaded versions and points ``L`` at it when ``L`` is new (or already there); when ``L`` is in
  use on another version it stays there, and the notice says to run ``promote`` once the new
  version is loaded.
- ``promote(DIR, L, N)`` points ``L`` at ``N`` for every model that has version ``N``. If the
  file does not list ``N`` yet and ``L`` is in use, it first only adds ``N`` to the loaded
  versions (run it again once TF Serving reports ``N`` AVAILABLE). The loaded versions after a
  promote: every labelled version, the version the label pointed at before (kept for a
  rollback until the next promote) and the versions newer than every labelled one (exports
  waiting for their label); older unlabelled versions are unloaded.

Every rewrite holds a lock file (one writer at a time) and writes a temporary file that is
renamed onto ``models.config``: a polling server reads either the old or the new file, whole.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from tfrs_movies.errors import DataError, UserError

CONFIG_NAME = "models.config"
_LABEL = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_LOCK_NAME = ".models.config.lock"


def check_label(label: str) -> str:
    """``label`` if it is a valid version label, else `UserError`.

    A label is lower-case letters, digits, ``_`` and ``-``, starting with a letter (at most 64
    characters), e.g. ``stable`` or ``canary``: it can never be mistaken for a version number
    and fits TF Serving's REST path ``/v1/models/NAME/labels/LABEL``.
    """
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise UserError(f"label {label!r} is not valid: use lower-case letters, digits, '_' and "
                        f"'-', starting with a letter (e.g. stable, canary)")
    return label


def parse_selector(value: str) -> tuple[int | None, str | None]:
    """``"3"`` -> ``(3, None)`` (a version), ``"canary"`` -> ``(None, "canary")`` (a label)."""
    value = str(value).strip()
    if value.isdigit():
        if int(value) < 1:
            raise UserError(f"version must be >= 1, got {value}")
        return int(value), None
    return None, check_label(value)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One ``config { ... }`` of the model_config_list.

    Attributes:
      name: the model name clients ask for (``recommender``, ...).
      base_path: the model's folder as the server sees it (``/models/recommender``).
      versions: sorted versions to keep loaded (``specific`` policy); ``()`` means TF Serving's
        default policy, the highest version on disk.
      labels: sorted ``(label, version)`` pairs.
      platform: ``model_platform``.
    """

    name: str
    base_path: str
    versions: tuple[int, ...] = ()
    labels: tuple[tuple[str, int], ...] = ()
    platform: str = "tensorflow"

    def label(self, label: str) -> int | None:
        """The version ``label`` points at, or None."""
        return dict(self.labels).get(label)

    def with_state(self, versions, labels: Mapping[str, int]) -> ModelEntry:
        return dataclasses.replace(self, versions=tuple(sorted(set(versions))),
                                   labels=tuple(sorted(labels.items())))


# --- rendering ------------------------------------------------------------------------------


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(entries: list[ModelEntry]) -> str:
    """The ``model_config_list`` text proto of ``entries``, in order."""
    lines = ["model_config_list {"]
    for e in entries:
        lines += ["  config {", f"    name: {_quote(e.name)}",
                  f"    base_path: {_quote(e.base_path)}",
                  f"    model_platform: {_quote(e.platform)}"]
        if e.versions:
            lines += ["    model_version_policy {", "      specific {"]
            lines += [f"        versions: {v}" for v in e.versions]
            lines += ["      }", "    }"]
        for label, version in e.labels:
            lines += ["    version_labels {", f"      key: {_quote(label)}",
                      f"      value: {version}", "    }"]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def models_config(names: list[str], serving_root: str) -> str:
    """TF Serving ``model_config_list`` text, default policy, base paths under ``serving_root``."""
    return render([ModelEntry(n, _base_path(serving_root, n)) for n in names])


def _base_path(serving_root: str, name: str) -> str:
    return f"{serving_root.rstrip('/')}/{name}"


# --- parsing --------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n]+|\#[^\n]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<int>[-+]?\d+)
  | (?P<punct>[{}:;,])
""", re.VERBOSE)


def _tokens(text: str, source: str) -> list[tuple[str, str, int]]:
    out, pos, line = [], 0, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise DataError(f"{source} line {line}: cannot parse {text[pos:pos + 20]!r}")
        kind, value = match.lastgroup, match.group()
        if kind != "space":
            out.append((kind, value, line))
        line += value.count("\n")
        pos = match.end()
    return out


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), token[1:-1])


def _fields(tokens, i: int, source: str, closing: bool):
    """Parses ``name [:] value`` fields from ``tokens[i]`` -> ([(name, value, line)], next i).

    A value is a str, an int or a nested field list (``{ ... }``).
    """
    fields = []
    while i < len(tokens):
        kind, value, line = tokens[i]
        if value == "}" and closing:
            return fields, i + 1
        if kind != "ident":
            raise DataError(f"{source} line {line}: expected a field name, got {value!r}")
        name, i = value, i + 1
        if i < len(tokens) and tokens[i][1] == ":":
            i += 1
        if i >= len(tokens):
            raise DataError(f"{source} line {line}: field {name!r} has no value")
        kind, value, vline = tokens[i]
        if value == "{":
            nested, i = _fields(tokens, i + 1, source, closing=True)
            fields.append((name, nested, line))
        elif kind == "string":
            fields.append((name, _unquote(value), line))
            i += 1
        elif kind == "int":
            fields.append((name, int(value), line))
            i += 1
        else:
            raise DataError(f"{source} line {vline}: bad value {value!r} for field {name!r}")
        if i < len(tokens) and tokens[i][1] in (";", ","):
            i += 1
    if closing:
        raise DataError(f"{source}: a '{{' is never closed (missing '}}' at the end)")
    return fields, i


def _expect(value, kind, name: str, line: int, source: str):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        what = {str: "a quoted string", int: "an integer", list: "a { ... } block"}[kind]
        raise DataError(f"{source} line {line}: {name} must be {what}, got {value!r}")
    return value


def _unknown(name: str, line: int, source: str, where: str):
    raise DataError(f"{source} line {line}: {where} field {name!r} is not one tfrs-movies reads "
                    f"or writes; remove it (export, promote and the backends rewrite or read "
                    f"the whole file)")


def _entry(fields, source: str, line: int) -> ModelEntry:
    values: dict = {"versions": [], "labels": {}}
    for name, value, fline in fields:
        if name in ("name", "base_path", "model_platform"):
            values[name] = _expect(value, str, name, fline, source)
        elif name == "model_version_policy":
            for kind, policy, pline in _expect(value, list, name, fline, source):
                if kind == "specific":
                    for field, version, vline in _expect(policy, list, kind, pline, source):
                        if field != "versions":
                            _unknown(field, vline, source, "specific")
                        values["versions"].append(_expect(version, int, field, vline, source))
                    if not values["versions"]:
                        raise DataError(f"{source} line {pline}: specific lists no versions")
                elif kind == "latest" and all(
                        f == "num_versions" and v == 1 for f, v, _ in
                        _expect(policy, list, kind, pline, source)):
                    pass  # the default policy spelt out
                else:
                    raise DataError(f"{source} line {pline}: model_version_policy {kind!r} is "
                                    f"not supported here: use specific {{ versions: N }} or none")
        elif name == "version_labels":
            pair = {}
            for field, item, vline in _expect(value, list, name, fline, source):
                if field not in ("key", "value"):
                    _unknown(field, vline, source, "version_labels")
                pair[field] = _expect(item, str if field == "key" else int, field, vline, source)
            if set(pair) != {"key", "value"}:
                raise DataError(f"{source} line {fline}: version_labels needs a key and a value")
            values["labels"][pair["key"]] = pair["value"]
        else:
            _unknown(name, fline, source, "config")
    for required in ("name", "base_path"):
        if required not in values:
            raise DataError(f"{source} line {line}: config has no {required}")
    return ModelEntry(values["name"], values["base_path"], tuple(sorted(set(values["versions"]))),
                      tuple(sorted(values["labels"].items())),
                      values.get("model_platform", "tensorflow"))


def parse(text: str, source: str = CONFIG_NAME) -> list[ModelEntry]:
    """The entries of a ``model_config_list`` text proto; `DataError` names the line if bad."""
    fields, _ = _fields(_tokens(text, source), 0, source, closing=False)
    entries: list[ModelEntry] = []
    for name, value, line in fields:
        if name != "model_config_list":
            _unknown(name, line, source, "top-level")
        for field, config, cline in _expect(value, list, name, line, source):
            if field != "config":
                _unknown(field, cline, source, "model_config_list")
            entry = _entry(_expect(config, list, field, cline, source), source, cline)
            if any(e.name == entry.name for e in entries):
                raise DataError(f"{source} line {cline}: model {entry.name!r} is listed twice")
            entries.append(entry)
    return entries


def read(export_dir: str | os.PathLike) -> list[ModelEntry]:
    """The entries of ``export_dir/models.config``; ``[]`` when there is no such file."""
    path = Path(export_dir) / CONFIG_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return parse(text, str(path))


# --- writing --------------------------------------------------------------------------------


def write(export_dir: str | os.PathLike, entries: list[ModelEntry]) -> Path:
    """Writes ``export_dir/models.config`` atomically (temporary file, fsync, rename)."""
    path = Path(export_dir) / CONFIG_NAME
    tmp = path.with_name(f".{CONFIG_NAME}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(render(entries))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def _locked(export_dir: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``export_dir``'s config for a read-modify-write."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one writer at a time is then up to the user
        yield
        return
    with open(export_dir / _LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def disk_versions(export_dir: str | os.PathLike, model: str) -> list[int]:
    """Sorted numeric version directories of ``export_dir/model`` (``[]`` if none)."""
    model_dir = Path(export_dir) / model
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


def _loaded(entry: ModelEntry, on_disk: list[int]) -> set[int]:
    """The versions ``entry`` has TF Serving keep loaded (default policy: the highest)."""
    if entry.versions:
        return set(entry.versions)
    return {on_disk[-1]} if on_disk else set()


def record_export(export_dir: str | os.PathLike, written: Mapping[str, int],
                  label: str | None = None, serving_root: str = "/models") -> list[str]:
    """Updates ``models.config`` after ``written`` ({model: version}) were exported.

    Models of the file not in ``written`` keep their entry. Without ``label`` and without
    labels in the file, the written models get the default policy (as before labels existed);
    otherwise each written version joins its model's loaded versions and ``label`` is set as
    the module docstring says. Returns notices for the user (one line each).
    """
    export_dir = Path(export_dir)
    if label is not None:
        check_label(label)
    notices = []
    with _locked(export_dir):
        entries = read(export_dir)
        by_name = {e.name: e for e in entries}
        for name, version in written.items():
            entry = by_name.get(name) or ModelEntry(name, _base_path(serving_root, name))
            entry = dataclasses.replace(entry, base_path=_base_path(serving_root, name))
            if label is None and not entry.labels and not entry.versions:
                by_name[name] = entry  # the default policy serves the new version
                continue
            before = [v for v in disk_versions(export_dir, name) if v != version]
            loaded = _loaded(entry, before) | {version}
            labels = dict(entry.labels)
            if label is not None:
                current = labels.get(label)
                if current is None or current == version:
                    labels[label] = version
                else:
                    notices.append(
                        f"[{name}] label {label!r} stays on version {current} until version "
                        f"{version} is loaded (TF Serving moves a label in use only onto a "
                        f"loaded version): python -m serving promote --export-dir {export_dir} "
                        f"--label {label} --version {version}")
            by_name[name] = entry.with_state(loaded, labels)
        order = [e.name for e in entries] + [n for n in written if n not in
                                              {e.name for e in entries}]
        write(export_dir, [by_name[n] for n in order])
    return notices


def promote(export_dir: str | os.PathLike, label: str, version: int) -> list[str]:
    """Points ``label`` at ``version`` for every model of the file that has that version.

    Rewrites ``models.config`` atomically; returns one line per model saying what changed.
    See the module docstring for the two steps a label in use may need and what stays loaded.
    """
    export_dir = Path(export_dir)
    check_label(label)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"version must be an int >= 1, got {version!r}")
    with _locked(export_dir):
        entries = read(export_dir)
        if not entries:
            raise UserError(f"{export_dir / CONFIG_NAME} does not exist or lists no model: "
                            f"export into {export_dir} first (python -m trainer export)")
        out, notices = [], []
        for entry in entries:
            on_disk = disk_versions(export_dir, entry.name)
            if version not in on_disk:
                out.append(entry)
                continue
            loaded, labels = _loaded(entry, on_disk), dict(entry.labels)
            previous = labels.get(label)
            if previous is not None and previous != version and version not in loaded:
                loaded.add(version)
                notices.append(f"[{entry.name}] version {version} added to the loaded "
                               f"versions; {label!r} stays on {previous}: run this promote "
                               f"again once TF Serving reports version {version} AVAILABLE")
            else:
                labels[label] = version
                newest_label = max(labels.values())
                loaded = set(labels.values()) | {v for v in loaded if v > newest_label}
                if previous is not None:
                    loaded.add(previous)
                notices.append(f"[{entry.name}] {label} -> version {version}"
                               + (f" (was {previous}, kept loaded)"
                                  if previous not in (None, version) else "")
                               + f"; loaded versions {sorted(loaded)}")
            out.append(entry.with_state(loaded, labels))
        if out == entries and not notices:
            models = ", ".join(e.name for e in entries)
            raise UserError(f"no model of {export_dir / CONFIG_NAME} ({models}) has version "
                            f"{version} on disk")
        write(export_dir, out)
    return notices


# --- resolving --------------------------------------------------------------------------------


class UnknownLabel(UserError):
    """The export's models.config gives no version for this model and label."""


class _Cache:
    """Parsed ``models.config`` per export dir, re-read when the file changes."""

    def __init__(self):
        self._seen: dict[str, tuple[tuple[int, int, int], list[ModelEntry]]] = {}

    def entries(self, export_dir: str | os.PathLike) -> list[ModelEntry]:
        path = os.path.join(os.fspath(export_dir), CONFIG_NAME)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return []
        # Every rewrite renames a new file into place, so the inode changes even when the
        # mtime (coarse on many filesystems) and the size do not.
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._seen.get(path)
        if cached is None or cached[0] != key:
            cached = (key, read(export_dir))
            self._seen[path] = cached
        return cached[1]


_CACHE = _Cache()


def entry_for(export_dir: str | os.PathLike, model: str) -> ModelEntry | None:
    """``model``'s entry in ``export_dir/models.config`` (re-read when the file changes)."""
    return next((e for e in _CACHE.entries(export_dir) if e.name == model), None)


def resolve_label(export_dir: str | os.PathLike, model: str, label: str) -> int:
    """The version ``label`` points at for ``model`` in ``export_dir/models.config``.

    Raises `UnknownLabel` (a `UserError`) when the file, the model or the label is missing.
    """
    entry = entry_for(export_dir, model)
    version = entry.label(label) if entry is not None else None
    if version is None:
        known = ", ".join(lbl for lbl, _ in entry.labels) if entry else ""
        raise UnknownLabel(f"no version labelled {label!r} for model {model!r} in "
                           f"{os.path.join(os.fspath(export_dir), CONFIG_NAME)} "
                           f"(labels: {known or 'none'})")
    return version
