"""Scores and noise ceilings streamed over the subjects, one subject at a time, so that memory stays a few upper
triangles however many subjects and pairs there are.

Each upper triangle is transformed once (`transform.Transform`; ranked, for Spearman): the model and the mean of
all subjects once, each subject once for its score and both ceilings, the mean of the others once per subject.
`records.score_condensed` and `noise_ceiling.noise_ceilings(condensed=True)` take upper triangles directly,
(subjects, pairs) arrays such as a memory-mapped float32 .npy, for sets whose square RDMs would not fit in memory
(BENCHMARKS.md, "Scoring at scale").
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..io.limits import check_real_dtype
from .core import upper_tri_indices
from .transform import Transform, check_method, compare_transformed

# Sums over the subjects are kept below 2**1020 (float64 overflows at 2**1024).
_SUM_EXPONENT = 1020

# (upper, lower, lower in rho units, upper in rho units): a noise ceiling as `stream` computes it, in the order of
# `noise_ceiling.NoiseCeiling`'s fields.
CeilingValues = tuple[float, float, float, float]


def check_pairs(length: int, what: str) -> int:
    """The number of images N of an upper triangle of N(N-1)/2 entries (at least 3 images)."""
    n = (1 + math.isqrt(1 + 8 * length)) // 2
    if n * (n - 1) // 2 != length or n < 3:
        raise ValueError(f"{what} of length {length} are not the upper triangle of a square RDM of 3 or more images")
    return n


class Subjects:
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
                check_pairs(self.length, "subjects' upper triangles")
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


def _sum_shift(rows: np.ndarray, count: int) -> int:
    """The power of two to divide `rows` by so that a sum of `count` values no larger than theirs stays finite:
    0 for all but float64 values within a factor `count` of overflowing (float32 and integers never come near)."""
    if rows.dtype != np.float64:
        return 0
    peak = max(float(rows.max()), -float(rows.min()))
    return max(0, int(np.frexp(peak)[1]) + int(count).bit_length() - _SUM_EXPONENT)


def _scaled(row: np.ndarray, shift: int) -> np.ndarray:
    """A row as the sums over the subjects hold it: divided by 2**shift (exact; 0: the row itself)."""
    return row if shift == 0 else np.ldexp(row, -shift)


def check_mean(vector: np.ndarray, what: str) -> None:
    """A mean RDM whose upper triangle is constant has no Spearman correlation: say so instead of NaN."""
    if np.ptp(vector) == 0:
        raise ValueError(f"{what} has a constant upper triangle, so the noise ceiling is undefined")


class _Workers:
    """Transforms of one method and length, run inline or, with `threads` > 1, on a pool: each thread keeps its
    own `Transform` (a ranker's working arrays are not shared), and numpy's sort releases the GIL."""

    def __init__(self, method: str, length: int, threads: int):
        self.method, self.length = method, length
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def transform(self, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if not hasattr(self.local, "transform"):  # one per thread: a ranker's working arrays are not shared
            self.local.transform = Transform(self.method, self.length)
        return self.local.transform(raw, out)

    def run(self, *jobs: Callable[[], object]) -> list:
        if self.pool is None:
            return [job() for job in jobs]
        return [future.result() for future in [self.pool.submit(job) for job in jobs]]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _model_transform(model, length: int, method: str, workers: _Workers) -> np.ndarray | None:
    """The model's transformed upper triangle; None for a constant model (it orders no pair: it scores 0)."""
    raw = np.asarray(model).reshape(-1)
    check_real_dtype(raw.dtype, "model RDM")
    raw = raw if raw.dtype.kind == "f" else raw.astype(np.float64)
    if raw.shape != (length,):
        raise ValueError(f"model upper triangle of length {raw.size} does not match the subjects' {length}")
    # NaN in the model (a diverged prediction) gives NaN values, which training counts as the worst
    # score; score_condensed and files (data.validate_rdms) refuse it before.
    if np.ptp(raw) != 0 or method == "cosine":
        return workers.run(lambda: workers.transform(raw))[0]
    return None


class _Sums:
    """Pass 1: the subjects' float64 upper triangles summed in subject order (as numpy's mean over the stacked
    RDMs does, so the mean RDMs and their ranks are the same to the last bit): over everything (`grand`) and per K
    (`total`, which is `grand` itself when K = 1), both divided by 2**`shift` where they would overflow."""

    def __init__(self, subjects: Subjects):
        n_subjects, k, length = len(subjects), subjects.k, subjects.length
        if n_subjects < 2:
            raise ValueError("a noise ceiling needs at least 2 subjects")
        self.n_subjects, self.k, self.shift = n_subjects, k, 0
        self.grand = np.zeros(length)
        self.total = np.zeros((k, length)) if k > 1 else self.grand[None]  # per K, over subjects
        for s in range(n_subjects):
            self._add(subjects[s])

    def _add(self, rows: np.ndarray) -> None:
        needed = _sum_shift(rows, self.n_subjects * self.k)
        if needed > self.shift:  # the sums so far to the new power of two (exact: every method is scale-free)
            np.ldexp(self.grand, self.shift - needed, out=self.grand)
            if self.k > 1:
                np.ldexp(self.total, self.shift - needed, out=self.total)
            self.shift = needed
        for j in range(self.k):
            row = _scaled(rows[j], self.shift)
            self.grand += row
            if self.k > 1:
                self.total[j] += row

    def grand_mean(self, workers: _Workers) -> np.ndarray:
        """The mean RDM of all subjects, transformed."""
        grand_t = self.grand / (self.n_subjects * self.k)
        check_mean(grand_t, "the mean RDM of all subjects")
        workers.run(lambda: workers.transform(grand_t, grand_t))
        return grand_t

    def others_job(self, s: int, rows: np.ndarray, out: np.ndarray, scratch: np.ndarray | None,
                   workers: _Workers) -> Callable[[], None]:
        """A job that writes the transformed mean RDM of the subjects other than s into `out`."""
        n_subjects, k, total = self.n_subjects, self.k, self.total

        def job() -> None:
            # The mean of the others as the old formula had it: (total - subject) / (S - 1), then over K.
            np.subtract(total[0], _scaled(rows[0], self.shift), out=out)
            np.divide(out, n_subjects - 1, out=out)
            for j in range(1, k):
                np.subtract(total[j], _scaled(rows[j], self.shift), out=scratch)
                np.divide(scratch, n_subjects - 1, out=scratch)
                np.add(out, scratch, out=out)
            if k > 1:
                np.divide(out, k, out=out)
            check_mean(out, f"the mean RDM of the subjects other than subject {s + 1}")
            workers.transform(out, out)

        return job


def _compare_subjects(subjects: Subjects, workers: _Workers, model_t: np.ndarray | None, values: np.ndarray | None,
                      sums: _Sums | None, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: each subject transformed once and compared with the model (into `values`) and, with `sums`, with
    the mean of all subjects (upper) and of the others (lower): (upper, lower), (S, K) each. `group` subjects
    are transformed at once (1 with ceilings: a subject and its others' mean run side by side instead)."""
    n_subjects, k, length, method = len(subjects), subjects.k, subjects.length, workers.method
    grand_t = sums.grand_mean(workers) if sums is not None else None
    upper, lower = np.empty((n_subjects, k)), np.empty((n_subjects, k))
    subject_t = np.empty((group, k, length))
    others = np.empty(length) if sums is not None else None
    scratch = np.empty(length) if sums is not None and k > 1 else None

    def subject_job(g: int, rows: np.ndarray):
        return lambda: [workers.transform(rows[j], subject_t[g, j]) for j in range(k)]

    for first in range(0, n_subjects, group):
        batch = range(first, min(first + group, n_subjects))
        rows = {s: subjects[s] for s in batch}
        jobs = [subject_job(g, rows[s]) for g, s in enumerate(batch)]
        if sums is not None:
            jobs.append(sums.others_job(first, rows[first], others, scratch, workers))
        workers.run(*jobs)
        for g, s in enumerate(batch):
            if model_t is not None:
                values[s] = [compare_transformed(model_t, subject_t[g, j], method) for j in range(k)]
            if sums is not None:
                upper[s] = [compare_transformed(grand_t, subject_t[g, j], method) for j in range(k)]
                lower[s] = [compare_transformed(others, subject_t[g, j], method) for j in range(k)]
    return upper, lower


def _ceiling_values(upper: np.ndarray, lower: np.ndarray) -> CeilingValues:
    """The ceilings from the (S, K) comparisons with the mean of all subjects and with the mean of the others:
    K-averaged, then the mean over subjects of their squares (r2 units) and of themselves (rho units)."""
    ceilings = (float(np.mean(upper.mean(axis=1) ** 2)), float(np.mean(lower.mean(axis=1) ** 2)),
                float(np.mean(lower.mean(axis=1))), float(np.mean(upper.mean(axis=1))))
    if not all(math.isfinite(c) for c in ceilings):  # finite subjects give finite ceilings: never pass NaN on
        raise FloatingPointError(f"the noise ceiling came out as {ceilings} from finite subject RDMs")
    return ceilings


def stream(model, subjects: Subjects, method: str, ceiling: bool,
           threads: int = 1) -> tuple[np.ndarray | None, CeilingValues | None]:
    """(K-averaged comparisons of the model with each subject, or None without a model; the noise ceiling as
    `CeilingValues`, or None), in two passes over the subjects, one at a time. The ceilings in rho units are the
    means over subjects of the (K-averaged) comparison with the mean of the others (lower) and of all subjects
    (upper), the same unit as a model's `rho_mean`.

    Pass 1 (`_Sums`) sums the subjects; pass 2 (`_compare_subjects`) transforms each subject once and compares it
    with the model, the mean of all subjects (upper ceiling) and the mean of the others (lower ceiling, one more
    transform per subject). The model's and the grand mean's transforms are computed once. With `threads` > 1,
    independent transforms (a subject's and its others' mean; or, without ceilings, several subjects') run at once.
    """
    check_method(method)
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a whole number of 1 or more, got {threads!r}")
    workers = _Workers(method, subjects.length, threads)
    try:
        model_t = None if model is None else _model_transform(model, subjects.length, method, workers)
        sums = _Sums(subjects) if ceiling else None
        values = np.zeros((len(subjects), subjects.k)) if model is not None else None
        upper, lower = _compare_subjects(subjects, workers, model_t, values, sums, 1 if ceiling else threads)
    finally:
        workers.close()
    return (None if values is None else values.mean(axis=1)), (_ceiling_values(upper, lower) if ceiling else None)
