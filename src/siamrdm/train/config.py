"""What defines a training run: TrainConfig, the presets, and the checks that refuse settings before any work.

A run's config is plain data (saved in every checkpoint as a dict), so a checkpoint can be read without
unpickling code. `check_config` is called by every entry point before a folder is made or a body is run.
"""

from __future__ import annotations

import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, fields

import numpy as np
import torch

from ..choices import GROUP_TARGETS, LOSSES, OFF, PER_IMAGE, PRECISIONS, RESCALINGS, SET_WEIGHTS
from ..errors import ConfigError as ConfigError
from ..model.backbones import create_body
from ..model.network import head_config
from ..model.prior import PRIORS
from ..rdm.inference import SEED_LIMIT as SEED_LIMIT  # torch-free there, for the command line


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved in every checkpoint."""

    backbone: str = "efficientnet_lite0"
    stage: str | None = None  # None: the backbone's default stage
    weights: str | None = None  # None: pretrained default; "random"; or a state_dict file
    targets: tuple[str, ...] = ("EVC",)
    rescale: str = "minmax"  # the paper's [0, 1]; or "rank", "zscore"
    group_target: str = "mean"  # the subjects' mean RDM; or "ranks": the mean of each subject's ranks (see fullbatch)
    loss: str = "mse"  # the paper's Euclidean loss; or "correlation": 1 - Pearson r of the pair vector, scale-free
    image_size: int = 224
    frozen_epochs: int = 15
    unfrozen_epochs: int = 0
    lr: float = 1e-3  # head; the LR range test suggests one
    body_lr_factor: float = 0.1  # body rate = lr * this, once unfrozen
    # What the unfrozen epochs train with the head: the top K stages up to the head's stage (the lower ones stay
    # frozen and their outputs are cached per image and view, see fullbatch.FullBatchStep), or "all" the body.
    train_stages: int | str = "all"
    weight_decay: float = 0.01
    augment: bool = True  # random resized crop and horizontal flip, drawn per image per epoch
    augment_views: int = 4  # while frozen: views cached per image (view 0 is the plain image)
    crop_scale: tuple[float, float] = (0.7, 1.0)
    distance_init: bool = True  # head starts as a distance between the two images (see model/network.py)
    head: str = "paper"  # the head variant: "paper" (the paper's text) or "pairwise" (the authors' code); model.HEADS
    early_stopping: int | None = None  # patience in epochs without a better validation score (checked at validations)
    stop_epoch: int | None = None  # stop after this epoch; the schedule keeps the length of all `epochs`
    prior: str = "none"  # "layer" or "nnls": the head corrects a pretrained-layer RDM (see prior.py)
    correction_bound: float | None = None  # with a prior: the head's output bounded to +-this (tanh), in target units
    # Levers against learning one study's quirks (benchmarks/levers.py measures each; RESULTS.md says which are on):
    per_image: str = "keep"  # "remove": the head learns without the per-image part (a_i + a_j) of its target
    shrinkage: float = 0.0  # with a prior: the head learns (1 - this) x the residual, i.e. a ridge toward the prior
    head_average: float | None = None  # decay of an exponential moving average of the head's weights (epoch averaging)
    set_weights: str = "pairs"  # a training set's share of the loss: its pairs, or "reliability": pairs x reliability
    tta: bool = False  # test-time augmentation: predictions averaged over each image and its mirror image
    body_chunk: int = 32  # images per body pass
    validate_every: int = 1  # validate (and so can keep) only every k-th epoch, and the last; 1: every epoch
    precision: str = "fp32"  # or "bf16": the body runs under bfloat16 autocast (the head stays float32)
    channels_last: bool = False  # the body's weights and inputs in channels-last memory layout
    seed: int = 0
    device: str = "auto"

    @property
    def epochs(self) -> int:
        return self.frozen_epochs + self.unfrozen_epochs

    @property
    def last_epoch(self) -> int:
        """Where a fit stops: the schedule's end, or `stop_epoch` when it cuts the run short."""
        return self.epochs if self.stop_epoch is None else min(self.stop_epoch, self.epochs)


