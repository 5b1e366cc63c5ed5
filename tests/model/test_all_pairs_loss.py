"""The tiled all-pairs loss (`model.all_pairs_loss`, what training computes on every set) is exactly the unchunked
factorised loss, in its value and every gradient, and deterministic with worker threads."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_tiled_loss_is_reference

from siamrdm.model import HeadConfig, SiameseHead, all_pairs_loss, pooled_linear_weight


def random_head(channels: int, outputs: int, dtype: torch.dtype, seed: int) -> SiameseHead:
    torch.manual_seed(seed)
    head = SiameseHead(channels, outputs).to(dtype)
    with torch.no_grad():  # away from the distance initialisation, so every term of the gradient is exercised
        head.conv.bias.normal_()
        head.linear.bias.normal_()
    return head


@pytest.mark.parametrize(
    ("channels", "size", "outputs", "n", "tile", "workers"),
    [
        (32, 6, 1, 13, 4, 1),  # AlexNet-like 4x4 conv map, tiles that do not divide n
        (32, 7, 2, 11, 4, 2),  # 5x5 map: overlapping pooling cells; two outputs; two worker threads
        (64, 5, 1, 30, 8, 2),
        (32, 6, 3, 9, 64, 1),  # one tile holds everything
        (16, 3, 1, 2, 1, 1),  # a single pair, 1x1 conv map
    ],
)
def test_all_pairs_loss_equals_unchunked_loss_and_gradients(channels, size, outputs, n, tile, workers) -> None:
    head = random_head(channels, outputs, torch.float64, seed=n)
    features = torch.randn(n, channels, size, size, dtype=torch.float64, requires_grad=True)
    targets = torch.rand(n * (n - 1) // 2, outputs, dtype=torch.float64)
    assert_tiled_loss_is_reference(head, features, targets, tile, workers)


def test_all_pairs_loss_float32_within_1e5() -> None:
    """In float32 (what training uses) the tiled sums differ from the gathered ones by rounding only."""
    head = random_head(256, 1, torch.float32, seed=1)
    features = torch.randn(70, 256, 6, 6, requires_grad=True)
    targets = torch.rand(70 * 69 // 2, 1)
    assert_tiled_loss_is_reference(head, features, targets, tile=16, workers=2)


def test_all_pairs_loss_is_deterministic_with_workers() -> None:
    head = random_head(32, 1, torch.float32, seed=2)
    features = torch.randn(40, 32, 6, 6)
    targets = torch.rand(40 * 39 // 2, 1)
    first = all_pairs_loss(head, features, targets, tile=8, workers=2)
    second = all_pairs_loss(head, features, targets, tile=8, workers=2)
    assert torch.equal(first, second)


def test_pooled_linear_weight_equals_pool_then_linear() -> None:
    head = random_head(32, 2, torch.float64, seed=3)
    for size in (2, 3, 4, 5, 7):
        x = torch.randn(5, head.config.channels, size, size, dtype=torch.float64)
        weight = pooled_linear_weight(head, size, size)
        torch.testing.assert_close(x.flatten(1) @ weight.t(), head.linear(head.pool(x).flatten(1)) - head.linear.bias)


def test_all_pairs_loss_rejects_wrong_target_count() -> None:
    head = SiameseHead(32, 1, HeadConfig())
    with pytest.raises(ValueError, match="targets for 10 pairs"):
        all_pairs_loss(head, torch.randn(5, 32, 6, 6), torch.rand(9, 1))
