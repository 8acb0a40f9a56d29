"""The layout's rules (DESIGN.md): which of the suite's modules may import which, read from the source.

Every import statement counts, including those inside functions (lazy imports only hide a cycle).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "suite"
MODALITIES = ("suite.vision", "suite.detection", "suite.speech")
GENERIC = ("runner", "benching", "validate", "exporting", "listing", "cli", "rundir")


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """The suite modules ``path`` imports anywhere in its body (``from a import b`` counts a.b when b is one)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n in MODULES and n != "suite"}
    return out


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _in(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_sees_lazy_imports():
    assert "suite.vision.task" in GRAPH["suite.tasks"]  # imported inside a factory function
    assert len(MODULES) > 30


def test_modalities_import_none_of_each_other():
    for module, imported in GRAPH.items():
        for modality in MODALITIES:
            if _in(module, [modality]):
                others = [m for m in imported if _in(m, [x for x in MODALITIES if x != modality])]
                assert not others, f"{module} imports {others}: a rule two modalities share belongs in suite.core"


def test_core_knows_no_modality_recipe_or_registry():
    for module, imported in GRAPH.items():
        if _in(module, ["suite.core"]):
            outside = [m for m in imported if not _in(m, ["suite.core", "suite.errors"])]
            assert not outside, f"{module} imports {outside}"


def test_recipe_and_datasets_import_no_modality_and_no_registry():
    for module, imported in GRAPH.items():
        if module == "suite.recipe" or _in(module, ["suite.datasets"]):
            bad = [m for m in imported if _in(m, [*MODALITIES, "suite.tasks", "suite.runner", "suite.rundir"])]
            assert not bad, f"{module} imports {bad}"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(GRAPH[module]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("name", GENERIC)
def test_generic_layer_never_probes_a_modality(name):
    """The Modality Protocol declares every member the generic layer calls: no getattr/hasattr there."""
    tree = ast.parse((ROOT / f"{name}.py").read_text(encoding="utf-8"))
    probes = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")]
    assert not probes, f"suite/{name}.py calls getattr/hasattr at lines {probes}"