PRESETS: dict[str, dict] = {
    # The whole challenge in minutes on 2 CPU cores: frozen body, cached augmented features. The head corrects the
    # RDM of the pretrained stage that fits the training RDMs best: on image folds (mean rho, benchmarks/levers.py)
    # it is within one standard error of the NNLS prior of all stages for every target, and simpler (RESULTS.md).
    # The ranks target was adopted by the lever rule stated before its run (RESULTS.md).
    "quick": dict(frozen_epochs=60, unfrozen_epochs=0, lr=1e-3, augment_views=4, prior="layer", group_target="ranks"),
    # The paper's schedule, for a GPU: frozen warm-up, then the body unfrozen with a one-cycle schedule.
    "paper": dict(frozen_epochs=15, unfrozen_epochs=1000, lr=1e-3, body_lr_factor=0.1, early_stopping=100,
                  prior="layer"),
}


def config_from_preset(preset: str, **overrides) -> TrainConfig:
    """A preset with overrides: None leaves the preset's value (an option not given), OFF sets the field to
    None (e.g. `early_stopping=OFF` turns off the paper preset's early stopping); unknown names are refused."""
    if preset not in PRESETS:
        raise ConfigError("preset", f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(k for k in overrides if k not in names)
    if unknown:
        raise ConfigError(unknown[0], f"not a training setting (settings: {', '.join(sorted(names))})")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(**{k: None if v == OFF else v for k, v in values.items()})


# Settings that model files and checkpoints written before their removal still hold, read and dropped: pair_mode
# and pair_batch chose the naive per-pair step, which only benchmarks/bench_training.py runs (training refused it).
RETIRED_SETTINGS = ("pair_mode", "pair_batch")


def config_from_dict(values: dict) -> TrainConfig:
    """A config saved as plain data (a checkpoint's or model file's); a value of the wrong kind, or a name that is
    not a setting, is refused (`check_config` checks the values)."""
    if not isinstance(values, dict):
        raise ConfigError("config", f"expected a dict of settings, got {type(values).__name__}")
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in values.items() if k not in RETIRED_SETTINGS}
    unknown = sorted(str(k) for k in values if k not in names)
    if unknown:
        raise ConfigError(unknown[0], "not a training setting")
    values = dict(values)
    for name in ("targets", "crop_scale"):
        if name in values:
            if not isinstance(values[name], list | tuple):
                raise ConfigError(name, f"expected a list, got {values[name]!r:.80}")
            values[name] = tuple(values[name])
    return check_types(TrainConfig(**values))


# What each per_image choice is for: a model says it in its file and in every table's detail (README, "Purpose").
PURPOSES = {"keep": "per-image part learnt: for new images of the same study",
            "remove": "pair structure learnt, per-image part from the prior: for other studies"}


def purpose_text(per_image: str) -> str:
    """What a model with this per_image setting is for (PURPOSES)."""
    return PURPOSES[per_image]


MIN_IMAGE_SIZE = 16
# The largest learning rate (head or body): AdamW's first step is 10 x the rate, computed in float32 (largest
# 3.4e38); above this the optimiser overflows (a RuntimeError) instead of the run diverging (TrainingDiverged).
MAX_LR = 1e36
# Above this a body's activations take gigabytes per image (100,000 px would ask for 120 GB to 1.9 TB).
MAX_IMAGE_SIZE = 1024


def check_train_stages(count: int | str) -> int | str:
    """A number of top stages (0 or more) or 'all'; whether the body has that many is `Body.trained_stages`'s."""
    if count != "all" and not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
        raise ConfigError("train_stages", f"a number of top stages (0 or more) or all, got {count!r}")
    return count


