"""Reruns the command transcripts of the docs and checks or rewrites their output.

A transcript is a fenced block whose first line starts with ``$ python -m``: each ``$ ...``
line is a command, the lines after it (to the next ``$`` line or the fence) what it printed,
stdout and stderr together as a terminal shows them. A line that is just ``...`` stands for
any number of lines (progress, the rest of a table), and is kept when a transcript is
rewritten. ``--check`` never compares durations (``4.8s``, ``12 ms``) or rates (``113
examples/s``); ``--write`` rewrites them too.

    python scripts/transcripts.py --check                 # exit 1 listing every difference
    python scripts/transcripts.py --write                 # rewrite the outputs in place
    python scripts/transcripts.py --write --run runs/ml100k --export exports/ml100k README.md

The transcripts name the run and export the README's first command makes, ``runs/ml100k`` and
``exports/ml100k``; ``--run`` and ``--export`` say where they are (default: those paths in
``--cwd``). A command that writes one of them (``train --output runs/ml100k``, ``export
--export-dir exports/ml100k``) writes a fresh temporary folder instead, so its transcript
shows a fresh run, version 1 of an export, and the real ones are left as they are. Paths are
written back as the transcripts name them. ``--skip TEXT`` keeps the transcripts of commands
containing TEXT as they are (e.g. ``--skip "trainer train"``: the whole training).

Default files: README.md, serving/README.md and docs/*.md. Commands run with ``--cwd`` (default
the repository root) as the working directory and this Python as ``python``.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILES = ("README.md", "serving/README.md", "docs/*.md")
RUN, EXPORT = "runs/ml100k", "exports/ml100k"
WRITING_FLAGS = ("--output", "--export-dir", "--out")
ELLIPSIS = "..."
PROMPT = "$ "
_FENCE = re.compile(r"^\s*(```|~~~)")
_DURATION = re.compile(r"\d[\d,]*(?:\.\d+)?(?=\s?(?:ms|s)\b)|\d+m\d+(?:\.\d+)?s\b")
_RATE = re.compile(r"\d[\d,]*(?:\.\d+)?(?= [\w-]+/s\b)")


@dataclasses.dataclass
class Transcript:
    """One command of a file and the output its transcript shows (lines ``start..end`` of the
    file, 0-based, end excluded)."""

    path: Path
    line: int  # the command's line
    command: str
    expected: list[str]
    start: int
    end: int


def find(path: Path) -> list[Transcript]:
    """Every command of every transcript block of ``path``."""
    lines = path.read_text(encoding="utf-8").split("\n")
    found, i = [], 0
    while i < len(lines):
        if not _FENCE.match(lines[i]):
            i += 1
            continue
        fence = _FENCE.match(lines[i]).group(1)
        close = next((j for j in range(i + 1, len(lines))
                      if lines[j].strip().startswith(fence)), len(lines))
        body = range(i + 1, close)
        if body and lines[i + 1].startswith(PROMPT + "python -m "):
            j = i + 1
            while j < close:
                line_no, command = j, lines[j][len(PROMPT):]
                while command.endswith("\\") and j + 1 < close:  # a continued command
                    j += 1
                    command = command[:-1].rstrip() + " " + lines[j].strip()
                j += 1
                start = j
                while j < close and not lines[j].startswith(PROMPT):
                    j += 1
                found.append(Transcript(path, line_no, command, lines[start:j], start, j))
        i = close + 1
    return found


def masked(line: str) -> str:
    """``line`` with durations and rates replaced by ``#``: what is compared."""
    return _RATE.sub("#", _DURATION.sub("#", line.rstrip()))


def matches(expected: list[str], actual: list[str], timings: bool = False) -> bool:
    """Whether ``actual`` fits ``expected``, an ``...`` line standing for any lines; durations
    and rates are compared only with ``timings``."""
    shown = (lambda line: line.rstrip()) if timings else masked
    pattern = "".join("(?:[^\n]*\n)*?" if line.strip() == ELLIPSIS
                      else re.escape(shown(line) + "\n") for line in expected)
    return re.fullmatch(pattern, "".join(shown(line) + "\n" for line in actual),
                        re.DOTALL) is not None


def _score(expected: list[str], actual: list[str]) -> float:
    return sum(difflib.SequenceMatcher(None, masked(a), masked(b)).ratio()
               for a, b in zip(expected, actual))


def rewrite(expected: list[str], actual: list[str]) -> list[str]:
    """The transcript's new output: ``actual``, keeping ``expected``'s ``...`` lines: the lines
    shown between them are the actual lines most like the ones shown before (in order; the
    first run of lines is the output's start, the last its end)."""
    if not any(line.strip() == ELLIPSIS for line in expected):
        return list(actual)
    segments: list[list[str] | None] = []  # None: an ellipsis
    for line in expected:
        if line.strip() == ELLIPSIS:
            segments.append(None)
        elif segments and segments[-1] is not None:
            segments[-1].append(line)
        else:
            segments.append([line])
    out, pos = [], 0
    for i, segment in enumerate(segments):
        if segment is None:
            out.append(ELLIPSIS)
            continue
        size = len(segment)
        if i == 0:
            start = 0
        elif i == len(segments) - 1 and len(actual) - size >= pos:
            start = len(actual) - size
        else:
            last = max(pos, len(actual) - size)
            start = max(range(pos, last + 1), key=lambda s: _score(segment, actual[s:s + size]))
        out += actual[start:start + size]
        pos = min(len(actual), start + size)
    return out


