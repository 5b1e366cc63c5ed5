"""Training-time augmentation: a random resized crop and a coin-flip mirror per image, drawn from a generator.

The boxes are drawn on the CPU (5 numbers per image, from the run's CPU generator, so a run gets the same
crops on every device); the crops are cut and resized for the whole batch at once on the pixels' device, as
one separable bilinear gather. A crop is never larger than the image, so resizing it back to full size only
ever upsamples, where antialiased bilinear (what `F.interpolate(..., antialias=True)` did per image before)
is plain bilinear: the batched op gives the same pixels to float rounding.
"""

from __future__ import annotations

import math
import zlib

import torch

from .config import TrainConfig

MIN_CROP = 8  # pixels: the smallest crop side


def draw_boxes(n: int, size: int, crop_scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """(n, 5) float64 crop boxes (x0, y0, w, h, flip) in pixels of a `size` square image: area a uniform
    fraction of crop_scale, aspect log-uniform in [3/4, 4/3], position uniform, mirrored with probability 1/2."""
    draws = torch.rand(n, 5, generator=generator).double()
    low, high = crop_scale
    area = (low + (high - low) * draws[:, 0]) * size * size
    aspect = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * draws[:, 1])
    w = torch.round(torch.sqrt(area * aspect)).clamp(MIN_CROP, size)
    h = torch.round(torch.sqrt(area / aspect)).clamp(MIN_CROP, size)
    x0, y0 = torch.round(draws[:, 2] * (size - w)), torch.round(draws[:, 3] * (size - h))
    return torch.stack([x0, y0, w, h, (draws[:, 4] < 0.5).double()], dim=1)


def _source_index(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """Bilinear taps (align_corners=False) that resize crops [start, start + length) to `size`: per image and
    output pixel the two source pixels and the weight of the second, as F.interpolate computes them."""
    out = torch.arange(size, device=start.device, dtype=torch.float32)
    scale = (length / size).float()[:, None]  # float32, as F.interpolate computes it: the same taps and weights
    src = ((out + 0.5) * scale - 0.5).clamp_min(0.0)
    first = src.floor()
    weight = src - first
    first = first.long()
    second = torch.minimum(first + 1, (length[:, None] - 1).long())
    offset = start[:, None].long()
    return first + offset, second + offset, weight


def crop_flip(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Every image's box cut out, resized back to the image's size (bilinear) and mirrored where flip is 1:
    one batched op on the images' device; float pixels in, float pixels out (the value range is kept)."""
    n, c, size, _ = images.shape
    boxes = boxes.to(images.device)
    x0, y0, w, h, flip = boxes.unbind(1)
    top, bottom, wy = _source_index(y0, h, size)
    left, right, wx = _source_index(x0, w, size)
    mirrored = flip.bool()[:, None]
    left, right, wx = (torch.where(mirrored, t.flip(1), t) for t in (left, right, wx))
    wy = wy.to(images.dtype)[:, None, :, None]
    wx = wx.to(images.dtype)[:, None, None, :]
    rows = lambda index: images.gather(2, index[:, None, :, None].expand(n, c, size, size))  # noqa: E731
    cols = lambda x, index: x.gather(3, index[:, None, None, :].expand(n, c, size, size))  # noqa: E731
    resized_rows = rows(top) * (1 - wy) + rows(bottom) * wy
    return cols(resized_rows, left) * (1 - wx) + cols(resized_rows, right) * wx


def image_generator(key: tuple) -> torch.Generator:
    """A generator seeded by `key` (the run's seed, the image, the view or epoch): an image's augmentation
    depends on nothing else, so it is the same whichever batch, subset or rank the image is drawn in."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def augment_batch(images: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """A random resized crop (square-ish, scale in crop_scale) and a coin-flip mirror for every image."""
    return crop_flip(images, draw_boxes(len(images), images.shape[-1], config.crop_scale, generator))
