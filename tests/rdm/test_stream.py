"""Scoring at scale: the subjects streamed one at a time equal per-subject scipy, condensed and memory-mapped
inputs, threads (rdm.stream through rdm.compare and rdm.noise_ceiling)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import scipy_rho

from siamrdm.rdm import upper_tri
from siamrdm.rdm.compare import score_condensed, score_rdm
from siamrdm.rdm.noise_ceiling import NoiseCeiling, noise_ceilings
from siamrdm.rdm.submission import score_submission
from siamrdm.rdm.transform import COMPARISON_METHODS


def _old_ceilings(rdms: np.ndarray) -> tuple[float, float]:
    """The noise ceilings as the formula had them before subjects were streamed: square RDMs, the grand mean
    over all RDMs, the mean of the others as (sum over subjects - subject) / (S - 1) averaged over K, each
    comparison by scipy's spearmanr."""
    stack = rdms.reshape(len(rdms), -1, *rdms.shape[-2:])  # (S, K, N, N)
    grand = stack.reshape(-1, *rdms.shape[-2:]).mean(axis=0)
    total = stack.sum(axis=0)
    upper, lower = [], []
    for subject in stack:
        others = ((total - subject) / (len(stack) - 1)).mean(axis=0)
        upper.append(np.mean([scipy_rho(grand, r) for r in subject]) ** 2)
        lower.append(np.mean([scipy_rho(others, r) for r in subject]) ** 2)
    return float(np.mean(upper)), float(np.mean(lower))


def _bounds(ceiling: NoiseCeiling) -> tuple[float, float]:
    """(upper, lower): what `score_condensed` gives beside its score."""
    return ceiling.upper, ceiling.lower


def _tied(rdms: np.ndarray, decimals: int) -> np.ndarray:
    """RDMs rounded so that many dissimilarities tie (the diagonal stays zero)."""
    return np.round(rdms, decimals)


@pytest.mark.parametrize("k", [None, 2])
def test_streamed_scores_and_ceilings_equal_per_subject_scipy_with_ties(make_rdms, k) -> None:
    model = _tied(make_rdms(40, seed=70), 2)
    targets = _tied(make_rdms(40, subjects=6, k=k, seed=71), 2)
    stack = targets.reshape(6, -1, 40, 40)
    rhos = np.array([np.mean([scipy_rho(model, r) for r in subject]) for subject in stack])
    score = score_rdm(model, targets)
    np.testing.assert_allclose(score.rho, rhos, rtol=0, atol=1e-12)
    assert score.r2 == pytest.approx(np.mean(rhos**2), abs=1e-12)
    upper, lower = _old_ceilings(targets)
    got = noise_ceilings(targets)
    assert got.upper == pytest.approx(upper, abs=1e-12) and got.lower == pytest.approx(lower, abs=1e-12)
    # score_submission: the same numbers from its one pass over the subjects.
    row = score_submission({"V4": model}, {"V4": targets}).targets["V4"]
    assert row.r2 == pytest.approx(score.r2, abs=1e-12)
    assert row.noise_ceiling == pytest.approx(upper, abs=1e-12)
    assert row.noise_ceiling_lower == pytest.approx(lower, abs=1e-12)


@pytest.mark.parametrize("method", COMPARISON_METHODS)
def test_condensed_entry_point_equals_square_path(make_rdms, method) -> None:
    model, targets = make_rdms(15, seed=72), _tied(make_rdms(15, subjects=4, seed=73), 3)
    score, ceilings = score_condensed(upper_tri(model), upper_tri(targets), method)
    square = score_rdm(model, targets, method)
    np.testing.assert_allclose(score.rho, square.rho, rtol=0, atol=1e-12)
    assert (score.r2, score.p, score.p_signed) == pytest.approx((square.r2, square.p, square.p_signed), abs=1e-12)
    np.testing.assert_allclose(ceilings, _bounds(noise_ceilings(targets, method)), rtol=0, atol=1e-12)
    condensed = noise_ceilings(upper_tri(targets), method, condensed=True)
    np.testing.assert_allclose(_bounds(condensed), ceilings, rtol=0, atol=0)
    # K RDMs per subject: (S, K, P).
    meg = make_rdms(15, subjects=3, k=2, seed=74)
    score, ceilings = score_condensed(upper_tri(model), upper_tri(meg), method)
    np.testing.assert_allclose(score.rho, score_rdm(model, meg, method).rho, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ceilings, _bounds(noise_ceilings(meg, method)), rtol=0, atol=1e-12)


