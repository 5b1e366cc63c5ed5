"""The Siamese RDM network: a shared pretrained body and an interleaved group-convolution head.

The head follows Jacob & Katti: the channels of the two images' feature maps are interleaved
(a0, b0, a1, b1, ...), then Conv2d(2C -> 32, 3x3, groups=16), ReLU, AdaptiveAvgPool2d(2), Linear(128 -> 1).
Interleaving lets every group see both images, so the network is not a sum of two per-image scores.

Pair factorisation: the first convolution is linear, and on interleaved input it equals a grouped
convolution of image a with the even weight slices plus one of image b with the odd slices. So the body
and both half-convolutions run once per image; per pair only an add, ReLU, pooling and the linear layer
remain. `forward_naive` keeps the literal per-pair form for tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Body


@dataclass
class HeadConfig:
    channels: int = 32
    groups: int = 16
    kernel_size: int = 3
    pool: int = 2


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, C, H, W) twice -> (P, 2C, H, W) with channels a0, b0, a1, b1, ..."""
    return torch.stack((a, b), dim=2).flatten(1, 2)


class SiameseHead(nn.Module):
    """Interleaved group convolution, ReLU, average pooling, linear: one output per target."""

    def __init__(self, in_channels: int, n_outputs: int = 1, config: HeadConfig | None = None):
        super().__init__()
        config = config or HeadConfig()
        if in_channels % config.groups:
            raise ValueError(f"feature channels ({in_channels}) must divide into {config.groups} groups")
        self.config = config
        self.conv = nn.Conv2d(2 * in_channels, config.channels, config.kernel_size, stride=1, groups=config.groups)
        self.pool = nn.AdaptiveAvgPool2d(config.pool)
        self.linear = nn.Linear(config.channels * config.pool**2, n_outputs)

    @torch.no_grad()
    def init_as_distance(self) -> None:
        """Start near a distance: image b's weights are minus image a's, so a pair's pooled activations are
        ReLU(u_a - u_b) and, averaged over both orders with equal positive linear weights, |u_a - u_b| / 2:
        a random-projection distance between the two images, which training then reshapes."""
        self.conv.weight[:, 1::2] = -self.conv.weight[:, 0::2]
        self.conv.bias.zero_()
        self.linear.weight.fill_(1.0 / self.linear.in_features)
        self.linear.bias.zero_()

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        """The literal head on per-pair feature maps: (P, C, H, W) twice -> (P, n_outputs)."""
        x = F.relu(self.conv(interleave(features_a, features_b)))
        return self.linear(self.pool(x).flatten(1))

    def image_terms(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's share of the first convolution when it is image a, and when it is image b."""
        w = self.conv.weight
        groups = self.config.groups
        as_a = F.conv2d(features, w[:, 0::2], groups=groups)
        as_b = F.conv2d(features, w[:, 1::2], groups=groups)
        return as_a, as_b

    def pair_outputs(self, as_a: torch.Tensor, as_b: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Outputs for ordered pairs (i[p], j[p]) from image terms: (P, n_outputs)."""
        x = F.relu(as_a[i] + as_b[j] + self.conv.bias.view(1, -1, 1, 1))
        return self.linear(self.pool(x).flatten(1))


class SiameseRDMNet(nn.Module):
    """Predicts the dissimilarity of two images; symmetric by averaging both orders."""

    def __init__(self, body: Body, n_outputs: int = 1, image_size: int = 224, head: HeadConfig | None = None,
                 distance_init: bool = True):
        super().__init__()
        self.body = body
        self.image_size = image_size
        channels, height, width = body.output_shape(image_size)
        head = head or HeadConfig()
        if min(height, width) < head.kernel_size:
            raise ValueError(
                f"stage {body.stage} gives {height} x {width} maps at {image_size} px; the head needs at least "
                f"{head.kernel_size} x {head.kernel_size}: use larger images or an earlier stage"
            )
        self.feature_shape = (channels, height, width)
        self.head = SiameseHead(channels, n_outputs, head)
        if distance_init:
            self.head.init_as_distance()
        # Per-channel standardisation of body features, set from training images by `set_feature_stats`.
        self.register_buffer("feature_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def set_feature_stats(self, features: torch.Tensor) -> None:
        """Standardise each channel with the statistics of these (raw) training-image features."""
        self.feature_mean.copy_(features.mean(dim=(0, 2, 3), keepdim=True))
        self.feature_std.copy_(features.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))

    def standardise(self, raw_features: torch.Tensor) -> torch.Tensor:
        return (raw_features - self.feature_mean) / self.feature_std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised body features of (B, 3, S, S) images in [0, 1]."""
        return self.standardise(self.body(images))

    def pair_predictions(
        self, features: torch.Tensor, i: torch.Tensor, j: torch.Tensor, both_orders: bool = False
    ) -> torch.Tensor:
        """Factorised head on pairs of images given their features: (P, n_outputs), or (2, P, n_outputs)."""
        as_a, as_b = self.head.image_terms(features)
        forward = self.head.pair_outputs(as_a, as_b, i, j)
        backward = self.head.pair_outputs(as_a, as_b, j, i)
        both = torch.stack((forward, backward))
        return both if both_orders else both.mean(dim=0)

    def forward(self, images: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Symmetric predictions for pairs (i[p], j[p]) of a batch of images: body once per image."""
        return self.pair_predictions(self.features(images), i, j)

    def forward_naive(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        """The per-pair form of published Siamese RDM models: body on both images of every pair."""
        fa, fb = self.features(images_a), self.features(images_b)
        return (self.head(fa, fb) + self.head(fb, fa)) / 2

    def body_parameters(self) -> list[nn.Parameter]:
        return list(self.body.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def freeze_body(self, frozen: bool = True) -> None:
        for p in self.body.parameters():
            p.requires_grad_(not frozen)


def all_pairs(n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j) of every unordered pair i < j of n images, in upper-triangle order."""
    i, j = torch.triu_indices(n, n, offset=1, device=device)
    return i, j
