"""The Algonauts 2019 metric: Spearman rho^2 per subject, worked by hand and against scipy, K-averaging, and
its t-test p-values (rdm.compare)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from helpers import scipy_rho
from scipy import stats

from siamrdm.errors import ConfigError, DataError
from siamrdm.rdm import square_rdm
from siamrdm.rdm.compare import _t_test_p, compare_rdms, official_p, score_rdm, signed_p
from siamrdm.rdm.records import score_with_ceiling

# Upper triangles (6 entries each) of 4 x 4 RDMs whose ranks are chosen so that Spearman's rho is easy by
# hand: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) with n = 6, so the denominator is 210.
MODEL = [0.10, 0.20, 0.35, 0.40, 0.80, 0.90]  # ranks 1 2 3 4 5 6
SAME = [0.05, 0.30, 0.31, 0.50, 0.60, 0.95]  # ranks 1 2 3 4 5 6: sum d^2 = 0  -> rho = 1
SWAP = [0.30, 0.25, 0.50, 0.60, 0.61, 0.70]  # ranks 2 1 3 4 5 6: sum d^2 = 2  -> rho = 1 - 12/210 = 33/35
SHUFFLED = [0.3, 0.1, 0.2, 0.6, 0.4, 0.5]  # ranks 3 1 2 6 4 5: sum d^2 = 12 -> rho = 1 - 72/210 = 23/35
REVERSED = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]  # ranks 6 5 4 3 2 1: rho = -1


def _rdm(upper: list[float]) -> np.ndarray:
    return square_rdm(np.array(upper), 4)


def _stack(*uppers: list[float]) -> np.ndarray:
    return np.stack([_rdm(u) for u in uppers])



def test_score_worked_by_hand() -> None:
    score = score_rdm(_rdm(MODEL), _stack(SAME, SWAP, SHUFFLED))
    np.testing.assert_allclose(score.rho, [1, 33 / 35, 23 / 35], rtol=0, atol=1e-12)
    r2 = np.array([1, (33 / 35) ** 2, (23 / 35) ** 2])
    assert score.r2 == pytest.approx((1225 + 1089 + 529) / (3 * 1225), abs=1e-12)  # = 2843 / 3675
    # p: one-sample t-test of the rho^2 against 0; with 2 degrees of freedom p = 1 - t / sqrt(t^2 + 2).
    t = r2.mean() / (r2.std(ddof=1) / math.sqrt(3))
    assert score.p == pytest.approx(1 - t / math.sqrt(t**2 + 2), rel=1e-9)
    assert score.p == pytest.approx(stats.ttest_1samp(r2, 0).pvalue, rel=1e-9)
    # p_signed: the same t-test on the signed rhos, two-sided.
    rho = np.array([1, 33 / 35, 23 / 35])
    t_signed = rho.mean() / (rho.std(ddof=1) / math.sqrt(3))
    assert score.p_signed == pytest.approx(1 - t_signed / math.sqrt(t_signed**2 + 2), rel=1e-9)
    assert signed_p(rho) == pytest.approx(score.p_signed, rel=1e-12)
    assert official_p(rho) == pytest.approx(score.p, rel=1e-12)


def test_negative_correlation_counts_squared() -> None:
    score = score_rdm(_rdm(MODEL), _stack(REVERSED, SWAP))
    np.testing.assert_allclose(score.rho, [-1, 33 / 35], rtol=0, atol=1e-12)
    assert score.r2 == pytest.approx((1 + (33 / 35) ** 2) / 2, abs=1e-12)
    # Opposite signs: the signed test sees no consistent correlation, the official one cannot tell.
    assert score.p_signed == pytest.approx(stats.ttest_1samp([-1, 33 / 35], 0).pvalue, rel=1e-9)
    assert score.p_signed > 0.9 and score.p < 0.1


def test_t_test_p_is_scipys_ttest_1samp() -> None:
    """The official p comes from scipy.special's t CDF (scipy.stats is slow to import): it equals
    scipy.stats.ttest_1samp's p for 2 to 100 subjects, and for identical values (p 0, or NaN when all are 0)."""
    rng = np.random.default_rng(7)
    for n in (2, 3, 15, 100):
        for _ in range(50):
            values = rng.normal(rng.normal(), rng.uniform(0.01, 3), n)
            assert _t_test_p(values) == pytest.approx(stats.ttest_1samp(values, 0).pvalue, rel=1e-12)
    with warnings.catch_warnings():  # scipy warns of precision loss on identical values
        warnings.simplefilter("ignore", RuntimeWarning)
        for values in ([0.3] * 5, [-0.2] * 3, [0.1, -0.1]):
            assert _t_test_p(np.array(values)) == pytest.approx(stats.ttest_1samp(values, 0).pvalue,
                                                                       rel=1e-12, abs=1e-300)
    assert math.isnan(_t_test_p(np.zeros(4)))


def test_single_subject_has_no_p() -> None:
    for target in (_rdm(SWAP), _stack(SWAP)):
        score = score_rdm(_rdm(MODEL), target)
        assert score.r2 == pytest.approx((33 / 35) ** 2, abs=1e-12)
        assert math.isnan(score.p) and math.isnan(score.p_signed)


def test_score_matches_scipy_with_ties(make_rdms) -> None:
    model = np.round(make_rdms(12, seed=20), 1)  # coarse values: many ties
    targets = np.round(make_rdms(12, subjects=5, seed=21), 2)
    rhos = np.array([scipy_rho(model, t) for t in targets])
    score = score_rdm(model, targets)
    np.testing.assert_allclose(score.rho, rhos, rtol=0, atol=1e-12)
    assert score.r2 == pytest.approx(np.mean(rhos**2), abs=1e-12)
    assert score.p == pytest.approx(stats.ttest_1samp(rhos**2, 0).pvalue, rel=1e-9)


