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

For the same reason every row also carries `rho_mean`, the mean over subjects of the signed rho, and its
standard error `rho_se` (rsatoolbox's usual summary). Its chance level is 0 for any model RDM, while the
official score's is not: an RDM with strong per-image structure (rows that are dissimilar to everything)
squares chance correlations into a positive score, which on a noisy target (the 118 set's IT: about 5% of
the ceiling for a random such RDM) exceeds what any real model explains. Model selection uses `rho_mean`.

Other comparison methods, named as rsatoolbox names them (`rsatoolbox.rdm.compare(..., method=NAME)`), can
replace Spearman's rho: 'corr' (Pearson r), 'cosine', 'tau-a' and 'kendall' (Kendall's tau a and b), 'rho-a'
(Spearman without tie correction). The score keeps the challenge's form (mean over subjects of the squared
comparison value, over a noise ceiling computed with the same method); the official ceilings belong to
Spearman only. They are implemented here with numpy and scipy, so rsatoolbox is not needed at run time.

At scale: scores and ceilings stream the subjects one at a time (`_stream`), ranking each upper triangle once
(`rdm.Ranker`): the model and the mean of all subjects once, each subject once for its score and both
ceilings, the mean of the others once per subject. `score_condensed` and `noise_ceiling_condensed` take
upper triangles directly, (subjects, pairs) arrays such as a memory-mapped float32 .npy, for sets whose
square RDMs would not fit in memory (BENCHMARKS.md, "Scoring at scale").
"""

from __future__ import annotations

import hashlib
import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .data import TARGETS, check_real_dtype, subject_rdms
from .errors import ConfigError
from .rdm import Ranker, rank_transform, square_rdm, upper_tri, upper_tri_indices

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


# Values within 2**±400: sums of up to 2**64 of them, and of their squares, neither overflow nor underflow.
_SAFE_EXPONENT = 400
# Sums over the subjects are kept below 2**1020 (float64 overflows at 2**1024).
_SUM_EXPONENT = 1020


class TargetError(ValueError):
    """A problem of the target (subject) RDMs rather than of the model: callers that read both from files name
    the target's file in the message."""


def _rescale_safely(x: np.ndarray) -> np.ndarray:
    """x (float64, vectors along the last axis), each vector whose largest |value| lies outside 2**±400 divided in
    place by a power of two that brings it near 1; others are left as they are. A correlation or a cosine is
    scale-invariant and the scaling is exact, so their values are those of the same data at an ordinary scale,
    while the sums and sums of squares behind them (means, norms) can no longer overflow or underflow."""
    peak = np.maximum(x.max(axis=-1, keepdims=True), -x.min(axis=-1, keepdims=True))
    exponent = np.frexp(peak)[1]
    exponent[np.abs(exponent) <= _SAFE_EXPONENT] = 0  # ordinary scales: untouched, bit for bit
    if exponent.any():
        np.ldexp(x, -exponent, out=x)
    return x


def _sum_shift(rows: np.ndarray, count: int) -> int:
    """The power of two to divide `rows` by so that a sum of `count` values no larger than theirs stays finite:
    0 for all but float64 values within a factor `count` of overflowing (float32 and integers never come near)."""
    if rows.dtype != np.float64:
        return 0
    peak = max(float(rows.max()), -float(rows.min()))
    return max(0, int(np.frexp(peak)[1]) + int(count).bit_length() - _SUM_EXPONENT)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; a zero row stays zero (its similarity with anything is 0, as in rsatoolbox)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _standardise(x: np.ndarray) -> np.ndarray:
    return _unit(x - x.mean(axis=-1, keepdims=True))


def dot_vectors(vectors: np.ndarray, method: str) -> np.ndarray:
    """Upper-triangle vectors transformed so that the method's similarity of two RDMs is a dot product."""
    if method == "cosine":
        return _unit(_rescale_safely(np.array(vectors, dtype=np.float64)))
    if method == "corr":
        return _standardise(_rescale_safely(np.array(vectors, dtype=np.float64)))
    ranks = rank_transform(vectors)
    if method == "spearman":
        return _standardise(ranks)
    n = vectors.shape[-1]  # rho-a: 12 x (centred ranks . centred ranks) / (n^3 - n)
    return (ranks - ranks.mean(axis=-1, keepdims=True)) * math.sqrt(12.0 / (n**3 - n))


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


