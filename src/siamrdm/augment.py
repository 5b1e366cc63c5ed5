"""Training-time augmentation: a random resized crop and a coin-flip mirror per image, drawn from a generator."""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F

from .config import TrainConfig


def image_generator(key: tuple) -> torch.Generator:
    """A generator seeded by `key` (the run's seed, the image, the view or epoch): an image's augmentation
    depends on nothing else, so it is the same whichever batch, subset or rank the image is drawn in."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def augment_batch(images: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """A random resized crop (square-ish, scale in crop_scale) and a coin-flip mirror for every image."""
    n, _, size, _ = images.shape
    out = torch.empty_like(images)
    draws = torch.rand(n, 5, generator=generator)
    low, high = config.crop_scale
    for k in range(n):
        scale, aspect_draw, x_draw, y_draw, flip = draws[k].tolist()
        area = (low + (high - low) * scale) * size * size
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * aspect_draw)
        w = min(size, max(8, round(math.sqrt(area * aspect))))
        h = min(size, max(8, round(math.sqrt(area / aspect))))
        x0, y0 = round(x_draw * (size - w)), round(y_draw * (size - h))
        crop = images[k : k + 1, :, y0 : y0 + h, x0 : x0 + w]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[k] = crop[0].flip(-1) if flip < 0.5 else crop[0]
    return out
