"""Training: the loss falls on real data, gradients, the schedule, atomic checkpoints, kill and resume, LR range."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import fast_config

from siamrdm import train
from siamrdm.errors import DataError
from siamrdm.io.datasets import BrainDataset, load_algonauts_set
from siamrdm.model import all_pairs
from siamrdm.rdm import upper_tri
from siamrdm.rdm.core import group_average
from siamrdm.rdm.noise_ceiling import noise_ceilings
from siamrdm.train import augment, checkpoint


@pytest.fixture(scope="module")
def small92(dataset92: BrainDataset) -> BrainDataset:
    return train.subset(dataset92, np.arange(10), "92-small")


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


# --------------------------------------------------------------------------- data for training


def test_subset_and_split_holdout(dataset92: BrainDataset) -> None:
    index = np.array([5, 1, 40])
    part = train.subset(dataset92, index, "part")
    assert part.name == "part" and part.images.names == ["image_06.jpg", "image_02.jpg", "image_41.jpg"]
    assert part.targets["EVC"].shape == (15, 3, 3)
    assert part.targets["EVC"][4, 0, 2] == dataset92.targets["EVC"][4, 5, 40]
    fit_part, val_part = train.split_holdout(dataset92, 0.25, seed=0)
    assert len(val_part) == 23 and len(fit_part) == 69
    assert not set(fit_part.images.names) & set(val_part.images.names)
    again = train.split_holdout(dataset92, 0.25, seed=0)[1]
    assert again.images.names == val_part.images.names  # the seed fixes the split


def test_prepare_set_targets(small92: BrainDataset) -> None:
    config = fast_config(targets=("EVC", "IT"))
    prepared = train.prepare_set(small92, config.targets, config)
    assert prepared.images.shape == (10, 3, 128, 128)
    assert prepared.targets.shape == (45, 2)
    evc = upper_tri(group_average(small92.targets["EVC"]))
    expected = (evc - evc.min()) / (evc.max() - evc.min())  # the paper's minmax to [0, 1], upper-triangle order
    np.testing.assert_allclose(prepared.targets[:, 0].numpy(), expected, atol=1e-6)
    assert prepared.normalisation["EVC"] == {"low": evc.min(), "high": evc.max()}
    with pytest.raises(DataError, match="no RDMs for target.*MEG_late"):
        train.prepare_set(small92, ("EVC", "MEG_late"), config)


def test_augment_batch_is_reproducible(small92: BrainDataset) -> None:
    config = fast_config(augment=True)
    images = train.prepare_set(small92, ("EVC",), config).images
    first = augment.augment_batch(images, config, torch.Generator().manual_seed(1))
    second = augment.augment_batch(images, config, torch.Generator().manual_seed(1))
    other = augment.augment_batch(images, config, torch.Generator().manual_seed(2))
    assert first.shape == images.shape and torch.equal(first, second)
    assert not torch.equal(first, other) and not torch.equal(first, images)
    assert 0 <= float(first.min()) and float(first.max()) <= 1


def test_presets_and_devices() -> None:
    quick = train.config_from_preset("quick", lr=None, targets=("IT",))
    assert quick.frozen_epochs == 60 and quick.unfrozen_epochs == 0 and quick.lr == 1e-3 and quick.targets == ("IT",)
    assert quick.group_target == "ranks"  # adopted by the lever rule (RESULTS.md); the paper's target is the mean
    paper = train.config_from_preset("paper", frozen_epochs=3)
    assert paper.frozen_epochs == 3 and paper.unfrozen_epochs == 1000 and paper.epochs == 1003
    assert paper.group_target == "mean"
    with pytest.raises(DataError, match="unknown preset 'slow'"):
        train.config_from_preset("slow")
    assert train.config_from_dict(asdict(paper)) == paper
    # a model file written before the benchmark's settings left TrainConfig still reads (they are dropped)
    assert train.config_from_dict({**asdict(paper), "pair_mode": "factorised", "pair_batch": 32}) == paper
    assert train.pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="CUDA is not available"):
            train.pick_device("cuda")


# --------------------------------------------------------------------------- learning


def test_loss_falls_on_real_evc(dataset92: BrainDataset) -> None:
    """A few frozen epochs of the pretrained efficientnet_lite0 net on 16 real images: the MSE falls;
    validation on 8 other images picks the best epoch, the untrained model (epoch 0) among the candidates."""
    config = train.TrainConfig(targets=("EVC",), image_size=96, frozen_epochs=3, augment_views=2, lr=3e-3,
                               device="cpu")
    fit_set = train.subset(dataset92, np.arange(0, 92, 5)[:16], "92-fit")
    val_set = train.subset(dataset92, np.arange(2, 92, 11)[:8], "92-val")
    result = train.fit(config, [fit_set], [val_set], progress=False)
    start, *trained = result.history
    losses = [row["loss"] for row in trained]
    assert start["epoch"] == 0 and start["phase"] == "start" and start["loss"] is None
    assert [row["epoch"] for row in trained] == [1, 2, 3]
    assert all(row["phase"] == "frozen" for row in trained)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], losses
    assert all("val/92-val/EVC" in row and row["val_pct_nc"] is not None for row in result.history)
    best = max(result.history, key=lambda row: row["val_rho"])  # chosen on the signed mean rho
    assert result.best_epoch == best["epoch"] and result.best_score == pytest.approx(best["val_rho"])
    assert result.normalisation["92-fit"]["EVC"].keys() == {"low", "high"}


def test_correlation_loss_starts_at_the_prior_and_falls(dataset92: BrainDataset) -> None:
    """--loss correlation with a prior: before any step the head is zero, so the loss is 1 - Pearson r of the
    prior's and the target's pair values; a few epochs lower it. Without a prior it falls too."""
    fit_set = train.subset(dataset92, np.arange(0, 92, 4)[:20], "92-corr")
    config = fast_config(frozen_epochs=4, loss="correlation", prior="layer", lr=3e-3, weight_decay=0.0)
    trainer = train.Trainer(config, [fit_set], progress=False)
    pairs = trainer.stepper.train_sets[0]
    prior = pairs.prior_pairs[:, 0].double().numpy()
    target = upper_tri(group_average(fit_set.targets["EVC"]))  # rescaling does not change r
    with torch.no_grad():
        start = trainer.stepper.pair_loss(trainer.stepper.plain_features(0), pairs).item()
    assert start == pytest.approx(1 - np.corrcoef(prior, target)[0, 1], rel=1e-4, abs=1e-6)
    losses = [trainer.step(frozen=True) for _ in range(4)]
    assert losses[0] == pytest.approx(start, rel=1e-4, abs=1e-6)
    assert losses[-1] < losses[0], losses
    plain = train.Trainer(replace(config, prior="none"), [fit_set], progress=False)
    assert plain.stepper.train_sets[0].prior_pairs is None
    losses = [plain.step(frozen=True) for _ in range(4)]
    assert all(0 <= x <= 2 for x in losses) and losses[-1] < losses[0], losses


def test_loss_option_is_checked() -> None:
    from siamrdm.train.config import ConfigError, check_config
    from siamrdm.train.distributed import check_minibatch_config

    with pytest.raises(ConfigError, match="loss: unknown loss 'huber'"):
        check_config(fast_config(loss="huber"))
    with pytest.raises(ConfigError, match="loss: the mini-batch path trains with the mse loss only"):
        check_minibatch_config(fast_config(loss="correlation"))
    with pytest.raises(ConfigError, match="group_target: the mini-batch path .* runs with mean only, not 'ranks'"):
        check_minibatch_config(fast_config(group_target="ranks"))


def test_the_mini_batch_path_refuses_a_prior_before_the_full_batch_checks() -> None:
    """One refusal of a prior on the mini-batch path, the library's, for the Python API and the command line
    alike: first, whatever a full-batch check would say of the prior's other settings."""
    from siamrdm.train.config import ConfigError, check_config
    from siamrdm.train.distributed import check_minibatch_config, refuse_full_batch_settings

    relu_head = fast_config(prior="layer", head="pairwise", group_target="mean")
    with pytest.raises(ConfigError, match="prior: the pairwise head ends in a ReLU"):
        check_config(relu_head)  # the full-batch check alone: the head, not the path
    line = r"^prior: the mini-batch path trains without a prior \(its stage RDMs would be N x N\); use none$"
    for check in (check_minibatch_config, refuse_full_batch_settings):
        with pytest.raises(ConfigError, match=line):
            check(relu_head)
    with pytest.raises(ConfigError, match="lr: must be a positive"):  # and then every full-batch check
        check_minibatch_config(fast_config(prior="none", group_target="mean", lr=-1.0))


