"""The baseline prior the head corrects, test-time augmentation, and epoch 0 in the challenge's curves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from siamrdm import train
from siamrdm.errors import DataError
from siamrdm.io.datasets import BrainDataset, load_algonauts_set
from siamrdm.io.images import ImageSet
from siamrdm.model import baselines, prior
from siamrdm.model.prior import PriorFit, fit_prior, prior_vector, stage_rdms
from siamrdm.rdm import upper_tri
from siamrdm.rdm.compare import score_rdm, spearman_rhos
from siamrdm.train import selection
from siamrdm.train.predict import RDMPredictor, fit_predictor


def prior_config(**overrides) -> train.TrainConfig:
    values = dict(backbone="alexnet", weights="random", image_size=128, augment=False, frozen_epochs=2,
                  unfrozen_epochs=0, device="cpu", targets=("IT",), prior="layer", lr=1e-2)
    values.update(overrides)
    return train.TrainConfig(**values)


@pytest.fixture(scope="module")
def sets(data_root: Path) -> tuple[BrainDataset, BrainDataset]:
    """12 images of the 92 set for training, 10 of the 118 set for validation, with IT RDMs."""
    set92 = load_algonauts_set(data_root, "92", ("IT",))
    set118 = load_algonauts_set(data_root, "118", ("IT",))
    return train.subset(set92, np.arange(12), "92-part"), train.subset(set118, np.arange(10), "118-part")


def test_fit_prior_layer_picks_the_stage_that_matches_the_subjects(make_rdms) -> None:
    subjects = make_rdms(15, subjects=4, seed=1)
    good = subjects.mean(axis=0)
    noise = make_rdms(15, seed=9)
    rdms = {"a": noise, "b": good}
    target = upper_tri(good) / good.max()
    fit = fit_prior("layer", [rdms], [subjects], [target])
    assert fit.weights == {"b": 1.0}
    assert fit.scale > 0
    # The prior's vector is a monotone map of the chosen stage: the same ranks, so the same Spearman scores.
    vector = prior_vector(fit, rdms)
    assert np.corrcoef(np.argsort(np.argsort(vector)), np.argsort(np.argsort(upper_tri(good))))[0, 1] > 0.999
    # And the linear map is least squares on the training target.
    slope, intercept = np.polyfit(prior_vector(PriorFit("layer", fit.weights, 1.0, 0.0), rdms), target, 1)
    assert (fit.scale, fit.intercept) == pytest.approx((slope, intercept))


def test_fit_prior_nnls_over_two_sets_and_unknown_kind(make_rdms) -> None:
    sets_rdms, subjects, targets = [], [], []
    for n, seed in ((12, 1), (14, 2)):
        subj = make_rdms(n, subjects=3, seed=seed)
        sets_rdms.append({"a": make_rdms(n, seed=seed + 10), "b": subj.mean(axis=0)})
        subjects.append(subj)
        targets.append(upper_tri(subj.mean(axis=0)))
    fit = fit_prior("nnls", sets_rdms, subjects, targets)
    assert fit.weights.get("b", 0) > fit.weights.get("a", 0)
    # baselines.fit_nnls with one set given as a list equals the single-set call.
    single = baselines.fit_nnls(sets_rdms[0], subjects[0])
    listed = baselines.fit_nnls([sets_rdms[0]], [subjects[0]])
    assert single.weights == pytest.approx(listed.weights) and single.intercept == pytest.approx(listed.intercept)
    with pytest.raises(DataError, match="unknown prior"):
        fit_prior("median", sets_rdms, subjects, targets)


def test_prior_alone_at_epoch_zero_is_the_layer_baseline(sets) -> None:
    """Before any step the model predicts exactly the prior: its validation score is the score of the stage RDM
    chosen on the training images (the `layers` baseline), and the head outputs are zero."""
    train_set, val_set = sets
    trainer = train.Trainer(prior_config(), [train_set], [val_set], progress=False)
    (stage,) = trainer.priors["IT"].weights
    assert stage == baselines.select_best_layer(stage_rdms(train_set.images, "alexnet", "random", 128),
                                                train_set.targets["IT"])
    row = trainer.validate_start()
    assert row["epoch"] == 0 and trainer.best_epoch == 0
    baseline = score_rdm(stage_rdms(val_set.images, "alexnet", "random", 128)[stage], val_set.targets["IT"])
    assert trainer.last_scores["118-part/IT"]["r2"] == pytest.approx(baseline.r2, rel=1e-9)
    # The training targets are the residuals of the prior.
    rescaled = train.prepare_set(train_set, ("IT",), trainer.config).targets[:, 0].double().numpy()
    residual = trainer.stepper.train_sets[0].targets[:, 0].double().numpy()
    prior = prior_vector(trainer.priors["IT"], stage_rdms(train_set.images, "alexnet", "random", 128))
    np.testing.assert_allclose(residual, rescaled - prior, atol=1e-6)


def test_fit_with_prior_keeps_epoch_zero_or_better_and_predicts_prior_plus_head(sets, tmp_path: Path) -> None:
    train_set, val_set = sets
    config = prior_config(frozen_epochs=3)
    predictor = fit_predictor(config, [train_set], [val_set], out_dir=tmp_path / "run", progress=False)
    history = train.load_checkpoint(tmp_path / "run" / "seed0" / "last.pt")["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    best = max(history, key=lambda row: row["val_pct_nc"])
    assert predictor.metrics["seed0"]["best_epoch"] == best["epoch"]
    # Saved and loaded: the same predictions, the prior kept.
    loaded = RDMPredictor.load(tmp_path / "run" / "model.pt", "cpu")
    assert loaded.priors["IT"] == predictor.priors["IT"]
    before = predictor.predict(val_set.images)["IT"]
    np.testing.assert_allclose(loaded.predict(val_set.images)["IT"], before, atol=1e-6)
    # With the head's output zeroed, the prediction is the prior alone: the stage RDM's ranks.
    with torch.no_grad():
        loaded.models[0].head.linear.weight.zero_()
        loaded.models[0].head.linear.bias.zero_()
    (stage,) = loaded.priors["IT"].weights
    stage_rdm = stage_rdms(val_set.images, "alexnet", "random", 128)[stage]
    rho = spearman_rhos(loaded.predict(val_set.images)["IT"], stage_rdm[None])
    assert rho[0] == pytest.approx(1.0)


def test_tta_averages_the_image_and_its_mirror(sets) -> None:
    train_set, _ = sets
    config = prior_config(prior="none", tta=True, frozen_epochs=1)
    result = train.fit(config, [train_set], progress=False)
    pixels = train.prepare_set(train_set, ("IT",), config).images
    plain, mirror = train.feature_views(result.model, pixels, replace(result.config, body_chunk=4, tta=True),
                                        torch.device("cpu"))
    both = train.predict_rdms(result.model, [plain, mirror])
    alone = [train.predict_rdms(result.model, [v]) for v in (plain, mirror)]
    np.testing.assert_allclose(both, (alone[0] + alone[1]) / 2, atol=1e-6)
    assert not np.allclose(alone[0], alone[1])  # the mirror is a different view
    predictor = RDMPredictor([result.model], config)
    np.testing.assert_allclose(predictor.predict(train_set.images)["IT"], both[0], atol=1e-6)


def test_stage_rdms_of_the_same_file_with_other_pixels_are_their_own(dataset92: BrainDataset) -> None:
    """The stage RDMs' cache is keyed by the pixels too (a file read whole and reduced differ), and a subset is
    still cut from its cached set."""
    images = ImageSet(dataset92.images.names[:6], dataset92.images.images[:6], dataset92.images.source)
    mirrored = ImageSet(images.names, [np.ascontiguousarray(im[:, ::-1]) for im in images.images], images.source)
    plain, flipped = stage_rdms(images, "alexnet", "random", 64), stage_rdms(mirrored, "alexnet", "random", 64)
    half = ImageSet(images.names[:3], images.images[:3], images.source)
    for stage, rdm in stage_rdms(half, "alexnet", "random", 64).items():
        np.testing.assert_array_equal(rdm, plain[stage][:3, :3])
    prior._CACHE.clear()
    fresh = stage_rdms(mirrored, "alexnet", "random", 64)
    for stage, rdm in flipped.items():
        np.testing.assert_allclose(rdm, fresh[stage], atol=1e-5)
        assert not np.allclose(rdm, plain[stage], atol=1e-5)


def test_prior_options_are_checked() -> None:
    with pytest.raises(train.ConfigError, match="prior: unknown prior 'median'"):
        train.check_config(prior_config(prior="median"))
    with pytest.raises(train.ConfigError, match="prior: the pairwise head ends in a ReLU"):
        train.check_config(prior_config(head="pairwise"))
    train.check_config(prior_config())


def fold(values, ses=None):
    """A fold's curve: rho_mean per epoch from 0, with its standard errors (0.01 unless given)."""
    ses = ses or [0.01] * len(values)
    return [{"epoch": e, "rho_mean": v, "rho_se": s} for e, (v, s) in enumerate(zip(values, ses, strict=True))]


