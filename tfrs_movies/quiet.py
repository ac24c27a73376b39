"""Quiet output for the command-line jobs: library log noise is hidden unless ``--verbose``.

TensorFlow's noise reaches the terminal through four separate channels, each with its own
switch, all set here and nowhere else:

  C++ log lines (TensorFlow, XLA)   ``TF_CPP_MIN_LOG_LEVEL``, read once, when TensorFlow loads:
                                    2 (the library default below) hides info and warnings, 3
                                    also the error-level ``failed call to cuInit ... (303)``
                                    that every job prints on a machine without a GPU.
  the Python ``tensorflow`` logger  tf-keras and TensorFlow warnings: tf.function retracing,
                                    "Callback method ... is slow compared to the batch time".
  absl logging                      SavedModel and TFDS messages.
  Python ``warnings``               the libraries' deprecation and user warnings.

A real failure still raises an exception, which the CLIs report; ``--verbose`` puts every
channel back to TensorFlow's own defaults. No TensorFlow import here: ``output`` must be entered
before TensorFlow loads for the C++ switch to take effect.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

_CPP_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
# What the environment asked for before this package set its own default: honoured as is.
_ASKED_LEVEL = os.environ.get(_CPP_LEVEL)


def library_default() -> None:
    """What importing ``tfrs_movies`` sets: C++ info lines and warnings off (level 2)."""
    os.environ.setdefault(_CPP_LEVEL, "2")


def _loggers() -> list[logging.Logger]:
    loggers = [logging.getLogger("tensorflow")]
    try:
        from absl import logging as absl_logging  # TensorFlow's dependency; no TF import
    except ImportError:  # a serving-only environment without TensorFlow
        return loggers
    return loggers + [absl_logging.get_absl_logger()]


class _Lines(logging.Handler):
    """Each record's message as one line: progress (INFO) on the current ``sys.stdout``,
    warnings on ``sys.stderr`` (looked up per line, so a caller that swaps them, a test's
    capture, sees the lines)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001  (logging's own contract: never raise from emit)
            self.handleError(record)


@contextlib.contextmanager
def progress() -> Iterator[None]:
    """Inside the block, the library's progress (``logging`` under ``tfrs_movies``, level
    INFO) is printed as plain lines on standard output and its warnings on standard error:
    the library logs, the job layer decides that a person sees it. Details (DEBUG) stay
    hidden."""
    package = logging.getLogger("tfrs_movies")
    handler = _Lines()
    saved = package.level, package.propagate
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(saved[0])
        package.propagate = saved[1]


@contextlib.contextmanager
def output(verbose: bool = False) -> Iterator[None]:
    """Inside the block, library noise is hidden (``verbose``: everything is shown) and the
    package's own progress lines are printed (``progress``).

    Everything is put back on exit, so an in-process caller (a test, a notebook calling
    ``main``) keeps its own settings; the C++ level only matters if TensorFlow first loads
    inside the block. A ``TF_CPP_MIN_LOG_LEVEL`` the environment set is left as it is.
    """
    previous = os.environ.get(_CPP_LEVEL)
    if _ASKED_LEVEL is None:
        os.environ[_CPP_LEVEL] = "0" if verbose else "3"
    saved = [] if verbose else [(logger, logger.level) for logger in _loggers()]
    try:
        with warnings.catch_warnings(), progress():
            if not verbose:
                warnings.simplefilter("ignore")
            for logger, _ in saved:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
        if previous is None:
            os.environ.pop(_CPP_LEVEL, None)
        else:
            os.environ[_CPP_LEVEL] = previous
