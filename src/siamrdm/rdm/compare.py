"""The Algonauts 2019 metric: squared Spearman correlation with each subject's RDM, and its t-test p-values.

Per subject, Spearman's rho between the upper triangles (diagonal excluded) of the model RDM and the subject's
RDM. Targets with K RDMs per subject (the official MEG files: two per time window) average the K rhos of a
subject first. The score is the mean over subjects of rho^2 (`score_rdm`); percent of the noise ceiling
(`noise_ceiling.noise_ceilings`) is 100 * score / ceiling. Another comparison method
(`transform.COMPARISON_METHODS`) can replace Spearman's rho; the score keeps the challenge's form (mean over
subjects of the squared comparison value).

Two t-test p-values here (the permutation test of the image labels is in `inference`), because the official one
cannot tell a model from a random RDM:
- `p` (official): one-sample t-test of the subjects' rho^2 against 0. rho^2 is never negative, so any RDM,
  even a random one, looks "significant" with enough subjects.
- `p_signed`: two-sided one-sample t-test of the signed rhos against 0 (is the model's correlation with the
  subjects consistently positive or negative?).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import DataError
from ..io.limits import check_real_dtype
from ..io.rdmfiles import validate_rdms
from ..io.tables import Record
from .core import upper_tri
from .stream import CeilingValues, Subjects, stream
from .transform import OFFICIAL_METHOD, check_method


class TargetError(ValueError):
    """A problem of the target (subject) RDMs rather than of the model: callers that read both from files name
    the target's file in the message."""


@dataclasses.dataclass
class Score(Record):
    """The challenge score alone (`score_rdm`); `records.ScoreRecord` adds the ceilings."""

    r2: float  # mean over subjects of rho^2
    p: float  # official: one-sample t-test of the subjects' rho^2 against 0 (NaN with one subject)
    rho: np.ndarray  # per subject, K-averaged
    p_signed: float  # two-sided one-sample t-test of the signed rhos against 0 (NaN with one subject)

    def to_dict(self) -> dict:
        """The values, `rho` as a list (as a record's `rhos`), so that it reads as JSON and as one frame row."""
        return {**dataclasses.asdict(self), "rho": [float(v) for v in self.rho]}


def checked_rdms(model_rdm, target_rdms) -> tuple[np.ndarray, np.ndarray]:
    """The public scoring functions' inputs as arrays, checked as the command line checks RDM files
    (`rdmfiles.validate_rdms`), so that bad input is a one-line DataError naming the argument, never a numpy
    traceback or a NaN score: the target, real (N, N), (S, N, N) or (S, K, N, N) RDMs; the model, one real
    N x N RDM of the same N. A constant model RDM is allowed: it orders no pair and scores 0."""
    try:  # a CPU torch tensor or a list of lists reads as an array; the dtypes stay (the numbers must not change)
        target, model = np.asarray(target_rdms), np.asarray(model_rdm)
    except (TypeError, ValueError, RuntimeError):
        raise DataError("target_rdms and model_rdm must be numeric arrays") from None
    validate_rdms(target, "target_rdms")
    validate_rdms(model, "model_rdm", constant=True)
    if model.ndim != 2:
        raise DataError(f"model_rdm: shape {model.shape} is not one (N, N) RDM")
    if model.shape[-1] != target.shape[-1]:
        raise DataError(f"model_rdm: {model.shape[-1]} x {model.shape[-1]} images, but target_rdms have "
                        f"{target.shape[-1]}")
    return model, target