def test_a_rate_the_optimiser_cannot_hold_is_refused_and_the_largest_diverges(small92: BrainDataset) -> None:
    """--lr 1e300 overflowed inside AdamW's float32 step (a RuntimeError, exit 1); it is refused with its bound,
    and a run at the bound fails as a diverged run does (exit 2), not inside the optimiser."""
    from siamrdm.train.config import MAX_LR, ConfigError, check_config

    for config in (fast_config(lr=1e300), fast_config(lr=1e37), fast_config(lr=MAX_LR / 10, body_lr_factor=100.0)):
        with pytest.raises(ConfigError, match=r"^lr: must be at most 1e\+36") as info:
            check_config(config)
        assert not isinstance(info.value, train.TrainingDiverged)
    config = check_config(fast_config(lr=MAX_LR, frozen_epochs=3))
    with pytest.raises(train.TrainingDiverged, match="diverged"):
        train.Trainer(config, [small92], progress=False).fit(checkpoint_every_s=0)


def test_a_target_whose_subjects_cancel_is_refused_not_trained_on(small92: BrainDataset) -> None:
    """Two subjects in reverse order, at different scales: their mean RDM has an order, the mean of their ranks
    none. The ranks target was a constant that trained to a loss of 0 and a 'fitted' model; now one line."""
    from siamrdm.train.config import ConfigError
    from siamrdm.train.fullbatch import prepare_set

    first = small92.targets["EVC"][0]
    second = 7 * (first.max() - first) * (1 - np.eye(len(first)))
    dataset = BrainDataset("92-small", small92.images, {"EVC": np.stack([first, second])})
    with pytest.raises(ConfigError, match=r"^group_target: 92-small/EVC: the mean of the ranks of its subjects is the "
                                          "same for every pair"):
        prepare_set(dataset, ("EVC",), fast_config(group_target="ranks"))
    assert prepare_set(dataset, ("EVC",), fast_config(group_target="mean")).targets.std() > 0


