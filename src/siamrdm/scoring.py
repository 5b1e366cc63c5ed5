"""The Algonauts 2019 metric: squared Spearman correlation with each subject's RDM, over the noise ceiling.

Per subject, Spearman's rho between the upper triangles (diagonal excluded) of the model RDM and the
subject's RDM. Targets with K RDMs per subject (the official MEG files: two per time window) average
the K rhos of a subject first. The score is the mean over subjects of rho^2; percent of the noise ceiling
is 100 * score / ceiling.

Three p-values, because the official one cannot tell a model from a random RDM:
- `p` (official): one-sample t-test of the subjects' rho^2 against 0. rho^2 is never negative, so any RDM,
  even a random one, looks "significant" with enough subjects.
- `p_signed`: two-sided one-sample t-test of the signed rhos against 0 (is the model's correlation with the
  subjects consistently positive or negative?).
- `p_perm`: permutation test of the image labels: how often relabelling the model RDM's images (rows and
  columns together) scores at least as well as the real labels.

Other comparison methods, named as rsatoolbox names them (`rsatoolbox.rdm.compare(..., method=NAME)`), can
replace Spearman's rho: 'corr' (Pearson r), 'cosine', 'tau-a' and 'kendall' (Kendall's tau a and b), 'rho-a'
(Spearman without tie correction). The score keeps the challenge's form (mean over subjects of the squared
comparison value, over a noise ceiling computed with the same method); the official ceilings belong to
Spearman only. They are implemented here with numpy and scipy, so rsatoolbox is not needed at run time.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .data import TARGETS, subject_rdms
from .rdm import rank_transform, square_rdm, upper_tri

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
    p: float  # official: one-sample t-test of the subjects' rho^2 against 0 (NaN with one subject)
    rho: np.ndarray  # per subject, K-averaged
    p_signed: float  # two-sided one-sample t-test of the signed rhos against 0 (NaN with one subject)


OFFICIAL_METHOD = "spearman"
DOT_METHODS = ("spearman", "rho-a", "corr", "cosine")  # a comparison that is a dot product of transformed vectors
COMPARISON_METHODS = (*DOT_METHODS, "tau-a", "kendall")


def check_method(method: str) -> str:
    if method not in COMPARISON_METHODS:
        raise ValueError(f"unknown comparison method '{method}' (choose from {', '.join(COMPARISON_METHODS)})")
    return method


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; a zero row stays zero (its similarity with anything is 0, as in rsatoolbox)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _standardise(x: np.ndarray) -> np.ndarray:
    return _unit(x - x.mean(axis=-1, keepdims=True))


def dot_vectors(vectors: np.ndarray, method: str) -> np.ndarray:
    """Upper-triangle vectors transformed so that the method's similarity of two RDMs is a dot product."""
    if method == "cosine":
        return _unit(vectors)
    if method == "corr":
        return _standardise(vectors)
    ranks = rank_transform(vectors)
    if method == "spearman":
        return _standardise(ranks)
    n = vectors.shape[-1]  # rho-a: 12 x (centred ranks . centred ranks) / (n^3 - n)
    return (ranks - ranks.mean(axis=-1, keepdims=True)) * math.sqrt(12.0 / (n**3 - n))


def _standardised_ranks(rdms: np.ndarray) -> np.ndarray:
    """Upper triangles ranked, centred and scaled to unit norm: Spearman's rho is then a dot product."""
    return dot_vectors(upper_tri(np.asarray(rdms, dtype=np.float64)), "spearman")


