"""The network: pretrained bodies (backbones), the Siamese network and its heads (network), layer-RDM
baselines and the prior the head corrects.

The network's names are re-exported here.
"""

from .network import (
    HEADS,
    HeadConfig,
    SiameseHead,
    SiameseRDMNet,
    all_pairs,
    all_pairs_correlation_loss,
    all_pairs_loss,
    all_pairs_outputs,
    default_tile,
    head_config,
    interleave,
    pooled_linear_weight,
)

__all__ = [
    "HeadConfig",
    "HEADS",
    "head_config",
    "interleave",
    "SiameseHead",
    "SiameseRDMNet",
    "all_pairs",
    "pooled_linear_weight",
    "default_tile",
    "all_pairs_loss",
    "all_pairs_correlation_loss",
    "all_pairs_outputs",
]