def test_frozen_epochs_leave_the_body_alone(small92: BrainDataset) -> None:
    trainer = train.Trainer(fast_config(frozen_epochs=1), [small92], progress=False)
    body = copy.deepcopy(trainer.model.body.state_dict())
    head = copy.deepcopy(trainer.model.head.state_dict())
    trainer.run_epoch()
    state_equal(trainer.model.body.state_dict(), body, atol=0)
    assert not torch.equal(trainer.model.head.conv.weight, head["conv.weight"])


def test_unfrozen_step_gradient_equals_one_graph(small92: BrainDataset) -> None:
    """The two-pass unfrozen step (head gradient first, then the body in chunks) gives the gradient of the
    whole graph: the pair loss of both orders against the rescaled target, back-propagated through body and head."""
    config = fast_config(frozen_epochs=0, unfrozen_epochs=1, body_chunk=4)
    trainer = train.Trainer(config, [train.subset(small92, np.arange(6), "92-six")], progress=False)
    reference = copy.deepcopy(trainer.model)
    trainer.model.freeze_body(False)
    loss = trainer.step(frozen=False)
    two_pass = {name: p.grad.clone() for name, p in trainer.model.named_parameters()}

    reference.freeze_body(False)
    data_set = trainer.stepper.train_sets[0]
    i, j = all_pairs(len(data_set.images))
    features = reference.standardise(reference.body(data_set.images))
    predictions = reference.pair_predictions(features, i, j, both_orders=True)
    one_graph = F.mse_loss(predictions, data_set.targets.expand_as(predictions))
    one_graph.backward()
    assert loss == pytest.approx(one_graph.item(), rel=1e-5)
    for name, p in reference.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(two_pass[name], p.grad, atol=1e-6, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")
    assert float(two_pass["body.stages.conv1.0.weight"].abs().max()) > 0


def test_learning_rates_frozen_then_one_cycle(small92: BrainDataset) -> None:
    """The frozen epochs run at the configured rates; then the unfrozen ones follow the one-cycle schedule from its
    start (OneCycleLR sets its first rates when it is made, which must not leak into the frozen epochs)."""
    config = fast_config(frozen_epochs=2, unfrozen_epochs=3, body_lr_factor=0.1, lr=2e-3)
    small = train.subset(small92, np.arange(6), "92-six")
    trainer = train.Trainer(config, [small], progress=False)
    used: list[list[float]] = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append([g["lr"] for g in opt.param_groups]))
    for _ in range(config.epochs):
        trainer.run_epoch()
    assert used[:2] == [[2e-3, 2e-4], [2e-3, 2e-4]]
    dummy = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": [dummy[0]]}, {"params": [dummy[1]]}])
    cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[2e-3, 2e-4], total_steps=3)
    expected = []
    for _ in range(3):
        expected.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        cycle.step()
    assert np.allclose(used[2:], expected, rtol=1e-9, atol=0), (used, expected)


