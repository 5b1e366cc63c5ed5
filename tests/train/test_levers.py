"""The levers against learning one study's quirks (issue 23): what each changes in training, on the real 92 set.

per_image 'remove' takes the per-image part out of what the head learns, shrinkage scales it toward the prior,
head_average keeps a moving average of the head's weights, set_weights 'reliability' lets a noisy set pull less.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, fast_config, run_cli
from test_generalisation import scrambled

from siamrdm import train
from siamrdm.io.datasets import BrainDataset
from siamrdm.rdm.parts import per_image_fit
from siamrdm.train.fullbatch import FullBatchStep, set_shares
from siamrdm.train.selection import ensemble_curves, validation_curves


@pytest.fixture(scope="module")
def small(dataset92: BrainDataset) -> BrainDataset:
    return train.subset(dataset92, np.arange(12), "92-twelve")


def lever_config(**overrides) -> train.TrainConfig:
    return fast_config(**{"targets": ("EVC",), "prior": "layer", **overrides})


def head_targets(config: train.TrainConfig, dataset: BrainDataset) -> np.ndarray:
    return FullBatchStep(config, [dataset]).train_sets[0].targets[:, 0].double().numpy()


def test_per_image_removal_leaves_only_what_tells_pairs_apart(small: BrainDataset) -> None:
    kept = head_targets(lever_config(), small)
    removed = head_targets(lever_config(per_image="remove"), small)
    effects, _ = per_image_fit(removed, len(small))
    assert np.abs(effects).max() < 1e-5  # nothing left of the a_i + a_j form
    assert removed.mean() == pytest.approx(kept.mean(), abs=1e-6)  # the level is kept
    difference = kept - removed  # what was taken out is exactly of that form
    _, fitted = per_image_fit(difference, len(small))
    np.testing.assert_allclose(difference, fitted, atol=1e-5)
    assert np.abs(difference).max() > 1e-3  # and there was something to take out


def test_shrinkage_trains_the_head_on_part_of_the_residual(small: BrainDataset) -> None:
    kept = head_targets(lever_config(), small)
    np.testing.assert_allclose(head_targets(lever_config(shrinkage=0.5), small), 0.5 * kept, atol=1e-6)
    both = head_targets(lever_config(shrinkage=0.25, per_image="remove"), small)
    np.testing.assert_allclose(both, 0.75 * head_targets(lever_config(per_image="remove"), small), atol=1e-6)


def head_weights(trainer: train.Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.head.parameters()]


def test_head_average_is_the_moving_average_of_the_stepped_weights(small: BrainDataset) -> None:
    config = lever_config(head_average=0.6, frozen_epochs=3)
    averaged = train.Trainer(config, [small], [small], progress=False)
    plain = train.Trainer(replace(config, head_average=None), [small], [small], progress=False)
    for _ in range(3):
        before = head_weights(averaged)
        averaged.run_epoch()
        plain.run_epoch()
        raw = averaged.stepper._raw_head
        for mean, old, new in zip(head_weights(averaged), before, raw, strict=True):
            torch.testing.assert_close(mean, 0.6 * old + 0.4 * new)
        # The optimiser steps the raw weights exactly as it steps those of a run without averaging.
        for new, reference in zip(raw, head_weights(plain), strict=True):
            torch.testing.assert_close(new, reference)
    assert any((m - r).abs().max() > 1e-6 for m, r in zip(head_weights(averaged), raw, strict=True))
    # Validation scores the averaged weights: the model that is kept and saved.
    predicted = averaged.stepper.last_pairs[small.name]
    assert not torch.allclose(predicted, plain.stepper.last_pairs[small.name])


def test_head_average_resumes_from_its_checkpoint(small: BrainDataset) -> None:
    config = lever_config(head_average=0.7, frozen_epochs=4)
    reference = train.Trainer(config, [small], progress=False)
    for _ in range(4):
        reference.run_epoch()
    first = train.Trainer(config, [small], progress=False)
    first.run_epoch(), first.run_epoch()
    state = first.state()
    resumed = train.Trainer(config, [small], progress=False)
    resumed.load_state(state)
    resumed.run_epoch(), resumed.run_epoch()
    for a, b in zip(head_weights(resumed), head_weights(reference), strict=True):
        torch.testing.assert_close(a, b)
    broken = {**state, "raw_head": None}
    with pytest.raises(train.ConfigError, match="resume: .*raw head weights"):
        train.Trainer(config, [small], progress=False).load_state(broken)


def test_reliability_weights_let_a_noisy_set_pull_less(dataset92: BrainDataset) -> None:
    reliable = train.subset(dataset92, np.arange(40), "reliable")
    noise = BrainDataset("noise", reliable.images, {t: scrambled(r) for t, r in reliable.targets.items()})
    config = lever_config(targets=("IT",))
    prepared = FullBatchStep(config, [reliable, noise]).train_sets
    assert set_shares([reliable, noise], prepared, config) == pytest.approx([0.5, 0.5])  # same pairs
    weighted = set_shares([reliable, noise], prepared, replace(config, set_weights="reliability"))
    assert sum(weighted) == pytest.approx(1) and weighted[0] > 0.8
    step = FullBatchStep(replace(config, set_weights="reliability"), [reliable, noise])
    assert step.set_shares == pytest.approx(weighted)
    assert set_shares([noise], prepared[1:], replace(config, set_weights="reliability")) == [1.0]  # alone: all of it
    one = BrainDataset("one", reliable.images, {"IT": reliable.targets["IT"][:1]})
    with pytest.raises(train.ConfigError, match="set_weights: image set one has one subject"):
        set_shares([reliable, one], prepared, replace(config, set_weights="reliability"))


def test_one_fit_scored_on_several_sets_gives_each_its_curve(dataset92: BrainDataset) -> None:
    """`ensemble_curves` scores one fit on several held-out sets; its first curve is the split's curve."""
    config = lever_config(frozen_epochs=2)
    fit_on, held, other = (train.subset(dataset92, np.arange(a, b), f"s{a}") for a, b in ((0, 12), (12, 20), (20, 26)))
    curves = ensemble_curves(config, [fit_on], [held, other], (0,))
    assert [len(c) for c in curves] == [3, 3] and [r["epoch"] for r in curves[1]] == [0, 1, 2]
    alone = validation_curves(config, {"x": (fit_on, held)}, (0,), progress=False)["x"]
    assert [r["rho_mean"] for r in curves[0]] == pytest.approx([r["rho_mean"] for r in alone])
    assert [r["rho_mean"] for r in curves[0]] != pytest.approx([r["rho_mean"] for r in curves[1]])