def _tie_pairs(x: np.ndarray) -> int:
    _, counts = np.unique(x, return_counts=True)
    return int(np.sum(counts * (counts - 1) // 2))


def _kendall(a: np.ndarray, b: np.ndarray, variant: str) -> float:
    """Kendall's tau b (scipy), or tau a = (concordant - discordant) / all pairs, derived from tau b:
    concordant - discordant = tau_b * sqrt((pairs - ties in a)(pairs - ties in b)). Constant vectors order no
    pair: 0."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    tau_b = float(stats.kendalltau(a, b).statistic)
    if variant == "kendall":
        return tau_b
    pairs = len(a) * (len(a) - 1) // 2
    return tau_b * math.sqrt((pairs - _tie_pairs(a)) * (pairs - _tie_pairs(b))) / pairs


def compare_rdms(model_rdm: np.ndarray, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> np.ndarray:
    """The comparison of one model RDM with every subject RDM, K-averaged: shape (S,). `method` is one of
    `COMPARISON_METHODS`, as `rsatoolbox.rdm.compare` computes it on the upper triangles.

    The dot-product methods transform each vector once and compare with one matrix product, so a 1000 x 1000
    model RDM against 15 subjects takes a fraction of a second; Kendall's taus take O(L log L) per subject. A
    constant model RDM orders no pair: it scores 0 (a model that collapsed during training then scores as the
    worst, never as NaN).
    """
    check_method(method)
    vector = upper_tri(np.asarray(model_rdm, dtype=np.float64))
    targets = upper_tri(subject_rdms(np.asarray(target_rdms, dtype=np.float64)))
    if np.ptp(vector) == 0 and method != "cosine":
        return np.zeros(targets.shape[0])
    if method in DOT_METHODS:
        values = dot_vectors(targets, method) @ dot_vectors(vector, method)
    else:
        values = np.array([_kendall(vector, t, method) for t in targets.reshape(-1, targets.shape[-1])])
        values = values.reshape(targets.shape[:-1])
    return values.mean(axis=1) if values.ndim == 2 else values


def spearman_rhos(model_rdm: np.ndarray, target_rdms: np.ndarray) -> np.ndarray:
    """Spearman rho of one model RDM with every subject RDM, K-averaged: shape (S,) (the official metric)."""
    return compare_rdms(model_rdm, target_rdms, OFFICIAL_METHOD)


def _t_test_p(values: np.ndarray) -> float:
    """Two-sided one-sample t-test of `values` against 0; NaN with fewer than 2 values (no spread to test)."""
    if len(values) < 2:
        return math.nan
    with warnings.catch_warnings():  # identical values: scipy warns about precision, its p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_1samp(values, 0.0).pvalue)


def official_p(rho: np.ndarray) -> float:
    """The challenge's p: t-test of the per-subject rho^2 against 0.

    rho^2 >= 0, so the mean is above 0 for any RDM: a random RDM gets a small p with 15 subjects. Reported
    because the challenge did; `signed_p` and `permutation_p` test whether the model predicts anything.
    """
    return _t_test_p(np.asarray(rho, dtype=np.float64) ** 2)


def signed_p(rho: np.ndarray) -> float:
    """Two-sided one-sample t-test of the signed per-subject rhos against 0 (NaN with one subject).

    A model that predicts the subjects has rhos consistently above 0; a random RDM's rhos are small and, over
    random RDMs, centred on 0. But subjects share structure, so a given random RDM can correlate with it
    weakly and consistently: `permutation_p` is the test of the image labels.
    """
    return _t_test_p(np.asarray(rho, dtype=np.float64))


def score_rdm(model_rdm: np.ndarray, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> Score:
    """The challenge score of one model RDM against a target's subject RDMs (mean over subjects of rho^2,
    or of the squared `method` value), with both t-test p-values."""
    rho = compare_rdms(model_rdm, target_rdms, method)
    return Score(float(np.mean(rho**2)), official_p(rho), rho, signed_p(rho))


PERMUTATION_CHUNK = 2**22  # upper-triangle entries gathered per batch of permutations (32 MiB of float64)


def permutation_scores(
    model_rdm: np.ndarray, target_rdms: np.ndarray, n_permutations: int, seed: int = 0,
    method: str = OFFICIAL_METHOD,
) -> np.ndarray:
    """The score (mean over subjects of rho^2) of the model RDM under `n_permutations` random relabellings.

    Each permutation reorders the model RDM's rows and columns together (the images change labels, the
    geometry stays). Relabelling only moves entries of the upper triangle around, so the model's transformed
    vector (standardised ranks for Spearman) is computed once and each permutation is a gather; the rhos of a
    batch of permutations are one matrix product. Seeded: the same seed gives the same permutations. Only for
    the dot-product methods (`DOT_METHODS`).
    """
    if check_method(method) not in DOT_METHODS:
        raise ValueError(f"permutation p-values need one of {', '.join(DOT_METHODS)}, not '{method}'")
    model = np.asarray(model_rdm, dtype=np.float64)
    n = model.shape[-1]
    ranks = square_rdm(dot_vectors(upper_tri(model), method), n)
    targets = dot_vectors(upper_tri(subject_rdms(np.asarray(target_rdms, dtype=np.float64))), method)
    n_subjects = targets.shape[0]
    targets = targets.reshape(-1, targets.shape[-1])  # (S * K, L)
    rows, cols = np.triu_indices(n, k=1)
    rng = np.random.default_rng(seed)
    batch = max(1, PERMUTATION_CHUNK // len(rows))
    scores = np.empty(n_permutations)
    for start in range(0, n_permutations, batch):
        size = min(batch, n_permutations - start)
        perms = rng.permuted(np.tile(np.arange(n), (size, 1)), axis=1)
        permuted = ranks[perms[:, rows], perms[:, cols]]  # (size, L): upper triangles of the relabelled RDMs
        rhos = (permuted @ targets.T).reshape(size, n_subjects, -1).mean(axis=2)
        scores[start : start + size] = np.mean(rhos**2, axis=1)
    return scores


def permutation_p(model_rdm: np.ndarray, target_rdms: np.ndarray, n_permutations: int, seed: int = 0,
                  method: str = OFFICIAL_METHOD) -> float:
    """p of the score under random image labels: (1 + #{permuted score >= observed}) / (1 + n_permutations).

    The null hypothesis is that the model RDM's image labels carry no information about the subjects'
    RDMs. The smallest p it can give is 1 / (1 + n_permutations).
    """
    if n_permutations < 1:
        raise ValueError(f"a permutation test needs at least 1 permutation, got {n_permutations}")
    observed = float(np.mean(compare_rdms(model_rdm, target_rdms, method) ** 2))
    null = permutation_scores(model_rdm, target_rdms, n_permutations, seed, method)
    at_least = int(np.sum(null >= observed - 1e-12))  # tolerance: the identity relabelling ties with rounding
    return (1 + at_least) / (1 + n_permutations)


def _check_mean_rdm(rdm: np.ndarray, what: str) -> np.ndarray:
    """A mean RDM whose upper triangle is constant has no Spearman correlation: say so instead of NaN."""
    if np.ptp(upper_tri(rdm)) == 0:
        raise ValueError(f"{what} has a constant upper triangle, so the noise ceiling is undefined")
    return rdm


def noise_ceiling(target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> tuple[float, float]:
    """(upper, lower) noise ceiling in the metric's units (mean r^2), compared with `method`.

    Upper: each subject against the mean of all subjects. Lower: each subject against the mean of the others.
    Raises ValueError, never returns NaN, when a mean RDM is constant (e.g. two subjects whose RDMs add up
    to a constant); `data.validate_rdms` already rejects constant individual RDMs.
    """
    rdms = subject_rdms(np.asarray(target_rdms, dtype=np.float64))
    n_subjects = len(rdms)
    if n_subjects < 2:
        raise ValueError("a noise ceiling needs at least 2 subjects")
    grand = _check_mean_rdm(rdms.reshape(-1, *rdms.shape[-2:]).mean(axis=0), "the mean RDM of all subjects")
    upper = np.mean([compare_rdms(grand, rdms[s : s + 1], method)[0] ** 2 for s in range(n_subjects)])
    total = rdms.sum(axis=0)
    lower = []
    for s in range(n_subjects):
        others = (total - rdms[s]) / (n_subjects - 1)
        others = others.reshape(-1, *rdms.shape[-2:]).mean(axis=0)
        _check_mean_rdm(others, f"the mean RDM of the subjects other than subject {s + 1}")
        lower.append(compare_rdms(others, rdms[s : s + 1], method)[0] ** 2)
    return float(upper), float(np.mean(lower))


def target_name(key: str) -> str:
    """'EVC_RDMs' -> 'EVC'; names that are already target names pass through."""
    return _KEY_TO_TARGET.get(key, key)


def official_noise_ceiling(key: str, n_images: int) -> float | None:
    """The challenge's ceiling for a target key on an official set (92, 118, 78 images), else None."""
    return OFFICIAL_NOISE_CEILINGS.get(n_images, {}).get(target_name(key))


_MEG_TARGETS = ("MEG_early", "MEG_late")
_COMPUTED_CEILINGS: dict[tuple, tuple[float, float]] = {}


NO_CEILING_NOTE = "one RDM, no subjects to estimate a noise ceiling from: scores are r2 only"


def ceiling_source(key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> str | None:
    """Which ceiling belongs to these data: 'official' for the Algonauts sets in the official layout scored
    with the official metric, 'computed' (upper bound from the subjects) otherwise, None for a single subject.

    The official MEG ceilings were computed on the (subjects, 2, N, N) files; the window-averaged
    (subjects, N, N) MEG files are other data, so their ceiling is computed from them. A single RDM keeps
    the official ceiling, having none of its own.
    """
    official = official_noise_ceiling(key, target_rdms.shape[-1]) if method == OFFICIAL_METHOD else None
    meg_averaged = target_name(key) in _MEG_TARGETS and target_rdms.ndim == 3
    if official is not None and not meg_averaged:
        return "official"
    return "computed" if subject_rdms(target_rdms).shape[0] >= 2 else None


def _computed_ceilings(target_rdms: np.ndarray, method: str) -> tuple[float, float]:
    """(upper, lower) from the subjects, kept per data and method, since training validates against the same
    subjects every epoch."""
    data = np.asarray(target_rdms, dtype=np.float64)
    fingerprint = (method, data.shape, hashlib.blake2b(np.ascontiguousarray(data).tobytes(), digest_size=16).digest())
    if fingerprint not in _COMPUTED_CEILINGS:
        _COMPUTED_CEILINGS[fingerprint] = noise_ceiling(data, method)
    return _COMPUTED_CEILINGS[fingerprint]


def reference_ceiling(key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> float | None:
    """The ceiling a score is divided by (see `ceiling_source`)."""
    source = ceiling_source(key, target_rdms, method)
    if source == "official":
        return official_noise_ceiling(key, target_rdms.shape[-1])
    if source is None:
        return None
    return _computed_ceilings(target_rdms, method)[0]


def lower_ceiling(target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> float | None:
    """The lower noise ceiling computed from the subjects (each against the mean of the others); None with one."""
    if subject_rdms(np.asarray(target_rdms)).shape[0] < 2:
        return None
    return _computed_ceilings(target_rdms, method)[1]


def ceiling_info(key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> dict:
    """The ceiling that scores of these data are divided by, where it comes from, and the lower bound."""
    return {"ceiling_source": ceiling_source(key, target_rdms, method),
            "noise_ceiling": reference_ceiling(key, target_rdms, method),
            "noise_ceiling_lower": lower_ceiling(target_rdms, method)}


def percent_of_ceiling(r2: float, ceiling: float | None) -> float | None:
    return None if ceiling is None or ceiling <= 0 else 100.0 * r2 / ceiling


def score_with_ceiling(model_rdm: np.ndarray, key: str, target_rdms: np.ndarray,
                       method: str = OFFICIAL_METHOD) -> dict:
    """One scored row: r2, the official p and p_signed, the reference ceiling for `key` and the percent of it."""
    return score_row(compare_rdms(model_rdm, target_rdms, method), key, target_rdms, method)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def score_submission(
    submission: dict[str, np.ndarray], targets: dict[str, np.ndarray], permutations: int = 0, seed: int = 0,
    method: str = OFFICIAL_METHOD,
) -> dict:
    """Score every key present in both dicts; the JSON object `siamrdm score --json` prints.

    Per key: r2, p (official), p_signed, p_perm (None unless `permutations` >= 1; every key uses `seed`, so
    a key's p_perm does not depend on the other keys), pct_nc, noise_ceiling (the reference, upper),
    ceiling_source, noise_ceiling_lower (computed from the subjects; None with one) and the comparison method.
    The overall score is the mean r^2 of the keys, and its percent is that mean over the mean of their
    ceilings. A submission that lacks some of the target's keys is scored key by key, but its overall score is
    None: a mean over fewer keys is not comparable with a complete submission's; `missing` (present only then)
    lists those keys.
    """
    check_method(method)
    keys = [k for k in submission if k in targets]
    if not keys:
        raise ValueError(
            f"no key in common between submission ({', '.join(submission)}) and target ({', '.join(targets)})"
        )
    if permutations < 0:
        raise ValueError(f"permutations must be 0 (no permutation test) or more, got {permutations}")
    if permutations and method not in DOT_METHODS:
        raise ValueError(f"permutation p-values need one of {', '.join(DOT_METHODS)}, not '{method}'")
    missing = [k for k in targets if k not in submission]
    result: dict = {}
    ceilings = []
    for key in keys:
        model, n = np.asarray(submission[key]), targets[key].shape[-1]
        if model.shape != (n, n):
            raise ValueError(f"{key}: model RDM has shape {model.shape}, expected one {n} x {n} RDM")
        if np.ptp(upper_tri(model)) == 0:
            raise ValueError(f"{key}: model RDM is constant, so its Spearman correlation is undefined")
        row = score_with_ceiling(model, key, targets[key], method)
        p_perm = permutation_p(model, targets[key], permutations, seed, method) if permutations else None
        ceilings.append(row["noise_ceiling"])
        result[key] = {"r2": row["r2"], "p": _finite_or_none(row["p"]), "p_signed": _finite_or_none(row["p_signed"]),
                       "p_perm": p_perm, "pct_nc": row["pct_nc"], **ceiling_info(key, targets[key], method),
                       "method": method}
    if missing:
        result["score"] = None
        result["missing"] = missing
        return result
    mean_r2 = float(np.mean([result[k]["r2"] for k in keys]))
    mean_ceiling = None if any(c is None for c in ceilings) else float(np.mean(ceilings))
    result["score"] = {"r2": mean_r2, "pct_nc": percent_of_ceiling(mean_r2, mean_ceiling)}
    return result


# --------------------------------------------------------------------------- on the device (torch)
# Per-epoch validation scores the predicted pairs where they are (the GPU), so that an epoch's score costs one
# host synchronisation; the same Spearman as `compare_rdms` to float rounding (tests check it against scipy).


def score_row(rho: np.ndarray, key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> dict:
    """One scored row from the per-subject (K-averaged) comparison values: r2, the official p and p_signed, the
    reference ceiling for `key` and the percent of it (what `score_with_ceiling` returns)."""
    rho = np.asarray(rho, dtype=np.float64)
    r2 = float(np.mean(rho**2))
    ceiling = reference_ceiling(key, target_rdms, method)
    return {"r2": r2, "p": official_p(rho), "p_signed": signed_p(rho), "noise_ceiling": ceiling,
            "ceiling_source": ceiling_source(key, target_rdms, method), "pct_nc": percent_of_ceiling(r2, ceiling)}


def rank_average_torch(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..L along the last dimension, ties given their average rank (scipy.stats.rankdata's default), for
    a batch of vectors at once on their device: sort, then each tie group's first and last sorted position."""
    values, order = x.sort(dim=-1)
    length = x.shape[-1]
    position = torch.arange(length, device=x.device).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)  # a tie group starts here
    starts[..., 1:] = values[..., 1:] != values[..., :-1]
    ends = torch.ones_like(starts)  # a tie group ends here
    ends[..., :-1] = starts[..., 1:]
    first = torch.where(starts, position, 0).cummax(dim=-1).values
    last = torch.where(ends, position, length - 1).flip(-1).cummin(dim=-1).values.flip(-1)
    dtype = x.dtype if x.is_floating_point() else torch.float64
    sorted_ranks = (first + last).to(dtype) / 2 + 1
    return torch.empty_like(sorted_ranks).scatter_(-1, order, sorted_ranks)


def standardised_ranks_torch(x: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dimension, centred and scaled to unit norm (a constant vector stays zero):
    Spearman's rho of two such vectors is their dot product."""
    ranks = rank_average_torch(x)
    ranks = ranks - ranks.mean(dim=-1, keepdim=True)
    norms = ranks.norm(dim=-1, keepdim=True)
    return ranks / torch.where(norms > 0, norms, torch.ones_like(norms))


def spearman_torch(predicted: torch.Tensor, targets: torch.Tensor, ranked: bool = False) -> torch.Tensor:
    """Spearman's rho of one predicted vector (L,) with each target vector (..., L): shape (...). With `ranked`,
    `targets` are already `standardised_ranks_torch` of the targets (fixed subjects, ranked once per run).
    A constant prediction orders no pair and scores 0, as in `compare_rdms`."""
    ranks = targets if ranked else standardised_ranks_torch(targets)
    return ranks @ standardised_ranks_torch(predicted)
