"""What ``python -m trainer`` and ``python -m serving`` share: help that states each flag's real
default, descriptions from docstrings without reStructuredText markup, ``--verbose``, the list
length flag (``-n``, alias ``-k``) and table cells padded to a terminal's columns.

A flag whose parsed default is ``argparse.SUPPRESS`` (absent from the namespace unless given,
so that explicit flags can be told from defaults) shows the default it stands for through
``set_shown_default``; the value then lives in one place, the config dataclass.
"""
from __future__ import annotations

import argparse
import re
import textwrap
import unicodedata


def set_shown_default(action: argparse.Action, value) -> argparse.Action:
    """Makes ``--help`` print ``value`` as the default of ``action``."""
    action.shown_default = value
    return action


def shown_default(action: argparse.Action):
    return getattr(action, "shown_default", action.default)


def format_default(value) -> str:
    """``(128, 64)`` -> ``128,64`` (the form the flag takes), ``()`` -> ``none``."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Ends each flag's help with ``(default: X)``, X being what a run without the flag uses.

    Nothing is added for switches (``store_true``/``store_false``: their help says what turning
    them on does), required flags, flags without a default, and flags whose help already
    speaks of its default. Descriptions keep their line breaks (sample commands).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.nargs == 0 or action.required or "default" in text:
            return text
        value = shown_default(action)
        if value is None or value is argparse.SUPPRESS:
            return text
        # argparse %-formats the help string: a literal % in the value must be doubled.
        return f"{text} (default: {format_default(value).replace('%', '%%')})".strip()


def plain(text: str) -> str:
    """Docstring text for a terminal: ````code```` and ```x``` lose their backticks, a
    paragraph's closing ``::`` becomes ``:``."""
    text = re.sub(r"``([^`]*)``", r"\1", text)
    text = re.sub(r"`([^`]*)`", r"\1", text)
    return re.sub(r"::$", ":", text, flags=re.MULTILINE)


def summary(doc: str | None) -> str:
    """The first line of a module docstring, as plain text (a parser's description)."""
    return plain((doc or "").strip().split("\n")[0])


# What the recommend and similar tables of both CLIs print, for their --help.
RECOMMEND_COLUMNS = (("rank", "1 = best, in the served order"),
    ("score", "the retrieval score: dot product of the user and movie embeddings; for an "
     "unknown user (a notice says so) log(1 + train ratings) of the popular movies"),
    ("rating", "predicted stars"),
    ("rank_score", "the served order's score: the learned re-ranker's (the predicted rating "
     "for an export without one)"))
SIMILAR_COLUMNS = (
    ("score", "cosine similarity of the movie's embedding and the mean of the seeds' "
     "normalized embeddings (the seeds are left out)"),)


def describe(help: str, columns: tuple[tuple[str, str], ...] = ()) -> str:
    """A subcommand's description: ``help``, then what each printed column means, wrapped
    (the formatter keeps line breaks)."""
    if not columns:
        return help
    width = max(len(name) for name, _ in columns) + 2
    lines = [help, "", "columns:"]
    for name, text in columns:
        lines += textwrap.wrap(text, 79, initial_indent=f"  {name:<{width}}",
                               subsequent_indent=" " * (width + 2))
    return "\n".join(lines)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` (``args.verbose_logs``): show what ``tfrs_movies.quiet`` hides."""
    parser.add_argument("--verbose", dest="verbose_logs", action="store_true",
                        help="show TensorFlow's log lines and library warnings (hidden "
                        "otherwise)")


class AtLeastOne(argparse.Action):
    """An int flag that must be >= 1; the error names the flag as it was typed (``-k`` or
    ``-n``), and ``args.<dest>_flag`` keeps that name for later messages."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values < 1:
            parser.error(f"argument {option_string}: must be at least 1, got {values}")
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_flag", option_string)


def add_list_length_flag(parser: argparse.ArgumentParser, default: int | None, help: str
                         ) -> argparse.Action:
    """``-n N`` (alias ``-k``, the trainer's older name): how many movies a list shows, the
    same flag on every subcommand of both CLIs that prints a list (``args.n``)."""
    return parser.add_argument("-n", "-k", dest="n", type=int, default=default, metavar="N",
                               action=AtLeastOne, help=f"{help} (-k: its older name)")


def width(text: str) -> int:
    """The terminal columns ``text`` takes: East Asian wide and fullwidth characters (CJK,
    most emoji) two, combining marks none, others one."""
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, columns: int, right: bool = False) -> str:
    """``text`` padded with spaces to ``columns`` terminal columns (on the left if
    ``right``), as ``ljust``/``rjust`` would for text of one column per character."""
    fill = " " * max(0, columns - width(text))
    return fill + text if right else text + fill

