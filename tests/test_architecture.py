"""The package's shape: layers import only downwards, entry points are leaves, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

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
# The package root holds the commands and the two things every layer needs; everything else is in a folder.
ROOT_MODULES = ENTRY_POINTS - {"covidseg.report.build"} | {"covidseg", "covidseg.errors", "covidseg.paths"}
# What each layer may import from covidseg (besides itself); anything else is an upward import.
# outputs (run-directory names, safe writes) is used by every layer above it.
BASE = {"covidseg.errors", "covidseg.paths", "covidseg.outputs"}
LAYERS = {
    "covidseg.outputs": {"covidseg.errors"},
    "covidseg.data": BASE,
    # A checkpoint's weights and recorded preprocessing are checked with the training-time rules.
    "covidseg.checkpoints": BASE | {"covidseg.models.divergence", "covidseg.runs.checks"},
    "covidseg.models": BASE | {"covidseg.checkpoints"},
    "covidseg.stats": BASE | {"covidseg.models.metrics"},
    "covidseg.masks": BASE
    | {"covidseg.data", "covidseg.models", "covidseg.outputs", "covidseg.inference.overlays"},
    "covidseg.explain": BASE | {"covidseg.data", "covidseg.models", "covidseg.masks"},
    "covidseg.deploy": BASE
    | {"covidseg.data", "covidseg.models", "covidseg.masks", "covidseg", "covidseg.outputs"},
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
    def allowed(name: str) -> bool:
        return any(name == a or name.startswith(a + ".") for a in LAYERS[layer] - {"covidseg"}) or (
            name == "covidseg" and "covidseg" in LAYERS[layer]
        )

    for module, deps in GRAPH.items():
        if module == layer or module.startswith(layer + "."):
            upward = {resolve(d) for d in deps if not (d == layer or d.startswith(layer + "."))}
            assert all(allowed(d) for d in upward), (
                f"{module} imports {sorted(d for d in upward if not allowed(d))}"
            )


def test_the_package_root_holds_only_the_commands_errors_and_paths():
    root = {m for m in GRAPH if m.count(".") <= 1 and not (PACKAGE / m.split(".")[-1]).is_dir()}
    assert root == ROOT_MODULES, f"unexpected root modules: {sorted(root - ROOT_MODULES)}"


def test_every_folder_of_the_package_is_listed_in_pyproject():
    """pyproject.toml lists packages (conf/ is mapped into the package), so a new folder must be added."""
    listed = set(
        tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("*.py")}
    assert folders <= listed, f"not in pyproject.toml's packages: {sorted(folders - listed)}"


def test_no_library_function_is_named_like_a_test():
    """pytest collects functions named test_* from any module a test imports."""
    named = [
        f"{module}.{node.name}"
        for path in PACKAGE.rglob("*.py")
        for module in [module_name(path)]
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test")
    ]
    assert not named, named


def test_no_module_over_350_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert not long, f"modules over 350 lines: {long}"
