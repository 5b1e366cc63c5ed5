"""The package's architecture as a test: every module sits in a layer and imports only from its own layer or
those below (lazy imports inside functions count too), and no imports go round in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import siamrdm

PACKAGE = Path(siamrdm.__file__).parent

# Lowest first. A module may import modules of its own layer or any layer below it, never above. Modules are named
# by their dotted path in the package; a subpackage's __init__ counts as its package ("rdm" re-exports rdm.core,
# "model" model.network, "train" train.fullbatch; "io" and "pipelines" import nothing).
LAYERS = [
    # no siamrdm imports (the package's API loads lazily)
    {"__init__", "errors", "choices", "rdm.core", "rdm", "rdm.compare_torch", "io.progress", "io", "pipelines"},
    # writing files safely; bounded reading; the bodies; the parts of an RDM; the methods' registry (names, code by
    # module)
    {"io.files", "io.atomic", "io.jsonfiles", "io.limits", "model.backbones", "model.registry", "model.library_bodies",
     "rdm.parts", "pipelines.methods"},
    {"io.arrayfiles", "io.images", "io.rsafiles", "io.rdmfiles", "io.condensed", "io.datasets"},  # images, RDM files
    {"io.tables", "model.network", "model"},  # tables and JSON; the network
    # the metric, ceilings, inference, score records, the submission format; splits; the baselines' fits
    {"rdm.transform", "rdm.stream", "rdm.compare", "rdm.noise_ceiling", "rdm.inference", "rdm.paired", "rdm.records",
     "rdm.submission", "rdm.splits", "model.baselines", "model.prior", "rdm.reliability", "model.frrsa"},
    {"train.config", "train.augment", "train.checkpoint", "train.ranks", "pipelines.plots", "pipelines.external",
     "pipelines.scorefiles", "pipelines.fitsummary"},  # settings; charts; scoring files; what fit reports
    {"train.loop"},  # the step protocol, the optimiser, the kept epoch's rule
    {"train.fullbatch", "train.largeset"},  # full-batch and large-set data
    {"train.trainer", "train.lrfind"},  # the one trainer; the LR range test
    {"train", "train.predict", "pipelines.report", "train.selection"},
    {"train.distributed", "pipelines.evaluate"},
    {"pipelines.challenge"},
    # the command line's parser (its choices from `choices` and the torch-free registries), how it prints; what its
    # options name, read and checked
    {"cli_options", "cli_output"},
    {"cli_settings"},
    {"cli", "__main__"},
]


def module_name(path: Path) -> str:
    """A file's dotted name in the package: "rdm.compare", "cli"; a subpackage's __init__.py is the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if len(parts) > 1 and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported(node: ast.ImportFrom, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The siamrdm modules a relative `from ... import` in module `name` names: the one it imports from, and the
    imported names that are submodules (`from ..io import files`: io and io.files). The module's own package, which
    `from . import x` names, is left out: it is always imported first (and __version__ is a name, not a module)."""
    parts = [] if name == "__init__" else name.split(".")
    package = parts if is_package else parts[:-1]  # the package the file is in ([] for the top level)
    assert node.level - 1 <= len(package), f"{name}: a relative import above the package"
    stem = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
    found = {".".join(stem) or "__init__"} | {".".join([*stem, alias.name]) for alias in node.names}
    return (found & modules) - {".".join(package) or "__init__"}


def imports() -> dict[str, set[str]]:
    """module -> the siamrdm modules it imports (relative imports of any level, at module level or in functions)."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = {}
    for path in paths:
        name = module_name(path)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                found |= imported(node, name, path.name == "__init__.py" and name != "__init__", modules)
        graph[name] = found
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