def test_choose_epochs_can_pick_epoch_zero() -> None:
    """With a prior the curves start at epoch 0; when training never beats the prior beyond one standard error,
    0 epochs are chosen and the fit takes no step. Each set's folds choose for the model fitted on that set."""
    folds = {"92": [fold([0.25, 0.26, 0.30]), fold([0.25, 0.27, 0.31])],
             "118": [fold([0.0, 0.005, -0.01]), fold([-0.01, -0.002, -0.02])]}
    assert selection.choose_epochs(folds) == {"92": 2, "118": 0}  # the best validated epoch of each set's folds
    # all four folds: epoch 2 is best, and epochs 0 and 1 are more than one error below it
    assert selection.one_se_epoch(selection.fold_curve([c for curves in folds.values() for c in curves])) == 2
    assert replace(prior_config(), stop_epoch=0).stop_epoch == 0


def test_one_standard_error_rule_prefers_fewer_epochs() -> None:
    """A gain within the best epoch's standard error does not buy more epochs; a NaN or missing score is the
    worst; folds' errors add in quadrature."""
    assert selection.one_se_epoch(fold([0.10, 0.20, 0.21, 0.215], ses=[0.01, 0.01, 0.01, 0.02])) == 1
    assert selection.one_se_epoch(fold([0.10, 0.20, 0.21, 0.215], ses=[0.01, 0.01, 0.01, 0.001])) == 3
    merged = selection.fold_curve([fold([0.1, float("nan")], ses=[0.03, 0.03]), fold([0.3, 0.5], ses=[0.04, 0.04])])
    assert merged[0]["rho_mean"] == pytest.approx(0.2) and merged[0]["rho_se"] == pytest.approx(0.025)
    assert merged[1]["rho_mean"] == -np.inf
    assert selection.one_se_epoch(merged) == 0
    one_subject = [{"epoch": 0, "rho_mean": 0.1, "rho_se": None}, {"epoch": 1, "rho_mean": 0.2, "rho_se": None}]
    assert selection.one_se_epoch(selection.fold_curve([one_subject])) == 1  # no error known: the best epoch


def test_prior_with_the_body_unfrozen(sets) -> None:
    """The paper preset's path: frozen then unfrozen epochs correct the prior; the prior stays that of the
    pretrained body (it is not retrained), so predictions are the fixed prior plus the trained head."""
    train_set, val_set = sets
    config = prior_config(frozen_epochs=1, unfrozen_epochs=2, body_chunk=6)
    result = train.fit(config, [train_set], [val_set], progress=False)
    assert [row["phase"] for row in result.history] == ["start", "frozen", "unfrozen", "unfrozen"]
    assert all(np.isfinite(row["loss"]) for row in result.history[1:])
    predictor = RDMPredictor([result.model], config, priors=result.priors)
    rdm = predictor.predict(val_set.images)["IT"]
    assert rdm.shape == (10, 10) and np.allclose(rdm, rdm.T) and np.all(np.isfinite(rdm))