def check_seed(option: str, seed: int) -> int:
    """A seed in the range every generator takes, refused as `option` otherwise."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(option, f"a seed must be 0 <= seed < 2**32 ({SEED_LIMIT}), got {seed}")
    return int(seed)


def _kind_ok(value, kind) -> bool:
    """Whether `value` is of the annotated `kind` (int, float, bool, str, X | None, tuple[X, ...], tuple[X, Y])."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return any(_kind_ok(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if typing.get_origin(kind) is tuple:
        parts = typing.get_args(kind)
        if not isinstance(value, list | tuple):
            return False
        if len(parts) == 2 and parts[1] is Ellipsis:
            return all(_kind_ok(v, parts[0]) for v in value)
        return len(value) == len(parts) and all(_kind_ok(v, k) for v, k in zip(value, parts, strict=True))
    if kind is bool:
        return isinstance(value, bool | np.bool_)
    if kind in (int, float):
        number = numbers.Integral if kind is int else numbers.Real
        return isinstance(value, number) and not isinstance(value, bool | np.bool_)
    return isinstance(value, kind)


def check_types(config: TrainConfig) -> TrainConfig:
    """Every setting of the kind its field declares (a crafted model file could hold a string for a number)."""
    kinds = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        if not _kind_ok(value, kinds[f.name]):
            kind = getattr(kinds[f.name], "__name__", str(kinds[f.name]))
            raise ConfigError(f.name, f"must be of type {kind}, got {value!r:.80}")
    return config