def test_condensed_memmap_of_float32_equals_square_path(make_rdms, tmp_path) -> None:
    """A memory-mapped float32 .npy of shape (S, P), as large sets are stored: the same score and ceilings as
    the square float64 RDMs holding the same float32 values."""
    targets = _tied(make_rdms(30, subjects=5, seed=75), 2).astype(np.float32)
    model = make_rdms(30, seed=76)
    np.save(tmp_path / "subjects.npy", upper_tri(targets))
    mapped = np.load(tmp_path / "subjects.npy", mmap_mode="r", allow_pickle=False)
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.float32
    score, (upper, lower) = score_condensed(upper_tri(model).astype(np.float32), mapped)
    square = score_rdm(model.astype(np.float32).astype(np.float64), targets.astype(np.float64))
    np.testing.assert_allclose(score.rho, square.rho, rtol=0, atol=1e-12)
    expected = _old_ceilings(targets.astype(np.float64))
    assert upper == pytest.approx(expected[0], abs=1e-12) and lower == pytest.approx(expected[1], abs=1e-12)
    # One subject: a score, no ceiling.
    single, none = score_condensed(upper_tri(model), mapped[:1])
    assert none is None and single.rho[0] == pytest.approx(square.rho[0], abs=1e-12)


def test_condensed_bad_input_is_a_one_line_error(make_rdms) -> None:
    model, targets = upper_tri(make_rdms(10, seed=77)), upper_tri(make_rdms(10, subjects=3, seed=78))
    with_nan = targets.copy()
    with_nan[1, 7] = np.nan
    cases = [
        ((model, with_nan), r"^subject 2 of 3: its RDM contains NaN or inf$"),
        ((model, np.where(np.arange(3)[:, None] == 2, 0.5, targets)), r"^subject 3 of 3: .*constant upper triangle"),
        ((np.full_like(model, np.inf), targets), r"^model RDM contains NaN or inf$"),
        ((model[:-1], targets), r"model upper triangle of length 44 does not match the subjects' 45"),
        ((model[:-1], targets[:, :-1]), r"length 44 are not the upper triangle of a square RDM"),
        ((model, targets[0]), r"expected \(subjects, pairs\)"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            score_condensed(*args)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="at least 2 subjects"):
        noise_ceilings(targets[:1], condensed=True)
    # Square RDMs: NaN is refused too, never turned into a NaN score.
    square = make_rdms(10, subjects=3, seed=79)
    square[2, 0, 1] = square[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"^subject 3 of 3: its RDM contains NaN or inf$"):
        score_rdm(make_rdms(10, seed=80), square)
    # A diverged prediction (NaN in the model) scores NaN, as before: training counts it as the worst score.
    diverged = make_rdms(10, seed=80)
    diverged[0, 1] = diverged[1, 0] = np.nan
    assert np.all(np.isnan(score_rdm(diverged, make_rdms(10, subjects=3, seed=79)).rho))


@pytest.mark.parametrize("k", [None, 2])
def test_condensed_threads_give_the_same_numbers(make_rdms, k) -> None:
    model = upper_tri(make_rdms(20, seed=81))
    subjects = upper_tri(_tied(make_rdms(20, subjects=5, k=k, seed=82), 2))
    one = score_condensed(model, subjects)
    for threads in (2, 3):
        for ceiling in (True, False):
            score, ceilings = score_condensed(model, subjects, ceiling=ceiling, threads=threads)
            np.testing.assert_array_equal(score.rho, one[0].rho)
            assert ceilings == (one[1] if ceiling else None)
        assert _bounds(noise_ceilings(subjects, condensed=True, threads=threads)) == one[1]
    # An error in a thread reaches the caller as it would without threads.
    first = np.round(make_rdms(7, seed=28) * 8) / 8
    pair = upper_tri(np.stack([first, (2 - first) * (1 - np.eye(7))]))
    with pytest.raises(ValueError, match="mean RDM of all subjects has a constant upper triangle"):
        noise_ceilings(pair, condensed=True, threads=2)
    three = upper_tri(np.stack([first, (2 - first) * (1 - np.eye(7)), np.round(make_rdms(7, seed=29) * 8) / 8]))
    with pytest.raises(ValueError, match="other than subject 3 has a constant upper triangle"):
        noise_ceilings(three, condensed=True, threads=2)
    with pytest.raises(ValueError, match="threads must be a whole number of 1 or more, got 0"):
        score_condensed(model, subjects, threads=0)