def compare_rdms(model_rdm: np.ndarray, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> np.ndarray:
    """The comparison of one model RDM with every subject RDM, K-averaged: shape (S,). `method` is one of
    `COMPARISON_METHODS`, as `rsatoolbox.rdm.compare` computes it on the upper triangles.

    Each subject is transformed once (ranked, for Spearman) and compared with the model's transform, computed
    once; Kendall's taus take O(L log L) per subject. A constant model RDM orders no pair: it scores 0 (a
    model that collapsed during training then scores as the worst, never as NaN). Bad input (`checked_rdms`:
    NaN or inf, a wrong shape, an asymmetric RDM) is a DataError naming the argument.
    """
    check_method(method)
    return comparison_values(*checked_rdms(model_rdm, target_rdms), method)


def comparison_values(model_rdm: np.ndarray, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> np.ndarray:
    """`compare_rdms` of RDMs already checked (or derived from checked ones: `records.pair_fields`'s pair
    structures); a model RDM with NaN gets NaN values."""
    return stream(upper_tri(np.asarray(model_rdm)), Subjects(target_rdms, condensed=False), method, ceiling=False)[0]


def spearman_rhos(model_rdm: np.ndarray, target_rdms: np.ndarray) -> np.ndarray:
    """Spearman rho of one model RDM with every subject RDM, K-averaged: shape (S,) (the official metric)."""
    return compare_rdms(model_rdm, target_rdms, OFFICIAL_METHOD)


def _t_test_p(values: np.ndarray) -> float:
    """Two-sided one-sample t-test of `values` against 0, scipy.stats.ttest_1samp's p; NaN with fewer than 2
    values (no spread to test). From the t distribution's CDF in scipy.special: scipy.stats alone takes longer
    to import than the rest of `siamrdm score` takes to run."""
    if len(values) < 2:
        return math.nan
    from scipy.special import stdtr

    values = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # identical values: t is +-inf (p 0), or NaN for zeros
        t = values.mean() / (values.std(ddof=1) / math.sqrt(len(values)))
    return float(2 * stdtr(len(values) - 1, -abs(t)))


def official_p(rho: np.ndarray) -> float:
    """The challenge's p: t-test of the per-subject rho^2 against 0.

    rho^2 >= 0, so the mean is above 0 for any RDM: a random RDM gets a small p with 15 subjects. Reported
    because the challenge did; `signed_p` and `inference.permutation_p` test whether the model predicts anything.
    """
    return _t_test_p(np.asarray(rho, dtype=np.float64) ** 2)


def signed_p(rho: np.ndarray) -> float:
    """Two-sided one-sample t-test of the signed per-subject rhos against 0 (NaN with one subject).

    A model that predicts the subjects has rhos consistently above 0; a random RDM's rhos are small and, over
    random RDMs, centred on 0. But subjects share structure, so a given random RDM can correlate with it
    weakly and consistently: `inference.permutation_p` is the test of the image labels.
    """
    return _t_test_p(np.asarray(rho, dtype=np.float64))


def _score(rho: np.ndarray) -> Score:
    return Score(float(np.mean(rho**2)), official_p(rho), rho, signed_p(rho))


def score_rdm(model_rdm: np.ndarray, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> Score:
    """The challenge score of one model RDM against a target's subject RDMs (mean over subjects of rho^2,
    or of the squared `method` value), with both t-test p-values."""
    return _score(compare_rdms(model_rdm, target_rdms, method))


def compare_condensed(model_vector, subject_vectors, method: str = OFFICIAL_METHOD, ceiling: bool = True,
                      threads: int = 1) -> tuple[np.ndarray, CeilingValues | None]:
    """`compare_rdms` for upper triangles (`records.score_condensed`'s inputs): the per-subject (K-averaged)
    comparison values, (S,), and with `ceiling` (and two subjects or more) the computed ceiling's values, both
    bounds in r2 and in rho units, from the same pass over the subjects (None otherwise).

    A subject with NaN, inf or a constant upper triangle is a `TargetError` naming it; a bad model vector, a plain
    ValueError. `threads` > 1 ranks that many vectors at once (memory grows with it)."""
    check_real_dtype(np.asarray(model_vector).dtype, "model RDM")
    if not np.all(np.isfinite(model_vector)):
        raise ValueError("model RDM contains NaN or inf")
    pairs = np.shape(subject_vectors)[-1:]
    if pairs and np.size(model_vector) != pairs[0]:
        raise ValueError(f"model upper triangle of length {np.size(model_vector)} does not match the subjects' "
                         f"{pairs[0]}")
    try:  # the model is checked above: what goes wrong now is the subjects' (one of them, or their mean)
        subjects = Subjects(subject_vectors, condensed=True)
        rho, ceilings = stream(model_vector, subjects, method, ceiling=ceiling and len(subjects) >= 2,
                               threads=threads)
    except TargetError:
        raise
    except ValueError as exc:
        raise TargetError(str(exc)) from None
    return rho, ceilings
