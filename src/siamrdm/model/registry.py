"""What a body is (`BackboneSpec`), the registry of bodies and of library families, and the reading of weight
files every body shares. Bodies register themselves (backbones: the registered ones; library_bodies: `timm:NAME`,
`torchvision:NAME`); import `backbones` to see them all.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, DataError, WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """One body: its stages, how to build it with weights, and how to preprocess images.

    `build(weights, last)` returns a stage net (see `SequentialStages`): a module whose `forward(x, every)`
    gives the outputs of the stages up to `last`, as (B, C, H, W) maps, by name; `weights` is None for the
    pretrained default, 'random', or a state_dict file. Registered bodies and library families (`timm:NAME`,
    `torchvision:NAME`) are both specs: the rest of siamrdm sees only this.
    """

    name: str
    stage_names: Callable[[], list[str]]  # the stages, in order (cheap: no weights are loaded)
    build: Callable[[str | None, str], nn.Module]  # (weights, last stage) -> stage net with those weights
    default_stage: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str


BACKBONES: dict[str, BackboneSpec] = {}  # registered bodies, by name
# Library families: `PREFIX:NAME` resolves to a spec built from the library's own description of NAME.
BACKBONE_FAMILIES: dict[str, Callable[[str], BackboneSpec]] = {}
_RESOLVED: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


def register_family(prefix: str, resolve: Callable[[str], BackboneSpec]) -> None:
    """A library of bodies by name: `resolve(NAME)` gives the spec of `PREFIX:NAME` (or a ConfigError)."""
    BACKBONE_FAMILIES[prefix] = resolve


def backbone_choices() -> str:
    """The registered names and the family patterns, for messages and help."""
    return ", ".join([*BACKBONES, *(f"{prefix}:NAME" for prefix in BACKBONE_FAMILIES)])


def backbone_spec(name: str) -> BackboneSpec:
    """A registered body, or a library's model as `timm:NAME` / `torchvision:NAME` (resolved once per process)."""
    if name in BACKBONES:
        return BACKBONES[name]
    if name not in _RESOLVED:
        prefix, _, model = name.partition(":")
        if prefix not in BACKBONE_FAMILIES or not model:
            raise ConfigError("backbone", f"unknown backbone '{name}' (choose from {backbone_choices()})")
        _RESOLVED[name] = BACKBONE_FAMILIES[prefix](model)
    return _RESOLVED[name]


class SequentialStages(nn.ModuleDict):
    """Stages that run one after the other (a registered body's): the stage net of `BackboneSpec.build`."""

    def forward(self, x: torch.Tensor, every: bool = True) -> dict[str, torch.Tensor]:
        """Every stage's output by name, or with every=False only the last one's (nothing else is kept)."""
        outputs = {}
        for name, module in self.items():
            x = module(x)
            if every:
                outputs[name] = x
        return outputs if every else {name: x}


def sequential_backbone(name: str, build_stages: Callable[[], nn.ModuleDict],
                        load_pretrained: Callable[[nn.ModuleDict, str | None], None], **info) -> BackboneSpec:
    """A spec whose stages are modules run in order: built whole, weights loaded, then cut after the last stage
    wanted (the model file's keys are `stages.<stage>.<...>`)."""

    def build(weights: str | None, last: str) -> nn.Module:
        stages = build_stages()
        if weights != "random":
            load_pretrained(stages, weights)
        names = list(stages)
        return SequentialStages({n: stages[n] for n in names[: names.index(last) + 1]})

    return BackboneSpec(name=name, stage_names=lambda: list(build_stages()), build=build, **info)


def load_plain(path: str | Path, what: str, error: Callable[[str], Exception], unreadable: str = "",
               mmap: bool = False) -> object:
    """A torch file read with `weights_only=True` (a crafted file cannot run code on load): tensors and plain
    data only. A missing or unreadable file raises `error` with one line naming it as `what`. With `mmap` the
    tensors are mapped, not read (for a caller that wants only the plain data beside them)."""
    file = Path(path)
    if file.is_dir():
        raise error(f"{file}: is a folder, not a {what}")
    if not file.is_file():
        raise error(f"{file}: no such {what}")
    if file.stat().st_size == 0:
        raise error(f"{file}: empty file, not a {what}")
    try:
        with warnings.catch_warnings():  # torch warns, in lines of its own, about files of the legacy format
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: that would run the file's code
        raise error(f"{file}: unreadable {what}: not tensors and plain data in torch's format (refused: loading "
                    "anything else could run code)") from None
    except Exception as exc:
        raise error(f"{file}: unreadable {what}{unreadable} ({' '.join(str(exc).split())[:200]})") from None


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    file = Path(path)
    state = load_plain(file, "weights file", WeightsError)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{file}: not a state_dict of tensors")
    try:  # a NaN or infinite weight makes every prediction NaN, or a model file `predict` refuses
        check_tensors(state, str(file))
    except DataError as exc:
        raise WeightsError(str(exc)) from None
    return state


def check_tensors(state, what: str) -> None:
    """A state_dict: names to tensors, every floating one finite (a NaN weight makes every prediction NaN)."""
    if not isinstance(state, dict) or not state:
        raise DataError(f"{what} is not a state_dict (names to tensors)")
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise DataError(f"{what}: {name!r:.60} is not a named tensor")
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            raise DataError(f"{what}: {name} holds non-finite values (NaN or infinite)")


def import_library(name: str):
    """timm or torchvision, or one line saying why not: a torchvision built for another torch fails on import
    (e.g. "operator torchvision::nms does not exist"), and timm imports torchvision."""
    try:
        return importlib.import_module(name)
    except (ImportError, RuntimeError) as exc:
        try:
            vision = f"torchvision {importlib.metadata.version('torchvision')}"
        except importlib.metadata.PackageNotFoundError:
            vision = "no torchvision"
        problem = " ".join(str(exc).split())[:200]
        raise ConfigError("backbone", f"{name} cannot be imported ({problem}) with torch {torch.__version__} and "
                          f"{vision} installed: install a matching pair (pip install torch torchvision)") from None

