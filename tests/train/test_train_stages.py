"""--train-stages K: the unfrozen epochs train the body's top K stages on the cached output of the stage below them;
the lower stages stay bit-identical to the pretrained ones (issue 36)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, fast_config, run_cli

from siamrdm import train
from siamrdm.io.datasets import BrainDataset
from siamrdm.model.backbones import create_body
from siamrdm.train.config import ConfigError, config_from_dict
from siamrdm.train.distributed import check_minibatch_config
from siamrdm.train.fullbatch import feature_views
from siamrdm.train.lrfind import lr_range_test


@pytest.fixture(scope="module")
def small(dataset92: BrainDataset) -> BrainDataset:
    return train.subset(dataset92, np.arange(16), "92-sixteen")


def lite(**overrides) -> train.TrainConfig:
    """EfficientNet-Lite0 (pretrained, stage blocks4) at 64 px, 1 frozen and 2 unfrozen epochs, no prior."""
    values = dict(backbone="efficientnet_lite0", weights=None, image_size=64, body_chunk=8, prior="none",
                  targets=("EVC",), frozen_epochs=1, unfrozen_epochs=2, train_stages=1)
    return fast_config(**{**values, **overrides})


def stage_weights(state: dict[str, torch.Tensor], prefix: str = "body.") -> dict[str, dict[str, torch.Tensor]]:
    """A body's tensors (weights and BatchNorm statistics) by stage."""
    stages: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(prefix + "stages."):
            stage = key[len(prefix + "stages."):].split(".")[0]
            stages.setdefault(stage, {})[key] = value
    return stages


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_fit_trains_the_top_stage_and_leaves_the_lower_ones_bit_identical(capsys, tmp_path: Path,
                                                                          data_root: Path) -> None:
    """The issue's command: the top stage (blocks4) moves, every lower stage is the pretrained one, bit for bit."""
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "fit", "--data", data_root, "--targets", "EVC", "--sets", "92", "--train-stages",
                           "1", "--frozen-epochs", "2", "--unfrozen-epochs", "2", "--image-size", "64", "--quiet",
                           "--out", out)
    assert code == 0, err
    saved = stage_weights(train.load_checkpoint(out / "model.pt")["members"][0])
    pretrained = stage_weights({f"body.{k}": v for k, v in create_body("efficientnet_lite0").state_dict().items()})
    assert list(saved) == ["stem", "blocks0", "blocks1", "blocks2", "blocks3", "blocks4"]
    for stage in ["stem", "blocks0", "blocks1", "blocks2", "blocks3"]:
        assert changed(saved[stage], pretrained[stage]) == [], stage
    moved = changed(saved["blocks4"], pretrained["blocks4"])
    assert any(k.endswith("conv_pw.weight") for k in moved)
    assert not any("running_" in k for k in moved)  # BatchNorm stays in eval mode: ImageNet's statistics
    log = (out / "seed0" / "log.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in log[1:]] == ["frozen", "frozen", "unfrozen", "unfrozen"]


def test_the_top_stages_on_the_cached_part_are_the_body() -> None:
    """top(below_top(x)) is the body's output; the stages that train are the top K up to the head's stage."""
    images = torch.rand(3, 3, 64, 64)
    lite0 = create_body("efficientnet_lite0").eval()
    alex = create_body("alexnet", weights="random").eval()
    assert lite0.trained_stages(2) == ["blocks3", "blocks4"] and lite0.trained_stages(0) == []
    assert alex.trained_stages(1) == ["conv5"] and len(alex.trained_stages("all")) == 5
    with torch.no_grad():
        for body, count in ((lite0, 1), (lite0, 2), (lite0, 5), (alex, 1), (alex, 4)):
            below = body.below_top(images, count)
            torch.testing.assert_close(body.top(below, count), body(images), rtol=1e-5, atol=1e-5)
    assert below.shape[1] == 64  # alexnet's conv1 output, below conv2-conv5
    with pytest.raises(ConfigError, match="train_stages: .* 6 stages up to blocks4 .* train 0 to 5"):
        lite0.trained_stages(6)


def test_a_step_of_the_top_stage_has_the_whole_body_s_gradient(small: BrainDataset) -> None:
    """Without augmentation (one view) the cached path's gradient of the top stage equals the whole body's, and
    the lower stages get none."""
    config = lite(augment=False)
    cut = train.Trainer(config, [small], progress=False)
    whole = train.Trainer(replace(config, train_stages="all"), [small], progress=False)
    cut.model.freeze_body(False, 1)
    whole.model.freeze_body(False, "all")
    loss_cut, loss_whole = cut.stepper.gradients(frozen=False), whole.stepper.gradients(frozen=False)
    torch.testing.assert_close(loss_cut, loss_whole, rtol=1e-5, atol=1e-7)
    for (name, a), b in zip(cut.model.body.named_parameters(), whole.model.body.parameters(), strict=True):
        if name.startswith("stages.blocks4."):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
        else:
            assert a.grad is None and not a.requires_grad, name
    for a, b in zip(cut.model.head.parameters(), whole.model.head.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_validation_runs_the_trained_stages_on_the_cached_part(small: BrainDataset,
                                                              dataset118: BrainDataset) -> None:
    """After unfrozen epochs, held-out images are scored with the trained top stage: the features validation uses
    are the whole (partly trained) body's; with tta the mirror images' too."""
    held = train.subset(dataset118, np.arange(10), "118-ten")
    trainer = train.Trainer(lite(tta=True, augment_views=2), [small], [held], progress=False)
    trainer.fit()
    assert [row["phase"] for row in trainer.history] == ["start", "frozen", "unfrozen", "unfrozen"]
    cached = trainer.stepper.trained_feature_views(0, trainer.stepper.val_sets[0])
    direct = feature_views(trainer.model, trainer.stepper.val_sets[0].images, trainer.config, trainer.stepper.device)
    assert len(cached) == len(direct) == 2
    for a, b in zip(cached, direct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_zero_stages_trains_the_head_alone_in_the_unfrozen_epochs(small: BrainDataset) -> None:
    trainer = train.Trainer(lite(train_stages=0), [small], progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    body = [k for k in before if k.startswith("body.")]
    assert body and changed({k: before[k] for k in body}, after) == []
    assert changed({k: before[k] for k in before if k.startswith("head.")}, after)


def test_a_run_resumes_with_the_same_weights(small: BrainDataset) -> None:
    """Checkpoint and resume: the cached views are recomputed alike and the generator picks the same ones."""
    config = lite(frozen_epochs=1, unfrozen_epochs=3, train_stages=2, augment_views=2, seed=4)
    reference = train.Trainer(config, [small], progress=False)
    for _ in range(4):
        reference.run_epoch()
    first = train.Trainer(config, [small], progress=False)
    first.run_epoch(), first.run_epoch()
    resumed = train.Trainer(config, [small], progress=False)
    resumed.load_state(first.state())
    resumed.run_epoch(), resumed.run_epoch()
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    # An older checkpoint's config, without the setting, reads as today's whole body.
    old = {k: v for k, v in first.state()["config"].items() if k != "train_stages"}
    assert config_from_dict(old).train_stages == "all"


def test_bf16_and_channels_last_train_the_top_stages(small: BrainDataset) -> None:
    trainer = train.Trainer(lite(precision="bf16", channels_last=True, train_stages=2), [small], progress=False)
    pretrained = stage_weights(trainer.model.state_dict())
    pretrained = {s: {k: v.clone() for k, v in w.items()} for s, w in pretrained.items()}
    trainer.fit()
    assert all(np.isfinite(row["loss"]) for row in trainer.history)
    now = stage_weights(trainer.model.state_dict())
    assert [s for s in now if changed(now[s], pretrained[s])] == ["blocks3", "blocks4"]


@pytest.mark.parametrize(("args", "parts"), [
    (("--train-stages", "1"), ("--train-stages", "unfrozen epochs", "none", "--unfrozen-epochs")),
    (("--train-stages", "6", "--unfrozen-epochs", "1"), ("--train-stages", "6 stages up to blocks4", "0 to 5")),
    (("--train-stages", "1", "--unfrozen-epochs", "1", "--backbone", "timm:resnet18", "--weights", "random"),
     ("--train-stages", "timm:resnet18", "one feature extractor")),
    (("--train-stages", "some"), ("--train-stages", "number of stages or 'all'")),
])
def test_settings_that_cannot_apply_are_one_line(capsys, tmp_path: Path, data_root: Path, args: tuple[str, ...],
                                                 parts: tuple[str, ...]) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "fit", "--data", data_root, "--targets", "EVC", "--sets", "92", "--image-size",
                           "64", "--quiet", *args, "--out", out)
    assert code == 2
    assert_one_line_error(err, *parts)
    assert not out.exists()


def test_the_mini_batch_path_refuses_top_stages() -> None:
    config = lite(prior="none", train_stages=1)
    with pytest.raises(ConfigError, match="train_stages: the mini-batch path .* runs with all only, not 1"):
        check_minibatch_config(config)
    check_minibatch_config(replace(config, train_stages="all"))


def test_lr_find_trains_the_top_stages_with_the_head(capsys, tmp_path: Path, data_root: Path,
                                                     small: BrainDataset) -> None:
    """lr-find --train-stages K: the test steps the top K stages too (at the body's share of the rate), so its
    curve leaves the head-alone one after the first step. A count the body lacks is one line, before any folder."""
    curves = {k: lr_range_test(lite(augment=False), [small], steps=12, progress=False, train_stages=k)["loss"]
              for k in (0, 2)}
    assert curves[0][0] == pytest.approx(curves[2][0], rel=1e-4)  # the same network before the first step
    assert not np.allclose(curves[0], curves[2])
    common = ("lr-find", "--data", data_root, "--targets", "EVC", "--sets", "92", "--val-fraction", "0.8",
              "--image-size", "64", "--quiet")
    code, printed, err = run_cli(capsys, *common, "--train-stages", "1", "--out", tmp_path / "run")
    assert code == 0, err
    assert "suggested learning rate" in printed and (tmp_path / "run" / "lr_find.json").is_file()
    code, _, err = run_cli(capsys, *common, "--train-stages", "7", "--out", tmp_path / "bad")
    assert code == 2
    assert_one_line_error(err, "--train-stages", "0 to 5")
    assert not (tmp_path / "bad").exists()
