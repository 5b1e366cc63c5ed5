"""The Siamese network: the interleaved head is not additive, and the pair factorisation equals the literal net,
for both head variants ("paper" and "pairwise"), through the tiled all-pairs loss and outputs too."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_tiled_loss_is_reference, reference_loss

from siamrdm import train
from siamrdm.io.datasets import load_algonauts_set
from siamrdm.io.images import load_image_set
from siamrdm.model import (
    HEADS,
    HeadConfig,
    SiameseHead,
    SiameseRDMNet,
    all_pairs,
    all_pairs_correlation_loss,
    all_pairs_loss,
    all_pairs_outputs,
    head_config,
    interleave,
    pooled_linear_weight,
)
from siamrdm.model.backbones import create_body, images_to_tensor

VARIANTS = list(HEADS)


def mixed_difference(head, a1, a2, b1, b2) -> torch.Tensor:
    """h(a1, b1) - h(a1, b2) - h(a2, b1) + h(a2, b2): zero for every additive h(a, b) = f(a) + g(b)."""
    return head(a1, b1) - head(a1, b2) - head(a2, b1) + head(a2, b2)


def spec_head(variant: str, head: SiameseHead, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """The head written out from its description, with the head's weights: (P, C, H, W) twice -> (P, T).
    paper: Conv2d(2C -> 32, 3x3, groups 16), ReLU, AdaptiveAvgPool2d(2), Linear.
    pairwise: Conv2d(2C -> C, 3x3, padding 1, groups C), ReLU, AvgPool2d(3, stride 2), Linear, ReLU."""
    c = fa.shape[1]
    mixed = torch.cat([torch.cat([fa[:, k : k + 1], fb[:, k : k + 1]], 1) for k in range(c)], 1)  # a0, b0, a1, ...
    conv, linear = head.conv, head.linear
    if variant == "paper":
        x = F.relu(F.conv2d(mixed, conv.weight, conv.bias, groups=16))
        return F.linear(F.adaptive_avg_pool2d(x, 2).flatten(1), linear.weight, linear.bias)
    assert conv.weight.shape == (c, 2, 3, 3)  # one channel of each image per group
    x = F.relu(F.conv2d(mixed, conv.weight, conv.bias, padding=1, groups=c))
    return F.relu(F.linear(F.avg_pool2d(x, 3, stride=2).flatten(1), linear.weight, linear.bias))


def pre_outputs(head: SiameseHead, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """The head's outputs before the pairwise variant's output ReLU."""
    return head.linear(head.pool(F.relu(head.conv(interleave(fa, fb)))).flatten(1))


def ordered_pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = all_pairs(n)
    return torch.cat([i, j]), torch.cat([j, i])


@torch.no_grad()
def centre_outputs(head: SiameseHead, features: torch.Tensor, quantile: float = 0.5) -> None:
    """Shift the linear bias so that this quantile of the ordered-pair outputs before the output ReLU is 0, so the
    pairwise head's output ReLU cuts that share of them. The quantile is interpolated between two outputs, so
    none sits at the ReLU's kink, where rounding alone would decide the gradient."""
    i, j = ordered_pairs(len(features))
    head.linear.bias -= pre_outputs(head, features[i], features[j]).quantile(quantile, dim=0)


@pytest.fixture(scope="module")
def test_images(data_root: Path) -> torch.Tensor:
    """Four real images from the 78 test set, as pixels in [0, 1] at 128 px (loaded once)."""
    images = load_image_set(data_root / "Test_Data" / "78images")
    return images_to_tensor(images.images[:4], 128)


# --------------------------------------------------------------------------- the head


def test_interleave_channel_order() -> None:
    a = torch.arange(3.0).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    b = 10 + a
    mixed = interleave(a, b)
    assert mixed.shape == (2, 6, 2, 2)
    assert mixed[0, :, 0, 0].tolist() == [0, 10, 1, 11, 2, 12]  # a0, b0, a1, b1, a2, b2
    assert torch.equal(mixed[:, 0::2], a) and torch.equal(mixed[:, 1::2], b)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("distance_init", [False, True])