def test_early_stopping(small92: BrainDataset, dataset92: BrainDataset) -> None:
    """With a zero learning rate the validation score never improves on the untrained model (epoch 0): patience 2
    stops after epoch 2."""
    config = fast_config(frozen_epochs=10, lr=0.0, weight_decay=0.0, early_stopping=2)
    val = train.subset(dataset92, np.arange(50, 60), "92-val")
    result = train.fit(config, [small92], [val], progress=False)
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    assert result.best_epoch == 0
    assert len({row["val_pct_nc"] for row in result.history}) == 1


# --------------------------------------------------------------------------- checkpoints


def test_save_checkpoint_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "run" / "last.pt"
    checkpoint.save_checkpoint(path, {"epoch": 1, "weights": torch.arange(5.0)})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left
    assert train.load_checkpoint(path)["epoch"] == 1
    # A payload that fails half-way through writing (a lambda cannot be pickled) leaves the old file intact.
    with pytest.raises(Exception, match="(?i)pickl|lambda"):
        checkpoint.save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(1000), "bad": lambda: None})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    old = train.load_checkpoint(path)
    assert old["epoch"] == 1 and torch.equal(old["weights"], torch.arange(5.0))


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such checkpoint"):
        train.load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(DataError, match="unreadable checkpoint") as info:
        train.load_checkpoint(bad)
    assert "\n" not in str(info.value)


KILL_SCRIPT = """
import json, sys
import numpy as np
from siamrdm.io import files
from siamrdm.io.datasets import load_algonauts_set
from siamrdm import train
root, out, config = sys.argv[1], sys.argv[2], train.config_from_dict(json.loads(sys.argv[3]))
dataset = train.subset(load_algonauts_set(root, "92", ("EVC",)), np.arange(8), "92-eight")
with files.run_folder(out, "fit"):
    train.Trainer(config, [dataset], out_dir=out, progress=False).fit(checkpoint_every_s=0)
"""


