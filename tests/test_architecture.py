"""The package's shape: layers import only downwards, entry points are leaves, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "covidseg"
ENTRY_POINTS = {
    "covidseg.train",
    "covidseg.eval",
    "covidseg.train_segmenter",
    "covidseg.eval_segmenter",
    "covidseg.predict",
    "covidseg.export",
    "covidseg.report.build",
}
# What each layer may import from covidseg (besides itself); anything else is an upward import.
LAYERS = {
    "covidseg.data": {"covidseg.errors", "covidseg.paths", "covidseg.file_system", "covidseg.outputs"},
    "covidseg.models": {"covidseg.errors", "covidseg.metrics", "covidseg.checkpoints", "covidseg.models"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """covidseg modules imported anywhere in the file, inside functions too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("covidseg")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("covidseg"):
            found.add(node.module)
    return found


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str:
    """`from covidseg.data import x` names a package; keep the deepest module that exists."""
    while name not in GRAPH and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_no_import_cycles():
    edges = {m: {resolve(i) for i in deps} - {m} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_entry_points_import_no_other_entry_point():
    for module in ENTRY_POINTS:
        assert module in GRAPH, f"{module} is listed as an entry point but does not exist"
        other = {resolve(i) for i in GRAPH[module]} & (ENTRY_POINTS - {module})
        assert not other, f"{module} imports entry point(s) {other}"


@pytest.mark.parametrize("layer", list(LAYERS))
def test_lower_layers_do_not_import_upper_ones(layer):
    for module, deps in GRAPH.items():
        if module == layer or module.startswith(layer + "."):
            upward = {resolve(d) for d in deps if not (d == layer or d.startswith(layer + "."))}
            assert upward <= LAYERS[layer], f"{module} imports {upward - LAYERS[layer]}"


def test_no_module_over_350_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert not long, f"modules over 350 lines: {long}"
