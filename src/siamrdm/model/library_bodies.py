"""Library families of bodies: any model of timm (`timm:NAME`) or torchvision (`torchvision:NAME`) by name, cut
into stages by the library's own feature extraction, registered as families of the body registry.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import socket
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from .registry import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, import_library, read_state_dict, register_family

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
    timm = import_library("timm")
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
    models = import_library("torchvision.models")
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
    timm = import_library("timm")
    models = import_library("torchvision.models")
    return ([f"timm:{name}" for name in timm.list_models(glob)]
            + [f"torchvision:{name}" for name in models.list_models(module=models, include=glob)])


register_family("timm", _timm_spec)
register_family("torchvision", _torchvision_spec)

