"""The Algonauts 2019 metric: squared Spearman correlation with each subject's RDM, over the noise ceiling.

Per subject, Spearman's rho between the upper triangles (diagonal excluded) of the model RDM and the
subject's RDM. Targets with K RDMs per subject (the official MEG files: two per time window) average
the K rhos of a subject first. The score is the mean over subjects of rho^2; p is a one-sample t-test of
those rho^2 against 0; percent of the noise ceiling is 100 * score / ceiling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .data import TARGETS, subject_rdms
from .rdm import rank_transform, upper_tri

# Official noise ceilings (upper bound, mean over subjects of r^2) from the challenge's scoring scripts.
OFFICIAL_NOISE_CEILINGS: dict[int, dict[str, float]] = {
    92: {"EVC": 0.1589, "IT": 0.3075, "MEG_early": 0.4634, "MEG_late": 0.2275},
    118: {"EVC": 0.1048, "IT": 0.0728, "MEG_early": 0.3468, "MEG_late": 0.2265},
    78: {"EVC": 0.0640, "IT": 0.0647, "MEG_early": 0.3562, "MEG_late": 0.4452},
}
_KEY_TO_TARGET = {key: name for name, (_, key) in TARGETS.items()}


@dataclass
class Score:
    r2: float  # mean over subjects of rho^2
    p: float  # one-sample t-test of the subjects' rho^2 against 0 (NaN with one subject)
    rho: np.ndarray  # per subject, K-averaged


def _standardise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def spearman_rhos(model_rdm: np.ndarray, target_rdms: np.ndarray) -> np.ndarray:
    """Spearman rho of one model RDM with every subject RDM, K-averaged: shape (S,).

    Each vector is ranked once and the correlations are one matrix product, so a 1000 x 1000 model RDM
    against 15 subjects takes a fraction of a second.
    """
    model = _standardise(rank_transform(upper_tri(np.asarray(model_rdm, dtype=np.float64))))
    targets = _standardise(rank_transform(upper_tri(subject_rdms(np.asarray(target_rdms, dtype=np.float64)))))
    rhos = targets @ model
    return rhos.mean(axis=1) if rhos.ndim == 2 else rhos


def score_rdm(model_rdm: np.ndarray, target_rdms: np.ndarray) -> Score:
    """The challenge score of one model RDM against a target's subject RDMs."""
    rho = spearman_rhos(model_rdm, target_rdms)
    r2 = rho**2
    p = float(stats.ttest_1samp(r2, 0.0).pvalue) if len(r2) > 1 else math.nan
    return Score(float(r2.mean()), p, rho)


def noise_ceiling(target_rdms: np.ndarray) -> tuple[float, float]:
    """(upper, lower) noise ceiling in the metric's units (mean r^2).

    Upper: each subject against the mean of all subjects. Lower: each subject against the mean of the others.
    """
    rdms = subject_rdms(np.asarray(target_rdms, dtype=np.float64))
    n_subjects = len(rdms)
    if n_subjects < 2:
        raise ValueError("a noise ceiling needs at least 2 subjects")
    grand = rdms.reshape(-1, *rdms.shape[-2:]).mean(axis=0)
    upper = np.mean([spearman_rhos(grand, rdms[s : s + 1])[0] ** 2 for s in range(n_subjects)])
    total = rdms.sum(axis=0)
    lower = []
    for s in range(n_subjects):
        others = (total - rdms[s]) / (n_subjects - 1)
        others = others.reshape(-1, *rdms.shape[-2:]).mean(axis=0)
        lower.append(spearman_rhos(others, rdms[s : s + 1])[0] ** 2)
    return float(upper), float(np.mean(lower))


def target_name(key: str) -> str:
    """'EVC_RDMs' -> 'EVC'; names that are already target names pass through."""
    return _KEY_TO_TARGET.get(key, key)


def official_noise_ceiling(key: str, n_images: int) -> float | None:
    """The challenge's ceiling for a target key on an official set (92, 118, 78 images), else None."""
    return OFFICIAL_NOISE_CEILINGS.get(n_images, {}).get(target_name(key))


def reference_ceiling(key: str, target_rdms: np.ndarray) -> float | None:
    """The ceiling a score is divided by: official for the Algonauts sets, else the computed upper bound."""
    official = official_noise_ceiling(key, target_rdms.shape[-1])
    if official is not None:
        return official
    if subject_rdms(target_rdms).shape[0] < 2:
        return None
    return noise_ceiling(target_rdms)[0]


def percent_of_ceiling(r2: float, ceiling: float | None) -> float | None:
    return None if ceiling is None or ceiling <= 0 else 100.0 * r2 / ceiling


def score_with_ceiling(model_rdm: np.ndarray, key: str, target_rdms: np.ndarray) -> dict:
    """One scored row: r2, p, the reference ceiling for `key` and the percent of it."""
    score = score_rdm(model_rdm, target_rdms)
    ceiling = reference_ceiling(key, target_rdms)
    return {"r2": score.r2, "p": score.p, "noise_ceiling": ceiling, "pct_nc": percent_of_ceiling(score.r2, ceiling)}


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def score_submission(submission: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict:
    """Score every key present in both dicts; the JSON object `siamrdm score --json` prints.

    The overall score is the mean r^2 of the keys, and its percent is that mean over the mean of their ceilings.
    """
    keys = [k for k in submission if k in targets]
    if not keys:
        raise ValueError(
            f"no key in common between submission ({', '.join(submission)}) and target ({', '.join(targets)})"
        )
    result: dict = {}
    ceilings = []
    for key in keys:
        model, n = np.asarray(submission[key]), targets[key].shape[-1]
        if model.shape != (n, n):
            raise ValueError(f"{key}: model RDM has shape {model.shape}, expected one {n} x {n} RDM")
        if np.ptp(upper_tri(model)) == 0:
            raise ValueError(f"{key}: model RDM is constant, so its Spearman correlation is undefined")
        row = score_with_ceiling(model, key, targets[key])
        ceilings.append(row["noise_ceiling"])
        result[key] = {"r2": row["r2"], "p": _finite_or_none(row["p"]), "pct_nc": row["pct_nc"],
                       "noise_ceiling": row["noise_ceiling"]}
    mean_r2 = float(np.mean([result[k]["r2"] for k in keys]))
    mean_ceiling = None if any(c is None for c in ceilings) else float(np.mean(ceilings))
    result["score"] = {"r2": mean_r2, "pct_nc": percent_of_ceiling(mean_r2, mean_ceiling)}
    return result
