"""The score record: one model RDM scored against one target's subjects, the row of every score table.

One record, `ScoreRecord`, built by one function, `score_record`, is the row of every score table (`score`, fit's
validation, `evaluate`, `challenge`, the mini-batch validation, the report; `tables.SCORE_FIELDS`): the official
score and its percent of the ceiling; beside it this very model RDM's chance level (its score with the image labels
permuted: mean and 95th percentile, in r2 and in % of the ceiling), p_perm and beats_chance (`inference`); and
rho_mean +- rho_se with the lower ceiling in the same unit (`rho_lower_ceiling`).

Why rho_mean: its chance level is 0 for any model RDM, while the official score's is not (an RDM with strong
per-image structure squares chance correlations into a positive score). Model selection uses it. Each record also
holds the 95% bootstrap interval over subjects of rho_mean and of r2 (seeded) and the per-subject rhos, which
`paired.paired_rows` pairs to test each method against each baseline.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..io.tables import Record
from .compare import checked_rdms, compare_condensed, comparison_values, official_p, signed_p
from .core import upper_tri
from .inference import (
    CHANCE_ALPHA,
    bootstrap_indices,
    chance_scores,
    check_permutations,
    finite_or_none,
    p_from_null,
    percentile_interval,
    permutation_scores,
)
from .noise_ceiling import NO_CEILING, NoiseCeiling, ceilings_for, percent_of_ceiling
from .transform import DOT_METHODS, OFFICIAL_METHOD, check_method


@dataclasses.dataclass(frozen=True)
class ScoreRecord(Record):
    """One model RDM scored against one target's subjects: the row of every score table (`tables.SCORE_FIELDS`
    lists its fields in this order). Strict JSON once through `files.json_safe`: undefined values are None,
    and r2 and rho_mean are NaN only for a diverged prediction in training."""

    r2: float  # official: mean over subjects of rho^2
    pct_nc: float | None  # 100 * r2 / noise_ceiling
    rho_mean: float  # mean over subjects of the signed rho: chance level 0 whatever the RDM's structure
    rho_se: float | None  # its standard error over subjects (None with one)
    p: float | None  # official: t-test of the subjects' rho^2 against 0 (passes for any RDM; None with one subject)
    p_signed: float | None  # two-sided t-test of the signed rhos against 0 (None with one subject)
    noise_ceiling: float | None  # upper, r2 units: what pct_nc divides by
    ceiling_source: str | None  # 'official', 'computed' or None
    noise_ceiling_lower: float | None  # lower, r2 units (each subject against the mean of the others)
    nc_lower_pct: float | None  # the lower ceiling in % of the upper
    rho_lower_ceiling: float | None  # the lower ceiling in rho units, to read rho_mean against
    chance_r2_mean: float | None = None  # this model's r2 with the image labels permuted: mean
    chance_r2_95: float | None = None  # ... and 95th percentile
    chance_pct_mean: float | None = None  # the same in % of noise_ceiling
    chance_pct_95: float | None = None
    p_perm: float | None = None  # (1 + #{permuted r2 >= r2}) / (1 + permutations)
    beats_chance: bool | None = None  # p_perm < CHANCE_ALPHA and rho_mean > 0
    permutations: int = 0  # how many the chance fields are measured on (0: none)
    rho_ci_low: float | None = None  # 95% bootstrap interval of rho_mean over subjects (None with one subject)
    rho_ci_high: float | None = None
    r2_ci_low: float | None = None  # ... of r2, from the same resamples (what the charts' error bars show)
    r2_ci_high: float | None = None
    rhos: list[float] = dataclasses.field(default_factory=list)  # per subject (K-averaged): what paired tests pair
    # The pair structure alone (parts.pair_structure of the model and of each subject RDM): what carries to other
    # studies. None where not measured (training curves, upper triangles).
    pair_rho_mean: float | None = None  # mean over subjects of the residuals' signed rho
    pair_rho_se: float | None = None
    pair_rho_ci_low: float | None = None  # 95% bootstrap interval over subjects
    pair_rho_ci_high: float | None = None
    pair_p_perm: float | None = None  # (1 + #{permuted pair_rho_mean >= it}) / (1 + permutations), one-sided
    pair_rhos: list[float] | None = None


def signed_summary(rho: np.ndarray) -> dict:
    """The mean over subjects of the signed rho and its standard error (None with one subject): a statistic
    whose chance level is 0 whatever the model RDM's structure, unlike the official mean of rho^2."""
    rho = np.asarray(rho, dtype=np.float64)
    se = float(rho.std(ddof=1) / math.sqrt(len(rho))) if len(rho) >= 2 else None
    return {"rho_mean": float(rho.mean()), "rho_se": se}


