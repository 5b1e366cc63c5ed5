"""The GPU fast path, tested on the CPU: batched augmentation on the pixels' device, validation scored in torch,
validation every k epochs, bf16 autocast and channels-last, and a challenge's fits in worker processes."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error, fast_config, run_cli
from scipy import stats

from siamrdm import train
from siamrdm.io.datasets import BrainDataset, load_algonauts_set
from siamrdm.io.images import ImageSet
from siamrdm.pipelines import challenge
from siamrdm.rdm import square_rdm, upper_tri
from siamrdm.rdm.compare import comparison_values, spearman_rhos
from siamrdm.rdm.compare_torch import rank_average_torch, spearman_torch
from siamrdm.rdm.records import score_with_ceiling
from siamrdm.rdm.splits import cross_set_splits
from siamrdm.train import fullbatch, selection
from siamrdm.train.augment import augment_batch, crop_flip, draw_boxes, image_generator
from siamrdm.train.config import ConfigError, check_config

# --------------------------------------------------------------------------- augmentation


def per_image_augment(images: torch.Tensor, crop_scale: tuple[float, float],
                      generator: torch.Generator) -> torch.Tensor:
    """The augmentation as it was before the batched op: per image, Python arithmetic on the same 5 draws, the
    crop cut out and resized with antialiased bilinear interpolation, mirrored on a coin flip."""
    n, _, size, _ = images.shape
    out = torch.empty_like(images)
    draws = torch.rand(n, 5, generator=generator)
    low, high = crop_scale
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


@pytest.mark.parametrize(("size", "crop_scale"), [(128, (0.7, 1.0)), (224, (0.7, 1.0)), (40, (0.1, 0.5))])
def test_batched_augmentation_equals_the_per_image_crops(dataset92: BrainDataset, size: int,
                                                         crop_scale: tuple[float, float]) -> None:
    """Same draws, same boxes, same pixels to float rounding: the batched op replaced the per-image loop
    without changing what a run trains on."""
    config = fast_config(image_size=size, crop_scale=crop_scale)
    images = train.prepare_set(train.subset(dataset92, np.arange(24), "part"), ("EVC",), config).images
    batched = augment_batch(images, config, torch.Generator().manual_seed(7))
    reference = per_image_augment(images, crop_scale, torch.Generator().manual_seed(7))
    torch.testing.assert_close(batched, reference, atol=1e-6, rtol=0)


def test_augmentation_shape_range_seed_and_identity() -> None:
    images = torch.rand(6, 3, 32, 32)
    config = fast_config(crop_scale=(0.5, 1.0))
    first = augment_batch(images, config, torch.Generator().manual_seed(1))
    again = augment_batch(images, config, torch.Generator().manual_seed(1))
    other = augment_batch(images, config, torch.Generator().manual_seed(2))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert 0 <= float(first.min()) and float(first.max()) <= 1
    whole = torch.tensor([[0.0, 0.0, 32.0, 32.0, 0.0]]).repeat(6, 1)
    assert torch.equal(crop_flip(images, whole), images)  # the whole image, unmirrored: untouched
    whole[:, 4] = 1
    assert torch.equal(crop_flip(images, whole), images.flip(-1))
    corner = torch.tensor([[0.0, 0.0, 16.0, 16.0, 0.0]]).repeat(6, 1)  # the top-left quarter, upsampled 2x
    expected = F.interpolate(images[..., :16, :16], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(crop_flip(images, corner), expected, atol=1e-6, rtol=0)


def test_crop_and_flip_rates() -> None:
    """Over many draws: half the images mirrored, areas spread over crop_scale, aspect within [3/4, 4/3],
    every box inside the image."""
    size, low, high = 200, 0.3, 0.9
    boxes = draw_boxes(20_000, size, (low, high), torch.Generator().manual_seed(0)).numpy()
    x0, y0, w, h, flip = boxes.T
    assert abs(flip.mean() - 0.5) < 0.015 and set(np.unique(flip)) == {0.0, 1.0}
    area = w * h / size**2
    assert low - 0.02 < area.min() and area.max() < high + 0.02
    assert abs(np.median(area) - (low + high) / 2) < 0.02  # uniform in crop_scale
    aspect = w / h
    assert 3 / 4 - 0.02 < aspect.min() and aspect.max() < 4 / 3 + 0.02
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= size).all() and (y0 + h <= size).all()
    slack = size - w > 20
    assert abs(np.mean(x0[slack] / (size - w[slack])) - 0.5) < 0.02  # position uniform where it can move


def test_frozen_views_keep_their_crops(dataset92: BrainDataset) -> None:
    """The cached frozen views are the per-image crops they were before the batched op, seeded by the same
    identity (the run's seed, the image's folder name and name, and the view; not the body's precision, layout or
    device, nor the path the data was given by)."""
    config = fast_config(augment=True, augment_views=3)
    part = train.subset(dataset92, np.arange(4), "a")
    trainer = train.Trainer(replace(config, channels_last=True), [part], progress=False)
    pixels = trainer.stepper.train_sets[0].images
    for view in (1, 2):
        for k, key in enumerate(trainer.stepper.train_sets[0].seed_keys):
            assert key == f"{Path(dataset92.images.source).name}/{dataset92.images.names[k]}"
            seed_key = (config.backbone, config.weights, config.stage, config.image_size, config.crop_scale,
                        config.seed, key, view)
            crop = per_image_augment(pixels[k : k + 1], config.crop_scale, image_generator(seed_key))
            torch.testing.assert_close(trainer.stepper._views[0][view, k], trainer.model.body(crop)[0], atol=1e-5,
                                       rtol=1e-5)


def test_the_same_file_with_other_pixels_does_not_share_cached_features(dataset92: BrainDataset) -> None:
    """One file can be read whole or reduced (`load_image_set`'s size): the cache of frozen features is keyed by
    the pixels too, so a set with the same source and names but other pixels gets its own features."""
    config = fast_config(augment=True, augment_views=2)
    part = train.subset(dataset92, np.arange(4), "a")
    mirrored = replace(part, images=ImageSet(part.images.names, [np.ascontiguousarray(im[:, ::-1])
                                                                 for im in part.images.images], part.images.source))
    train.Trainer(config, [part], progress=False)  # fills the cache with the unmirrored images' features
    trainer = train.Trainer(config, [mirrored], progress=False)
    pixels = trainer.stepper.train_sets[0].images
    torch.testing.assert_close(trainer.stepper._views[0][0], trainer.model.body(pixels), atol=1e-5, rtol=1e-5)


def test_the_path_spelling_of_the_data_does_not_change_the_model(data_root: Path, tmp_path: Path) -> None:
    """The same images reached as ../x and as /abs/x draw the same augmentations and train the same weights."""
    config = fast_config(augment=True, augment_views=3, frozen_epochs=2, lr=3e-3)
    models = []
    for root in (data_root.resolve(), Path(os.path.relpath(data_root.resolve(), Path.cwd()))):
        dataset = train.subset(load_algonauts_set(root, "92", ("EVC",)), np.arange(8), "a")
        models.append(train.fit(config, [dataset], progress=False).model.state_dict())
    assert str(models) and all(torch.equal(models[0][k], models[1][k]) for k in models[0])


def test_trainer_keeps_the_pixels_on_its_device(dataset92: BrainDataset) -> None:
    trainer = train.Trainer(fast_config(augment=True, unfrozen_epochs=1), [train.subset(dataset92, np.arange(8), "a")],
                            progress=False)
    assert all(s.images.device == trainer.device for s in trainer.stepper.train_sets)
    assert math.isfinite(trainer.run_epoch()["loss"])


# --------------------------------------------------------------------------- validation in torch


def test_torch_spearman_equals_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    for length, levels in ((300, 7), (1000, 40), (55, 1000)):
        targets = rng.integers(0, levels, (6, length)).astype(np.float64)  # many ties
        predicted = rng.integers(0, levels, length).astype(np.float64)
        rho = spearman_torch(torch.from_numpy(predicted), torch.from_numpy(targets)).numpy()
        expected = [stats.spearmanr(predicted, t).statistic for t in targets]
        np.testing.assert_allclose(rho, expected, atol=1e-12)
        np.testing.assert_array_equal(rank_average_torch(torch.from_numpy(targets)).numpy(),
                                      stats.rankdata(targets, axis=1))
    constant = spearman_torch(torch.ones(55, dtype=torch.float64), torch.from_numpy(targets))
    assert torch.equal(constant, torch.zeros(6, dtype=torch.float64))  # orders no pair: 0, as compare_rdms


def test_torch_spearman_equals_the_official_metric(make_rdms) -> None:
    """(S, K, N, N) subject RDMs: the K rhos of a subject are averaged, as spearman_rhos does."""
    targets = make_rdms(20, subjects=4, k=2, seed=1)
    model = make_rdms(20, seed=2)
    rho = spearman_torch(torch.from_numpy(upper_tri(model)), torch.from_numpy(upper_tri(targets))).mean(dim=1)
    np.testing.assert_allclose(rho.numpy(), spearman_rhos(model, targets), atol=1e-12)


def test_nan_and_constant_predictions_score_as_the_numpy_metric(make_rdms, dataset92: BrainDataset) -> None:
    """A prediction with NaN scores NaN on the device as in numpy's comparison (so training counts it as the worst
    epoch), a constant one scores 0 (never NaN)."""
    targets = make_rdms(12, subjects=3, seed=1)
    upper = upper_tri(make_rdms(12, seed=2))
    broken = upper.copy()
    broken[5] = np.nan
    for predicted in (broken, np.full_like(upper, 0.3)):
        rho = spearman_torch(torch.from_numpy(predicted), torch.from_numpy(upper_tri(targets))).numpy()
        # the numpy comparison behind compare_rdms (which refuses a NaN model RDM as a user's bad input)
        np.testing.assert_array_equal(rho, comparison_values(square_rdm(predicted, 12), targets))
    val = train.subset(dataset92, np.arange(50, 58), "b")
    trainer = train.Trainer(fast_config(frozen_epochs=1), [train.subset(dataset92, np.arange(8), "a")], [val],
                            progress=False)
    pairs = torch.rand(28, 1, dtype=torch.float64)
    pairs[3] = torch.nan
    scores = trainer.stepper.score_pairs({0: pairs})
    assert math.isnan(scores["b/EVC"]["r2"]) and train.selection_score(scores) == -math.inf
    scores = trainer.stepper.score_pairs({0: torch.full((28, 1), 0.5, dtype=torch.float64)})
    assert scores["b/EVC"]["r2"] == 0.0 and scores["b/EVC"]["pct_nc"] == 0.0


@pytest.mark.parametrize("prior", ["none", "nnls"])
def test_validation_on_the_device_equals_the_numpy_metric(dataset92: BrainDataset, dataset118: BrainDataset,
                                                         prior: str) -> None:
    """Two validation sets, one with fewer subjects (4 of 15): the same rows as `score_with_ceiling` gives the
    RDMs, with the prior and test-time augmentation or without."""
    config = fast_config(targets=("EVC", "IT"), prior=prior, frozen_epochs=1, tta=prior == "nnls")
    part = train.subset(dataset92, np.arange(40, 50), "c")
    few = BrainDataset("c", part.images, {t: r[:4] for t, r in part.targets.items()})
    val = {"b": train.subset(dataset118, np.arange(9), "b"), "c": few}
    trainer = train.Trainer(config, [train.subset(dataset92, np.arange(12), "a")], list(val.values()), progress=False)
    trainer.run_epoch()
    for name, rdms in trainer.stepper.last_rdms.items():
        for rdm, target in zip(rdms, config.targets, strict=True):
            expected = score_with_ceiling(rdm, val[name].targets[target], key=target).to_dict()
            got = trainer.last_scores[f"{name}/{target}"]
            assert got.keys() == expected.keys()
            for key, value in expected.items():
                if key.startswith("pair_"):  # the pair structure: measured on final records, not every epoch
                    assert got[key] is None, key
                    continue
                close = isinstance(value, float | list)  # a number, or the per-subject rhos
                assert got[key] == (pytest.approx(value, rel=1e-9, abs=1e-12) if close else value)


@pytest.mark.parametrize("tta", [False, True])
def test_frozen_validation_features_from_the_cache_equal_a_fresh_pass(dataset92: BrainDataset, tta: bool) -> None:
    """While the body is frozen, validation reads each image's plain features from the process cache that
    training fills (and computes the mirror view of tta): the same standardised features as a fresh pass."""
    config = fast_config(frozen_epochs=1, tta=tta)
    val = train.subset(dataset92, np.arange(6, 14), "v")  # overlaps the training images 6-9: read from the cache
    trainer = train.Trainer(config, [train.subset(dataset92, np.arange(10), "a")], [val], progress=False)
    trainer.run_epoch()
    step = trainer.stepper
    cached = step.frozen_feature_views(step.val_sets[0])
    fresh = fullbatch.feature_views(trainer.model, step.val_sets[0].images, config, trainer.device)
    assert len(cached) == len(fresh) == (2 if tta else 1)
    for got, expected in zip(cached, fresh, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- validation every k epochs


def test_validate_every_k_epochs(dataset92: BrainDataset) -> None:
    """Validation does not touch the training: the validated epochs score exactly as with k = 1, the best
    epoch is a validated one, and the last epoch (the schedule's end or stop_epoch) is always validated."""
    fit_set, val_set = train.subset(dataset92, np.arange(10), "a"), train.subset(dataset92, np.arange(50, 58), "b")
    every = train.fit(fast_config(frozen_epochs=7, lr=3e-3), [fit_set], [val_set], progress=False)
    third = train.fit(fast_config(frozen_epochs=7, lr=3e-3, validate_every=3), [fit_set], [val_set], progress=False)
    validated = [row["epoch"] for row in third.history if "val_pct_nc" in row]
    # Epoch 0 (the untrained model) is scored before any step, then every third epoch and the last.
    assert validated == [0, 3, 6, 7] and [row["epoch"] for row in third.history] == list(range(0, 8))
    for row in third.history:
        assert row["loss"] == every.history[row["epoch"]]["loss"]
        if "val_pct_nc" in row:
            assert row["val_pct_nc"] == pytest.approx(every.history[row["epoch"]]["val_pct_nc"], rel=1e-12)
    assert third.best_epoch in validated
    trainer = train.Trainer(fast_config(frozen_epochs=7, validate_every=3), [fit_set], [val_set], progress=False)
    trainer.run_epoch()
    assert trainer.stepper.last_rdms == {}  # nothing validated yet
    for _ in range(2):
        trainer.run_epoch()
    assert trainer.stepper.last_rdms["b"].shape == (1, 8, 8)
    stopped = train.fit(fast_config(frozen_epochs=7, lr=3e-3, validate_every=3, stop_epoch=5), [fit_set], [val_set],
                        progress=False)
    assert [row["epoch"] for row in stopped.history if "val_pct_nc" in row] == [0, 3, 5]


def test_the_progress_bar_counts_the_epochs_the_fit_trains(dataset92: BrainDataset,
                                                           capfd: pytest.CaptureFixture) -> None:
    """stop_epoch ends a 4-epoch schedule at 2: the bar counts to 2, never to the schedule's 4 (bars asked for,
    as a terminal would have them: here stderr is captured, where progress=True draws none)."""
    from siamrdm.io.progress import Progress

    fit_set = train.subset(dataset92, np.arange(10), "a")
    result = train.fit(fast_config(frozen_epochs=4, stop_epoch=2), [fit_set],
                       progress=Progress("fit", lines=False, bars=True))
    assert [row["epoch"] for row in result.history] == [1, 2]
    bar = capfd.readouterr().err
    assert "2/2 [" in bar and "/4 [" not in bar, bar


def test_early_stopping_waits_for_a_validation(dataset92: BrainDataset) -> None:
    """Patience 2 with validation every 4th epoch: the run is scored at epoch 0 (kept: the first score), is not
    better at epoch 4 (a zero learning rate), and stops there, not at epoch 2, where nothing new was known."""
    fit_set, val_set = train.subset(dataset92, np.arange(10), "a"), train.subset(dataset92, np.arange(50, 58), "b")
    config = fast_config(frozen_epochs=10, lr=0.0, weight_decay=0.0, early_stopping=2, validate_every=4)
    result = train.fit(config, [fit_set], [val_set], progress=False)
    assert [row["epoch"] for row in result.history] == list(range(0, 5))
    assert [row["epoch"] for row in result.history if "val_pct_nc" in row] == [0, 4]
    assert result.best_epoch == 0 and result.best_score is not None


def test_curves_and_epoch_choice_with_validate_every(dataset92: BrainDataset,
                                                     dataset118: BrainDataset) -> None:
    sets = {"92": train.subset(dataset92, np.arange(9), "92"), "118": train.subset(dataset118, np.arange(10), "118")}
    config = fast_config(frozen_epochs=5, prior="nnls", lr=3e-3)
    every = selection.validation_curves(config, cross_set_splits(sets), (0,))
    second = selection.validation_curves(replace(config, validate_every=2), cross_set_splits(sets), (0,))
    for label, rows in second.items():
        assert [row["epoch"] for row in rows] == [0, 2, 4, 5]  # the prior alone, every 2nd epoch and the last
        for row in rows:
            assert row["r2"] == pytest.approx(every[label][row["epoch"]]["r2"], rel=1e-12)
    per_set = selection.choose_epochs({"92": [second["92->118"]], "118": [second["118->92"]]})
    assert set(per_set.values()) <= {0, 2, 4, 5}
    assert selection.final_epochs(list(second.values())) in (0, 2, 4, 5)
    with pytest.raises(ConfigError, match="validate_every"):
        check_config(fast_config(validate_every=0))


def test_curves_stop_at_stop_epoch_and_name_a_diverged_fit(dataset92: BrainDataset, dataset118: BrainDataset,
                                                           tmp_path: Path) -> None:
    """The curves end at the config's stop_epoch, as a fit does; a fit that diverges says which one it was (a
    challenge runs eight curves and four final fits, several at once with --jobs)."""
    sets = {"92": train.subset(dataset92, np.arange(9), "92"), "118": train.subset(dataset118, np.arange(10), "118")}
    splits = cross_set_splits(sets)
    curves = selection.validation_curves(fast_config(frozen_epochs=4, stop_epoch=2), splits, (0,))
    assert {label: [row["epoch"] for row in rows] for label, rows in curves.items()} == {
        "92->118": [1, 2], "118->92": [1, 2]}
    with pytest.raises(train.TrainingDiverged, match=r"^lr: EVC 92->118: training diverged at epoch 2"):
        selection.validation_curves(fast_config(lr=1e30, frozen_epochs=3), splits, (0,))
    with pytest.raises(train.TrainingDiverged, match=r"^lr: EVC final fit: training diverged at epoch 2"):
        challenge.final_fit(fast_config(lr=1e30, frozen_epochs=3), list(sets.values()), (0,), tmp_path / "EVC",
                            sets["92"], False)


# --------------------------------------------------------------------------- precision and layout


def test_precision_and_layout_are_checked(capsys) -> None:
    with pytest.raises(ConfigError, match="precision: unknown precision 'fp16'"):
        check_config(fast_config(precision="fp16"))
    with pytest.raises(ConfigError, match="channels_last"):
        check_config(fast_config(channels_last="yes"))
    code, _, err = run_cli(capsys, "fit", "--precision", "fp8", "--out", "unused")
    assert code == 2
    assert_one_line_error(err, "--precision", "fp8")
    code, _, err = run_cli(capsys, "fit", "--validate-every", "0", "--weights", "random", "--backbone", "alexnet",
                           "--image-size", "128", "--device", "cpu", "--out", "unused")
    assert code == 2
    assert_one_line_error(err, "--validate-every")
    assert not Path("unused").exists()


def test_bf16_and_channels_last_predict_what_fp32_predicts(dataset92: BrainDataset) -> None:
    """One frozen and one unfrozen epoch (the body's backward pass too): bf16 autocast stays within rounding of
    float32 (RDM correlation > 0.99), channels-last within float rounding."""
    fit_set, val_set = train.subset(dataset92, np.arange(10), "a"), train.subset(dataset92, np.arange(50, 60), "b")
    rdms = {}
    for name, overrides in {"fp32": {}, "bf16": {"precision": "bf16"}, "cl": {"channels_last": True}}.items():
        config = fast_config(frozen_epochs=1, unfrozen_epochs=1, augment=True, **overrides)
        check_config(config)
        trainer = train.Trainer(config, [fit_set], [val_set], progress=False)
        for _ in range(2):
            trainer.run_epoch()
        rdms[name] = upper_tri(trainer.stepper.last_rdms["b"][0])
        if name == "cl":
            assert trainer.model.body.stages["conv1"][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert np.corrcoef(rdms["fp32"], rdms["bf16"])[0, 1] > 0.99
    assert not np.array_equal(rdms["fp32"], rdms["bf16"])  # bf16 really ran
    np.testing.assert_allclose(rdms["cl"], rdms["fp32"], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- concurrent fits


def test_challenge_jobs_give_the_sequential_results(capsys, tmp_path: Path, dataset92: BrainDataset,
                                                    dataset118: BrainDataset) -> None:
    """The challenge's independent fits (curves of 2 targets x 2 directions, then 2 final fits with their test
    predictions) in two worker processes against this process: the same curves and predictions."""
    sets = {"92": train.subset(dataset92, np.arange(9), "92"), "118": train.subset(dataset118, np.arange(10), "118")}
    test = train.subset(dataset92, np.arange(60, 70), "test")
    splits = cross_set_splits(sets)
    config = fast_config(frozen_epochs=2, augment=True, prior="nnls", lr=3e-3)
    tasks = [(replace(config, targets=(t,)), {label: splits[label]}, (0,), False) for t in ("EVC", "IT") for label in
             splits]
    one, two = (challenge.run_jobs(selection.validation_curves, tasks, jobs) for jobs in (1, 2))
    assert [list(c) for c in one] == [list(c) for c in two] == [["92->118"], ["118->92"]] * 2
    for a, b in zip(one, two, strict=True):
        for label in a:
            assert [r["epoch"] for r in a[label]] == [r["epoch"] for r in b[label]] == [0, 1, 2]
            np.testing.assert_allclose([r["r2"] for r in a[label]], [r["r2"] for r in b[label]], rtol=1e-6)
    fits = [(replace(config, targets=(t,), stop_epoch=1), list(sets.values()), (0,), tmp_path / f"{t}{jobs}", test,
             False) for jobs in (1, 2) for t in ("EVC", "IT")]
    one = challenge.run_jobs(challenge.final_fit, fits[:2], 1)
    two = challenge.run_jobs(challenge.final_fit, fits[2:], 2)
    for (rdm_a, metrics_a), (rdm_b, metrics_b) in zip(one, two, strict=True):
        assert rdm_a.shape == (10, 10) and metrics_a.keys() == metrics_b.keys()
        np.testing.assert_allclose(rdm_a, rdm_b, rtol=1e-5, atol=1e-7)
    assert (tmp_path / "IT2" / "model.pt").is_file()
    with pytest.raises(ConfigError, match="prior"):  # an error in a worker arrives whole, with its setting
        challenge.run_jobs(check_config, [(fast_config(head="pairwise", prior="nnls"),)] * 2, 2)
    code, _, err = run_cli(capsys, "challenge", "--jobs", "0", "--out", str(tmp_path / "zero"))
    assert code == 2
    assert_one_line_error(err, "--jobs")
    assert not (tmp_path / "zero").exists()


def test_losses_reach_the_host_every_k_epochs(dataset92: BrainDataset) -> None:
    """With validate_every = 3 the losses stay on the device until epochs 3, 6 and the last; a NaN loss stops the
    run there, naming the epoch it appeared in."""
    trainer = train.Trainer(fast_config(frozen_epochs=7, validate_every=3),
                            [train.subset(dataset92, np.arange(8), "a")], progress=False)
    kinds = [type(trainer.run_epoch()["loss"]) for _ in range(7)]
    assert kinds == [torch.Tensor, torch.Tensor, float, torch.Tensor, torch.Tensor, float, float]
    assert all(isinstance(row["loss"], float) and math.isfinite(row["loss"]) for row in trainer.history)
    trainer = train.Trainer(fast_config(frozen_epochs=7, validate_every=3),
                            [train.subset(dataset92, np.arange(8), "a")], progress=False)
    trainer.run_epoch()
    with torch.no_grad():
        trainer.model.head.linear.bias.fill_(float("nan"))
    trainer.run_epoch()
    with pytest.raises(train.TrainingDiverged, match="diverged at epoch 2"):
        trainer.run_epoch()
