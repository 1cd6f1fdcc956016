"""The shape of the library's own source, read with `ast` (nothing is imported).

- No function or method of the library (everything but `tests/` and
  `benchmarks/`) is over `MAX_FUNCTION_LINES` lines, from its `def` line to its
  last line: a longer one is split into named steps that each do one thing.
- The top-level packages form layers (`LAYERS`): a package imports only
  packages of a lower layer, never one of its own layer or above, so there is
  no cycle between packages. Every import counts: `import clasp.x`,
  `from clasp.x import ...`, `from clasp import x`, relative imports, and those
  inside functions (a lazy import is still a dependency).

The layers, from the floor up:

| layer | packages | what they are |
| --- | --- | --- |
| 0 | `errors` (the module), the package root (`__version__`) | import nothing of ours |
| 1 | `common`, `settings`, `hardware` | small shared facts; may import layer 0 only |
| 2 | `store` | the label store, the one thing both stages share |
| 3 | `datasets` | the synthetic world and the benchmark readers |
| 4 | `runs` | the skeleton of a training job (run folder, checkpoints, logs) |
| 5 | `labeling`, `pretraining` | the two stages; never import each other |
| 6 | `evaluation` | probes and metrics of a backbone |
| 7 | `finetune` | fine-tuning, scored with evaluation's metrics |
| 8 | `reproduce` | the `make reproduce` pipeline |
| 9 | `cli` | the command line, a thin layer over all of it |
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_LIBRARY = {"tests", "benchmarks"}
MAX_FUNCTION_LINES = 60

LAYERS = {
    "errors": 0, "__init__": 0,
    "common": 1, "settings": 1, "hardware": 1,
    "store": 2,
    "datasets": 3,
    "runs": 4,
    "labeling": 5, "pretraining": 5,
    "evaluation": 6,
    "finetune": 7,
    "reproduce": 8,
    "cli": 9, "command_pages": 9,
}

# Edges that break the layers today and are kept until their package is moved; each says why.
ALLOWED = {
}


def library_files() -> list[Path]:
    files = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if parts[0] in NOT_LIBRARY or any(p.startswith(".") or p == "__pycache__" or p.endswith(".egg-info")
                                          for p in parts):
            continue
        files.append(path)
    return files


FILES = library_files()
TREES = {path: ast.parse(path.read_text(encoding="utf-8"), str(path)) for path in FILES}


def package_of(path: Path) -> str:
    """The top-level package a file belongs to: `store` for store/reader.py, `cli` for cli.py."""
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else path.stem


def module_name(path: Path) -> list[str]:
    """`clasp.store.reader` as ["clasp", "store", "reader"]; a package's __init__ is the package itself."""
    parts = ["clasp", *path.relative_to(ROOT).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_packages(path: Path, node: ast.AST) -> list[str]:
    """The top-level packages of ours an import statement names (`__init__` for the package root)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            here = module_name(path)
            base = here if path.name == "__init__.py" else here[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if module == "clasp":
            return [alias.name if alias.name in LAYERS else "__init__" for alias in node.names]
        names = [module]
    else:
        return []
    return [name.split(".")[1] if "." in name else "__init__" for name in names
            if name == "clasp" or name.startswith("clasp.")]


def import_edges() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) between different top-level packages -> where: ["store/reader.py:12", ...]."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path, tree in TREES.items():
        source = package_of(path)
        for node in ast.walk(tree):
            for target in imported_packages(path, node):
                if target != source:
                    edges[(source, target)].append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return dict(edges)


EDGES = import_edges()


def test_the_source_was_found():
    assert len(FILES) > 100 and ROOT / "cli.py" in TREES and ROOT / "store" / "schema.py" in TREES


def test_no_function_is_over_the_limit():
    long = []
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"over {MAX_FUNCTION_LINES} lines; split into named steps:\n" + "\n".join(long)


def test_every_package_has_a_layer():
    packages = {package_of(path) for path in FILES}
    assert not packages - set(LAYERS), f"place these in LAYERS: {sorted(packages - set(LAYERS))}"


def test_nothing_imports_its_own_layer_or_above():
    wrong = [f"{a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]}) at {', '.join(where)}"
             for (a, b), where in sorted(EDGES.items())
             if a in LAYERS and b in LAYERS and LAYERS[b] >= LAYERS[a] and (a, b) not in ALLOWED]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_allowed_exceptions_are_still_needed():
    stale = [edge for edge in ALLOWED if edge not in EDGES]
    assert not stale, f"no longer imported, remove from ALLOWED: {stale}"


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in EDGES:
        graph[a].add(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


@pytest.mark.parametrize("above", ["evaluation", "finetune", "reproduce", "pretraining", "labeling", "cli"])
def test_datasets_import_no_stage_and_no_evaluation(above):
    assert ("datasets", above) not in EDGES, EDGES.get(("datasets", above))


@pytest.mark.parametrize("a, b", [("pretraining", "labeling"), ("labeling", "pretraining")])
def test_the_two_stages_never_import_each_other(a, b):
    assert (a, b) not in EDGES, EDGES.get((a, b))


@pytest.mark.parametrize("floor", ["common", "errors", "settings", "hardware"])
def test_the_floor_imports_only_the_floor(floor):
    imported = {b for (a, b) in EDGES if a == floor}
    assert imported <= {"errors", "__init__"}, f"{floor} imports {sorted(imported)}"


def test_import_reading_sees_every_form(tmp_path):
    """The reader above: absolute, from-package, relative and in-function imports all count."""
    source = ("import clasp.store.reader\nfrom clasp import errors, __version__\nfrom . import fields\n"
              "from ..common.percent import percent\ndef f():\n    from clasp.runs import layout\n")
    tree = ast.parse(source)
    path = ROOT / "settings" / "example.py"
    found = [p for node in ast.walk(tree) for p in imported_packages(path, node)]
    assert sorted(found) == sorted(["store", "errors", "__init__", "settings", "common", "runs"])