def _chance_fields(r2: float, ceiling: float | None, null: np.ndarray | None, rho_mean: float) -> dict:
    """The chance fields of a record: None throughout without a null (or for a NaN score, never 'beating' it).
    Beating chance takes both: the official score above its permutation null, and a positive signed mean rho (the
    squared score is blind to sign: an RDM that runs against the subjects' can pass the permutation test)."""
    if null is None or not len(null) or not math.isfinite(r2):
        return {}
    mean, top = float(np.mean(null)), float(np.quantile(null, 0.95))
    p_perm = p_from_null(r2, null)
    return {"chance_r2_mean": mean, "chance_r2_95": top, "chance_pct_mean": percent_of_ceiling(mean, ceiling),
            "chance_pct_95": percent_of_ceiling(top, ceiling), "p_perm": p_perm,
            "beats_chance": bool(p_perm < CHANCE_ALPHA and rho_mean > 0),
            "permutations": len(null)}


def _interval_fields(rho: np.ndarray) -> dict:
    """The 95% bootstrap intervals over subjects of rho_mean and of r2 (the same resamples; `bootstrap_indices`)
    and the per-subject values; no intervals with one subject or a value that is not finite."""
    fields = {"rhos": [float(v) for v in rho]}
    if len(rho) < 2 or not np.all(np.isfinite(rho)):
        return fields
    resampled = rho[bootstrap_indices(len(rho))]
    low, high = percentile_interval(resampled.mean(axis=1))
    low2, high2 = percentile_interval((resampled**2).mean(axis=1))
    return {**fields, "rho_ci_low": low, "rho_ci_high": high, "r2_ci_low": low2, "r2_ci_high": high2}


def score_record(rho: np.ndarray, ceiling: NoiseCeiling, null: np.ndarray | None = None) -> ScoreRecord:
    """The one builder of score records: from the per-subject (K-averaged) comparison values, their target's
    ceiling, and this model RDM's scores under permuted image labels (`chance_scores`; None: no chance fields)."""
    rho = np.asarray(rho, dtype=np.float64)
    r2 = float(np.mean(rho**2))
    return ScoreRecord(
        r2=r2, pct_nc=percent_of_ceiling(r2, ceiling.upper), **signed_summary(rho),
        p=finite_or_none(official_p(rho)), p_signed=finite_or_none(signed_p(rho)), noise_ceiling=ceiling.upper,
        ceiling_source=ceiling.source, noise_ceiling_lower=ceiling.lower,
        nc_lower_pct=percent_of_ceiling(ceiling.lower, ceiling.upper), rho_lower_ceiling=ceiling.rho_lower,
        **_chance_fields(r2, ceiling.upper, null, float(np.mean(rho))), **_interval_fields(rho))


def pair_fields(model_rdm: np.ndarray, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD,
                permutations: int | None = 0, seed: int = 0) -> dict:
    """A record's `pair_*` fields: the model's pair structure compared with each subject's (both less their own
    per-image part, `parts.pair_structure`), its signed mean, SE and bootstrap interval over subjects, and with
    `permutations` (None: the default for its size) its p under permuted image labels (one-sided: chance is 0)."""
    from .parts import pair_structure

    model, subjects = pair_structure(model_rdm), pair_structure(target_rdms)
    if not np.all(np.ptp(upper_tri(subjects), axis=-1) > 0):  # 3 images (or a subject of per-image effects
        return {}  # alone): no pair structure to predict, so no pair score, not a rho of 0 over flat targets
    rho = comparison_values(model, subjects, method)
    if not np.all(np.isfinite(rho)):  # a model whose pair structure is flat: nothing to compare
        return {}
    summary, intervals = signed_summary(rho), _interval_fields(rho)
    fields = {"pair_rho_mean": summary["rho_mean"], "pair_rho_se": summary["rho_se"],
              "pair_rho_ci_low": intervals.get("rho_ci_low"), "pair_rho_ci_high": intervals.get("rho_ci_high"),
              "pair_rhos": intervals["rhos"]}
    count = check_permutations(permutations, np.shape(model_rdm)[-1], method) if method in DOT_METHODS else 0
    if count:
        null = permutation_scores(model, subjects, count, seed, method, signed=True)
        fields["pair_p_perm"] = p_from_null(float(np.mean(rho)), null)
    return fields


def keyed_record(rho: np.ndarray, key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD,
                 model_rdm: np.ndarray | None = None, permutations: int | None = 0, seed: int = 0) -> ScoreRecord:
    """The score record from the per-subject (K-averaged) comparison values with the ceilings for `key`; with
    `model_rdm`, the chance and pair fields from `permutations` of its image labels (None: the default for its
    size). Training validates every epoch with none (they would cost more than the epoch)."""
    if model_rdm is None:
        return score_record(rho, ceilings_for(key, target_rdms, method))
    null = chance_scores(model_rdm, target_rdms, permutations, seed, method)
    record = score_record(rho, ceilings_for(key, target_rdms, method), null)
    return dataclasses.replace(record, **pair_fields(model_rdm, target_rdms, method, permutations, seed))


