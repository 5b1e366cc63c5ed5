"""The two parts of an RDM (rdm/parts.py) and the pair-structure fields of every score record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from siamrdm.rdm.core import square_rdm, upper_tri
from siamrdm.rdm.parts import pair_structure, per_image_fit, per_image_share
from siamrdm.rdm.records import score_with_ceiling
from siamrdm.rdm.reliability import reliability_line, target_reliability
from siamrdm.rdm.submission import score_submission


def _per_image(a: np.ndarray) -> np.ndarray:
    rdm = a[:, None] + a[None, :]
    np.fill_diagonal(rdm, 0)
    return rdm


def test_a_per_image_rdm_has_no_pair_structure_and_the_fit_recovers_it() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=9) + 5
    rdm = _per_image(a)
    effects, fitted = per_image_fit(upper_tri(rdm), 9)
    np.testing.assert_allclose(fitted, upper_tri(rdm), atol=1e-9)
    np.testing.assert_allclose(effects - effects.mean(), a - a.mean(), atol=1e-9)
    assert np.abs(pair_structure(rdm)).max() < 1e-9
    assert per_image_share(upper_tri(rdm), 9) == pytest.approx(1.0)


def test_pair_structure_keeps_the_pairs_and_the_shape(make_rdms) -> None:
    stack = make_rdms(8, subjects=3, k=2, seed=3)
    parts = pair_structure(stack)
    assert parts.shape == stack.shape
    np.testing.assert_allclose(parts[1, 0], pair_structure(stack[1, 0]))
    for rdm in parts.reshape(-1, 8, 8):
        np.testing.assert_allclose(rdm, rdm.T)
        assert np.all(np.diag(rdm) == 0)
        assert np.abs(per_image_fit(upper_tri(rdm), 8)[0]).max() < 1e-9  # nothing per-image is left


def test_scores_separate_the_pair_structure_from_the_per_image_part(make_rdms) -> None:
    """A model with the subjects' pair structure and an unrelated per-image part: its pair rho is near 1 though
    its whole-RDM rho is low; a model of per-image effects alone has none of the subjects' pair structure."""
    n, rng = 30, np.random.default_rng(5)
    pairs = pair_structure(make_rdms(n, seed=6))
    subjects = np.stack([pairs + 0.05 * pair_structure(make_rdms(n, seed=10 + s)) + _per_image(rng.normal(size=n))
                         for s in range(6)])
    subjects -= subjects.min(axis=(1, 2), keepdims=True)
    for s in subjects:
        np.fill_diagonal(s, 0)
    model = pairs + 3 * _per_image(rng.normal(size=n))
    model -= model.min()
    np.fill_diagonal(model, 0)
    row = score_with_ceiling(model, subjects, permutations=200)
    assert row.pair_rho_mean > 0.9 > row.rho_mean + 0.3
    assert row.pair_rho_ci_low <= row.pair_rho_mean <= row.pair_rho_ci_high
    assert row.pair_p_perm == pytest.approx(1 / 201) and len(row.pair_rhos) == 6
    per_image_only = _per_image(rng.normal(size=n) + 4)
    row = score_with_ceiling(per_image_only, subjects, permutations=200)
    assert abs(row.pair_rho_mean) < 0.1 and row.pair_p_perm > 0.05
    result = score_submission({"V4": model}, {"V4": subjects}, permutations=50)
    assert result.targets["V4"].pair_rho_mean > 0.9 and result.targets["V4"].pair_p_perm is not None
    json.dumps(result.to_dict(), allow_nan=False)


def test_three_images_have_no_pair_score(make_rdms) -> None:
    """Three held-out images (the smallest split) are fitted exactly by their per-image effects: every subject's
    pair structure is flat, so there is no pair score (None, null in JSON), not a pair rho of 0 +- 0 with p 1."""
    row = score_with_ceiling(make_rdms(3, seed=1), make_rdms(3, subjects=4, seed=2), permutations=10)
    assert row.rho_mean is not None and row.pair_rho_mean is None and row.pair_rhos is None
    assert row.pair_p_perm is None and json.loads(json.dumps(row.to_dict(), allow_nan=False))["pair_rho_mean"] is None
    assert score_with_ceiling(make_rdms(4, seed=1), make_rdms(4, subjects=4, seed=2)).pair_rho_mean is not None


def test_reliability_reports_both_parts(fmri92) -> None:
    summary = target_reliability(fmri92["IT_RDMs"], splits=4)
    assert 0.5 < summary["pair_split_half"] < 1  # the 92 set's IT pair structure is reliable across subject halves
    assert "pair structure split-half" in reliability_line("92/IT", summary)


def test_square_rdm_round_trip_of_the_parts(make_rdms) -> None:
    rdm = make_rdms(6, seed=2)
    _, fitted = per_image_fit(upper_tri(rdm), 6)
    np.testing.assert_allclose(square_rdm(fitted, 6) + pair_structure(rdm) * np.abs(upper_tri(rdm)).max(), rdm,
                               atol=1e-12)