class _Subjects:
    """The subjects' upper triangles, one subject at a time, as (K, P) rows: from square RDMs ((N, N),
    (S, N, N) or (S, K, N, N)) or from condensed ones ((S, P) or (S, K, P), any array-like, a memory-mapped
    .npy included). Only one subject is ever converted, so memory stays a few upper triangles however many
    subjects there are.
    """

    def __init__(self, rdms, condensed: bool):
        self.rdms, self.condensed = rdms, condensed
        check_real_dtype(rdms.dtype if hasattr(rdms, "dtype") else np.asarray(rdms).dtype, "subject RDMs")
        shape = tuple(np.shape(rdms))
        if condensed:
            if len(shape) not in (2, 3):
                raise ValueError(f"subjects' upper triangles have shape {shape}, expected (subjects, pairs) or "
                                 "(subjects, K, pairs)")
            self.length = shape[-1]
            _check_pairs(self.length, "subjects' upper triangles")
            self.n_subjects, self.k = shape[0], shape[1] if len(shape) == 3 else 1
        else:
            if len(shape) not in (2, 3, 4) or shape[-1] != shape[-2]:
                raise ValueError(f"subject RDMs have shape {shape}, expected (N, N), (S, N, N) or (S, K, N, N)")
            n = shape[-1]
            self.length = n * (n - 1) // 2
            rows, cols = upper_tri_indices(n)
            self.flat = rows * n + cols  # where the upper triangle lies in a flattened RDM
            self.n_subjects = 1 if len(shape) == 2 else shape[0]
            self.k = shape[1] if len(shape) == 4 else 1
        self.checked: set[int] = set()

    def __len__(self) -> int:
        return self.n_subjects

    def __getitem__(self, s: int) -> np.ndarray:
        """Subject s's upper triangles, (K, P), in their stored dtype (ranks are the same in any float dtype,
        and float32 ones rank fastest; sums and differences cast them to float64 exactly). Checked once."""
        if self.condensed:
            rows = np.asarray(self.rdms[s]).reshape(self.k, self.length)
        else:
            rdm = np.asarray(self.rdms if self.n_subjects == 1 and np.ndim(self.rdms) == 2 else self.rdms[s])
            rows = rdm.reshape(self.k, -1).take(self.flat, axis=1)  # = upper_tri, faster than two index arrays
        if rows.dtype.kind != "f":  # integers and booleans (checked real in __init__) as float64
            rows = rows.astype(np.float64)
        if s in self.checked:
            return rows
        if not np.all(np.isfinite(rows)):
            raise ValueError(f"subject {s + 1} of {self.n_subjects}: its RDM contains NaN or inf")
        if self.condensed and np.any(np.ptp(rows, axis=-1) == 0):
            raise ValueError(f"subject {s + 1} of {self.n_subjects}: its RDM has a constant upper triangle, so its "
                             "Spearman correlation and the noise ceiling are undefined")
        self.checked.add(s)
        return rows


def _check_pairs(length: int, what: str) -> int:
    """The number of images N of an upper triangle of N(N-1)/2 entries (at least 3 images)."""
    n = (1 + math.isqrt(1 + 8 * length)) // 2
    if n * (n - 1) // 2 != length or n < 3:
        raise ValueError(f"{what} of length {length} are not the upper triangle of a square RDM of 3 or more images")
    return n