@pytest.mark.parametrize("overrides, message", [
    ({"shrinkage": 0.5, "prior": "none"}, "shrinkage: shrinks the head's correction toward a prior"),
    ({"shrinkage": 1.0}, "shrinkage: must be at least 0 and below 1"),
    ({"shrinkage": float("nan")}, "shrinkage: must be at least 0 and below 1"),
    ({"head_average": 1.0}, "head_average: a moving average's decay must be above 0 and below 1"),
    ({"per_image": "halve"}, "per_image: unknown choice 'halve'"),
    ({"set_weights": "subjects"}, "set_weights: unknown choice 'subjects'"),
])
def test_bad_lever_settings_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(train.ConfigError, match=message):
        train.check_config(lever_config(**overrides))


def test_levers_on_the_command_line(capsys, tmp_path: Path, data_root: Path, own_data: tuple[str, ...]) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "fit", "--data", data_root, "--targets", "EVC", "--sets", "92", "--image-size",
                           "64", "--epochs", "2", "--per-image", "remove", "--shrinkage", "0.3", "--head-average",
                           "0.8", "--set-weights", "reliability", "--out", out, "--quiet", "--device", "cpu")
    assert code == 0, err
    model = train.load_checkpoint(out / "model.pt")
    saved = train.config_from_dict(model["config"])
    assert (saved.per_image, saved.shrinkage, saved.head_average, saved.set_weights) == (
        "remove", 0.3, 0.8, "reliability")
    assert asdict(saved)["prior"] == "layer"
    for args, parts in [(["--shrinkage", "2"], ("--shrinkage", "below 1")),
                        (["--head-average", "slow"], ("--head-average", "'slow'")),
                        (["--per-image", "halve"], ("--per-image", "invalid choice"))]:
        code, _, err = run_cli(capsys, "fit", "--data", data_root, "--targets", "EVC", "--sets", "92",
                               "--out", tmp_path / "refused", *args)
        assert code == 2
        assert_one_line_error(err, *parts)
        assert not (tmp_path / "refused").exists()
    code, _, err = run_cli(capsys, "fit", *own_data, "--batch-images", "6", "--prior", "none", "--head-average", "0.9",
                           "--out", tmp_path / "mini")
    assert code == 2
    assert_one_line_error(err, "--head-average")
    assert not (tmp_path / "mini").exists()