def test_kill_and_resume_equals_uninterrupted(tmp_path: Path, data_root: Path, dataset92: BrainDataset) -> None:
    """A run killed with SIGKILL mid-way resumes from its last checkpoint and ends with the weights of an
    uninterrupted run of the same seed (the optimiser, one-cycle schedule and generator states are saved)."""
    config = fast_config(frozen_epochs=1, unfrozen_epochs=4, augment=True, augment_views=2, body_chunk=8, seed=3)
    total = config.epochs
    dataset = train.subset(dataset92, np.arange(8), "92-eight")
    out = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k != "SIAMRDM_DEBUG"}
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(data_root), str(out), json.dumps(asdict(config))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    killed_after: list[int] = []

    def kill_mid_run() -> None:
        """Poll the run's log (written after each checkpoint); SIGKILL it once 3 epochs are done."""
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            log = out / "log.csv"
            if log.is_file():
                rows = log.read_text().strip().splitlines()[1:]
                if len(rows) >= 3:
                    process.send_signal(signal.SIGKILL)
                    killed_after.append(len(rows))
                    return
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_mid_run)
    watcher.start()
    # Meanwhile, the uninterrupted run of the same settings in this process.
    reference = train.fit(config, [dataset], out_dir=tmp_path / "uninterrupted", progress=False)
    watcher.join()
    _, stderr = process.communicate(timeout=60)
    assert killed_after, f"the run ended before it could be killed (exit {process.returncode}): {stderr.decode()}"
    assert process.returncode == -signal.SIGKILL

    saved = train.load_checkpoint(out / "last.pt")
    assert 3 <= saved["epoch"] < total
    assert [row["epoch"] for row in saved["history"]] == list(range(1, saved["epoch"] + 1))

    resumed = train.fit(config, [dataset], out_dir=out, resume=True, progress=False)
    assert [row["epoch"] for row in resumed.history] == list(range(1, total + 1))
    assert resumed.history[: saved["epoch"]] == saved["history"]  # the first epochs are the killed run's
    state_equal(resumed.model.state_dict(), reference.model.state_dict(), atol=1e-5)
    losses_resumed = [row["loss"] for row in resumed.history]
    losses_reference = [row["loss"] for row in reference.history]
    assert losses_resumed == pytest.approx(losses_reference, rel=1e-4)
    with open(out / "log.csv", newline="") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == list(range(1, total + 1))
    final = train.load_checkpoint(out / "last.pt")
    assert final["epoch"] == total

    # Other settings cannot resume this run.
    with pytest.raises(DataError, match="other settings"):
        train.fit(replace(config, lr=5e-3), [dataset], out_dir=out, resume=True, progress=False)


def test_resume_with_other_settings_says_so_not_that_the_checkpoint_is_malformed(tmp_path: Path,
                                                                                  small92: BrainDataset) -> None:
    """A sound checkpoint of a run with other settings is refused in one line naming it, as another run's: it is
    not damaged, and saying "malformed" would send the user looking for damage."""
    config = fast_config(frozen_epochs=1)
    train.fit(config, [small92], out_dir=tmp_path / "run", progress=False)
    with pytest.raises(DataError) as refused:
        train.fit(replace(config, lr=5e-3), [small92], out_dir=tmp_path / "run", resume=True, progress=False)
    message = str(refused.value)
    assert message.startswith(str(tmp_path / "run" / "last.pt")) and "other settings" in message
    assert "malformed" not in message


def test_resume_needs_an_out_dir(small92: BrainDataset) -> None:
    with pytest.raises(train.ConfigError, match="resume: needs out_dir"):
        train.fit(fast_config(frozen_epochs=1), [small92], resume=True, progress=False)
    with pytest.raises(DataError, match="no training sets"):
        train.Trainer(fast_config(), [], progress=False)


def test_a_step_that_leaves_non_finite_weights_stops_the_run(tmp_path: Path, small92: BrainDataset) -> None:
    """A step at a rate of 1e308 in one frozen epoch: the loss is the one before the step (finite), the step
    leaves infinite head weights. The run stops naming --lr and writes no checkpoint. (`--lr 1e308` did this
    from the command line; rates above MAX_LR are refused there now, so the rate is set past the config.)"""
    out = tmp_path / "run"
    trainer = train.Trainer(fast_config(frozen_epochs=1), [small92], out_dir=out, progress=False)
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e308
    with pytest.raises(train.TrainingDiverged, match="diverged at epoch 1.*NaN or infinite weights") as info:
        trainer.fit(checkpoint_every_s=0)
    assert info.value.option == "lr"
    assert not (out / "last.pt").exists()


def test_a_fit_whose_kept_model_predicts_non_finite_values_writes_no_model(
        tmp_path: Path, own_data: tuple[str, ...], capsys: pytest.CaptureFixture) -> None:
    """--lr 1e30 (within the bound): the step leaves finite weights behind a finite loss, but their predictions
    overflow. The fit exited 0 with a model.pt that predict then refused; now it stops naming --lr (exit 2, one
    line) and the new run folder is left as it was found: no model.pt, no checkpoint."""
    from helpers import assert_one_line_error, run_cli

    out = tmp_path / "zz"
    code, printed, err = run_cli(capsys, "fit", *own_data, "--frozen-epochs", "1", "--lr", "1e30", "--image-size",
                                 "64", "--weights", "random", "--no-augment", "--quiet", "--out", out)
    assert (code, printed) == (2, "")
    assert_one_line_error(err, "--lr", "the one kept, predicts NaN or infinite", "lower learning rate")
    assert not out.exists()


