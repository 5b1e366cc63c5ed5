"""Several ranks give the single-process step: the row-split all-pairs loss, gathered features, averaged gradients.

Two CPU processes with the gloo backend (torch.multiprocessing.spawn), float64, a small body: the loss and
every parameter's gradient equal one process's, and one process's equal plain autograd on the whole batch.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from siamrdm.io.condensed import CondensedRDMs
from siamrdm.model import all_pairs_loss
from siamrdm.rdm import upper_tri
from siamrdm.train import build_model
from siamrdm.train.config import ConfigError, TrainConfig
from siamrdm.train.distributed import (
    BatchSettings,
    LargeSet,
    MiniBatchStep,
    Ranks,
    check_batch_settings,
    minibatch_backward,
    read_targets,
    shard_bounds,
)
from siamrdm.train.largeset import open_image_store
from siamrdm.train.trainer import Trainer

N_IMAGES = 7  # uneven shards over two ranks: 4 and 3 images


def tiny_model(train_body: bool) -> torch.nn.Module:
    """efficientnet_lite0 up to blocks1 (24 x 8 x 8 maps at 32 px), the pairwise head moved off its start; float64."""
    config = TrainConfig(stage="blocks1", head="pairwise", image_size=32, device="cpu", seed=3)
    model = build_model(config, torch.device("cpu")).double().train()  # the body stays in eval mode
    with torch.no_grad():
        torch.manual_seed(5)
        for p in model.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.feature_mean.normal_()
        model.feature_std.uniform_(0.5, 2.0)
    model.freeze_body(not train_body)
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(N_IMAGES, 3, 32, 32, generator=generator, dtype=torch.float64)
    targets = torch.rand(N_IMAGES * (N_IMAGES - 1) // 2, 1, generator=generator, dtype=torch.float64)
    return pixels, targets


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def tiny_set(folder: Path) -> None:
    """24 random 32 px images (HDF5, uint8) and 2 subjects' condensed RDMs of their mean brightness: learnable."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((24, 1, 1, 3)) * rng.integers(0, 256, (24, 32, 32, 3))).astype(np.uint8)
    with h5py.File(folder / "images.h5", "w") as f:
        f["images"] = pixels
    brightness = pixels.reshape(24, -1).mean(axis=1)
    rdm = np.abs(brightness[:, None] - brightness[None, :])
    np.save(folder / "rdms.npy", np.stack([upper_tri(rdm) + rng.normal(0, 1, 276) for _ in range(2)]))


def tiny_fit(folder: Path, ranks: Ranks) -> Trainer:
    config = TrainConfig(stage="blocks1", head="pairwise", image_size=32, device="cpu", frozen_epochs=3,
                         unfrozen_epochs=0, targets=("X",), prior="none", lr=0.003)
    batch = BatchSettings(batch_images=6, val_fraction=0.25, loader_workers=0)
    data = read_targets({"X": CondensedRDMs(folder / "rdms.npy", 24)}, 24, batch, config.rescale)
    trainer = Trainer(config, LargeSet(open_image_store(folder / "images.h5"), data, batch), progress=False,
                      ranks=ranks)
    trainer.fit()
    return trainer


def _rank(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        for train_body in (True, False):
            model = tiny_model(train_body)
            pixels, targets = batch()
            bounds = shard_bounds(N_IMAGES, world)
            start, stop = bounds[rank]
            loss = minibatch_backward(model, pixels[start:stop], targets, Ranks(rank, world), bounds, train_body,
                                      chunk=2, tile=3)
            torch.save({"loss": loss, "grads": grads(model)}, Path(out) / f"rank{rank}-{train_body}.pt")
        trainer = tiny_fit(Path(out), Ranks(rank, world))
        torch.save({"model": trainer.model.state_dict(), "best_epoch": trainer.best_epoch,
                    "history": trainer.history}, Path(out) / f"fit-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def single_process(train_body: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model = tiny_model(train_body)
    pixels, targets = batch()
    loss = minibatch_backward(model, pixels, targets, Ranks(), shard_bounds(N_IMAGES, 1), train_body, chunk=2, tile=3)
    return loss, grads(model)


@pytest.mark.parametrize("train_body", [True, False])
def test_single_process_minibatch_step_is_plain_autograd(train_body: bool) -> None:
    loss, got = single_process(train_body)
    model = tiny_model(train_body)
    pixels, targets = batch()
    expected = all_pairs_loss(model.head, model.features(pixels), targets)
    expected.backward()
    want = grads(model)
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    assert set(got) == set(want) and any(name.startswith("body.") for name in got) == train_body
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12)


def test_two_gloo_ranks_give_the_single_process_loss_and_gradients(tmp_path: Path) -> None:
    tiny_set(tmp_path)
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for train_body in (True, False):
        loss, want = single_process(train_body)
        for rank in range(2):
            result = torch.load(tmp_path / f"rank{rank}-{train_body}.pt", weights_only=True)
            assert result["loss"] == pytest.approx(loss, rel=1e-6, abs=1e-6)
            assert set(result["grads"]) == set(want)
            for name, grad in want.items():
                assert float(grad.abs().max()) > 0, name
                torch.testing.assert_close(result["grads"][name], grad, rtol=1e-6, atol=1e-6)
    # a fit on 2 ranks: only rank 0 validates, and every rank ends with its chosen epoch's model and its history
    fits = [torch.load(tmp_path / f"fit-rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert fits[0]["best_epoch"] > 0 and "val_r2" in fits[0]["history"][-1]
    assert fits[1]["best_epoch"] == fits[0]["best_epoch"] and fits[1]["history"] == fits[0]["history"]
    for name, value in fits[0]["model"].items():
        torch.testing.assert_close(fits[1]["model"][name], value, rtol=0, atol=0, msg=name)


def test_a_batch_must_give_every_rank_two_images() -> None:
    assert check_batch_settings(BatchSettings(batch_images=4), world=2).batch_images == 4
    with pytest.raises(ConfigError, match="3 images per step cannot be shared by 2 ranks"):
        check_batch_settings(BatchSettings(batch_images=3), world=2)


def test_a_large_set_trains_in_mini_batches_with_the_one_trainer(tmp_path: Path) -> None:
    """The data chooses the step: a large set gives the mini-batch step, checkpointed every epoch; it validates on
    the images it holds out, so validation sets beside it are refused."""
    tiny_set(tmp_path)
    config = TrainConfig(stage="blocks1", head="pairwise", image_size=32, device="cpu", frozen_epochs=1,
                         unfrozen_epochs=0, targets=("X",), prior="none")
    batch = BatchSettings(batch_images=6, val_fraction=0.25, loader_workers=0)
    data = read_targets({"X": CondensedRDMs(tmp_path / "rdms.npy", 24)}, 24, batch, config.rescale)
    large = LargeSet(open_image_store(tmp_path / "images.h5"), data, batch)
    trainer = Trainer(config, large, progress=False)
    assert isinstance(trainer.stepper, MiniBatchStep)
    assert (trainer.checkpoint_every_s, trainer.label) == (0.0, "")
    with pytest.raises(ValueError, match="validates on the images it holds out"):
        Trainer(config, large, [large], progress=False)
