"""Feature-reweighted RSA (model.frrsa): exact normal equations without the pairs matrix, the non-negative ridge
solver, inner folds over images, and a planted problem whose held-out prediction reaches the planted rho."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls
from scipy.stats import spearmanr

from siamrdm.errors import DataError
from siamrdm.model import frrsa
from siamrdm.rdm import rdm_from_features
from siamrdm.rdm.core import square_rdm, upper_tri


def _pairs(x: np.ndarray, predictor: str) -> np.ndarray:
    i, j = np.triu_indices(len(x), 1)
    return (x[i] - x[j]) ** 2 if predictor == "differences" else x[i] * x[j]


@pytest.mark.parametrize("predictor", frrsa.PREDICTORS)
def test_normal_equations_equal_the_pairs_matrix_ones(predictor: str):
    rng = np.random.default_rng(0)
    x, y = rng.normal(1.0, 2.0, size=(13, 6)), rng.random(13 * 12 // 2)
    z, t = _pairs(x, predictor), (y if predictor == "differences" else -y)
    eq = frrsa.normal_equations(x, square_rdm(y, 13), predictor)
    np.testing.assert_allclose(eq.gram, z.T @ z, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(eq.moment, z.T @ t, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(eq.sums, z.sum(axis=0), rtol=1e-10, atol=1e-9)
    assert eq.target_sum == pytest.approx(t.sum()) and eq.pairs == len(t)


@pytest.mark.parametrize("predictor", frrsa.PREDICTORS)
def test_predicted_rdm_is_the_weighted_sum_over_each_pair(predictor: str):
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(9, 4)), rng.random(4)
    rdm = frrsa.predict_rdm(x, w, 0.5, predictor)
    sign = 1 if predictor == "differences" else -1
    np.testing.assert_allclose(upper_tri(rdm), sign * (0.5 + _pairs(x, predictor) @ w), atol=1e-12)
    assert np.all(np.diag(rdm) == 0) and np.array_equal(rdm, rdm.T)


def test_the_solver_is_non_negative_ridge_least_squares():
    """The same weights as scipy's NNLS on the pairs matrix, centred (free intercept), with the ridge rows below."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 30))
    w_true = np.where(rng.random(30) < 0.3, rng.random(30), 0.0)
    z = _pairs(x, "differences")
    y = z @ w_true + rng.normal(scale=2.0, size=len(z))
    eq = frrsa.normal_equations(x, square_rdm(y, 40))
    h, g = eq.centred()
    penalty = 0.01 * np.trace(h) / 30
    solved = frrsa.solve_nonnegative(h + penalty * np.eye(30), g)
    zc, yc = (z - z.mean(axis=0)) / np.sqrt(len(z)), (y - y.mean()) / np.sqrt(len(z))
    reference, _ = nnls(np.vstack([zc, np.sqrt(penalty) * np.eye(30)]), np.concatenate([yc, np.zeros(30)]))
    np.testing.assert_allclose(solved, reference, atol=1e-5)
    assert np.all(solved >= 0) and np.any(solved == 0)


@pytest.mark.parametrize("predictor", frrsa.PREDICTORS)
def test_planted_weights_reach_the_planted_rho_on_held_out_images(predictor: str):
    """An RDM made from known non-negative weights of 15 of 120 features (in stage 'a'; stage 'b' is noise), plus
    noise: fitted on 90 images, the held-out 40 images' predicted RDM correlates with their noisy RDM as well
    as the planted, noise-free one does, and the fit chose the stage that holds the planted features."""
    rng = np.random.default_rng(3)
    n = 130
    a, b = rng.normal(size=(n, 60)), rng.normal(size=(n, 60))
    w = np.zeros(60)
    w[:15] = rng.uniform(0.2, 1.0, 15)
    sign = 1 if predictor == "differences" else -1
    clean = sign * _pairs(a, predictor) @ w
    noisy = square_rdm(clean + rng.normal(scale=clean.std(), size=len(clean)), n)
    clean = square_rdm(clean, n)
    train, test = np.arange(90), np.arange(90, n)
    fit = frrsa.fit_frrsa({"a": a[train], "b": b[train]}, noisy[np.ix_(train, train)], predictor)
    assert fit.label == "a" and fit.penalty in frrsa.PENALTIES
    assert set(fit.inner_rho) == {"a", "b", "all"} and fit.inner_rho["b"][fit.penalty] < 0.2
    predicted = frrsa.apply_frrsa(fit, {"a": a[test], "b": b[test]})
    held_out = upper_tri(noisy[np.ix_(test, test)])
    planted = spearmanr(upper_tri(clean[np.ix_(test, test)]), held_out)[0]
    reached = spearmanr(upper_tri(predicted), held_out)[0]
    assert planted > 0.5 and reached > planted - 0.03, (reached, planted)


def test_inner_folds_split_images_and_small_sets_are_refused():
    parts = frrsa.inner_folds(20, 3, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(20)) and all(len(p) >= 6 for p in parts)
    with pytest.raises(DataError, match="at least 9 training images"):
        frrsa.inner_folds(8, 3)
    # A small training set is fitted all the same: fewer inner folds, or none (a fixed choice), said in the notes.
    rng = np.random.default_rng(1)
    for n, note in ((8, "2 inner folds (8 training images)"), (5, "5 training images are too few")):
        features = {"a": rng.normal(size=(n, 4)), "b": rng.normal(size=(n, 3))}
        fit = frrsa.fit_frrsa(features, rdm_from_features(features["a"]))
        assert any(note in text for text in fit.notes), fit.notes
        assert np.isfinite(frrsa.apply_frrsa(fit, features)).all()
    assert fit.label == "all" and fit.penalty == frrsa.PENALTIES[len(frrsa.PENALTIES) // 2]
    x = np.random.default_rng(0).normal(size=(12, 3))
    target = square_rdm(np.ones(66), 12)
    target[0, 1] = target[1, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        frrsa.fit_frrsa({"a": x}, target)


def test_the_test_images_play_no_part_in_the_fit():
    """Fitting sees only training features and pairs: the same fit whatever the held-out images look like."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 8))
    target = upper_tri(square_rdm(_pairs(x, "differences") @ rng.random(8), 30))
    fit = frrsa.fit_frrsa({"s": x}, target)
    again = frrsa.fit_frrsa({"s": x}, target)
    np.testing.assert_array_equal(fit.weights, again.weights)
    assert fit.summary()["nonzero_weights"] == np.count_nonzero(fit.weights) and fit.summary()["stages"] == "s"