def _check_number(name: str, value: float, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and (value > 0 or (allow_zero and value == 0))
    if not ok:
        raise ConfigError(name, f"must be a {'non-negative' if allow_zero else 'positive'} finite number, got {value}")


def check_config(config: TrainConfig) -> TrainConfig:
    """Refuse settings that would crash later or train silently wrong, before any work or any file.

    Builds the body once, with its weights, to check that they can be had, that the stage exists and that its
    maps at `image_size` are large enough for the head. The checks run in a fixed order: the first a setting
    fails is the one reported.
    """
    check_types(config)
    _check_schedule(config)
    _check_running(config)
    _check_prior_and_targets(config)
    _check_loss_and_images(config)
    pick_device(config.device)
    _check_body_and_head(config)
    return config


def _check_schedule(config: TrainConfig) -> None:
    """The targets, the seed, the learning rates and the epochs, with what each phase trains."""
    if not config.targets or len(set(config.targets)) != len(config.targets):
        raise ConfigError("targets", f"need one or more targets, each once, got {', '.join(config.targets) or 'none'}")
    check_seed("seed", config.seed)
    _check_number("lr", config.lr)
    _check_number("body_lr_factor", config.body_lr_factor, allow_zero=True)
    _check_number("weight_decay", config.weight_decay, allow_zero=True)
    if config.lr > MAX_LR or config.lr * config.body_lr_factor > MAX_LR:
        raise ConfigError("lr", f"must be at most {MAX_LR:g} (with the body's rate, lr x body_lr_factor), got "
                                f"{config.lr:g}")
    for name in ("frozen_epochs", "unfrozen_epochs"):
        if getattr(config, name) < 0:
            raise ConfigError(name, "must not be negative")
    check_train_stages(config.train_stages)
    if config.train_stages != "all" and not config.unfrozen_epochs:
        raise ConfigError("train_stages", "says what the unfrozen epochs train, and there are none: give "
                                          "unfrozen epochs too (--unfrozen-epochs; or leave it at 'all')")
    if config.epochs < 1:
        raise ConfigError("frozen_epochs", "nothing to train: frozen and unfrozen epochs are both 0")


def _check_running(config: TrainConfig) -> None:
    """How the epochs run: precision, memory layout, chunk and batch sizes, validation and stopping."""
    if config.precision not in PRECISIONS:
        raise ConfigError("precision", f"unknown precision '{config.precision}' (choose from {', '.join(PRECISIONS)})")
    if not isinstance(config.channels_last, bool):
        raise ConfigError("channels_last", f"must be true or false, got {config.channels_last!r}")
    for name in ("augment_views", "body_chunk", "validate_every"):
        if getattr(config, name) < 1:
            raise ConfigError(name, "must be at least 1")
    if config.stop_epoch is not None and config.stop_epoch < 0:
        raise ConfigError("stop_epoch", "must not be negative")
    if config.early_stopping is not None and config.early_stopping < 1:
        raise ConfigError("early_stopping", "patience must be at least 1 epoch")


def _check_prior_and_targets(config: TrainConfig) -> None:
    """The prior and the head's correction of it (bound, shrinkage, average); how targets and sets are weighed."""
    if config.prior not in PRIORS:
        raise ConfigError("prior", f"unknown prior '{config.prior}' (choose from {', '.join(PRIORS)})")
    if config.prior != "none" and head_config(config.head).output_relu:
        raise ConfigError("prior", f"the {config.head} head ends in a ReLU, so it cannot correct a prior downwards; "
                                   "use the paper head")
    if config.correction_bound is not None:
        _check_number("correction_bound", config.correction_bound)
        if config.prior == "none":
            raise ConfigError("correction_bound", "bounds the head's correction of a prior: set a prior too")
    for name, choices in (("group_target", GROUP_TARGETS), ("per_image", PER_IMAGE), ("set_weights", SET_WEIGHTS)):
        if getattr(config, name) not in choices:
            raise ConfigError(name, f"unknown choice '{getattr(config, name)}' (choose from {', '.join(choices)})")
    if not (math.isfinite(config.shrinkage) and 0 <= config.shrinkage < 1):
        raise ConfigError("shrinkage", f"must be at least 0 and below 1, got {config.shrinkage}")
    if config.shrinkage and config.prior == "none":
        raise ConfigError("shrinkage", "shrinks the head's correction toward a prior: set a prior too")
    if config.head_average is not None and not (math.isfinite(config.head_average) and 0 < config.head_average < 1):
        raise ConfigError("head_average", f"a moving average's decay must be above 0 and below 1, got "
                                          f"{config.head_average}")


def _check_loss_and_images(config: TrainConfig) -> None:
    """The loss and the target rescaling; the crops and the image size (before any body runs at that size)."""
    if config.loss not in LOSSES:
        raise ConfigError("loss", f"unknown loss '{config.loss}' (choose from {', '.join(LOSSES)})")
    if config.rescale not in RESCALINGS:
        raise ConfigError("rescale", f"unknown rescaling '{config.rescale}' (choose from {', '.join(RESCALINGS)})")
    low, high = config.crop_scale
    if not 0 < low <= high <= 1:
        raise ConfigError("crop_scale", f"needs 0 < low <= high <= 1, got {config.crop_scale}")
    if not MIN_IMAGE_SIZE <= config.image_size <= MAX_IMAGE_SIZE:
        raise ConfigError("image_size", f"must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got "
                                        f"{config.image_size}")


def _check_body_and_head(config: TrainConfig) -> None:
    """The body with its real weights: a missing weights file or unavailable pretrained weights is refused now,
    before any folder exists (EfficientNet-Lite0 builds in well under a second); its stage's maps must suit the
    head (channels that split into its groups, maps as large as it needs)."""
    body = create_body(config.backbone, config.weights, config.stage)
    channels, height, width = body.output_shape(config.image_size)
    try:
        head = head_config(config.head)
        need = head.min_size()
    except ValueError as exc:
        raise ConfigError("head", str(exc)) from None
    body.trained_stages(config.train_stages)  # a count the body has, and a body that can be cut between stages
    if head.groups and channels % head.groups:
        raise ConfigError("stage", f"stage {body.stage} of {config.backbone} has {channels} channels, which do not "
                                   f"split into the {config.head} head's {head.groups} groups: choose another stage "
                                   "or the pairwise head")
    if min(height, width) < need:
        raise ConfigError("image_size", f"{config.image_size} px gives {height} x {width} maps at stage {body.stage} "
                                        f"of {config.backbone}; the {config.head} head needs at least {need} x {need}:"
                                        " use larger images or an earlier stage")


_DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def pick_device(device: str = "auto") -> torch.device:
    """'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N' or 'mps'; anything else, or a device this
    machine lacks, is refused."""
    if not isinstance(device, str) or not _DEVICE_PATTERN.fullmatch(device):
        raise ConfigError("device", f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device", f"'{device}' asked for, but CUDA is not available on this machine")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError("device", f"'{device}' asked for, but this machine has {torch.cuda.device_count()} "
                                        "CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device", "'mps' asked for, but it is not available on this machine")
    return torch.device(device)
