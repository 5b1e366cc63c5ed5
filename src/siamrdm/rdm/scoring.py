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

One record, `ScoreRecord`, built by one function, `score_record`, is the row of every score table (`score`,
fit's validation, `evaluate`, `challenge`, the mini-batch validation, the report; `tables.SCORE_FIELDS`): the
official score and its percent of the ceiling; beside it this very model RDM's chance level (its score with the
image labels permuted: mean and 95th percentile, in r2 and in % of the ceiling), p_perm and beats_chance; and
rho_mean +- rho_se with the lower ceiling in the same unit (`rho_lower_ceiling`). Permutations are on by default
up to PERMUTE_UP_TO_IMAGES images (`default_permutations`: 1000 take about 0.3 s at 118 images).
Each record also holds the 95% bootstrap interval over subjects of rho_mean and of r2 (seeded) and the
per-subject rhos, which `paired_rows` pairs to test each method against each baseline (paired t-test, the
tables' p, and Wilcoxon's signed-rank test; rsatoolbox's eval_fixed and test_pairwise give the same numbers).

Other comparison methods (one table of them, `COMPARISONS`), named as rsatoolbox names them
(`rsatoolbox.rdm.compare(..., method=NAME)`), can replace Spearman's rho: 'corr' (Pearson r), 'cosine',
'tau-a' and 'kendall' (Kendall's tau a and b), 'rho-a' (Spearman without tie correction). The score keeps
the challenge's form (mean over subjects of the squared comparison value, over a noise ceiling computed with
the same method); the official ceilings belong to Spearman only. They are implemented here with numpy and
scipy, so rsatoolbox is not needed at run time.

At scale: scores and ceilings stream the subjects one at a time (`_stream`), ranking each upper triangle once
(`rdm.Ranker`): the model and the mean of all subjects once, each subject once for its score and both
ceilings, the mean of the others once per subject. `score_condensed` and `noise_ceiling_condensed` take
upper triangles directly, (subjects, pairs) arrays such as a memory-mapped float32 .npy, for sets whose
square RDMs would not fit in memory (BENCHMARKS.md, "Scoring at scale").
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import ConfigError
from ..io.datasets import TARGETS
from ..io.limits import check_real_dtype
from ..io.tables import number, number_list
from .core import Ranker, square_rdm, subject_rdms, upper_tri, upper_tri_indices

# Official noise ceilings (upper bound, mean over subjects of r^2) from the challenge's scoring scripts.
OFFICIAL_NOISE_CEILINGS: dict[int, dict[str, float]] = {
    92: {"EVC": 0.1589, "IT": 0.3075, "MEG_early": 0.4634, "MEG_late": 0.2275},
    118: {"EVC": 0.1048, "IT": 0.0728, "MEG_early": 0.3468, "MEG_late": 0.2265},
    78: {"EVC": 0.0640, "IT": 0.0647, "MEG_early": 0.3562, "MEG_late": 0.4452},
}
_KEY_TO_TARGET = {key: name for name, (_, key) in TARGETS.items()}


@dataclasses.dataclass
class Score:
    r2: float  # mean over subjects of rho^2
    p: float  # official: one-sample t-test of the subjects' rho^2 against 0 (NaN with one subject)
    rho: np.ndarray  # per subject, K-averaged
    p_signed: float  # two-sided one-sample t-test of the signed rhos against 0 (NaN with one subject)


OFFICIAL_METHOD = "spearman"


@dataclasses.dataclass(frozen=True)
class _Comparison:
    """How one comparison method turns an upper triangle into what it compares (`_Transform` applies it)."""

    ranked: bool  # compared on average ranks (Spearman, rho-a) rather than on the values
    centred: bool  # the mean subtracted first
    scale: str  # 'unit' (unit norm), 'rho-a' (12 / (n^3 - n)), '' (Kendall: the values as they are, no dot product)


# The one table of comparison methods, named as rsatoolbox names them. Those with a scale are dot products of
# their transformed vectors (so one matrix product compares many RDMs at once); Kendall's taus count pairs.
COMPARISONS = {
    "spearman": _Comparison(ranked=True, centred=True, scale="unit"),
    "rho-a": _Comparison(ranked=True, centred=True, scale="rho-a"),
    "corr": _Comparison(ranked=False, centred=True, scale="unit"),
    "cosine": _Comparison(ranked=False, centred=False, scale="unit"),
    "tau-a": _Comparison(ranked=False, centred=False, scale=""),
    "kendall": _Comparison(ranked=False, centred=False, scale=""),
}
DOT_METHODS = tuple(name for name, c in COMPARISONS.items() if c.scale)  # a dot product of transformed vectors
COMPARISON_METHODS = tuple(COMPARISONS)


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


def dot_vectors(vectors: np.ndarray, method: str) -> np.ndarray:
    """Upper-triangle vectors (along the last axis) transformed so that the method's similarity of two RDMs is a
    dot product: `_Transform` applied to each vector."""
    if check_method(method) not in DOT_METHODS:
        raise ValueError(f"'{method}' is not a dot product of transformed vectors (one of {', '.join(DOT_METHODS)})")
    x = np.asarray(vectors)
    rows = x.reshape(-1, x.shape[-1])
    transform = _Transform(method, rows.shape[1])
    out = np.empty(rows.shape)
    for k, row in enumerate(rows):
        transform(np.ascontiguousarray(row), out[k])
    return out.reshape(x.shape)


def _tie_pairs(x: np.ndarray) -> int:
    _, counts = np.unique(x, return_counts=True)
    return int(np.sum(counts * (counts - 1) // 2))


def _kendall(a: np.ndarray, b: np.ndarray, variant: str) -> float:
    """Kendall's tau b (scipy), or tau a = (concordant - discordant) / all pairs, derived from tau b:
    concordant - discordant = tau_b * sqrt((pairs - ties in a)(pairs - ties in b)). Constant vectors order no
    pair: 0."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    from scipy import stats  # on first use: scipy.stats is slow to import, and `siamrdm --help` needs none

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

    def __init__(self, rdms, condensed: bool, sampled: bool = False):
        """`sampled`: condensed vectors hold any set of pairs (a sample of an RDM's), not a whole upper triangle."""
        self.rdms, self.condensed = rdms, condensed
        check_real_dtype(rdms.dtype if hasattr(rdms, "dtype") else np.asarray(rdms).dtype, "subject RDMs")
        shape = tuple(np.shape(rdms))
        if condensed:
            if len(shape) not in (2, 3):
                raise ValueError(f"subjects' upper triangles have shape {shape}, expected (subjects, pairs) or "
                                 "(subjects, K, pairs)")
            self.length = shape[-1]
            if not sampled:
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
        self.ranker = Ranker(length) if COMPARISONS[method].ranked else None

    def __call__(self, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The transform of `raw` (any float dtype) as float64, into `out` when given; `out` may be `raw`
        itself (the ranker reads all of it before writing)."""
        spec = COMPARISONS[self.method]
        out = np.empty(self.length) if out is None else out
        if self.ranker is not None:
            self.ranker(raw, out)
        else:
            np.copyto(out, raw)
            if spec.scale:  # ranks are bounded; values may be near overflow or underflow
                _rescale_safely(out)
        if not spec.scale:  # Kendall's taus compare the values themselves
            return out
        if spec.centred:
            out -= out.mean()
        if spec.scale == "rho-a":  # 12 x (centred ranks . centred ranks) / (n^3 - n)
            out *= math.sqrt(12.0 / (self.length**3 - self.length))
            return out
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
    """(K-averaged comparisons of the model with each subject, or None without a model; (upper, lower, lower in
    rho units, upper in rho units) noise ceiling, or None), in two passes over the subjects, one at a time. The
    ceilings in rho units are the means over subjects of the (K-averaged) comparison with the mean of the others
    (lower) and of all subjects (upper), the same unit as a model's `rho_mean`.

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
        ceilings = (float(np.mean(upper.mean(axis=1) ** 2)), float(np.mean(lower.mean(axis=1) ** 2)),
                    float(np.mean(lower.mean(axis=1))), float(np.mean(upper.mean(axis=1))))
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


# Seeds are 0 <= seed < 2**32, what numpy's and torch's generators all take; here (torch-free) for the command
# line's checks of `score`, config re-exports it for the training settings.
SEED_LIMIT = 2**32
PERMUTATION_CHUNK = 2**22  # upper-triangle entries gathered per batch of permutations (32 MiB of float64)


def permutation_scores(
    model_rdm: np.ndarray, target_rdms: np.ndarray, n_permutations: int, seed: int = 0,
    method: str = OFFICIAL_METHOD, signed: bool = False,
) -> np.ndarray:
    """The score (mean over subjects of rho^2; with `signed`, of rho) of the model RDM under `n_permutations`
    random relabellings.

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
        scores[start : start + size] = np.mean(rhos if signed else rhos**2, axis=1)
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
    return _p_from_null(observed, permutation_scores(model_rdm, target_rdms, n_permutations, seed, method))


def _check_mean(vector: np.ndarray, what: str) -> None:
    """A mean RDM whose upper triangle is constant has no Spearman correlation: say so instead of NaN."""
    if np.ptp(vector) == 0:
        raise ValueError(f"{what} has a constant upper triangle, so the noise ceiling is undefined")


@dataclasses.dataclass(frozen=True)
class NoiseCeiling:
    """A target's noise ceiling in both units: r2 (the challenge's, what pct_nc divides by) and rho (rsatoolbox's
    `boot_noise_ceiling`, read as (lower, upper) against a model's `rho_mean`). Upper: each subject against the
    mean of all subjects; lower: each subject against the mean of the others."""

    upper: float  # r2 units: mean over subjects of rho^2 with the mean of all subjects
    lower: float  # r2 units: ... with the mean of the others
    rho_lower: float  # rho units: mean over subjects of rho with the mean of the others
    rho_upper: float  # rho units: ... with the mean of all subjects
    method: str = OFFICIAL_METHOD

    @property
    def rho(self) -> tuple[float, float]:
        """(lower, upper) in rho units, in rsatoolbox's order."""
        return self.rho_lower, self.rho_upper

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_frame(self):
        """One row (pandas DataFrame), for a notebook."""
        from ..io.tables import to_frame

        return to_frame([self.to_dict()], [f.name for f in dataclasses.fields(self)])


def noise_ceilings(target_rdms, method: str = OFFICIAL_METHOD, condensed: bool = False,
                   threads: int = 1) -> NoiseCeiling:
    """The noise ceiling of subject RDMs in r2 and in rho units (`NoiseCeiling`), compared with `method`: from
    square RDMs, or with `condensed` from upper triangles, (S, P) or (S, K, P) (see `score_condensed`).

    Raises ValueError, never returns NaN, when a mean RDM is constant (e.g. two subjects whose RDMs add up
    to a constant); `data.validate_rdms` already rejects constant individual RDMs. Each subject is ranked once
    and each mean once (see `_stream`).
    """
    subjects = _Subjects(target_rdms if condensed else np.asarray(target_rdms), condensed=condensed)
    _, (upper, lower, rho_lower, rho_upper) = _stream(None, subjects, method, ceiling=True, threads=threads)
    return NoiseCeiling(upper, lower, rho_lower, rho_upper, method)


def noise_ceiling(target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> tuple[float, float]:
    """(upper, lower) noise ceiling in the metric's units (mean r^2), compared with `method` (`noise_ceilings`
    has the same in rho units too)."""
    ceiling = noise_ceilings(target_rdms, method)
    return ceiling.upper, ceiling.lower


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
    score, ceilings = _score_condensed(model_vector, subject_vectors, method, ceiling, threads)
    return score, ceilings and ceilings[:2]


def _score_condensed(model_vector, subject_vectors, method: str, ceiling: bool,
                     threads: int) -> tuple[Score, tuple[float, float, float] | None]:
    """`score_condensed` with the lower ceiling in rho units as the ceilings' third value."""
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
    ceiling = noise_ceilings(subject_vectors, method, condensed=True, threads=threads)
    return ceiling.upper, ceiling.lower


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


_COMPUTED_CEILINGS: dict[tuple, tuple[float, float, float, float]] = {}


NO_CEILING_NOTE = "one RDM, no subjects to estimate a noise ceiling from: scores are r2 only"


def ceiling_source(key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> str | None:
    """Which ceiling belongs to these data: 'official' for the challenge's own files scored with the official
    metric, 'computed' (upper bound from the subjects) otherwise, None for a single RDM.

    An official ceiling belongs to the official files, recognised by their content, not by a key and an image
    count: the key and size must be the challenge's, and the ceiling computed from the file's subjects must equal
    the published one to its 4 decimals (as the official fMRI files' do). Another study of the same images, a
    subset of the subjects, another target under an official key or the window-averaged MEG files get their own
    computed ceiling; a single RDM has none (it has no subjects to bound a score with).
    """
    if subject_rdms(np.asarray(target_rdms)).shape[0] < 2:
        return None
    return _source(key, target_rdms.shape[-1], lambda: _computed_ceilings(target_rdms, method)[0], method)


def _source(key: str, n_images: int, computed_upper: Callable[[], float], method: str) -> str:
    """'official' where the key, the size and the subjects' computed upper ceiling are the challenge's (see
    `ceiling_source`), else 'computed'; the ceiling is computed only for an official key and size."""
    official = official_noise_ceiling(key, n_images) if method == OFFICIAL_METHOD else None
    return "official" if official is not None and round(computed_upper(), 4) == official else "computed"


def _computed_ceilings(target_rdms: np.ndarray, method: str) -> tuple[float, float, float, float]:
    """(upper, lower, lower in rho units, upper in rho units) from the subjects, kept per data and method, since
    training validates against the same subjects every epoch."""
    data = np.asarray(target_rdms, dtype=np.float64)
    fingerprint = (method, data.shape, hashlib.blake2b(np.ascontiguousarray(data).tobytes(), digest_size=16).digest())
    if fingerprint not in _COMPUTED_CEILINGS:
        _, _COMPUTED_CEILINGS[fingerprint] = _stream(None, _Subjects(data, condensed=False), method, ceiling=True)
    return _COMPUTED_CEILINGS[fingerprint]


def reference_ceiling(key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> float | None:
    """The ceiling a score is divided by (see `ceiling_source`)."""
    return ceilings_for(key, target_rdms, method).upper


def lower_ceiling(target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> float | None:
    """The lower noise ceiling computed from the subjects (each against the mean of the others); None with one."""
    if subject_rdms(np.asarray(target_rdms)).shape[0] < 2:
        return None
    return _computed_ceilings(target_rdms, method)[1]


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """What one target's scores are divided by and read against."""

    source: str | None  # 'official' (the challenge's own files), 'computed' (from the subjects) or None (one RDM)
    upper: float | None  # the reference ceiling, r2 units: what pct_nc divides by
    lower: float | None  # lower bound, r2 units: each subject against the mean of the others (None with one)
    rho_lower: float | None  # the same lower bound in rho units: the mean over subjects of that rho
    rho_upper: float | None = None  # the computed upper bound in rho units (None where none is computed)


NO_CEILINGS = Ceilings(None, None, None, None)


def ceilings_for(key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> Ceilings:
    """The ceilings of a target's subject RDMs for `key` (see `ceiling_source`); those computed from the
    subjects are kept per data (`_computed_ceilings`)."""
    if subject_rdms(np.asarray(target_rdms)).shape[0] < 2:
        return NO_CEILINGS
    upper, lower, rho_lower, rho_upper = _computed_ceilings(target_rdms, method)
    source = _source(key, target_rdms.shape[-1], lambda: upper, method)
    if source == "official":
        upper = official_noise_ceiling(key, target_rdms.shape[-1])
    return Ceilings(source, upper, lower, rho_lower, rho_upper)


def vector_ceilings(subject_vectors: np.ndarray, method: str = OFFICIAL_METHOD) -> Ceilings:
    """The ceilings computed from subjects' vectors of the same pairs, (S, P): a whole upper triangle or any
    sample of pairs (held-out pairs, a random sample of a large RDM's). None of them with one subject."""
    if len(subject_vectors) < 2:
        return NO_CEILINGS
    _, computed = _stream(None, _Subjects(subject_vectors, condensed=True, sampled=True), method, ceiling=True)
    return Ceilings("computed", *computed)


def ceiling_info(key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> dict:
    """The ceiling that scores of these data are divided by, where it comes from, and the lower bound."""
    ceilings = ceilings_for(key, target_rdms, method)
    return {"ceiling_source": ceilings.source, "noise_ceiling": ceilings.upper,
            "noise_ceiling_lower": ceilings.lower}


def percent_of_ceiling(r2: float | None, ceiling: float | None) -> float | None:
    return None if r2 is None or ceiling is None or ceiling <= 0 else 100.0 * r2 / ceiling


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def signed_summary(rho: np.ndarray) -> dict:
    """The mean over subjects of the signed rho and its standard error (None with one subject): a statistic
    whose chance level is 0 whatever the model RDM's structure, unlike the official mean of rho^2."""
    rho = np.asarray(rho, dtype=np.float64)
    se = float(rho.std(ddof=1) / math.sqrt(len(rho))) if len(rho) >= 2 else None
    return {"rho_mean": float(rho.mean()), "rho_se": se}


# --------------------------------------------------------------------------- intervals and paired tests
# What rsatoolbox users read beside a mean over subjects: its standard error (the sample SE, ddof=1: what
# rsatoolbox's eval_fixed reports, its ddof=0 variance corrected by n / (n - 1)), a 95% bootstrap
# interval over subjects (percentile interval of the mean over resampled subjects, as rsatoolbox's bootstrap
# evaluations give), and paired tests of one method against another on the same subjects (rsatoolbox's
# test_pairwise: 't-test' and 'ranksum', the Wilcoxon signed-rank test). Seeded: the same values give the same
# interval on every run.

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95


def bootstrap_indices(n: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(samples, n) indices of `samples` resamples with replacement of n units (subjects, folds), seeded."""
    return np.random.default_rng(check_seed(seed)).integers(0, n, size=(samples, n))


def _percentile_interval(means: np.ndarray, level: float = CI_LEVEL) -> tuple[float | None, float | None]:
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return _finite_or_none(float(low)), _finite_or_none(float(high))


def bootstrap_ci(values, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = CI_LEVEL) -> tuple[float | None, float | None]:
    """The `level` percentile interval of the mean of `values` over `samples` resamples of them (with
    replacement, seeded); (None, None) with fewer than 2 values or any that is not finite."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) < 2 or not np.all(np.isfinite(values)):
        return None, None
    return _percentile_interval(values[bootstrap_indices(len(values), samples, seed)].mean(axis=1), level)


def mean_summary(values) -> dict:
    """n, mean, standard error (ddof=1) and the 95% bootstrap interval of the mean (`bootstrap_ci`) of values
    over units such as subjects or folds; None where undefined (one value), never NaN."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not len(values):
        return {"n": 0, "mean": None, "se": None, "ci_low": None, "ci_high": None}
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) >= 2 else None
    low, high = bootstrap_ci(values)
    return {"n": len(values), "mean": _finite_or_none(float(values.mean())),
            "se": None if se is None else _finite_or_none(se), "ci_low": low, "ci_high": high}


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """One method against another on the same units (subjects, or folds), the differences a - b."""

    n: int
    mean_diff: float | None  # mean of a - b
    diff_se: float | None  # its standard error (ddof=1)
    diff_ci_low: float | None  # 95% bootstrap interval of the mean difference
    diff_ci_high: float | None
    t: float | None  # paired t statistic
    p_t: float | None  # two-sided paired t-test (scipy.stats.ttest_rel): the tables' p
    p_wilcoxon: float | None  # two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon; exact for small n)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def paired_test(a, b) -> PairedTest:
    """Paired tests of a against b (same units in the same order): the paired t-test (the tables' p; what
    rsatoolbox's test_pairwise('t-test') computes for eval_fixed) and the Wilcoxon
    signed-rank test (rsatoolbox's 'ranksum'). None where undefined: fewer than 2 pairs, or no difference at all."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in number: {len(a)} and {len(b)}")
    diff = a - b
    summary = mean_summary(diff)
    t = p_t = p_w = None
    if len(diff) >= 2 and np.all(np.isfinite(diff)) and np.any(diff != 0):
        import warnings

        from scipy import stats  # on first use, as in `_rank`: slow to import

        with warnings.catch_warnings():  # identical differences: scipy warns about precision
            warnings.simplefilter("ignore", RuntimeWarning)
            test = stats.ttest_rel(a, b)
            t, p_t = _finite_or_none(float(test.statistic)), _finite_or_none(float(test.pvalue))
            p_w = _finite_or_none(float(stats.wilcoxon(a, b).pvalue))
    return PairedTest(len(diff), summary["mean"], summary["se"], summary["ci_low"], summary["ci_high"], t, p_t, p_w)


def holm(p_values) -> list[float | None]:
    """Holm's step-down adjustment of p-values for the number of comparisons (None stays None, and is not
    counted): the family-wise error stays below alpha when the adjusted p < alpha is called a difference."""
    present = [(p, k) for k, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, k) in enumerate(sorted(present)):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[k] = running
    return adjusted


def registered_baselines() -> tuple[str, ...]:
    """The baselines of the method registry (pipelines.methods: the pretrained body's features only)."""
    from ..pipelines.methods import baseline_names  # torch-free, as this module

    return baseline_names()


def _is_fold(direction: str) -> bool:
    return str(direction).startswith("fold ")


def paired_rows(rows: list[dict], baselines: tuple[str, ...] | None = None) -> list[dict]:
    """Each method against each baseline present (None: `registered_baselines`; `paired_test` of the signed rho,
    `tables.PAIRED_COLUMNS`):
    across sets or in a challenge, per target and direction, paired over the test set's subjects (each row's
    `rhos`); for image folds (directions 'fold 1', ...) per target, paired over the folds (each fold's rho_mean)
    and over the subjects (each subject's rho averaged over the folds: the same subjects are held out in every
    fold). Rows as dicts of numbers or as CSV text; pairs whose rows lack rhos (older tables) are left out."""
    baselines = registered_baselines() if baselines is None else baselines
    methods = list(dict.fromkeys(r["method"] for r in rows))
    pairs = [(m, b) for b in baselines if b in methods for m in methods if m not in baselines]
    out = []

    def add(target, direction, over, method, baseline, a, b):
        if a is not None and b is not None and len(a) == len(b) and len(a):
            out.append({"target": target, "direction": direction, "method": method, "baseline": baseline,
                        "over": over, **paired_test(a, b).to_dict()})

    by_target: dict = {}  # target -> its rows, in one pass (a table of many targets: linear, not quadratic)
    for r in rows:
        by_target.setdefault(r["target"], []).append(r)
    for target, group in by_target.items():
        directions = list(dict.fromkeys(str(r.get("direction") or "") for r in group))
        by = {(r["method"], str(r.get("direction") or "")): r for r in group}
        folds = len(directions) > 1 and all(_is_fold(d) for d in directions)
        for method, baseline in pairs:
            if folds:
                both = [d for d in directions if (method, d) in by and (baseline, d) in by]
                a = [number(by[method, d].get("rho_mean")) for d in both]
                b = [number(by[baseline, d].get("rho_mean")) for d in both]
                if None not in a and None not in b:
                    add(target, "all folds", "folds", method, baseline, a, b)
                a_s = [number_list(by[method, d].get("rhos")) for d in both]
                b_s = [number_list(by[baseline, d].get("rhos")) for d in both]
                if both and all(v is not None for v in a_s + b_s) and len({len(v) for v in a_s + b_s}) == 1:
                    add(target, "all folds", "subjects", method, baseline, np.mean(a_s, axis=0),
                        np.mean(b_s, axis=0))
            else:
                for d in directions:
                    if (method, d) in by and (baseline, d) in by:
                        add(target, d, "subjects", method, baseline, number_list(by[method, d].get("rhos")),
                            number_list(by[baseline, d].get("rhos")))
    return out


def method_comparison(rows: list[dict], alpha: float = 0.05, targets: int | None = None) -> list[dict]:
    """What the report's leading figure shows: per target (and direction, across sets; over all folds for image
    folds), every method's signed mean rho over subjects with its 95% bootstrap interval, the lower noise ceiling
    in rho units (`rho_lower_ceiling`; and `rho_upper_ceiling` where a record has one), the chance level in rho
    units (sqrt of the 95th percentile of r2 with the image labels permuted: the rho every subject would need to
    reach it), and each method's paired t-test against the best one (highest mean rho) over the subjects,
    Holm-corrected for the number of comparisons in its group (`differs`: adjusted p < alpha). For image folds
    each subject's rho is averaged over the folds first, as `paired_rows` does. Rows as dicts or CSV text. With
    `targets`, only the first that many targets (a figure shows no more): the rows are grouped in one pass."""
    out = []
    by_target: dict[str, list[dict]] = {}
    for r in rows:
        by_target.setdefault(r["target"], []).append(r)
    for target in list(by_target)[:targets]:
        group = by_target[target]
        directions = list(dict.fromkeys(str(r.get("direction") or "") for r in group))
        folds = len(directions) > 1 and all(_is_fold(d) for d in directions)
        cells = [("all folds", group)] if folds else [(d, [r for r in group if str(r.get("direction") or "") == d])
                                                       for d in directions]
        for direction, members in cells:
            bars = []
            for method in dict.fromkeys(r["method"] for r in members):
                mine = [r for r in members if r["method"] == method]
                rhos = [number_list(r.get("rhos")) for r in mine]
                usable = all(v is not None for v in rhos) and len({len(v) for v in rhos}) == 1
                subjects = np.mean(rhos, axis=0) if usable else None

                def mean_of(name: str, rows_: list[dict] = mine) -> float | None:
                    values = [number(r.get(name)) for r in rows_]
                    return None if None in values or not values else float(np.mean(values))

                if subjects is not None and len(mine) > 1:
                    summary = mean_summary(subjects)
                    rho, low, high = summary["mean"], summary["ci_low"], summary["ci_high"]
                else:
                    rho, low, high = mean_of("rho_mean"), mean_of("rho_ci_low"), mean_of("rho_ci_high")
                chance = mean_of("chance_r2_95")
                bars.append({"target": target, "direction": direction, "method": method, "rho_mean": rho,
                             "rho_ci_low": low, "rho_ci_high": high, "rho_lower_ceiling": mean_of("rho_lower_ceiling"),
                             "rho_upper_ceiling": mean_of("rho_upper_ceiling"),
                             "chance_rho_95": None if chance is None else math.sqrt(max(chance, 0.0)),
                             "subjects": subjects, "best": False, "p_vs_best": None, "p_holm": None,
                             "differs": None})
            scored = [b for b in bars if b["rho_mean"] is not None]
            if scored:
                best = max(scored, key=lambda b: b["rho_mean"])
                best["best"] = True
                others = [b for b in bars if b is not best]
                for b in others:
                    if b["subjects"] is not None and best["subjects"] is not None and len(b["subjects"]) == len(
                            best["subjects"]):
                        b["p_vs_best"] = paired_test(b["subjects"], best["subjects"]).p_t
                for b, adjusted in zip(others, holm([b["p_vs_best"] for b in others]), strict=True):
                    b["p_holm"] = adjusted
                    b["differs"] = None if adjusted is None else adjusted < alpha
            for b in bars:
                b.pop("subjects")
            out += bars
    return out


# --------------------------------------------------------------------------- chance and the score record
# The official score squares each subject's rho, so an RDM with strong per-image structure scores above 0 by
# chance. Every score table therefore shows this very model RDM's chance level: its score with the image labels
# permuted (rows and columns together), as mean and 95th percentile, and p_perm. They cost about 0.3 s per
# 1000 permutations at 118 images and 15 subjects (0.2 s at 92), so they are on by default up to
# PERMUTE_UP_TO_IMAGES images.

DEFAULT_PERMUTATIONS = 1000
PERMUTE_UP_TO_IMAGES = 150
CHANCE_ALPHA = 0.05  # beats_chance: p_perm below this


def default_permutations(n_images: int, method: str = OFFICIAL_METHOD) -> int:
    """How many permutations a score gets when none are asked for: DEFAULT_PERMUTATIONS up to
    PERMUTE_UP_TO_IMAGES images with a dot-product method (where they take under a second), else 0 (off)."""
    return DEFAULT_PERMUTATIONS if n_images <= PERMUTE_UP_TO_IMAGES and method in DOT_METHODS else 0


def check_permutations(permutations: int | None, n_images: int, method: str = OFFICIAL_METHOD) -> int:
    """The number of permutations to run: `default_permutations` for None, else `permutations` (0: off)."""
    if permutations is None:
        return default_permutations(n_images, method)
    if isinstance(permutations, bool) or not isinstance(permutations, int | np.integer) or permutations < 0:
        raise ValueError(f"permutations must be 0 (no permutation test) or more, got {permutations}")
    if permutations and method not in DOT_METHODS:
        raise ValueError(f"permutation p-values need one of {', '.join(DOT_METHODS)}, not '{method}'")
    return int(permutations)


def chance_scores(model_rdm: np.ndarray, target_rdms: np.ndarray, permutations: int | None = None, seed: int = 0,
                  method: str = OFFICIAL_METHOD) -> np.ndarray | None:
    """This model RDM's official scores under random image labels (`permutation_scores`), the null its chance
    level and p_perm are read from; None without permutations (0 asked for, or None above PERMUTE_UP_TO_IMAGES)."""
    count = check_permutations(permutations, np.shape(model_rdm)[-1], method)
    return permutation_scores(model_rdm, target_rdms, count, seed, method) if count else None


def _p_from_null(observed: float, null: np.ndarray) -> float:
    """(1 + #{null >= observed}) / (1 + n): one-sided, never 0."""
    at_least = int(np.sum(null >= observed - 1e-12))  # tolerance: the identity relabelling ties with rounding
    return (1 + at_least) / (1 + len(null))


def _chance_fields(r2: float, ceiling: float | None, null: np.ndarray | None, rho_mean: float) -> dict:
    """The chance fields of a record: None throughout without a null (or for a NaN score, never 'beating' it).
    Beating chance takes both: the official score above its permutation null, and a positive signed mean rho (the
    squared score is blind to sign: an RDM that runs against the subjects' can pass the permutation test)."""
    if null is None or not len(null) or not math.isfinite(r2):
        return {}
    mean, top = float(np.mean(null)), float(np.quantile(null, 0.95))
    p_perm = _p_from_null(r2, null)
    return {"chance_r2_mean": mean, "chance_r2_95": top, "chance_pct_mean": percent_of_ceiling(mean, ceiling),
            "chance_pct_95": percent_of_ceiling(top, ceiling), "p_perm": p_perm,
            "beats_chance": bool(p_perm < CHANCE_ALPHA and rho_mean > 0),
            "permutations": len(null)}


@dataclasses.dataclass(frozen=True)
class ScoreRecord:
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_frame(self):
        """One row (pandas DataFrame) with the columns of `tables.SCORE_FIELDS`."""
        from ..io.tables import SCORE_FIELDS, to_frame

        return to_frame([self.to_dict()], SCORE_FIELDS)


def _interval_fields(rho: np.ndarray) -> dict:
    """The 95% bootstrap intervals over subjects of rho_mean and of r2 (the same resamples; `bootstrap_indices`)
    and the per-subject values; no intervals with one subject or a value that is not finite."""
    fields = {"rhos": [float(v) for v in rho]}
    if len(rho) < 2 or not np.all(np.isfinite(rho)):
        return fields
    resampled = rho[bootstrap_indices(len(rho))]
    low, high = _percentile_interval(resampled.mean(axis=1))
    low2, high2 = _percentile_interval((resampled**2).mean(axis=1))
    return {**fields, "rho_ci_low": low, "rho_ci_high": high, "r2_ci_low": low2, "r2_ci_high": high2}


def score_record(rho: np.ndarray, ceilings: Ceilings, null: np.ndarray | None = None) -> ScoreRecord:
    """The one builder of score records: from the per-subject (K-averaged) comparison values, their target's
    ceilings, and this model RDM's scores under permuted image labels (`chance_scores`; None: no chance fields)."""
    rho = np.asarray(rho, dtype=np.float64)
    r2 = float(np.mean(rho**2))
    return ScoreRecord(
        r2=r2, pct_nc=percent_of_ceiling(r2, ceilings.upper), **signed_summary(rho),
        p=_finite_or_none(official_p(rho)), p_signed=_finite_or_none(signed_p(rho)), noise_ceiling=ceilings.upper,
        ceiling_source=ceilings.source, noise_ceiling_lower=ceilings.lower,
        nc_lower_pct=percent_of_ceiling(ceilings.lower, ceilings.upper), rho_lower_ceiling=ceilings.rho_lower,
        **_chance_fields(r2, ceilings.upper, null, float(np.mean(rho))), **_interval_fields(rho))


def pair_fields(model_rdm: np.ndarray, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD,
                permutations: int | None = 0, seed: int = 0) -> dict:
    """A record's `pair_*` fields: the model's pair structure compared with each subject's (both less their own
    per-image part, `parts.pair_structure`), its signed mean, SE and bootstrap interval over subjects, and with
    `permutations` (None: the default for its size) its p under permuted image labels (one-sided: chance is 0)."""
    from .parts import pair_structure

    model, subjects = pair_structure(model_rdm), pair_structure(target_rdms)
    rho = compare_rdms(model, subjects, method)
    if not np.all(np.isfinite(rho)):  # a model whose pair structure is flat: nothing to compare
        return {}
    summary, intervals = signed_summary(rho), _interval_fields(rho)
    fields = {"pair_rho_mean": summary["rho_mean"], "pair_rho_se": summary["rho_se"],
              "pair_rho_ci_low": intervals.get("rho_ci_low"), "pair_rho_ci_high": intervals.get("rho_ci_high"),
              "pair_rhos": intervals["rhos"]}
    count = check_permutations(permutations, np.shape(model_rdm)[-1], method) if method in DOT_METHODS else 0
    if count:
        null = permutation_scores(model, subjects, count, seed, method, signed=True)
        fields["pair_p_perm"] = _p_from_null(float(np.mean(rho)), null)
    return fields


def score_row(rho: np.ndarray, key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD,
              model_rdm: np.ndarray | None = None, permutations: int | None = 0, seed: int = 0) -> dict:
    """One scored row (`ScoreRecord.to_dict()`) from the per-subject (K-averaged) comparison values with the
    ceilings for `key`; with `model_rdm`, the chance fields from `permutations` of its image labels (None: the
    default for its size). Training validates every epoch with none (they would cost more than the epoch)."""
    if model_rdm is None:
        return score_record(rho, ceilings_for(key, target_rdms, method)).to_dict()
    null = chance_scores(model_rdm, target_rdms, permutations, seed, method)
    record = score_record(rho, ceilings_for(key, target_rdms, method), null)
    return {**record.to_dict(), **pair_fields(model_rdm, target_rdms, method, permutations, seed)}


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


def score_with_ceiling(model_rdm: np.ndarray, key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD,
                       permutations: int | None = 0, seed: int = 0) -> dict:
    """One scored row of a model RDM (`score_row`): r2, pct_nc, the signed mean rho, the p-values, the ceilings;
    the chance fields with `permutations` (None: on by default where cheap, see `default_permutations`)."""
    return score_row(compare_rdms(model_rdm, target_rdms, method), key, target_rdms, method, model_rdm,
                     permutations, seed)


def shown_keys(keys) -> str:
    """A file's keys for a message: the one array of a file without keys (a .npy) shows as '(no key)'."""
    return ", ".join(key or "(no key)" for key in keys) or "none"


def score_submission(
    submission: dict[str, np.ndarray], targets: dict[str, np.ndarray], permutations: int | None = None, seed: int = 0,
    method: str = OFFICIAL_METHOD,
) -> dict:
    """Score every key present in both dicts; the JSON object `siamrdm score --json` prints.

    Per key: the score record (`ScoreRecord`: r2, pct_nc, rho_mean +- rho_se, p (official), p_signed, the
    ceilings, and the chance fields with p_perm; `permutations` None: `default_permutations`, 0: none; every key
    uses `seed`, so a key's p_perm does not depend on the other keys) and the comparison method.
    The overall score is the mean r^2 of the keys, and its percent is that mean over the mean of their
    ceilings. A submission that lacks some of the target's keys is scored key by key, but its overall score is
    None: a mean over fewer keys is not comparable with a complete submission's; `missing` (present only then)
    lists those keys.
    """
    check_method(method)
    keys = [k for k in submission if k in targets]
    if not keys:
        raise ValueError(
            f"no key in common between submission ({shown_keys(submission)}) and target ({shown_keys(targets)})"
        )
    if permutations is not None:
        check_permutations(permutations, 3, method)
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
        source = _source(key, n, lambda computed=computed: computed[0], method) if computed else None
        upper = {"official": official_noise_ceiling(key, n), "computed": computed[0] if computed else None}.get(source)
        record = score_record(rho, Ceilings(source, upper, *(computed[1:] if computed else (None, None))),
                              chance_scores(model, target, permutations, seed, method))
        ceilings.append(upper)
        result[key] = {**record.to_dict(), **pair_fields(model, target, method, permutations, seed),
                       "method": method}
    if missing:
        result["score"] = None
        result["missing"] = missing
        return result
    mean_r2 = float(np.mean([result[k]["r2"] for k in keys]))
    mean_ceiling = None if any(c is None for c in ceilings) else float(np.mean(ceilings))
    result["score"] = {"r2": mean_r2, "pct_nc": percent_of_ceiling(mean_r2, mean_ceiling)}
    return result


def submission_frame(result: dict):
    """`score_submission`'s result as a pandas DataFrame: one row per key, its columns 'key', 'method' and
    `tables.SCORE_FIELDS` (the overall score is the mean of the r2 column)."""
    from ..io.tables import SCORE_FIELDS, to_frame

    rows = [{"key": key, **row} for key, row in result.items() if key not in ("score", "missing")]
    return to_frame(rows, ["key", "method", *SCORE_FIELDS])


def score_condensed_submission(model_vector, subject_vectors, key: str, method: str = OFFICIAL_METHOD,
                               threads: int = 1) -> dict:
    """What `score_submission` returns, for one key given as upper triangles (`score_condensed`'s inputs): the
    form `siamrdm score` prints for sets too large for square RDMs. Their ceiling is computed from the subjects
    (no official set is that large); there are no chance fields (each permutation would re-rank every subject's
    50 million pairs)."""
    score, computed = _score_condensed(model_vector, subject_vectors, method, ceiling=True, threads=threads)
    ceilings = Ceilings("computed", *computed) if computed else NO_CEILINGS
    record = score_record(score.rho, ceilings)
    return {key: {**record.to_dict(), "method": method}, "score": {"r2": record.r2, "pct_nc": record.pct_nc}}
