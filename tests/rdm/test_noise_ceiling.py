"""Noise ceilings: their definition against scipy, K-averaging, the official ones recognised by the file's
content (rdm.noise_ceiling)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import scipy_rho

from siamrdm.rdm.core import group_average
from siamrdm.rdm.noise_ceiling import (
    OFFICIAL_NOISE_CEILINGS,
    ceiling_source,
    noise_ceilings,
    official_noise_ceiling,
    percent_of_ceiling,
    reference_ceiling,
    target_name,
)
from siamrdm.rdm.submission import score_submission


def test_real_fmri_upper_ceilings_reproduce_official(fmri92, fmri118) -> None:
    expected = {
        (92, "EVC_RDMs"): 0.1589,
        (92, "IT_RDMs"): 0.3075,
        (118, "EVC_RDMs"): 0.1048,
        (118, "IT_RDMs"): 0.0728,
    }
    for (n, key), official in expected.items():
        target = (fmri92 if n == 92 else fmri118)[key]
        ceiling = noise_ceilings(target)
        upper, lower = ceiling.upper, ceiling.lower
        assert round(upper, 4) == official, (n, key, upper)
        assert 0 < lower < upper
        assert official_noise_ceiling(key, n) == official


def test_noise_ceiling_definition(make_rdms) -> None:
    rdms = make_rdms(10, subjects=5, seed=24)
    grand = rdms.mean(axis=0)
    upper = np.mean([scipy_rho(grand, r) ** 2 for r in rdms])
    lower = np.mean([scipy_rho(np.delete(rdms, s, axis=0).mean(axis=0), r) ** 2 for s, r in enumerate(rdms)])
    assert_ceilings(rdms, upper, lower)


def assert_ceilings(rdms, upper: float, lower: float) -> None:
    """noise_ceilings gives these upper and lower ceilings (written out with scipy), the lower below the upper."""
    ceiling = noise_ceilings(rdms)
    assert ceiling.upper == pytest.approx(upper, abs=1e-12)
    assert ceiling.lower == pytest.approx(lower, abs=1e-12)
    assert ceiling.lower < ceiling.upper


def test_noise_ceiling_with_k(make_rdms) -> None:
    rdms = make_rdms(8, subjects=4, k=2, seed=25)
    grand = group_average(rdms)
    upper = np.mean([np.mean([scipy_rho(grand, r) for r in subject]) ** 2 for subject in rdms])
    lower = np.mean(
        [
            np.mean([scipy_rho(group_average(np.delete(rdms, s, axis=0)), r) for r in subject]) ** 2
            for s, subject in enumerate(rdms)
        ]
    )
    assert_ceilings(rdms, upper, lower)


def test_noise_ceiling_needs_two_subjects(make_rdms) -> None:
    with pytest.raises(ValueError, match="at least 2 subjects"):
        noise_ceilings(make_rdms(6, subjects=1))
    with pytest.raises(ValueError, match="at least 2 subjects"):
        noise_ceilings(make_rdms(6))


def test_noise_ceiling_of_constant_mean_rdm_is_an_error_not_nan(make_rdms) -> None:
    # Two valid subjects whose RDMs add up to a constant: the mean RDM has no ranks to correlate.
    first = np.round(make_rdms(7, seed=28) * 8) / 8  # multiples of 1/8: the means are exact
    second = (2 - first) * (1 - np.eye(7))
    with pytest.raises(ValueError, match="mean RDM of all subjects has a constant upper triangle"):
        noise_ceilings(np.stack([first, second]))
    # Three subjects: the mean without subject 3 is constant.
    with pytest.raises(ValueError, match="other than subject 3 has a constant upper triangle"):
        noise_ceilings(np.stack([first, second, np.round(make_rdms(7, seed=29) * 8) / 8]))


def test_reference_ceiling_official_or_computed(make_rdms) -> None:
    """The official ceiling belongs to the official files, recognised by their content: random subjects under an
    official key and size get their own computed ceiling, a single RDM none."""
    for n in (92, 118):
        target = make_rdms(n, subjects=2, seed=n)
        for key in ("EVC_RDMs", "IT_RDMs", "MEG_RDMs_late", "IT", "V4_RDMs"):
            assert ceiling_source(key, target) == "computed"
            assert reference_ceiling(key, target) == pytest.approx(noise_ceilings(target).upper)
        two_per_subject = np.stack([target, target[::-1]], axis=1)
        assert ceiling_source("MEG_RDMs_late", two_per_subject) == "computed"
    for key in ("EVC_RDMs", "MEG_RDMs_early"):  # one RDM: no subjects to bound a score with, even at 78 images
        assert ceiling_source(key, make_rdms(78, seed=1)) is None
        assert reference_ceiling(key, make_rdms(78, seed=1)) is None
    small = make_rdms(10, subjects=3, seed=26)
    assert reference_ceiling("EVC_RDMs", small) == pytest.approx(noise_ceilings(small).upper)
    assert reference_ceiling("EVC_RDMs", make_rdms(10, seed=27)) is None
    assert official_noise_ceiling("EVC_RDMs", 10) is None
    assert target_name("MEG_RDMs_early") == "MEG_early" and target_name("foo") == "foo"


def test_official_ceiling_recognised_by_content(fmri92, fmri118) -> None:
    """The challenge's files get the published ceiling; the same subjects under another key, a subset of them, or
    the window-averaged MEG files (other data than the official two-RDMs files) get their computed one."""
    for n, fmri in ((92, fmri92), (118, fmri118)):
        for key in ("EVC_RDMs", "IT_RDMs"):
            assert ceiling_source(key, fmri[key]) == "official"
            assert reference_ceiling(key, fmri[key]) == OFFICIAL_NOISE_CEILINGS[n][key[:-5]]
    evc_as_it = fmri92["EVC_RDMs"]  # the audit's case: EVC subjects filed under IT_RDMs
    assert ceiling_source("IT_RDMs", evc_as_it) == "computed"
    assert reference_ceiling("IT_RDMs", evc_as_it) == pytest.approx(0.1589, abs=1e-4)
    three = fmri92["IT_RDMs"][:3]
    assert ceiling_source("IT_RDMs", three) == "computed"
    result = score_submission({"IT_RDMs": fmri92["IT_RDMs"].mean(axis=0)}, {"IT_RDMs": evc_as_it},
                                      permutations=0)
    assert result.targets["IT_RDMs"].ceiling_source == "computed"
    assert result.targets["IT_RDMs"].noise_ceiling == pytest.approx(0.1589, abs=1e-4)


def test_other_study_gets_its_computed_ceiling(fmri92, kriegeskorte_it) -> None:
    """Kriegeskorte et al. (2008): IT_RDMs of the same 92 images, 4 subjects x 2 sessions: its own ceiling
    (0.2745), never the Algonauts 92 set's official 0.3075 that key and size alone would pick."""
    from siamrdm.io.rdmfiles import load_rdms

    other = load_rdms(kriegeskorte_it, "IT_RDMs")
    result = score_submission({"IT_RDMs": fmri92["IT_RDMs"].mean(axis=0)}, {"IT_RDMs": other},
                                      permutations=0)
    assert result.targets["IT_RDMs"].ceiling_source == "computed"
    assert result.targets["IT_RDMs"].noise_ceiling == pytest.approx(0.2745, abs=1e-4)
    assert result.targets["IT_RDMs"].rho_mean == pytest.approx(0.305, abs=0.005)  # the study README's reference figure


def test_percent_of_ceiling() -> None:
    assert percent_of_ceiling(0.05, 0.2) == pytest.approx(25.0)
    assert percent_of_ceiling(0.05, None) is None
    assert percent_of_ceiling(0.05, 0.0) is None