def test_meg_k_rhos_averaged_before_squaring() -> None:
    # Subject 1's two RDMs correlate +1 and -1 with the model, subject 2's +1 and 33/35.
    targets = np.stack([_stack(SAME, REVERSED), _stack(SAME, SWAP)])
    assert targets.shape == (2, 2, 4, 4)
    score = score_rdm(_rdm(MODEL), targets)
    np.testing.assert_allclose(score.rho, [0, 34 / 35], rtol=0, atol=1e-12)
    averaged_first = (0**2 + (34 / 35) ** 2) / 2
    squared_first = ((1 + 1) / 2 + (1 + (33 / 35) ** 2) / 2) / 2
    assert abs(averaged_first - squared_first) > 0.4
    assert score.r2 == pytest.approx(averaged_first, abs=1e-12)
    assert score.p == pytest.approx(stats.ttest_1samp(score.rho**2, 0).pvalue, rel=1e-9)


def test_meg_k_against_scipy(make_rdms) -> None:
    model = make_rdms(9, seed=22)
    targets = make_rdms(9, subjects=4, k=2, seed=23)
    rhos = np.array([[scipy_rho(model, t) for t in subject] for subject in targets])
    score = score_rdm(model, targets)
    np.testing.assert_allclose(score.rho, rhos.mean(axis=1), rtol=0, atol=1e-12)
    assert score.r2 == pytest.approx(np.mean(rhos.mean(axis=1) ** 2), abs=1e-12)


def _bad_inputs(rdm: np.ndarray, subjects: np.ndarray) -> dict[str, tuple]:
    """(model, target, method, error type, message) for bad input to the public scoring functions."""
    nan, asym, diagonal, empty = rdm.copy(), rdm.copy(), rdm.copy(), subjects[:0]
    nan[0, 1] = nan[1, 0] = np.nan
    asym[0, 1] += 1
    diagonal[0, 0] = 1
    inf_target = subjects.copy()
    inf_target[1, 0, 1] = inf_target[1, 1, 0] = np.inf
    return {
        "NaN model": (nan, subjects, "spearman", DataError, r"^model_rdm: contains NaN or inf$"),
        "inf target": (rdm, inf_target, "spearman", DataError, r"^target_rdms: contains NaN or inf$"),
        "1-d model": (rdm[0], subjects, "spearman", DataError, r"^model_rdm: shape \(6,\) is not"),
        "stacked model": (rdm[None], subjects, "spearman", DataError, r"^model_rdm: shape \(1, 6, 6\) is not one"),
        "non-square model": (rdm[:, :5], subjects, "spearman", DataError, "^model_rdm: RDMs are not square"),
        "1 x 1 model": (np.zeros((1, 1)), subjects, "spearman", DataError, "^model_rdm: RDMs need at least 3"),
        "2 x 2 model": (np.array([[0, 1.0], [1, 0]]), subjects, "spearman", DataError, "^model_rdm: .*at least 3"),
        "fewer images": (rdm[:5, :5], subjects, "spearman", DataError, "^model_rdm: 5 x 5 images, but target_rdms"),
        "asymmetric model": (asym, subjects, "spearman", DataError, "^model_rdm: RDMs are not symmetric"),
        "diagonal model": (diagonal, subjects, "spearman", DataError, "^model_rdm: RDMs have a non-zero diagonal"),
        "asymmetric target": (rdm, subjects + np.triu(np.ones((6, 6))), "spearman", DataError,
                              "^target_rdms: RDMs are not symmetric"),
        "no subject": (rdm, empty, "spearman", DataError, r"^target_rdms: holds no RDM \(shape \(0, 6, 6\)\)$"),
        "text model": ("abc", subjects, "spearman", DataError, "^model_rdm: not a numeric array"),
        "None target": (rdm, None, "spearman", DataError, "^target_rdms: not a numeric array"),
        "unknown method": (rdm, subjects, "pearson", ConfigError, "^method: unknown comparison method 'pearson'"),
    }


BAD = list(_bad_inputs(np.zeros((6, 6)), np.zeros((4, 6, 6))))


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("score", [compare_rdms, score_rdm, score_with_ceiling])
def test_public_scoring_refuses_bad_input_in_one_line(make_rdms, score, case) -> None:
    """Bad input to the public API is what the command line makes of a bad file: a one-line DataError (or a
    ConfigError for a setting) naming the argument, never a numpy traceback or a NaN score."""
    model, target, method, error, message = _bad_inputs(make_rdms(6, seed=1), make_rdms(6, subjects=4, seed=2))[case]
    with pytest.raises(error, match=message) as info:
        score(model, target, method)
    assert "\n" not in str(info.value)


def test_public_scoring_takes_lists_ints_float32_and_tensors(make_rdms) -> None:
    """Array-likes score as the float64 arrays they hold: the same values (a CPU torch tensor included)."""
    torch = pytest.importorskip("torch")
    model, subjects = make_rdms(6, seed=1), make_rdms(6, subjects=4, seed=2)
    expected = score_with_ceiling(model, subjects)
    for target in (subjects.tolist(), torch.tensor(subjects), subjects.astype(np.float32)):
        assert score_with_ceiling(torch.tensor(model), target).to_dict() == pytest.approx(expected.to_dict())
    counts = np.rint(subjects * 100).astype(np.int64)
    assert np.array_equal(compare_rdms(model, counts), compare_rdms(model, counts.astype(np.float64)))