def score_row(rho: np.ndarray, key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD,
              model_rdm: np.ndarray | None = None, permutations: int | None = 0, seed: int = 0) -> dict:
    """`keyed_record` as a table row (`ScoreRecord.to_dict()`): what training and the tables keep."""
    return keyed_record(rho, key, target_rdms, method, model_rdm, permutations, seed).to_dict()


def with_chance(row: dict, model_rdm: np.ndarray, target_rdms: np.ndarray, permutations: int | None = None,
                seed: int = 0, method: str = OFFICIAL_METHOD) -> dict:
    """A row scored without chance fields (validation on the device) with those of `model_rdm`, the RDM it
    scored; its other fields unchanged."""
    fields = {f.name for f in dataclasses.fields(ScoreRecord)}
    record = ScoreRecord(**{k: v for k, v in row.items() if k in fields})
    null = chance_scores(model_rdm, target_rdms, permutations, seed, method)
    chance = _chance_fields(record.r2, record.noise_ceiling, null, record.rho_mean)
    return {**row, **dataclasses.replace(record, **chance).to_dict(),
            **pair_fields(model_rdm, target_rdms, method, permutations, seed)}


def score_with_ceiling(model_rdm: np.ndarray, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD, *,
                       key: str | None = None, permutations: int | None = 0, seed: int = 0) -> ScoreRecord:
    """The score record of a model RDM against a target's subject RDMs (model, target, then options, as
    `score_rdm`): r2, pct_nc, the signed mean rho, the p-values, the ceilings and the pair structure's fields; the
    chance fields with `permutations` (None: on by default where cheap, see `inference.default_permutations`).

    `key` is the target's name in the challenge's files ('IT_RDMs', ...): the published ceiling is used where the
    data are the challenge's own (`noise_ceiling.ceiling_source`); otherwise, and without a key, the ceiling is
    computed from the subjects."""
    if isinstance(target_rdms, str):  # the old order, (model, key, target): say so rather than fail deep
        raise TypeError("key is a keyword: score_with_ceiling(model_rdm, target_rdms, key=...)")
    check_method(method)
    model_rdm, target_rdms = checked_rdms(model_rdm, target_rdms)
    return keyed_record(comparison_values(model_rdm, target_rdms, method), key or "", target_rdms, method, model_rdm,
                        permutations, seed)


def prediction_record(predicted: np.ndarray, target_rdms: np.ndarray, key: str,
                      permutations: int | None = None) -> ScoreRecord:
    """`score_with_ceiling` of a method's own prediction, in a pipeline whose targets were checked as they were
    read: a prediction with NaN or inf (a fit that diverged) is scored as NaN, the worst a table can show, where
    `score_with_ceiling` refuses such input as a user's bad data."""
    if np.isfinite(predicted).all():
        return score_with_ceiling(predicted, target_rdms, key=key, permutations=permutations)
    return keyed_record(comparison_values(predicted, target_rdms), key, target_rdms, OFFICIAL_METHOD, predicted,
                        permutations)


def score_condensed(model_vector, subject_vectors, method: str = OFFICIAL_METHOD, ceiling: bool = True,
                    threads: int = 1) -> ScoreRecord:
    """The score record of a model's upper triangle (P,) against subjects' upper triangles, (S, P) or (S, K, P)
    (any array-like: a memory-mapped .npy of float32 works and is the fastest to rank): `score_with_ceiling` for
    sets too large for square RDMs (10,000 images: 50 million pairs per subject), with the same values. Its
    ceiling is computed from the subjects (`noise_ceiling`, `noise_ceiling_lower`, `rho_lower_ceiling`,
    `ceiling_source` 'computed'); without `ceiling`, or with one subject, those are None and the record is r2
    alone. No chance or pair fields: each permutation would re-rank every subject's pairs, and the per-image part
    needs the square RDM.

    Changed: this returned a tuple `(score, (upper, lower))`; it returns a `ScoreRecord`, as every scoring
    function does, and `score, ceilings = score_condensed(...)` now fails (a record is not iterable): read
    `.r2`, `.noise_ceiling` and `.noise_ceiling_lower` (`.rhos` for the old `score.rho`).

    Subjects are read one at a time, so memory holds a few upper triangles (and a ranker's working arrays)
    whatever the number of subjects. A subject with NaN, inf or a constant upper triangle is a `TargetError`
    naming it; a bad model vector, a plain ValueError. `threads` > 1 ranks that many vectors at once (each thread
    keeps its own working arrays: memory grows with it); the default 1 leaves the other cores alone.
    """
    rho, computed = compare_condensed(model_vector, subject_vectors, method, ceiling, threads)
    return score_record(rho, NoiseCeiling(*computed, method=method) if computed else NO_CEILING)