# --------------------------------------------------------------------------- LR range test


def test_lr_range_test(small92: BrainDataset) -> None:
    result = train.lr_range_test(fast_config(), [small92], start_lr=1e-5, end_lr=1.0, steps=25, progress=False)
    lrs, losses = result["lr"], result["loss"]
    assert len(lrs) == len(losses) == len(result["smoothed_loss"]) >= 10
    assert lrs[0] == pytest.approx(1e-5)
    assert all(b > a for a, b in zip(lrs, lrs[1:], strict=False))
    assert all(math.isfinite(x) for x in losses)
    assert lrs[0] <= result["suggested_lr"] <= lrs[-1]
    assert result["suggested_lr"] in lrs


def test_fit_lr_range_test_and_stage_rdms_draw_no_bars_off_a_terminal(capsys, small92: BrainDataset) -> None:
    """progress=True asks for phase lines and, on a terminal only, bars: into a log (stderr captured here, not a
    terminal) no carriage-return bar is drawn (`siamrdm fit 2> log` drew its epoch bar into the log)."""
    from siamrdm.model import baselines

    train.fit(fast_config(), [small92], progress=True)
    train.lr_range_test(fast_config(), [small92], start_lr=1e-5, end_lr=1.0, steps=3, progress=True)
    baselines.layer_rdms(small92.images, "alexnet", "random", 64, progress=True)
    baselines.layer_features(small92.images, "alexnet", "random", 64, progress=True)
    assert "\r" not in capsys.readouterr().err


def test_lr_suggestion_never_picks_a_diverged_loss() -> None:
    """A NaN or infinite last loss is divergence, not the minimum: the suggestion comes from the curve before
    it (np.argmin alone took the NaN for the lowest loss); a loss non-finite from the first step is one line."""
    from siamrdm.train.lrfind import suggest_lr

    lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    finite = [1.0, 0.9, 0.5, 0.45]  # slopes -0.1, -0.25, -0.225, -0.05 per decade: steepest at 1e-4
    assert suggest_lr(lrs[:4], finite) == 1e-4
    for diverged in (math.nan, math.inf):
        assert suggest_lr(lrs, [*finite, diverged]) == 1e-4
    assert suggest_lr(lrs, [1.0, 0.5, math.nan, 0.1, 0.05]) == 1e-5  # nothing after the first NaN counts
    with pytest.raises(train.TrainingDiverged, match="first step") as info:
        suggest_lr(lrs[:1], [math.nan])
    assert info.value.option == "start_lr"


@pytest.mark.parametrize(("rates", "option", "problem"), [
    ((1e-45, 1e84), "start_lr", "float32's range"),
    ((1e-6, 1e84), "end_lr", "float32's range"),
    ((1e-6, math.inf), "end_lr", "positive finite"),
    ((math.nan, 1.0), "start_lr", "positive finite"),
    ((-1e-3, 1.0), "start_lr", "positive finite"),
    ((1e-2, 1e-3), "end_lr", "greater than start_lr"),
    ((1e-6, 1.0, 0), "steps", "at least 1"),
])
def test_lr_range_test_refuses_rates_it_cannot_take(small92: BrainDataset, rates: tuple, option: str,
                                                    problem: str) -> None:
    """Rates no float32 step can take were a RuntimeError traceback ('cannot be converted to type float
    without overflow'); now a ConfigError naming the argument, before any work."""
    start_lr, end_lr, steps = (*rates, 4)[:3]
    with pytest.raises(train.ConfigError, match=problem) as info:
        train.lr_range_test(fast_config(), [small92], start_lr=start_lr, end_lr=end_lr, steps=steps, progress=False)
    assert info.value.option == option and "\n" not in str(info.value)


# --------------------------------------------------------------------------- the protocol: epochs mean the same


def _step_rates(trainer: train.Trainer) -> list[list[float]]:
    """Record the learning rates of every optimiser step the trainer takes from now on."""
    used: list[list[float]] = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append([g["lr"] for g in opt.param_groups]))
    return used


