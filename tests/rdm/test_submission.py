"""The challenge's submission format: every key scored, the overall score, missing keys, bad inputs
(rdm.submission)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from siamrdm.io import tables
from siamrdm.rdm import square_rdm, upper_tri
from siamrdm.rdm.compare import score_rdm
from siamrdm.rdm.core import group_average
from siamrdm.rdm.inference import DEFAULT_PERMUTATIONS, permutation_p
from siamrdm.rdm.noise_ceiling import noise_ceilings
from siamrdm.rdm.submission import score_submission


def test_score_submission_structure_and_overall(make_rdms) -> None:
    targets = {"EVC_RDMs": make_rdms(10, subjects=4, seed=30), "IT_RDMs": make_rdms(10, subjects=4, seed=31)}
    submission = {
        "EVC_RDMs": make_rdms(10, seed=32),
        "IT_RDMs": group_average(targets["IT_RDMs"]),
        "extra_RDMs": make_rdms(10, seed=33),  # not in the targets: ignored
    }
    scored = score_submission(submission, targets)
    result = scored.to_dict()  # the JSON object `siamrdm score --json` prints
    assert list(result) == ["EVC_RDMs", "IT_RDMs", "score"]  # complete: no "missing"
    assert list(scored.targets) == ["EVC_RDMs", "IT_RDMs"] and scored.missing == [] and scored.method == "spearman"
    assert result["score"] == {"r2": scored.r2, "pct_nc": scored.pct_nc}
    for key in ("EVC_RDMs", "IT_RDMs"):
        row = result[key]
        assert set(row) == {*tables.SCORE_FIELDS, "method"}  # the score record and the comparison method
        assert row == {**scored.targets[key].to_dict(), "method": "spearman"}
        assert row["ceiling_source"] == "computed" and row["method"] == "spearman"  # 10 images: no official ceiling
        assert row["noise_ceiling_lower"] == pytest.approx(noise_ceilings(targets[key]).lower)
        score = score_rdm(submission[key], targets[key])
        ceiling = noise_ceilings(targets[key]).upper
        assert row["r2"] == pytest.approx(score.r2) and row["p"] == pytest.approx(score.p)
        assert row["p_signed"] == pytest.approx(score.p_signed)
        assert row["rho_mean"] == pytest.approx(np.mean(score.rho))
        assert row["rho_se"] == pytest.approx(np.std(score.rho, ddof=1) / 2)  # 4 subjects
        assert row["permutations"] == DEFAULT_PERMUTATIONS  # none asked for: on by default at 10 images
        assert row["p_perm"] == permutation_p(submission[key], targets[key], row["permutations"])
        assert row["noise_ceiling"] == pytest.approx(ceiling)
        assert row["pct_nc"] == pytest.approx(100 * score.r2 / ceiling)
    assert result["IT_RDMs"]["pct_nc"] == pytest.approx(100)  # the group mean reaches the upper ceiling
    mean_r2 = (result["EVC_RDMs"]["r2"] + result["IT_RDMs"]["r2"]) / 2
    mean_ceiling = (result["EVC_RDMs"]["noise_ceiling"] + result["IT_RDMs"]["noise_ceiling"]) / 2
    assert result["score"] == {
        "r2": pytest.approx(mean_r2),
        "pct_nc": pytest.approx(100 * mean_r2 / mean_ceiling),
    }
    # Not the mean of the per-key percentages.
    mean_pct = (result["EVC_RDMs"]["pct_nc"] + result["IT_RDMs"]["pct_nc"]) / 2
    assert result["score"]["pct_nc"] != pytest.approx(mean_pct)
    json.dumps(result, allow_nan=False)  # plain JSON: no NaN or numpy types


def test_score_submission_official_sizes_and_missing_ceiling(make_rdms) -> None:
    targets = {"EVC_RDMs": make_rdms(92, subjects=3, seed=34), "IT_RDMs": make_rdms(92, subjects=4, seed=35)}
    submission = {"EVC_RDMs": make_rdms(92, seed=36), "IT_RDMs": make_rdms(92, seed=37)}
    result = score_submission(submission, targets)
    computed = [noise_ceilings(targets[k]).upper for k in ("EVC_RDMs", "IT_RDMs")]  # not the official files
    assert result.targets["EVC_RDMs"].noise_ceiling == pytest.approx(computed[0])
    assert result.targets["IT_RDMs"].noise_ceiling == pytest.approx(computed[1])
    assert result.pct_nc == pytest.approx(100 * result.r2 / np.mean(computed))
    one = score_submission({"IT_RDMs": submission["IT_RDMs"]}, {"IT_RDMs": make_rdms(92, seed=35)})
    assert one.targets["IT_RDMs"].p is None and one.targets["IT_RDMs"].p_signed is None  # one subject: no t-test
    # A single-subject target of a non-official size has no ceiling: percentages are None.
    small = score_submission(
        {"EVC_RDMs": make_rdms(10, seed=38)}, {"EVC_RDMs": make_rdms(10, seed=39)}
    )
    assert small.targets["EVC_RDMs"].noise_ceiling is None and small.targets["EVC_RDMs"].pct_nc is None
    assert small.pct_nc is None and small.to_dict()["score"]["pct_nc"] is None
    json.dumps(result.to_dict(), allow_nan=False)
    json.dumps(small.to_dict(), allow_nan=False)


def test_score_submission_bad_inputs(make_rdms) -> None:
    targets = {"EVC_RDMs": make_rdms(8, subjects=3, seed=40)}
    with pytest.raises(ValueError, match="no key in common"):
        score_submission({"IT_RDMs": make_rdms(8)}, targets)
    with pytest.raises(ValueError, match=r"EVC_RDMs: model RDM has shape \(3, 8, 8\), expected one 8 x 8"):
        score_submission({"EVC_RDMs": targets["EVC_RDMs"]}, targets)
    with pytest.raises(ValueError, match=r"EVC_RDMs: model RDM has shape \(6, 6\)"):
        score_submission({"EVC_RDMs": make_rdms(6)}, targets)
    with pytest.raises(ValueError, match="EVC_RDMs: model RDM is constant"):
        score_submission({"EVC_RDMs": 1 - np.eye(8)}, targets)
    with pytest.raises(ValueError, match="permutations: must be 0"):
        score_submission({"EVC_RDMs": make_rdms(8)}, targets, permutations=-1)


def test_partial_submission_scores_keys_but_withholds_the_overall_score(make_rdms) -> None:
    targets = {"EVC_RDMs": make_rdms(10, subjects=4, seed=42), "IT_RDMs": make_rdms(10, subjects=4, seed=43)}
    complete = {"EVC_RDMs": make_rdms(10, seed=44), "IT_RDMs": group_average(targets["IT_RDMs"])}
    full = score_submission(complete, targets)
    partial = score_submission({"IT_RDMs": complete["IT_RDMs"]}, targets)
    # The mean over the keys present would beat the complete submission: it must not be reported as a score.
    assert partial.targets["IT_RDMs"].r2 > full.r2
    assert partial.r2 is None and partial.pct_nc is None
    assert partial.missing == ["EVC_RDMs"]
    shown = partial.to_dict()  # as `siamrdm score --json` prints it
    assert list(shown) == ["IT_RDMs", "score", "missing"]
    assert shown["score"] is None and shown["missing"] == ["EVC_RDMs"]
    assert partial.targets["IT_RDMs"] == full.targets["IT_RDMs"]  # the keys present: as in a complete submission
    json.dumps(shown, allow_nan=False)


def test_large_rdm_matches_scipy_loop() -> None:
    n, subjects = 1000, 15
    rng = np.random.default_rng(41)
    length = n * (n - 1) // 2
    signal = rng.random(length)
    model = square_rdm(np.round(signal, 3), n)  # rounded: many ties
    noise = [0.1 * (s + 1) for s in range(subjects)]  # subjects from close to the model to far from it
    targets = np.stack([square_rdm(signal + rng.normal(scale=sd, size=length), n) for sd in noise])
    model_upper = upper_tri(model)
    rhos = np.array([stats.spearmanr(model_upper, upper_tri(t)).statistic for t in targets])
    assert rhos.max() > 0.9 and rhos.min() < 0.3
    score = score_rdm(model, targets)
    np.testing.assert_allclose(score.rho, rhos, rtol=0, atol=1e-10)
    assert score.r2 == pytest.approx(np.mean(rhos**2), rel=1e-8)
    assert score.p == pytest.approx(stats.ttest_1samp(rhos**2, 0).pvalue, rel=1e-6)
