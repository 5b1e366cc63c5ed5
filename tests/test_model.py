"""The Siamese network: the interleaved head is not additive, and the pair factorisation equals the literal net."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from siamrdm import data
from siamrdm.backbones import create_body, images_to_tensor
from siamrdm.model import HeadConfig, SiameseHead, SiameseRDMNet, all_pairs, interleave


def mixed_difference(head, a1, a2, b1, b2) -> torch.Tensor:
    """h(a1, b1) - h(a1, b2) - h(a2, b1) + h(a2, b2): zero for every additive h(a, b) = f(a) + g(b)."""
    return head(a1, b1) - head(a1, b2) - head(a2, b1) + head(a2, b2)


@pytest.fixture(scope="module")
def test_images(data_root: Path) -> torch.Tensor:
    """Four real images from the 78 test set, as pixels in [0, 1] at 128 px (loaded once)."""
    images = data.load_image_set(data_root / "Test_Data" / "78images")
    return images_to_tensor(images.images[:4], 128)


# --------------------------------------------------------------------------- the head


def test_interleave_channel_order() -> None:
    a = torch.arange(3.0).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    b = 10 + a
    mixed = interleave(a, b)
    assert mixed.shape == (2, 6, 2, 2)
    assert mixed[0, :, 0, 0].tolist() == [0, 10, 1, 11, 2, 12]  # a0, b0, a1, b1, a2, b2
    assert torch.equal(mixed[:, 0::2], a) and torch.equal(mixed[:, 1::2], b)


@pytest.mark.parametrize("distance_init", [False, True])
def test_interleaved_head_is_not_additive(distance_init: bool) -> None:
    """Every group of the interleaved convolution sees both images, so the ReLU mixes them: the mixed difference
    is far from zero. The same layers on plain concatenation give groups that each see one image only: additive."""
    torch.manual_seed(0)
    head = SiameseHead(32, n_outputs=2).eval()
    if distance_init:
        head.init_as_distance()
    assert head.conv.groups == 16 and head.conv.in_channels == 64

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


def test_distance_init_is_a_distance() -> None:
    torch.manual_seed(1)
    head = SiameseHead(32, n_outputs=1)
    head.init_as_distance()
    assert torch.equal(head.conv.weight[:, 1::2], -head.conv.weight[:, 0::2])
    a, b = torch.randn(2, 8, 32, 4, 4).unbind(0)
    with torch.no_grad():
        # an image is at distance 0 from itself (up to the convolution's rounding)
        torch.testing.assert_close(head(a, a), torch.zeros(8, 1), atol=1e-6, rtol=0)
        assert float(head(a, b).min()) >= 0
        assert float(head(a, b).mean()) > 0


def test_factorised_head_equals_literal_head() -> None:
    torch.manual_seed(2)
    head = SiameseHead(32, n_outputs=3, config=HeadConfig(channels=32, groups=16, kernel_size=3, pool=2))
    features = torch.randn(6, 32, 5, 5)
    i = torch.tensor([0, 1, 2, 5, 3, 4, 4])
    j = torch.tensor([1, 0, 5, 2, 3, 0, 1])
    with torch.no_grad():
        literal = head(features[i], features[j])
        factorised = head.pair_outputs(*head.image_terms(features), i, j)
    assert literal.shape == (7, 3)
    torch.testing.assert_close(factorised, literal, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(literal[0], literal[1])  # the head alone is not symmetric


def test_head_config_checks() -> None:
    with pytest.raises(ValueError, match="must divide into 16 groups"):
        SiameseHead(30)
    body = create_body("alexnet", weights="random")
    with pytest.raises(ValueError, match="use larger images or an earlier stage"):
        SiameseRDMNet(body, image_size=64)  # conv5 is 1 x 1 at 64 px


def test_all_pairs() -> None:
    i, j = all_pairs(4)
    assert i.tolist() == [0, 0, 0, 1, 1, 2]
    assert j.tolist() == [1, 2, 3, 2, 3, 3]


# --------------------------------------------------------------------------- the whole network


@pytest.mark.parametrize(
    ("backbone", "weights", "image_size"),
    [("efficientnet_lite0", None, 128), ("alexnet", "random", 160)],
    ids=["efficientnet_lite0-pretrained", "alexnet-random"],
)
def test_factorised_network_equals_naive(test_images: torch.Tensor, backbone: str, weights: str | None,
                                         image_size: int) -> None:
    """forward (body once per image, head factorised) = forward_naive (body on both images of every pair)."""
    torch.manual_seed(0)
    body = create_body(backbone, weights)
    model = SiameseRDMNet(body, n_outputs=3, image_size=image_size, distance_init=False).eval()
    assert model.feature_shape[1] >= 4  # the head's pooling sees more than one position
    images = F.interpolate(test_images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        model.set_feature_stats(model.body(images))
        assert not torch.allclose(model.feature_mean, torch.zeros_like(model.feature_mean))
        i, j = all_pairs(len(images))
        # and a reversed pair and a self pair
        i, j = torch.cat([i, torch.tensor([3, 2])]), torch.cat([j, torch.tensor([1, 2])])
        factorised = model(images, i, j)
        naive = model.forward_naive(images[i], images[j])
        features = model.features(images)
        both = model.pair_predictions(features, i, j, both_orders=True)
        literal_ab = model.head(features[i], features[j])
    assert factorised.shape == naive.shape == (len(i), 3)
    torch.testing.assert_close(factorised, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[0], literal_ab, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.mean(dim=0), factorised, atol=1e-6, rtol=1e-6)
    assert float(factorised.std(dim=0).min()) > 1e-4  # the outputs vary across pairs: the check is not vacuous
    assert not torch.allclose(factorised[:, 0], factorised[:, 1])  # and across outputs


def test_pair_predictions_are_symmetric() -> None:
    torch.manual_seed(4)
    body = create_body("alexnet", weights="random")
    model = SiameseRDMNet(body, n_outputs=2, image_size=128, distance_init=False).eval()
    features = torch.randn(6, *model.feature_shape)
    i, j = all_pairs(6)
    with torch.no_grad():
        forward = model.pair_predictions(features, i, j)
        backward = model.pair_predictions(features, j, i)
        head_ab, head_ba = model.head(features[i], features[j]), model.head(features[j], features[i])
    torch.testing.assert_close(forward, backward, atol=1e-6, rtol=0)
    assert not torch.allclose(head_ab, head_ba, atol=1e-4)  # symmetric by averaging, not because the head is