def test_final_fit_follows_the_curves_schedule(dataset92: BrainDataset, data_root: Path) -> None:
    """Epoch e chosen on a one-set validation curve means, in the final fit on two sets, the same number of
    optimiser steps at the same learning rates (one step per epoch over both sets' pairs; the one-cycle
    schedule keeps its full length and the run stops at e)."""
    from siamrdm.train.selection import with_epochs

    config = fast_config(frozen_epochs=2, unfrozen_epochs=4, lr=2e-3)
    set_a = train.subset(dataset92, np.arange(6), "a")
    set_b = train.subset(load_algonauts_set(data_root, "118", ("EVC",)), np.arange(7), "b")
    set_a = BrainDataset("a", set_a.images, {"EVC": set_a.targets["EVC"]})
    curve = train.Trainer(config, [set_a], progress=False)
    curve_rates = _step_rates(curve)
    for _ in range(config.epochs):
        curve.run_epoch()
    chosen = 4
    final = train.Trainer(with_epochs(config, chosen), [set_a, set_b], progress=False)
    final_rates = _step_rates(final)
    result = final.fit()
    assert len(result.history) == chosen
    assert len(final_rates) == chosen  # one optimiser step per epoch, however many sets
    assert np.allclose(final_rates, curve_rates[:chosen], rtol=1e-12, atol=0)
    assert final.scheduler.total_steps == curve.scheduler.total_steps == config.unfrozen_epochs


def test_step_loss_is_the_mean_over_all_pairs_of_all_sets(dataset92: BrainDataset, data_root: Path) -> None:
    """One step over two sets: the loss is the pair-weighted mean of each set's loss (lr 0 keeps the weights)."""
    config = fast_config(frozen_epochs=1, lr=0.0, weight_decay=0.0)
    set_a = train.subset(dataset92, np.arange(6), "a")
    set_a = BrainDataset("a", set_a.images, {"EVC": set_a.targets["EVC"]})
    set_b = train.subset(load_algonauts_set(data_root, "118", ("EVC",)), np.arange(9), "b")
    both = train.Trainer(config, [set_a, set_b], progress=False)
    both.model.freeze_body(False)
    loss_both = both.step(frozen=False)
    singles = []
    for one in (set_a, set_b):
        trainer = train.Trainer(config, [one], progress=False)
        trainer.model.load_state_dict(both.model.state_dict())
        trainer.model.freeze_body(False)
        singles.append(trainer.step(frozen=False))
    assert loss_both == pytest.approx((15 * singles[0] + 36 * singles[1]) / 51, rel=1e-5)


def test_preset_overrides_unknown_keys_and_switching_off() -> None:
    from siamrdm.train.config import OFF

    paper = train.config_from_preset("paper")
    assert paper.early_stopping == 100
    assert train.config_from_preset("paper", early_stopping=None).early_stopping == 100  # None: not given
    assert train.config_from_preset("paper", early_stopping=OFF).early_stopping is None  # OFF: switched off
    with pytest.raises(train.ConfigError, match="lrate: not a training setting"):
        train.config_from_preset("quick", lrate=1e-3)


def test_validation_ceiling_is_official_only_for_the_official_sets(dataset92: BrainDataset,
                                                                   small92: BrainDataset) -> None:
    """Validating on all 92 official images divides by the published EVC ceiling; the same images and RDMs
    handed in as your own data (keyed 'EVC') are divided by the ceiling computed from their subjects."""
    config = fast_config(frozen_epochs=1, targets=("EVC",))
    own = BrainDataset("mine", dataset92.images, {"EVC": dataset92.targets["EVC"]})
    rows = {}
    for name, val in (("official", dataset92), ("own", own)):
        trainer = train.Trainer(config, [small92], [val], progress=False)
        rows[name] = trainer.stepper.validate(frozen=True)[f"{val.name}/EVC"]
    assert rows["official"]["ceiling_source"] == "official" and rows["official"]["noise_ceiling"] == 0.1589
    assert rows["own"]["ceiling_source"] == "computed"
    assert rows["own"]["noise_ceiling"] == pytest.approx(noise_ceilings(dataset92.targets["EVC"]).upper)
    assert rows["own"]["r2"] == pytest.approx(rows["official"]["r2"])