class _Transform:
    """One method's transform of upper-triangle vectors of one length, into preallocated arrays: for the
    dot-product methods the vector whose dot product with another's is the comparison value (unit-norm
    standardised ranks for Spearman); for Kendall's taus the float64 vector itself."""

    def __init__(self, method: str, length: int):
        self.method, self.length = method, length
        self.ranker = Ranker(length) if method in ("spearman", "rho-a") else None

    def __call__(self, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The transform of `raw` (any float dtype) as float64, into `out` when given; `out` may be `raw`
        itself (the ranker reads all of it before writing)."""
        out = np.empty(self.length) if out is None else out
        if self.ranker is not None:
            self.ranker(raw, out)
        else:
            np.copyto(out, raw)
            if self.method in ("corr", "cosine"):  # ranks are bounded; values may be near overflow or underflow
                _rescale_safely(out)
        if self.method in ("tau-a", "kendall"):
            return out
        if self.method == "rho-a":  # 12 x (centred ranks . centred ranks) / (n^3 - n)
            out -= out.mean()
            out *= math.sqrt(12.0 / (self.length**3 - self.length))
            return out
        if self.method != "cosine":
            out -= out.mean()
        norm = np.linalg.norm(out)
        if norm > 0:  # a zero vector stays zero: its similarity with anything is 0, as in rsatoolbox
            out /= norm
        return out


def _compare(a: np.ndarray, b: np.ndarray, method: str) -> float:
    """The comparison value of two vectors transformed by `_Transform`."""
    if method in DOT_METHODS:
        return float(np.dot(a, b))
    return _kendall(a, b, method)


def _stream(model, subjects: _Subjects, method: str, ceiling: bool,
            threads: int = 1) -> tuple[np.ndarray | None, tuple | None]:
    """(K-averaged comparisons of the model with each subject, or None without a model; (upper, lower) noise
    ceiling, or None), in two passes over the subjects, one at a time.

    Pass 1 sums the subjects' float64 upper triangles (in subject order, as numpy's mean over the stacked
    RDMs does, so the mean RDMs and their ranks are the same to the last bit). Pass 2 transforms each subject
    once (its ranks, for Spearman) and compares it with the model, the mean of all subjects (upper ceiling)
    and the mean of the others (lower ceiling, one more transform per subject). The model's and the grand
    mean's transforms are computed once. With `threads` > 1, independent transforms (a subject's and its
    others' mean; or, without ceilings, several subjects') run at once, each thread with its own ranker's
    working arrays: numpy's sort releases the GIL.
    """
    check_method(method)
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a whole number of 1 or more, got {threads!r}")
    n_subjects, k, length = len(subjects), subjects.k, subjects.length
    local = threading.local()

    def transform(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if not hasattr(local, "transform"):  # one per thread: a ranker's working arrays are not shared
            local.transform = _Transform(method, length)
        return local.transform(raw, out)

    def run(*jobs):
        if pool is None:
            return [job() for job in jobs]
        return [future.result() for future in [pool.submit(job) for job in jobs]]

    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        model_t = None
        if model is not None:
            raw = np.asarray(model).reshape(-1)
            check_real_dtype(raw.dtype, "model RDM")
            raw = raw if raw.dtype.kind == "f" else raw.astype(np.float64)
            if raw.shape != (length,):
                raise ValueError(f"model upper triangle of length {raw.size} does not match the subjects' {length}")
            # NaN in the model (a diverged prediction) gives NaN values, which training counts as the worst
            # score; score_condensed and files (data.validate_rdms) refuse it before.
            if np.ptp(raw) != 0 or method == "cosine":  # a constant model orders no pair: it scores 0
                model_t = run(lambda: transform(raw))[0]
        grand_t = total = None
        shift = 0  # the sums over the subjects hold them divided by 2**shift: 0 unless they would overflow

        def scaled(row: np.ndarray) -> np.ndarray:
            return row if shift == 0 else np.ldexp(row, -shift)

        if ceiling:
            if n_subjects < 2:
                raise ValueError("a noise ceiling needs at least 2 subjects")
            grand = np.zeros(length)
            total = np.zeros((k, length)) if k > 1 else grand[None]  # per K, over subjects
            for s in range(n_subjects):
                rows = subjects[s]
                needed = _sum_shift(rows, n_subjects * k)
                if needed > shift:  # the sums so far to the new power of two (exact: every method is scale-free)
                    np.ldexp(grand, shift - needed, out=grand)
                    if k > 1:
                        np.ldexp(total, shift - needed, out=total)
                    shift = needed
                for j in range(k):
                    row = scaled(rows[j])
                    grand += row
                    if k > 1:
                        total[j] += row
            grand_t = grand / (n_subjects * k)  # the mean RDM, transformed in place below
            _check_mean(grand_t, "the mean RDM of all subjects")
            run(lambda: transform(grand_t, grand_t))
        values = np.zeros((n_subjects, k)) if model is not None else None
        upper, lower = np.empty((n_subjects, k)), np.empty((n_subjects, k))
        group = 1 if ceiling else threads  # subjects transformed at once
        subject_t = np.empty((group, k, length))
        others = np.empty(length) if ceiling else None
        scratch = np.empty(length) if ceiling and k > 1 else None

        def subject_job(g: int, rows: np.ndarray):
            return lambda: [transform(rows[j], subject_t[g, j]) for j in range(k)]

        def others_job(s: int, rows: np.ndarray):
            def job() -> None:
                # The mean of the others as the old formula had it: (total - subject) / (S - 1), then over K.
                np.subtract(total[0], scaled(rows[0]), out=others)
                np.divide(others, n_subjects - 1, out=others)
                for j in range(1, k):
                    np.subtract(total[j], scaled(rows[j]), out=scratch)
                    np.divide(scratch, n_subjects - 1, out=scratch)
                    np.add(others, scratch, out=others)
                if k > 1:
                    np.divide(others, k, out=others)
                _check_mean(others, f"the mean RDM of the subjects other than subject {s + 1}")
                transform(others, others)
            return job

        for first in range(0, n_subjects, group):
            batch = range(first, min(first + group, n_subjects))
            rows = {s: subjects[s] for s in batch}
            jobs = [subject_job(g, rows[s]) for g, s in enumerate(batch)]
            run(*jobs, *([others_job(first, rows[first])] if ceiling else []))
            for g, s in enumerate(batch):
                if model_t is not None:
                    values[s] = [_compare(model_t, subject_t[g, j], method) for j in range(k)]
                if ceiling:
                    upper[s] = [_compare(grand_t, subject_t[g, j], method) for j in range(k)]
                    lower[s] = [_compare(others, subject_t[g, j], method) for j in range(k)]
    finally:
        if pool is not None:
            pool.shutdown()
    ceilings = None
    if ceiling:
        ceilings = (float(np.mean(upper.mean(axis=1) ** 2)), float(np.mean(lower.mean(axis=1) ** 2)))
        if not all(math.isfinite(c) for c in ceilings):  # finite subjects give finite ceilings: never pass NaN on
            raise FloatingPointError(f"the noise ceiling came out as {ceilings} from finite subject RDMs")
    return (None if values is None else values.mean(axis=1)), ceilings


def compare_rdms(model_rdm: np.ndarray, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> np.ndarray:
    """The comparison of one model RDM with every subject RDM, K-averaged: shape (S,). `method` is one of
    `COMPARISON_METHODS`, as `rsatoolbox.rdm.compare` computes it on the upper triangles.

    Each subject is transformed once (ranked, for Spearman) and compared with the model's transform, computed
    once; Kendall's taus take O(L log L) per subject. A constant model RDM orders no pair: it scores 0 (a
    model that collapsed during training then scores as the worst, never as NaN). A model RDM with NaN gets
    NaN values (training counts them as the worst score); NaN or inf in a subject's RDM is a ValueError.
    """
    model = np.asarray(model_rdm)
    values, _ = _stream(upper_tri(model), _Subjects(target_rdms, condensed=False), method, ceiling=False)
    return values


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
    rng = np.random.default_rng(check_seed(seed))
    batch = max(1, PERMUTATION_CHUNK // len(rows))
    scores = np.empty(n_permutations)
    for start in range(0, n_permutations, batch):
        size = min(batch, n_permutations - start)
        perms = rng.permuted(np.tile(np.arange(n), (size, 1)), axis=1)
        permuted = ranks[perms[:, rows], perms[:, cols]]  # (size, L): upper triangles of the relabelled RDMs
        rhos = (permuted @ targets.T).reshape(size, n_subjects, -1).mean(axis=2)
        scores[start : start + size] = np.mean(rhos**2, axis=1)
    return scores


def check_seed(seed) -> int:
    """The permutations' seed: a whole number of 0 or more (numpy's generators take no negative seed); a
    ConfigError naming the `seed` setting, so that the command line names --seed, not an input file."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError("seed", f"must be a whole number of 0 or more, got {seed!r}")
    return int(seed)


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


