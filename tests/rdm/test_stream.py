"""Scoring at scale: the subjects streamed one at a time equal per-subject scipy, condensed and memory-mapped
inputs, threads (rdm.stream through rdm.compare and rdm.noise_ceiling)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import scipy_rho

from siamrdm.errors import DataError
from siamrdm.io.tables import SCORE_FIELDS
from siamrdm.rdm import upper_tri
from siamrdm.rdm.compare import score_rdm
from siamrdm.rdm.noise_ceiling import NoiseCeiling, noise_ceilings
from siamrdm.rdm.records import ScoreRecord, score_condensed, score_with_ceiling
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


def _bounds(ceiling: NoiseCeiling | ScoreRecord) -> tuple[float, float]:
    """(upper, lower) of a ceiling, or of the ceiling a score record holds."""
    if isinstance(ceiling, ScoreRecord):
        return ceiling.noise_ceiling, ceiling.noise_ceiling_lower
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
    record = score_condensed(upper_tri(model), upper_tri(targets), method)
    square = score_rdm(model, targets, method)
    np.testing.assert_allclose(record.rhos, square.rho, rtol=0, atol=1e-12)
    assert (record.r2, record.p, record.p_signed) == pytest.approx((square.r2, square.p, square.p_signed), abs=1e-12)
    np.testing.assert_allclose(_bounds(record), _bounds(noise_ceilings(targets, method)), rtol=0, atol=1e-12)
    condensed = noise_ceilings(upper_tri(targets), method, condensed=True)
    np.testing.assert_allclose(_bounds(condensed), _bounds(record), rtol=0, atol=0)
    assert record.rho_lower_ceiling == condensed.rho_lower and record.ceiling_source == "computed"
    # The record of the square path (score_with_ceiling) without its chance and pair fields, which need the
    # square RDMs.
    row, whole = record.to_dict(), score_with_ceiling(model, targets, method, permutations=0).to_dict()
    pairs = [name for name in row if name.startswith("pair_")]
    assert all(row.pop(name) is None for name in pairs)
    numbers = {name: value for name, value in whole.items() if isinstance(value, float | list) and name in row}
    assert {name: row[name] for name in numbers} == pytest.approx(numbers, abs=1e-12)
    assert {name: row[name] for name in row if name not in numbers} == \
        {name: whole[name] for name in row if name not in numbers}
    # K RDMs per subject: (S, K, P).
    meg = make_rdms(15, subjects=3, k=2, seed=74)
    record = score_condensed(upper_tri(model), upper_tri(meg), method)
    np.testing.assert_allclose(record.rhos, score_rdm(model, meg, method).rho, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_bounds(record), _bounds(noise_ceilings(meg, method)), rtol=0, atol=1e-12)


def test_condensed_scores_are_records_not_tuples(make_rdms) -> None:
    """score_condensed returns a ScoreRecord as every scoring function does (it returned `(score, (upper,
    lower))`): code that still unpacks the old tuple fails at once rather than reading the wrong values."""
    model, targets = upper_tri(make_rdms(12, seed=83)), upper_tri(make_rdms(12, subjects=4, seed=84))
    record = score_condensed(model, targets)
    assert isinstance(record, ScoreRecord)
    with pytest.raises(TypeError, match="cannot unpack non-iterable ScoreRecord"):
        score, ceilings = record
    with pytest.raises(TypeError, match="not subscriptable"):
        record[0]
    row = record.to_dict()
    assert list(row) == list(SCORE_FIELDS) and row["rhos"] == record.rhos
    assert list(record.to_frame().columns) == list(SCORE_FIELDS)
    # Without a ceiling (asked for none, or one subject): r2 alone, nothing in NaN.
    for alone in (score_condensed(model, targets, ceiling=False), score_condensed(model, targets[:1])):
        assert alone.noise_ceiling is alone.pct_nc is alone.ceiling_source is None
        assert alone.r2 > 0 and json.loads(json.dumps(alone.to_dict(), allow_nan=False)) == alone.to_dict()
    assert score_condensed(model, targets[:1]).p is None  # one subject: no t-test (None, not NaN)


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
    with pytest.raises(DataError, match=r"^target_rdms: contains NaN or inf$"):
        score_rdm(make_rdms(10, seed=80), square)
    # NaN in the model is refused too (the public API never returns a NaN score; training ranks on the device).
    diverged = make_rdms(10, seed=80)
    diverged[0, 1] = diverged[1, 0] = np.nan
    with pytest.raises(DataError, match=r"^model_rdm: contains NaN or inf$"):
        score_rdm(diverged, make_rdms(10, subjects=3, seed=79))


@pytest.mark.parametrize("k", [None, 2])
def test_condensed_threads_give_the_same_numbers(make_rdms, k) -> None:
    model = upper_tri(make_rdms(20, seed=81))
    subjects = upper_tri(_tied(make_rdms(20, subjects=5, k=k, seed=82), 2))
    one = score_condensed(model, subjects)
    for threads in (2, 3):
        for ceiling in (True, False):
            record = score_condensed(model, subjects, ceiling=ceiling, threads=threads)
            assert record.rhos == one.rhos
            assert _bounds(record) == (_bounds(one) if ceiling else (None, None))
        assert _bounds(noise_ceilings(subjects, condensed=True, threads=threads)) == _bounds(one)
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
