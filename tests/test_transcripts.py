"""scripts/transcripts.py: the docs' command transcripts rerun, checked and rewritten, on a
tiny fake README whose commands run a fake CLI (no model is trained)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "transcripts.py"

FAKE_CLI = '''
import os, sys
command, rest = sys.argv[1], sys.argv[2:]
if command == "hello":
    run = rest[rest.index("--run") + 1]
    print(f"hello from {run}: {sorted(os.listdir(run))}")
    print("took 0.31s", file=sys.stderr)
elif command == "lines":
    for i in range(1, int(rest[0]) + 1):
        print(f"line {i} of {rest[0]}")
elif command == "train":
    out = rest[rest.index("--output") + 1]
    print(f"{out} existed: {os.path.exists(out)}")
    os.makedirs(out)
    print(f"Run written to {out}")
'''

README = '''# Fake

Some text.

```bash
python -m fakecli hello --run runs/ml100k
```

```
$ python -m fakecli hello --run runs/ml100k
hello from runs/ml100k: ['config.json']
took 2.5s
$ python -m fakecli lines 6
line 1 of 6
...
line 6 of 6
```

```
$ python -m fakecli train --output runs/ml100k
runs/ml100k existed: False
Run written to runs/ml100k
```
'''


@pytest.fixture
def docs(tmp_path):
    """(folder the commands run in, README path, the real run folder)."""
    (tmp_path / "fakecli").mkdir()
    (tmp_path / "fakecli" / "__main__.py").write_text(FAKE_CLI)
    run = tmp_path / "somewhere" / "my-run"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    return tmp_path, readme, run


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300)


def test_check_passes_with_the_paths_pointed_at_a_real_run(docs):
    root, readme, run = docs
    done = _script("--check", "--cwd", str(root), "--run", str(run), str(readme))
    # The run was found (its file listed) and shown as runs/ml100k; 0.31s is not 2.5s, but
    # durations are not compared; the writing command got a fresh folder (it did not exist).
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every transcript matches" in done.stdout
    assert readme.read_text() == README
    assert not (root / "runs").exists()  # nothing wrote into the README's own path
    # --write rewrites the durations too.
    assert _script("--write", "--cwd", str(root), "--run", str(run), str(readme)).returncode == 0
    assert readme.read_text() == README.replace("took 2.5s", "took 0.31s")


def test_check_lists_differences_and_write_rewrites_them(docs):
    root, readme, run = docs
    stale = README.replace("line 6 of 6", "line 5 of 5").replace("$ python -m fakecli lines 6",
                                                                 "$ python -m fakecli lines 8")
    stale = stale.replace("hello from runs/ml100k: ['config.json']", "hello from runs/x")
    readme.write_text(stale)
    args = ["--cwd", str(root), "--run", str(run), str(readme)]
    done = _script("--check", *args)
    assert done.returncode == 1
    assert f"{readme}:10 (shown)" in done.stdout and f"{readme}:13 (shown)" in done.stdout
    assert "-hello from runs/x\n-took 2.5s\n+hello from runs/ml100k: ['config.json']" in (
        done.stdout)
    assert "-line 5 of 5\n+line 8 of 8" in done.stdout
    assert "2 transcript(s) differ" in done.stdout
    assert readme.read_text() == stale  # --check changes nothing
    done = _script("--write", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    text = readme.read_text()
    # The elision is kept (first and last lines shown), the durations are rewritten, the rest
    # of the file is untouched.
    assert "$ python -m fakecli lines 8\nline 1 of 8\n...\nline 8 of 8\n```" in text
    assert "hello from runs/ml100k: ['config.json']\ntook 0.31s\n" in text
    assert text == README.replace("lines 6", "lines 8").replace("line 1 of 6", "line 1 of 8") \
        .replace("line 6 of 6", "line 8 of 8").replace("took 2.5s", "took 0.31s")
    assert _script("--check", *args).returncode == 0


def test_skip_keeps_a_transcript_as_it_is(docs):
    root, readme, run = docs
    readme.write_text(README.replace("Run written to runs/ml100k", "Run written elsewhere"))
    done = _script("--write", "--skip", "fakecli train", "--cwd", str(root), "--run", str(run),
                   str(readme))
    assert done.returncode == 0 and "skipped: $ python -m fakecli train" in done.stdout
    assert "Run written elsewhere" in readme.read_text()


def test_a_missing_file_is_a_usage_error(tmp_path):
    done = _script("--check", str(tmp_path / "nope.md"))
    assert done.returncode == 2 and "no such file" in done.stderr


def _module():
    spec = importlib.util.spec_from_file_location("transcripts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["transcripts"] = module
    spec.loader.exec_module(module)
    return module


def test_matching_and_rewriting_keep_elisions():
    t = _module()
    assert t.matches(["a", "...", "c (1.2s)"], ["a", "b", "b2", "c (31.0s)"])
    assert t.matches(["a", "...", "c"], ["a", "c"])
    assert not t.matches(["a", "...", "c"], ["a", "xc"])  # "..." stands for whole lines
    assert not t.matches(["a", "b"], ["a", "b", "c"])
    assert t.matches(["[x] 5 steps in 2.8 s: 113 examples/s"], ["[x] 5 steps in 3 s: 9 examples/s"])
    assert not t.matches(["took 2.8s"], ["took 3s"], timings=True)
    shown = ["Start 1", "...", "[reranker] learning from 100", "...", "[ranking] rmse=0.9",
             "Done"]
    printed = ["Start 2", "epoch 1", "epoch 2", "[reranker] learning from 50", "epoch 1",
               "[ranking] rmse=0.8", "Done"]
    assert t.rewrite(shown, printed) == ["Start 2", "...", "[reranker] learning from 50", "...",
                                         "[ranking] rmse=0.8", "Done"]
    assert t.rewrite(["a", "b"], ["c"]) == ["c"]