def test_interleaved_head_is_not_additive(distance_init: bool, variant: str) -> None:
    """Every group of the interleaved convolution sees both images, so the ReLU mixes them: the mixed difference
    is far from zero. The same layers on plain concatenation give groups that each see one image only: additive
    (without the pairwise variant's output ReLU, which would mix them again)."""
    torch.manual_seed(0)
    head = SiameseHead(32, n_outputs=2, config=variant, feature_size=(5, 5)).eval()
    if distance_init:
        head.init_as_distance()
    assert head.conv.groups == {"paper": 16, "pairwise": 32}[variant] and head.conv.in_channels == 64

    def concatenated(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # the control: same layers, no interleave
        x = F.relu(head.conv(torch.cat([a, b], 1)))
        return head.linear(head.pool(x).flatten(1))

    a1, a2, b1, b2 = torch.randn(4, 16, 32, 5, 5).unbind(0)
    with torch.no_grad():
        mixed = mixed_difference(head, a1, a2, b1, b2)
        control = mixed_difference(concatenated, a1, a2, b1, b2)
        scale = torch.cat([head(a1, b1), head(a2, b2)]).abs().mean()
    assert float(scale) > 1e-3
    assert float(control.abs().max()) < 1e-5 * max(1.0, float(scale))
    assert float(mixed.abs().mean()) > 0.03 * float(scale)
    assert float(mixed.abs().mean()) > 1000 * float(control.abs().max())


@pytest.mark.parametrize("variant", VARIANTS)
def test_distance_init_is_a_distance(variant: str) -> None:
    torch.manual_seed(1)
    head = SiameseHead(32, n_outputs=1, config=variant, feature_size=(4, 4))
    head.init_as_distance()
    assert torch.equal(head.conv.weight[:, 1::2], -head.conv.weight[:, 0::2])
    assert float(head.linear.weight.detach().min()) == float(head.linear.weight.detach().max()) > 0
    a, b = torch.randn(2, 8, 32, 4, 4).unbind(0)
    with torch.no_grad():
        # an image is at distance 0 from itself (up to the convolution's rounding)
        torch.testing.assert_close(head(a, a), torch.zeros(8, 1), atol=1e-6, rtol=0)
        assert float(head(a, b).min()) >= 0
        assert float(head(a, b).mean()) > 0
        # the pairwise variant's output ReLU changes nothing: the outputs are non-negative before it
        torch.testing.assert_close(pre_outputs(head, a, b), head(a, b), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("variant", "config"),
    [("paper", HeadConfig(channels=32, groups=16, kernel_size=3, pool=2)), ("pairwise", "pairwise")],
)
def test_factorised_head_equals_literal_head(variant: str, config: HeadConfig | str) -> None:
    torch.manual_seed(2)
    head = SiameseHead(32, n_outputs=3, config=config, feature_size=(5, 5))
    with torch.no_grad():
        head.linear.bias.fill_(0.02)  # most pairwise outputs above zero, so the comparison is not of zeros
    features = torch.randn(6, 32, 5, 5)
    i = torch.tensor([0, 1, 2, 5, 3, 4, 4])
    j = torch.tensor([1, 0, 5, 2, 3, 0, 1])
    with torch.no_grad():
        literal = head(features[i], features[j])
        spec = spec_head(variant, head, features[i], features[j])
        factorised = head.pair_outputs(*head.image_terms(features), i, j)
    assert literal.shape == (7, 3)
    torch.testing.assert_close(spec, literal, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(factorised, literal, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(literal[0], literal[1])  # the head alone is not symmetric


@pytest.mark.parametrize(("channels", "size", "pooled"), [(192, 7, 3), (112, 14, 6), (256, 6, 2), (256, 3, 1)])
def test_pairwise_head_shapes(channels: int, size: int, pooled: int) -> None:
    """Conv2d(2C -> C, 3x3, padding 1, groups C) keeps the map size; AvgPool2d(3, stride 2) takes it to `pooled`."""
    torch.manual_seed(3)
    head = SiameseHead(channels, n_outputs=2, config="pairwise", feature_size=(size, size))
    assert head.conv.weight.shape == (channels, 2, 3, 3) and head.conv.groups == channels
    assert head.linear.in_features == channels * pooled**2 and head.linear.out_features == 2
    features = torch.randn(3, channels, size, size)
    with torch.no_grad():
        assert head.conv(interleave(features, features)).shape == (3, channels, size, size)
        assert head.pool(torch.zeros(1, channels, size, size)).shape == (1, channels, pooled, pooled)
        out = head(features[[0, 1]], features[[1, 2]])
        as_a, as_b = head.image_terms(features)
    assert out.shape == (2, 2) and float(out.min()) >= 0  # the output ReLU
    assert as_a.shape == as_b.shape == (3, channels, size, size)


def test_head_parameter_counts_alexnet() -> None:
    """AlexNet conv5 features at 224 px are 256 x 6 x 6. Pairwise: conv 256 * 2 * 9 + 256 = 4864, a 2 x 2 pooled
    map so linear 1024 * T + T: 5889 for one target, 6914 for two. Paper: conv 32 * 32 * 9 + 32 = 9248, linear
    128 * T + T: 9377 for one target, 9506 for two."""
    body = create_body("alexnet", weights="random")
    counts = {}
    for variant in VARIANTS:
        for outputs in (1, 2):
            model = SiameseRDMNet(body, n_outputs=outputs, image_size=224, head=variant)
            assert model.feature_shape == (256, 6, 6)
            counts[variant, outputs] = sum(p.numel() for p in model.head_parameters())
    assert counts == {("paper", 1): 9377, ("paper", 2): 9506, ("pairwise", 1): 5889, ("pairwise", 2): 6914}


def test_head_config_checks() -> None:
    with pytest.raises(ValueError, match="must divide into 16 groups"):
        SiameseHead(30)
    with pytest.raises(ValueError, match="unknown head 'notebook' \\(choose from paper, pairwise\\)"):
        SiameseHead(32, config="notebook")
    with pytest.raises(ValueError, match="pairwise head's linear layer needs the feature map size"):
        SiameseHead(32, config="pairwise")
    with pytest.raises(ValueError, match="2 x 2 feature maps are too small for the pairwise head"):
        SiameseHead(32, config="pairwise", feature_size=(2, 2))
    head = SiameseHead(32, config="pairwise", feature_size=(6, 6))
    with pytest.raises(ValueError, match="a 4 x 4 conv map pools to 1 cells per channel"):
        pooled_linear_weight(head, 4, 4)
    body = create_body("alexnet", weights="random")
    for variant in VARIANTS:
        with pytest.raises(ValueError, match=f"the {variant} head needs at least 3 x 3: use larger images"):
            SiameseRDMNet(body, image_size=64, head=variant)  # conv5 is 1 x 1 at 64 px


def test_all_pairs() -> None:
    i, j = all_pairs(4)
    assert i.tolist() == [0, 0, 0, 1, 1, 2]
    assert j.tolist() == [1, 2, 3, 2, 3, 3]


# --------------------------------------------------------------------------- the whole network


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("backbone", "weights", "image_size"),
    [("efficientnet_lite0", None, 128), ("alexnet", "random", 160)],
    ids=["efficientnet_lite0-pretrained", "alexnet-random"],
)
def test_factorised_network_equals_naive(test_images: torch.Tensor, backbone: str, weights: str | None,
                                         image_size: int, variant: str) -> None:
    """forward (body once per image, head factorised) = the naive form (body on both images of every pair), and
    both orders of pair_predictions = the head written out from its description."""
    torch.manual_seed(0)
    body = create_body(backbone, weights)
    model = SiameseRDMNet(body, n_outputs=3, image_size=image_size, head=variant, distance_init=False).eval()
    assert model.feature_shape[1] >= 4  # the head's pooling sees more than one position
    images = F.interpolate(test_images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        model.set_feature_stats(model.body(images))
        assert not torch.allclose(model.feature_mean, torch.zeros_like(model.feature_mean))
        if variant == "pairwise":  # a quarter of the outputs cut by the output ReLU, the rest above zero
            centre_outputs(model.head, model.features(images), quantile=0.25)
        i, j = all_pairs(len(images))
        # and a reversed pair and a self pair
        i, j = torch.cat([i, torch.tensor([3, 2])]), torch.cat([j, torch.tensor([1, 2])])
        factorised = model(images, i, j)
        fa, fb = model.features(images[i]), model.features(images[j])  # the body on both images of every pair
        naive = torch.stack((model.head(fa, fb), model.head(fb, fa))).mean(dim=0)
        features = model.features(images)
        both = model.pair_predictions(features, i, j, both_orders=True)
        literal_ab = model.head(features[i], features[j])
        spec = torch.stack((spec_head(variant, model.head, features[i], features[j]),
                            spec_head(variant, model.head, features[j], features[i])))
    assert factorised.shape == naive.shape == (len(i), 3)
    torch.testing.assert_close(factorised, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[0], literal_ab, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both, spec, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.mean(dim=0), factorised, atol=1e-6, rtol=1e-6)
    assert float(factorised.std(dim=0).min()) > 1e-4  # the outputs vary across pairs: the check is not vacuous
    assert not torch.allclose(factorised[:, 0], factorised[:, 1])  # and across outputs


@pytest.mark.parametrize("variant", VARIANTS)
def test_pair_predictions_are_symmetric(variant: str) -> None:
    torch.manual_seed(4)
    body = create_body("alexnet", weights="random")
    model = SiameseRDMNet(body, n_outputs=2, image_size=128, head=variant, distance_init=False).eval()
    if variant == "pairwise":
        with torch.no_grad():
            model.head.linear.bias.fill_(0.1)  # outputs above the output ReLU's zero
    features = torch.randn(6, *model.feature_shape)
    i, j = all_pairs(6)
    with torch.no_grad():
        forward = model.pair_predictions(features, i, j)
        backward = model.pair_predictions(features, j, i)
        head_ab, head_ba = model.head(features[i], features[j]), model.head(features[j], features[i])
    torch.testing.assert_close(forward, backward, atol=1e-6, rtol=0)
    assert not torch.allclose(head_ab, head_ba, atol=1e-4)  # symmetric by averaging, not because the head is


# --------------------------------------------------------------------------- all pairs, tiled, both variants
# test_all_pairs_loss.py checks the paper variant's tiled loss at more sizes; here both variants, with the pairwise
# output ReLU cutting some of the outputs.


def random_pair_head(variant: str, channels: int, size: int, outputs: int, dtype: torch.dtype, seed: int,
                     bias: float = 0.0) -> SiameseHead:
    """A head away from the distance initialisation; `bias` shifts the linear outputs (pairwise: some below 0)."""
    torch.manual_seed(seed)
    head = SiameseHead(channels, outputs, variant, (size, size)).to(dtype)
    with torch.no_grad():
        head.conv.bias.normal_()
        head.linear.bias.normal_(bias, 0.01)
    return head


def negative_fraction(head: SiameseHead, features: torch.Tensor) -> float:
    """The share of ordered-pair outputs that are <= 0 before the output ReLU."""
    i, j = ordered_pairs(len(features))
    with torch.no_grad():
        return float((pre_outputs(head, features[i], features[j]) <= 0).double().mean())


@pytest.mark.parametrize(
    ("variant", "channels", "size", "outputs", "n", "tile", "workers"),
    [
        ("pairwise", 32, 6, 1, 13, 4, 1),  # AlexNet-like 6 x 6 maps, tiles that do not divide n
        ("pairwise", 32, 7, 2, 11, 4, 2),  # 3 x 3 pooled map, overlapping windows; two outputs; two threads
        ("pairwise", 16, 3, 3, 9, 64, 1),  # one tile holds everything; a 1 x 1 pooled map
        ("pairwise", 16, 4, 1, 2, 1, 1),  # a single pair
        ("paper", 32, 7, 2, 11, 4, 2),
    ],
)
def test_all_pairs_loss_equals_autograd_both_variants(variant, channels, size, outputs, n, tile, workers) -> None:
    features = torch.randn(n, channels, size, size, dtype=torch.float64, requires_grad=True)
    head = random_pair_head(variant, channels, size, outputs, torch.float64, seed=n)
    if variant == "pairwise":  # the output ReLU cuts about half of the outputs
        centre_outputs(head, features)
        assert 0.2 < negative_fraction(head, features) < 0.8
    targets = torch.rand(n * (n - 1) // 2, outputs, dtype=torch.float64)
    assert_tiled_loss_is_reference(head, features, targets, tile, workers, nonzero_gradients=True)


@pytest.mark.parametrize(("variant", "outputs", "n", "tile", "blocks"), [
    ("paper", 1, 11, 4, [(0, 11)]),  # the full block is the existing loss
    ("paper", 2, 11, 4, [(0, 5), (5, 11)]),  # two blocks that do not align with the tiles
    ("pairwise", 1, 13, 3, [(0, 4), (4, 4), (4, 9), (9, 13)]),  # an empty block among them
])
def test_row_blocks_of_the_all_pairs_loss_add_up_to_it(variant, outputs, n, tile, blocks) -> None:
    """Row blocks (image a in the block, image b any other): what each rank of a distributed step computes."""
    features = torch.randn(n, 16, 5, 5, dtype=torch.float64, requires_grad=True)
    head = random_pair_head(variant, 16, 5, outputs, torch.float64, seed=n)
    if variant == "pairwise":
        centre_outputs(head, features)
    targets = torch.rand(n * (n - 1) // 2, outputs, dtype=torch.float64)
    params = [features, *head.parameters()]
    full = all_pairs_loss(head, features, targets, tile=tile, workers=1)
    full_grads = torch.autograd.grad(full, params)
    expected = reference_loss(head, features, targets)
    assert full.item() == pytest.approx(expected.item(), rel=1e-12)
    total, total_grads = 0.0, [torch.zeros_like(p) for p in params]
    for block in blocks:
        loss = all_pairs_loss(head, features, targets, tile=tile, workers=2, rows=block)
        if block[0] == block[1]:
            assert loss.item() == 0.0
        total += loss.item()
        for acc, g in zip(total_grads, torch.autograd.grad(loss, params), strict=True):
            acc += g
    assert total == pytest.approx(full.item(), rel=1e-12)
    for got, want in zip(total_grads, full_grads, strict=True):
        assert float(want.abs().max()) > 0
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if len(blocks) > 1:  # a block alone is only part of the loss
        assert all_pairs_loss(head, features, targets, tile=tile, rows=blocks[0]).item() < full.item()
    with pytest.raises(ValueError, match="row block"):
        all_pairs_loss(head, features, targets, rows=(0, n + 1))


@pytest.mark.parametrize("bias", [0.0, -1.0])
def test_all_pairs_loss_pairwise_float32(bias: float) -> None:
    """AlexNet-shaped features (256 x 6 x 6) in float32; the linear bias at 0 (some outputs cut) or far below
    (every output cut: the loss is that of predicting 0, and only no gradient reaches anything)."""
    features = torch.randn(30, 256, 6, 6, requires_grad=True)
    head = random_pair_head("pairwise", 256, 6, 2, torch.float32, seed=5, bias=bias)
    fraction = negative_fraction(head, features)
    assert (0.05 < fraction < 0.95) if bias == 0 else fraction == 1
    targets = torch.rand(30 * 29 // 2, 2)
    loss = assert_tiled_loss_is_reference(head, features, targets, tile=8, workers=2, nonzero_gradients=bias == 0)
    if bias < 0:
        assert loss == pytest.approx(float((targets**2).mean()), rel=1e-5)


def reference_correlation_loss(head: SiameseHead, features: torch.Tensor, targets: torch.Tensor,
                               offsets: torch.Tensor) -> torch.Tensor:
    """1 - Pearson r per output over both orders of all pairs, prediction = head + offsets, target = targets +
    offsets, averaged over outputs: written out and differentiated by autograd."""
    i, j = all_pairs(len(features))
    as_a, as_b = head.image_terms(features)
    both = torch.cat((head.pair_outputs(as_a, as_b, i, j), head.pair_outputs(as_a, as_b, j, i))) + offsets.repeat(2, 1)
    full = (targets + offsets).repeat(2, 1)
    q, y = both - both.mean(0), full - full.mean(0)
    r = (q * y).sum(0) / torch.sqrt((q * q).sum(0) * (y * y).sum(0))
    return (1 - r).mean()


@pytest.mark.parametrize(("variant", "outputs", "n", "tile", "with_offsets"), [
    ("paper", 1, 13, 4, False),
    ("paper", 2, 11, 4, True),  # two outputs, a prior's pair values under the head's correction
    ("pairwise", 1, 12, 5, True),  # the output ReLU cuts some of the outputs
])
def test_correlation_loss_equals_autograd(variant, outputs, n, tile, with_offsets) -> None:
    """all_pairs_correlation_loss: the value 1 - r and every gradient of the written-out loss."""
    features = torch.randn(n, 16, 5, 5, dtype=torch.float64, requires_grad=True)
    head = random_pair_head(variant, 16, 5, outputs, torch.float64, seed=n)
    if variant == "pairwise":
        centre_outputs(head, features)
    pairs = n * (n - 1) // 2
    generator = torch.Generator().manual_seed(n)
    targets = torch.rand(pairs, outputs, dtype=torch.float64, generator=generator)
    offsets = (torch.rand(pairs, outputs, dtype=torch.float64, generator=generator) if with_offsets
               else torch.zeros(pairs, outputs, dtype=torch.float64))
    params = [features, *head.parameters()]
    expected = reference_correlation_loss(head, features, targets, offsets)
    expected_grads = torch.autograd.grad(expected, params)
    loss = all_pairs_correlation_loss(head, features, targets, offsets if with_offsets else None, tile=tile, workers=2)
    grads = torch.autograd.grad(loss, params)
    assert 0 < loss.item() < 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    for got, want in zip(grads, expected_grads, strict=True):
        assert float(want.abs().max()) > 0
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)


def test_correlation_loss_ignores_scale_and_offset_of_the_target() -> None:
    """The challenge's metric ignores the RDM's scale and offset; so does this loss, unlike MSE."""
    features = torch.randn(10, 16, 5, 5, dtype=torch.float64)
    head = random_pair_head("paper", 16, 5, 1, torch.float64, seed=3)
    targets = torch.rand(45, 1, dtype=torch.float64)
    plain = all_pairs_correlation_loss(head, features, targets)
    moved = all_pairs_correlation_loss(head, features, 5.0 * targets + 3.0)
    assert moved.item() == pytest.approx(plain.item(), rel=1e-12)
    mse_plain, mse_moved = (all_pairs_loss(head, features, y).item() for y in (targets, 5.0 * targets + 3.0))
    assert mse_moved > 10 * mse_plain


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_pairs_outputs_equal_pair_predictions(variant: str) -> None:
    torch.manual_seed(6)
    body = create_body("alexnet", weights="random")
    model = SiameseRDMNet(body, n_outputs=2, image_size=160, head=variant, distance_init=False).eval()
    features = torch.randn(11, *model.feature_shape)
    centre_outputs(model.head, features)
    i, j = all_pairs(11)
    with torch.no_grad():
        ordered = all_pairs_outputs(model.head, features, tile=4)
        both = model.pair_predictions(features, i, j, both_orders=True)
        symmetric = model.pair_predictions(features, i, j)
    assert ordered.shape == (11, 11, 2)
    torch.testing.assert_close(ordered[i, j], both[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ordered[j, i], both[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(train.predict_pairs(model, features), symmetric, atol=1e-6, rtol=1e-5)
    if variant == "pairwise":
        assert float(ordered.min()) == 0 and float((ordered > 0).double().mean()) > 0.2  # the output ReLU cuts some


# --------------------------------------------------------------------------- training with the pairwise head


def test_trainer_runs_pairwise_head(data_root: Path) -> None:
    """Two frozen epochs of TrainConfig(head="pairwise") on 10 small images, validated on 6 others."""
    set92 = load_algonauts_set(data_root, "92", ("EVC",))
    fit_set = train.subset(set92, np.arange(10), "92-fit")
    val_set = train.subset(set92, np.arange(10, 16), "92-val")
    config = train.TrainConfig(backbone="alexnet", weights="random", image_size=160, augment=False, body_chunk=5,
                               frozen_epochs=2, unfrozen_epochs=0, lr=1e-3, head="pairwise", device="cpu")
    trainer = train.Trainer(config, [fit_set], [val_set], progress=False)
    head = trainer.model.head
    assert head.config is HEADS["pairwise"] and head.conv.groups == 256 and head.linear.in_features == 256
    before = head.conv.weight.detach().clone()
    rows = [trainer.run_epoch() for _ in range(config.frozen_epochs)]
    assert all(np.isfinite(row["loss"]) and row["val_pct_nc"] is not None for row in rows), rows
    assert not torch.equal(head.conv.weight, before)
    assert train.config_from_dict(dataclasses.asdict(config)).head == "pairwise"


@pytest.mark.parametrize(("outputs", "workers"), [(1, 1), (2, 2)])
def test_all_pairs_loss_with_a_bounded_output_equals_autograd(outputs: int, workers: int) -> None:
    """output_bound: outputs bound * tanh(pre / bound); the tiled loss and gradients equal autograd, the outputs
    never leave +-bound, and all_pairs_outputs applies the same bound."""
    from dataclasses import replace

    n, channels, size, bound = 9, 32, 5, 0.05
    features = torch.randn(n, channels, size, size, dtype=torch.float64, requires_grad=True)
    config = replace(head_config("paper"), output_bound=bound)
    torch.manual_seed(3)
    head = SiameseHead(channels, outputs, config).double()
    with torch.no_grad():
        head.conv.bias.normal_()
        head.linear.weight.mul_(2.0)  # outputs near and beyond the bound before the tanh
    targets = torch.rand(n * (n - 1) // 2, outputs, dtype=torch.float64) * 0.2 - 0.1
    params = [features, *head.parameters()]
    expected = reference_loss(head, features, targets)
    expected_grads = torch.autograd.grad(expected, params)
    loss = all_pairs_loss(head, features, targets, tile=4, workers=workers)
    grads = torch.autograd.grad(loss, params)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    out = all_pairs_outputs(head, features.detach())
    assert float(out.abs().max()) <= bound
    i, j = ordered_pairs(n)
    torch.testing.assert_close(out[i, j], head(features.detach()[i], features.detach()[j]), rtol=1e-10, atol=1e-12)


def test_body_stays_in_eval_mode_when_the_model_trains() -> None:
    """model.train() trains the head but leaves the body's BatchNorm on ImageNet's statistics."""
    body = create_body("efficientnet_lite0", "random", "blocks2")  # 40 channels: BatchNorm inside, small maps
    model = SiameseRDMNet(body, 1, 64, head="pairwise")
    model.train()
    assert model.training and model.head.training
    assert not model.body.training and not any(m.training for m in model.body.modules())
    before = [b.clone() for b in model.body.buffers()]
    model(torch.rand(4, 3, 64, 64), torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert all(torch.equal(a, b) for a, b in zip(before, model.body.buffers(), strict=True))


def test_threaded_all_pairs_loss_leaves_the_callers_thread_count_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tile workers run one-thread ops by setting their own threads' count; the calling thread's (and so the
    process's intra-op) count is never changed, not even for the duration of the call."""
    import threading

    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads",
                        lambda n: (calls.append((threading.current_thread() is threading.main_thread(), n)), real(n)))
    before = torch.get_num_threads()
    features = torch.randn(9, 32, 5, 5, dtype=torch.float64, requires_grad=True)
    head = SiameseHead(32, 1).double()
    targets = torch.rand(36, 1, dtype=torch.float64)
    threaded = all_pairs_loss(head, features, targets, tile=4, workers=2)
    assert calls and not any(from_main for from_main, _ in calls)  # only the workers set their count
    assert torch.get_num_threads() == before
    assert threaded.item() == pytest.approx(all_pairs_loss(head, features, targets, tile=4, workers=1).item())
