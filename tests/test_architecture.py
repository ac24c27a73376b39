"""The package's imports point one way (ARCHITECTURE.md, "Layers"): no cycle among its modules,
imports inside functions included, and no test reaches into another module's private names."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tfrs_movies"

# Each layer imports only from the layers before it (and from itself); ARCHITECTURE.md
# draws the same list. A module absent from this list fails the test: give it a layer.
LAYERS = [
    {"errors", "quiet", "contract", "cli", "movie_names", "kinds", "tf_serving_config",
     "config", "paths"},
    {"data"},
    {"metrics", "index", "inference", "distribute", "lazy_adam", "features"},
    {"towers", "models", "paper_models"},
    {"reranker"},
    {"runs", "training"},
    {"reranker_lists", "serving_graph"},
    {"export", "evaluation", "recommend"},
    {"analysis", "pipeline", "tuning"},
]


def _modules() -> dict[str, Path]:
    """Dotted module name (``tfrs_movies.reranker.model``) -> file."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports, anywhere in the file (functions included)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != "tfrs_movies":
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_cycle_through_a_function_local_import(tmp_path):
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    module = tmp_path / "tfrs_movies" / "low.py"
    module.parent.mkdir()
    module.write_text("def f():\n    from tfrs_movies import high\n")
    modules = {"tfrs_movies.low": module, "tfrs_movies.high": module}
    assert _imports("tfrs_movies.low", module, modules) == {"tfrs_movies.high"}


def test_the_package_has_no_import_cycle():
    assert _cycle(_graph()) is None


def test_every_import_points_down_the_layers():
    layer_of = {name: i for i, names in enumerate(LAYERS) for name in names}
    graph = _graph()
    unplaced = sorted({name.split(".")[1] for name in graph if name != "tfrs_movies"}
                      - set(layer_of))
    assert not unplaced, f"modules without a layer in LAYERS: {unplaced}"
    upward = [f"{name} -> {target}" for name, targets in graph.items() if name != "tfrs_movies"
              for target in targets
              if layer_of[target.split(".")[1]] > layer_of[name.split(".")[1]]]
    assert not upward, f"imports pointing up the layers: {upward}"


def test_no_test_imports_a_private_name_of_a_package_module():
    private = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfrs_movies"):
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and a.name != "__version__"]
    assert not private, private
