"""Where a job reads and writes: one check that nothing a job writes is something it reads,
the folders a user may mistake for one another (a run, an export), and one line for an
operating system error. TensorFlow-free, for both CLIs and the library.

``check_outputs(writes, reads)`` is the one check every command runs before writing: an
`Output` may not be an `Input` (paths compared resolved: symlinks, ``..``, relative paths;
existing files also by inode), a folder the job writes into may not hold an input, and no
output may be one of an input's own files (a run's ``config.json``, an export's model
folders: `Input.parts`).
"""
from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

from tfrs_movies import contract
from tfrs_movies.errors import UserError
from tfrs_movies.tf_serving_config import CONFIG_NAME

# A run directory's own files and folders (``tfrs_movies.runs`` documents the layout).
RUN_FILES = ("config.json", "format.json", "vocab.json", "catalog", "split", "models",
             "checkpoints", "logs", "metrics.json")
# An export directory's own files and folders (``tfrs_movies.export``).
EXPORT_FILES = (CONFIG_NAME, *contract.MODELS)


@dataclasses.dataclass(frozen=True)
class Output:
    """Something a job writes.

    Attributes:
      flag: the flag naming it, for "choose another FLAG".
      path: the path.
      what: how a message names it (default: the flag).
      tree: a folder the job writes anywhere inside (no input may lie in it).
    """

    flag: str
    path: str | os.PathLike
    what: str = ""
    tree: bool = False


@dataclasses.dataclass(frozen=True)
class Input:
    """Something a job reads: ``what`` names it in a message ("the users file"); ``parts``
    are names inside ``path`` that are its own (`RUN_FILES`, `EXPORT_FILES`): no output may
    be one of them or lie inside one. A ``path`` that is not a path (None, a list of ids) is
    skipped."""

    what: str
    path: object
    parts: tuple[str, ...] = ()


def check_outputs(writes: list[Output], reads: list[Input]) -> None:
    """`UserError` in one line when an output is an input, holds one, or is part of one."""
    for out in writes:
        target = Path(out.path).resolve()
        what = out.what or out.flag
        for read in reads:
            if not isinstance(read.path, (str, os.PathLike)):
                continue
            source = Path(read.path).resolve()
            given = str(read.path)
            if target == source or _same_file(target, source):
                raise UserError(f"refusing to write {what}: it is {read.what} {given!r}, an "
                                f"input of this job; choose another {out.flag}")
            if out.tree and target in source.parents:
                raise UserError(f"refusing to write into {what} {str(out.path)!r}: {read.what} "
                                f"{given!r} is inside it; choose another {out.flag}")
            for part in read.parts:
                owned = source / part
                if target == owned or owned in target.parents:
                    raise UserError(f"refusing to write {what} {str(out.path)!r}: it is part of "
                                    f"{read.what} {given!r} (its {part}); choose another "
                                    f"{out.flag}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_parent(path: str | os.PathLike, flag: str) -> None:
    """`UserError` unless ``path``'s folder exists: it is missing, or it is a file."""
    parent = Path(path).parent
    if parent.is_dir():
        return
    for where in (parent, *parent.parents):
        if where.exists():
            if not where.is_dir():
                raise UserError(f"{flag} {str(path)!r}: {str(where)!r} is a file, not a folder")
            break
    raise UserError(f"{flag} {str(path)!r}: output folder {str(parent)!r} does not exist")


def check_writable(path: str | os.PathLike) -> None:
    """`OSError` naming the folder when ``path`` (a folder to write, or to create) could not
    be written: its nearest existing folder is on a read-only file system or not writable.
    Jobs call it before their work, so a read-only disk costs a line, not minutes."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    if os.statvfs(where).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(where))
    if not os.access(where, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(where))


def kind_of_dir(path: str | os.PathLike) -> str | None:
    """``"run"`` for a run directory (``trainer train`` wrote it), ``"export"`` for an export
    dir (``trainer export`` wrote it), else None."""
    path = Path(path)
    if (path / "config.json").is_file() and any(
            (path / name).exists() for name in ("format.json", "vocab.json", "split")):
        return "run"
    if (path / CONFIG_NAME).is_file() or any(
            (path / model).is_dir() and any(p.name.isdigit() for p in (path / model).iterdir())
            for model in contract.MODELS):
        return "export"
    return None


# TensorFlow's codes for a file it could not write: PERMISSION_DENIED, RESOURCE_EXHAUSTED.
_TF_CODES = {7: errno.EACCES, 8: errno.ENOSPC}


def io_error(err: BaseException) -> OSError | None:
    """``err`` as an `OSError` when it is one, or when it is TensorFlow's error for a file it
    could not read or write (permission denied, disk or quota full; not an out-of-memory
    error); None for anything else. TensorFlow is never imported: its errors are recognised
    by their module and ``error_code``."""
    if isinstance(err, OSError):
        return err
    code = getattr(err, "error_code", None)
    if (type(err).__module__.startswith("tensorflow") and code in _TF_CODES
            and not str(getattr(err, "message", "")).startswith("OOM")):
        message = " ".join(str(getattr(err, "message", err)).split())
        return OSError(_TF_CODES[code], message)
    return None


def os_error_line(err: OSError) -> str:
    """One line for an operating system error: the path(s), the reason, then any notes
    (``add_note``: what was kept, what to do), e.g. ``runs/x/models: No space left on device
    (rerun the same command to resume)``."""
    reason = err.strerror or (os.strerror(err.errno) if isinstance(err.errno, int) else None)
    names = [os.fsdecode(n) for n in (err.filename, err.filename2) if n is not None]
    if names and reason:
        text = f"{' -> '.join(names)}: {reason}"
    elif reason and str(err) in (str(err.errno), ""):
        text = reason
    else:
        text = str(err) if not names else f"{' -> '.join(names)}: {err}"
    notes = getattr(err, "__notes__", None)
    if notes:
        text += f" ({'; '.join(notes)})"
    return " ".join(text.split())
