"""The torch-free names the command line offers (`siamrdm.choices`) are the ones the torch-using registries hold:
a body, head or preset registered there and not named here (or the other way round) fails here."""

from __future__ import annotations

from siamrdm import choices
from siamrdm.model.backbones import BACKBONE_FAMILIES, BACKBONES
from siamrdm.model.network import HEADS
from siamrdm.train.config import PRESETS


def test_the_names_are_the_registries() -> None:
    assert tuple(BACKBONES) == choices.BODIES
    assert tuple(BACKBONE_FAMILIES) == choices.BODY_FAMILIES
    assert tuple(HEADS) == choices.HEADS
    assert tuple(PRESETS) == choices.PRESETS


def test_every_choice_is_one_the_parser_offers() -> None:
    """fit --help lists exactly these names as each option's choices."""
    from siamrdm import cli

    args = cli.build_parser().parse_args(["fit", "--out", "x", "--preset", "paper", "--head", "pairwise",
                                          "--backbone", "efficientnet_lite2", "--prior", "nnls", "--loss",
                                          "correlation", "--rescale", "zscore"])
    assert (args.preset, args.head, args.backbone, args.prior, args.loss, args.rescale) == (
        "paper", "pairwise", "efficientnet_lite2", "nnls", "correlation", "zscore")