def _check_mean(vector: np.ndarray, what: str) -> None:
    """A mean RDM whose upper triangle is constant has no Spearman correlation: say so instead of NaN."""
    if np.ptp(vector) == 0:
        raise ValueError(f"{what} has a constant upper triangle, so the noise ceiling is undefined")


def noise_ceiling(target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> tuple[float, float]:
    """(upper, lower) noise ceiling in the metric's units (mean r^2), compared with `method`.

    Upper: each subject against the mean of all subjects. Lower: each subject against the mean of the others.
    Raises ValueError, never returns NaN, when a mean RDM is constant (e.g. two subjects whose RDMs add up
    to a constant); `data.validate_rdms` already rejects constant individual RDMs. Each subject is ranked once
    and each mean once (see `_stream`).
    """
    _, ceilings = _stream(None, _Subjects(np.asarray(target_rdms), condensed=False), method, ceiling=True)
    return ceilings


def score_condensed(model_vector, subject_vectors, method: str = OFFICIAL_METHOD, ceiling: bool = True,
                    threads: int = 1) -> tuple[Score, tuple[float, float] | None]:
    """The challenge score of a model's upper triangle (P,) against subjects' upper triangles, (S, P) or
    (S, K, P) (any array-like: a memory-mapped .npy of float32 works and is the fastest to rank), with the
    (upper, lower) noise ceiling when `ceiling` (None otherwise, and with one subject).

    For sets too large for square RDMs (10,000 images: 50 million pairs per subject). Subjects are read one
    at a time, so memory holds a few upper triangles (and a ranker's working arrays) whatever the number of
    subjects. Same values as `score_rdm` and `noise_ceiling` on the square RDMs. A subject with NaN, inf or a
    constant upper triangle is a `TargetError` naming it; a bad model vector, a plain ValueError. `threads` > 1
    ranks that many vectors at once (each thread keeps its own working arrays: memory grows with it); the default
    1 leaves the other cores alone.
    """
    check_real_dtype(np.asarray(model_vector).dtype, "model RDM")
    if not np.all(np.isfinite(model_vector)):
        raise ValueError("model RDM contains NaN or inf")
    pairs = np.shape(subject_vectors)[-1:]
    if pairs and np.size(model_vector) != pairs[0]:
        raise ValueError(f"model upper triangle of length {np.size(model_vector)} does not match the subjects' "
                         f"{pairs[0]}")
    try:  # the model is checked above: what goes wrong now is the subjects' (one of them, or their mean)
        subjects = _Subjects(subject_vectors, condensed=True)
        rho, ceilings = _stream(model_vector, subjects, method, ceiling=ceiling and len(subjects) >= 2,
                                threads=threads)
    except TargetError:
        raise
    except ValueError as exc:
        raise TargetError(str(exc)) from None
    return Score(float(np.mean(rho**2)), official_p(rho), rho, signed_p(rho)), ceilings


def noise_ceiling_condensed(subject_vectors, method: str = OFFICIAL_METHOD, threads: int = 1) -> tuple[float, float]:
    """(upper, lower) noise ceiling of subjects' upper triangles, (S, P) or (S, K, P) (see `score_condensed`)."""
    _, ceilings = _stream(None, _Subjects(subject_vectors, condensed=True), method, ceiling=True, threads=threads)
    return ceilings


def target_name(key: str) -> str:
    """'EVC_RDMs' -> 'EVC'; names that are already target names pass through."""
    return _KEY_TO_TARGET.get(key, key)


def official_noise_ceiling(key: str, n_images: int) -> float | None:
    """The challenge's ceiling for one of its keys ('EVC_RDMs', 'MEG_RDMs_late', ...) on an official set (92,
    118, 78 images), else None. Plain target names ('EVC') are not the challenge's keys: data keyed so are
    your own (see data.target_key), and their ceiling is computed from the subjects."""
    if key not in _KEY_TO_TARGET:
        return None
    return OFFICIAL_NOISE_CEILINGS.get(n_images, {}).get(_KEY_TO_TARGET[key])


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


def signed_summary(rho: np.ndarray) -> dict:
    """The mean over subjects of the signed rho and its standard error (None with one subject): a statistic
    whose chance level is 0 whatever the model RDM's structure, unlike the official mean of rho^2."""
    rho = np.asarray(rho, dtype=np.float64)
    se = float(rho.std(ddof=1) / math.sqrt(len(rho))) if len(rho) >= 2 else None
    return {"rho_mean": float(rho.mean()), "rho_se": se}


def _submission_row(score: Score, p_perm: float | None, ceiling: float | None, source: str | None,
                    lower: float | None, method: str) -> dict:
    """One key's row of `siamrdm score`'s result: strict JSON (undefined p-values are None, never NaN)."""
    return {"r2": score.r2, "p": _finite_or_none(score.p), "p_signed": _finite_or_none(score.p_signed),
            "p_perm": p_perm, "pct_nc": percent_of_ceiling(score.r2, ceiling), "ceiling_source": source,
            "noise_ceiling": ceiling, "noise_ceiling_lower": lower, "method": method, **signed_summary(score.rho)}


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
    check_seed(seed)
    missing = [k for k in targets if k not in submission]
    result: dict = {}
    ceilings = []
    for key in keys:
        model, n = np.asarray(submission[key]), targets[key].shape[-1]
        check_real_dtype(model.dtype, f"{key}: model RDM")
        model = np.asarray(model, dtype=np.float64)
        if model.shape != (n, n):
            raise ValueError(f"{key}: model RDM has shape {model.shape}, expected one {n} x {n} RDM")
        if not np.all(np.isfinite(model)):
            raise ValueError(f"{key}: model RDM contains NaN or inf")
        if np.ptp(upper_tri(model)) == 0:
            raise ValueError(f"{key}: model RDM is constant, so its Spearman correlation is undefined")
        target = targets[key]
        several = subject_rdms(target).shape[0] >= 2  # one pass: scores and computed ceilings share the ranks
        try:  # the model is checked above: what goes wrong now is the target's (a subject, or their mean)
            rho, computed = _stream(upper_tri(model), _Subjects(target, condensed=False), method, ceiling=several)
        except ValueError as exc:
            raise TargetError(f"{key}: {exc}") from None
        if not np.all(np.isfinite(rho)):  # finite RDMs give finite values: never pass NaN on as a score
            raise FloatingPointError(f"{key}: the comparison values came out as {rho} from finite RDMs")
        score = Score(float(np.mean(rho**2)), official_p(rho), rho, signed_p(rho))
        source = ceiling_source(key, target, method)
        ceiling = {"official": official_noise_ceiling(key, target.shape[-1]),
                   "computed": computed[0] if computed else None}.get(source)
        p_perm = permutation_p(model, target, permutations, seed, method) if permutations else None
        ceilings.append(ceiling)
        result[key] = _submission_row(score, p_perm, ceiling, source, computed[1] if computed else None, method)
    if missing:
        result["score"] = None
        result["missing"] = missing
        return result
    mean_r2 = float(np.mean([result[k]["r2"] for k in keys]))
    mean_ceiling = None if any(c is None for c in ceilings) else float(np.mean(ceilings))
    result["score"] = {"r2": mean_r2, "pct_nc": percent_of_ceiling(mean_r2, mean_ceiling)}
    return result


def score_condensed_submission(model_vector, subject_vectors, key: str, method: str = OFFICIAL_METHOD,
                               threads: int = 1) -> dict:
    """What `score_submission` returns, for one key given as upper triangles (`score_condensed`'s inputs): the
    form `siamrdm score` prints for sets too large for square RDMs. Their ceiling is computed from the subjects
    (no official set is that large); there is no permutation p-value (each permutation would re-rank every
    subject's 50 million pairs)."""
    score, ceilings = score_condensed(model_vector, subject_vectors, method, ceiling=True, threads=threads)
    upper, lower = ceilings if ceilings else (None, None)
    row = _submission_row(score, None, upper, "computed" if upper is not None else None, lower, method)
    return {key: row, "score": {"r2": score.r2, "pct_nc": row["pct_nc"]}}


# --------------------------------------------------------------------------- on the device (torch)
# Per-epoch validation scores the predicted pairs where they are (the GPU), so that an epoch's score costs one
# host synchronisation; the same Spearman as `compare_rdms` to float rounding (tests check it against scipy).


def score_row(rho: np.ndarray, key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> dict:
    """One scored row from the per-subject (K-averaged) comparison values: r2, the official p and p_signed, the
    reference ceiling for `key` and the percent of it, the signed mean rho and its standard error (what
    `score_with_ceiling` returns)."""
    rho = np.asarray(rho, dtype=np.float64)
    r2 = float(np.mean(rho**2))
    ceiling = reference_ceiling(key, target_rdms, method)
    return {"r2": r2, "p": official_p(rho), "p_signed": signed_p(rho), "noise_ceiling": ceiling,
            "ceiling_source": ceiling_source(key, target_rdms, method), "pct_nc": percent_of_ceiling(r2, ceiling),
            **signed_summary(rho)}


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
    A constant prediction orders no pair and scores 0, and a prediction with NaN (a diverged model) scores NaN,
    both as in `compare_rdms`: a sort would rank NaN as the largest value and give a finite rho, so a broken
    model could be kept as the best epoch. The NaN check stays on the device (no host synchronisation)."""
    ranks = targets if ranked else standardised_ranks_torch(targets)
    rho = ranks @ standardised_ranks_torch(predicted)
    return torch.where(predicted.isnan().any(), torch.nan, rho)
