"""Layer-RDM and NNLS baselines: exact stage RDMs in bounded memory, NNLS on known weights, train-only selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from siamrdm.errors import DataError
from siamrdm.model import baselines
from siamrdm.model.backbones import create_body, images_to_tensor
from siamrdm.rdm import rdm_from_features, upper_tri
from siamrdm.rdm.compare import score_rdm


def random_rdms(n: int, names: list[str], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rdm_from_features(rng.normal(size=(n, 6))) for name in names}


def subjects_like(rdm: np.ndarray, subjects: int, noise: float, seed: int) -> np.ndarray:
    """Subject RDMs that are `rdm` plus symmetric noise."""
    rng = np.random.default_rng(seed)
    n = len(rdm)
    out = np.empty((subjects, n, n))
    for s in range(subjects):
        e = rng.normal(scale=noise, size=(n, n))
        out[s] = rdm + (e + e.T) / 2
        np.fill_diagonal(out[s], 0.0)
    return out


# --------------------------------------------------------------------------- NNLS


def test_nnls_recovers_known_nonnegative_weights():
    stages = ["a", "b", "c", "d"]
    train = random_rdms(30, stages, seed=1)
    truth = {"a": 0.7, "b": 0.0, "c": 1.3, "d": 0.2}
    target = 0.5 + sum(w * train[s] for s, w in truth.items())
    np.fill_diagonal(target, 0.0)
    fit = baselines.fit_nnls(train, target, rank=False)
    for stage, weight in truth.items():
        assert fit.weights[stage] == pytest.approx(weight, abs=1e-8)
    assert fit.intercept == pytest.approx(0.5, abs=1e-8)
    assert fit.residual < 1e-8
    # Applied to other images, the fitted sum is the true sum there.
    test = random_rdms(25, stages, seed=2)
    expected = 0.5 + sum(w * test[s] for s, w in truth.items())
    np.testing.assert_allclose(upper_tri(baselines.apply_nnls(fit, test)), upper_tri(expected), atol=1e-8)


def test_nnls_weights_stay_nonnegative_when_a_layer_anticorrelates():
    stages = ["a", "b", "c"]
    train = random_rdms(30, stages, seed=3)
    target = 1.0 * train["a"] - 0.8 * train["b"] + 0.3 * train["c"]
    fit = baselines.fit_nnls(train, target, rank=False)
    assert all(w >= 0 for w in fit.weights.values())
    assert fit.weights["b"] == 0.0
    assert fit.weights["a"] > fit.weights["c"] > 0


def test_nnls_rank_default_fits_ranks_and_accepts_subject_stacks():
    stages = ["a", "b"]
    train = random_rdms(30, stages, seed=4)
    target = subjects_like(np.exp(3 * train["b"]), subjects=4, noise=0.01, seed=5)  # monotone in layer b
    fit = baselines.fit_nnls(train, target)
    assert fit.rank and fit.weights["b"] > 10 * fit.weights["a"]
    predicted = baselines.apply_nnls(fit, train)
    assert score_rdm(predicted, target).rho.mean() > 0.9


def test_nnls_never_returns_a_constant_rdm():
    train = random_rdms(20, ["a", "b"], seed=6)
    fit = baselines.fit_nnls(train, 2.0 - train["a"] - train["b"], rank=False)  # every layer anticorrelates
    assert fit.notes
    assert np.ptp(upper_tri(baselines.apply_nnls(fit, train))) > 0


def test_nnls_rejects_mismatched_sizes():
    with pytest.raises(DataError, match="target is 20 x 20"):
        baselines.fit_nnls(random_rdms(15, ["a"], seed=0), random_rdms(20, ["t"], seed=0)["t"])
    fit = baselines.fit_nnls(random_rdms(15, ["a", "b"], seed=0), random_rdms(15, ["t"], seed=1)["t"])
    with pytest.raises(DataError, match="lack the fitted stage"):
        baselines.apply_nnls(fit, random_rdms(15, ["a"], seed=2))


# --------------------------------------------------------------------------- best layer


def test_best_layer_is_chosen_on_training_data_only():
    """Train subjects follow layer 'early', test subjects follow layer 'late': the choice must be 'early'."""
    stages = ["early", "middle", "late"]
    train_rdms, test_rdms = random_rdms(24, stages, seed=7), random_rdms(30, stages, seed=8)
    train_subjects = subjects_like(train_rdms["early"], subjects=5, noise=0.05, seed=9)
    test_subjects = subjects_like(test_rdms["late"], subjects=5, noise=0.05, seed=10)
    assert baselines.select_best_layer(train_rdms, train_subjects) == "early"
    # The held-out images would have picked another stage: the choice did not look at them.
    test_scores = baselines.layer_scores(test_rdms, test_subjects)
    assert max(test_scores, key=lambda s: test_scores[s].r2) == "late"


# --------------------------------------------------------------------------- layer RDMs


def test_layer_rdms_equal_direct_computation_with_memory_maps():
    """Batches of 3, a budget that spills the big stages to disk: the same RDMs as all features at once."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(40 + 3 * k, 50, 3), dtype=np.uint8) for k in range(8)]
    body = create_body("efficientnet_lite0", "random", stage="head")
    rdms = baselines.layer_rdms(images, image_size=64, batch_size=3, progress=False, memory_mb=0.05, body=body)
    assert list(rdms) == list(body.stages)
    with torch.no_grad():
        outputs = body.eval().stage_outputs(images_to_tensor(images, 64))
    for stage, out in outputs.items():
        assert rdms[stage].shape == (8, 8)
        np.testing.assert_allclose(rdms[stage], rdm_from_features(out.numpy()), atol=1e-6)
        np.testing.assert_array_equal(np.diag(rdms[stage]), 0.0)
        np.testing.assert_array_equal(rdms[stage], rdms[stage].T)


def test_layer_rdms_need_three_images():
    with pytest.raises(DataError, match="at least 3 images"):
        baselines.layer_rdms([np.zeros((8, 8, 3), np.uint8)] * 2, progress=False)
