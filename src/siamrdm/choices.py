"""The names settings take, torch-free: the command line offers them as choices (`siamrdm --help` and `score`
start without torch), and the modules that implement them check settings against these same names.

The registries that hold torch objects (the bodies in `model.backbones`, the heads in `model.network`, the
presets in `train.config`) register exactly the names listed here; tests/test_choices.py checks that they agree.
"""

from __future__ import annotations

# Training schedules (train.config.PRESETS).
PRESETS = ("quick", "paper")
# Registered bodies (model.backbones.BACKBONES), in registration order, and the library families a body may be
# named from as FAMILY:NAME (model.backbones.BACKBONE_FAMILIES).
BODIES = ("alexnet", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BODY_FAMILIES = ("timm", "torchvision")
# Head variants (model.network.HEADS).
HEADS = ("paper", "pairwise")

# Plain settings: these tuples are the ones train.config and model.prior check against.
PRIORS = ("none", "layer", "nnls")
RESCALINGS = ("minmax", "rank", "zscore")
PER_IMAGE = ("keep", "remove")
GROUP_TARGETS = ("mean", "ranks")
SET_WEIGHTS = ("pairs", "reliability")
LOSSES = ("mse", "correlation")
PRECISIONS = ("fp32", "bf16")
OFF = "off"  # an override that switches a preset's optional setting off (sets it to None)