class Runner:
    """Runs commands with the README's paths pointed at real folders."""

    def __init__(self, cwd: Path, run: str | None, export: str | None, scratch: Path):
        self.cwd = cwd
        self.read = {RUN: run or RUN, EXPORT: export or EXPORT}
        self.scratch = scratch
        self.fresh = 0

    def argv(self, command: str) -> tuple[list[str], dict[str, str]]:
        """The command's argv (``python`` -> this Python, README paths -> real ones) and the
        real path -> README path map to write the output back with."""
        words = shlex.split(command)
        if words[:1] == ["python"]:
            words[0] = sys.executable
        back: dict[str, str] = {}
        for i, word in enumerate(words):
            for token, real in self.read.items():
                if word != token and not word.startswith(token + "/"):
                    continue
                if i and words[i - 1] in WRITING_FLAGS:  # writes it: a fresh folder instead
                    self.fresh += 1
                    real = str(self.scratch / f"{self.fresh}" / Path(token).name)
                    Path(real).parent.mkdir(parents=True)
                words[i] = real + word[len(token):]
                back[real] = token
                back[str((self.cwd / real).resolve())] = token
        return words, back

    def run(self, command: str) -> list[str]:
        words, back = self.argv(command)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
        done = subprocess.run(words, cwd=self.cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, encoding="utf-8")
        text = done.stdout
        for real in sorted(back, key=len, reverse=True):
            if real != back[real]:
                text = text.replace(real, back[real])
        lines = text.rstrip("\n").split("\n") if text.strip() else []
        return [line.rstrip() for line in lines]


def _files(names: list[str]) -> list[Path] | str:
    """The markdown files named (globs allowed), or the default ones; a name that matches
    nothing: its text, for the error."""
    paths: list[Path] = []
    for name in names or [str(ROOT / n) for n in DEFAULT_FILES]:
        found = sorted(glob.glob(name))
        if not found and names:
            return name
        paths += [Path(p) for p in found]
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/transcripts.py",
                                     description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true",
                      help="rerun every transcript; exit 1 listing those whose output differs")
    mode.add_argument("--write", action="store_true",
                      help="rerun every transcript and rewrite its output in place")
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help=f"markdown files (default: {', '.join(DEFAULT_FILES)})")
    parser.add_argument("--run", metavar="DIR", help=f"the run {RUN} stands for")
    parser.add_argument("--export", metavar="DIR", help=f"the export {EXPORT} stands for")
    parser.add_argument("--cwd", metavar="DIR", default=str(ROOT),
                        help="where the commands run (default: the repository root)")
    parser.add_argument("--skip", action="append", default=[], metavar="TEXT",
                        help="leave the transcripts of commands containing TEXT as they are")
    args = parser.parse_args(argv)
    files = _files(args.files)
    if isinstance(files, str) or not files:
        parser.error(f"no such file: {files}" if files else "no markdown file found")
    differ = rewritten = 0
    with tempfile.TemporaryDirectory(prefix="transcripts-") as scratch:
        runner = Runner(Path(args.cwd), args.run, args.export, Path(scratch))
        for path in files:
            transcripts = find(path)
            lines = path.read_text(encoding="utf-8").split("\n")
            changes = []
            for t in transcripts:
                if any(text in t.command for text in args.skip):
                    print(f"{path}:{t.line + 1}: skipped: $ {t.command}", flush=True)
                    continue
                print(f"{path}:{t.line + 1}: $ {t.command}", flush=True)
                actual = runner.run(t.command)
                if matches(t.expected, actual, timings=args.write):
                    continue
                differ += 1
                new = rewrite(t.expected, actual)
                if args.check:
                    diff = difflib.unified_diff(t.expected, new, f"{path}:{t.line + 1} (shown)",
                                                "(now printed)", lineterm="")
                    print("\n".join(diff), flush=True)
                changes.append((t, new))
            if args.write and changes:
                for t, new in reversed(changes):  # from the end: earlier line numbers hold
                    lines[t.start:t.end] = new
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text("\n".join(lines), encoding="utf-8")
                tmp.replace(path)
                rewritten += len(changes)
                print(f"{path}: rewrote {len(changes)} transcript(s)", flush=True)
    if args.check:
        print(f"{differ} transcript(s) differ" if differ else "every transcript matches")
        return 1 if differ else 0
    print(f"rewrote {rewritten} transcript(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
