"""The package's architecture as a test: every module sits in a layer and imports only from its own layer or
those below (lazy imports inside functions count too), and no imports go round in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import siamrdm

PACKAGE = Path(siamrdm.__file__).parent

# Lowest first. A module may import modules of its own layer or any layer below it, never above.
LAYERS = [
    {"__init__", "errors", "rdm", "scoring_torch", "progress"},  # no siamrdm imports (the package's API loads lazily)
    {"files", "backbones"},  # writing files safely; the pretrained bodies
    {"tables", "data", "model"},  # tables and JSON; reading datasets and RDM files; the network
    {"scoring", "splits", "baselines", "prior", "reliability"},  # RDM comparison, ceilings, chance; splits
    {"config", "augment", "checkpoint", "plots"},  # a run's settings and files; charts
    {"loop"},  # the one training loop
    {"train", "largeset"},  # full-batch and large-set data for the loop
    {"predict", "bench", "report", "selection"},
    {"distributed", "evaluate"},
    {"challenge"},
    {"cli", "__main__"},
]


def imports() -> dict[str, set[str]]:
    """module -> the siamrdm modules it imports (relative imports, at module level or inside functions)."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        graph[path.stem] = found & modules  # `from . import __version__` takes a name, not a module
    return graph


def test_every_module_has_a_layer() -> None:
    placed = set().union(*LAYERS)
    assert set(imports()) == placed, "add new modules to LAYERS (and remove deleted ones)"


def test_no_module_imports_one_above_it() -> None:
    layer = {name: k for k, names in enumerate(LAYERS) for name in names}
    upward = [(m, dep) for m, deps in imports().items() for dep in deps if layer[dep] > layer[m]]
    assert upward == []


def test_no_import_cycles() -> None:
    graph = imports()
    state: dict[str, str] = {}
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
