"""RDM arithmetic in the vocabulary of RSA: upper triangles, rank transforms, rescaling, RDMs from features."""

from __future__ import annotations

import math

import numpy as np


def rankdata(x: np.ndarray, **kwargs) -> np.ndarray:
    """scipy.stats.rankdata, imported on first use: scipy.stats takes longer to import than `siamrdm --help`
    should take to run, and finite float vectors never need it (`Ranker`)."""
    from scipy.stats import rankdata as scipy_rankdata

    return scipy_rankdata(x, **kwargs)

RESCALE_METHODS = ("minmax", "rank", "zscore", "none")


def upper_tri_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the upper triangle of an n x n RDM, diagonal excluded (row-major order)."""
    return np.triu_indices(n, k=1)


def upper_tri(rdms: np.ndarray) -> np.ndarray:
    """The upper triangles (diagonal excluded) of (..., N, N) RDMs as (..., N(N-1)/2) vectors."""
    rows, cols = upper_tri_indices(rdms.shape[-1])
    return rdms[..., rows, cols]


def square_rdm(vector: np.ndarray, n: int) -> np.ndarray:
    """The symmetric N x N RDM with a zero diagonal whose upper triangle is `vector`."""
    vector = np.asarray(vector, dtype=np.float64)
    if vector.shape != (n * (n - 1) // 2,):
        raise ValueError(f"upper triangle of length {vector.shape} does not fit a {n} x {n} RDM")
    rdm = np.zeros((n, n))
    rows, cols = upper_tri_indices(n)
    rdm[rows, cols] = vector
    rdm[cols, rows] = vector
    return rdm


def subject_rdms(rdms: np.ndarray) -> np.ndarray:
    """View any accepted RDM array as (S, N, N) or (S, K, N, N): a single (N, N) RDM is one subject."""
    return rdms[None] if rdms.ndim == 2 else rdms


def group_average(rdms: np.ndarray) -> np.ndarray:
    """The (N, N) mean RDM over subjects (and over K, the repeated RDMs within a subject)."""
    rdms = np.asarray(rdms, dtype=np.float64)
    return rdms.reshape(-1, *rdms.shape[-2:]).mean(axis=0)


class Ranker:
    """Average ranks (ties averaged, equal to scipy.stats.rankdata's) of float vectors of one length, fast.

    A vector is ranked by one in-place sort of 64-bit words that hold an order-preserving integer key of each
    value in their high bits and its position in their low bits: no argsort, whose random memory access makes
    it several times slower on the 50-million-entry upper triangles of 10,000-image RDMs. A float32 value's
    bits make an exact 32-bit key, which fits beside any position below 2^32. A float64 value gets a coarse
    key, its place between the vector's min and max on the bits the position leaves (at least 24); values
    closer than that resolves share a key and are put in exact order by a lexsort of just them. Vectors with
    NaN, a range that overflows, or too many such close values go to rankdata itself. The working arrays are
    kept between calls: on large vectors, touching freshly allocated memory costs about as much as the sort.
    """

    def __init__(self, n: int):
        self.n = n
        self.index_bits = max(1, (n - 1).bit_length())
        self._index = np.arange(n, dtype=np.int64)
        self._packed = np.empty(n, dtype=np.uint64)  # then the ranks in sorted order (as float64)
        self._keys = np.empty(n, dtype=np.uint64)  # scratch: keys, then the first position of each run of ties
        self._order = np.empty(n, dtype=np.intp)
        self._new_value = np.empty(n, dtype=bool)  # along the sorted order: a value differs from the previous

    def _fits(self, dtype: np.dtype) -> bool:
        if dtype == np.float32:
            return self.index_bits <= 32
        return dtype == np.float64 and self.index_bits <= 40

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The ranks of `x` (length n) as float64, written to `out` when given."""
        x = np.asarray(x)
        if x.shape != (self.n,):
            raise ValueError(f"Ranker of length {self.n} given an array of shape {x.shape}")
        out = np.empty(self.n) if out is None else out
        # Integers, float16, a float64 vector of more than 2^40 entries, or NaN (rankdata's ranks are then NaN).
        low, high = (float(x.min()), float(x.max())) if x.dtype.kind == "f" else (0.0, 0.0)
        if not self._fits(x.dtype) or math.isnan(low) or math.isnan(high):
            out[:] = rankdata(x)
            return out
        if x.dtype == np.float32:
            self._sort_float32(x)
        elif not self._sort_float64(x, low, high):
            out[:] = rankdata(x)
            return out
        return self._ranks(out)

    def _sort_float32(self, x: np.ndarray) -> None:
        packed, new_value = self._packed, self._new_value
        half = self._keys.view(np.uint32)[: self.n]  # scratch: the keys, then their sign masks
        bits, sign = half.view(np.float32), self._keys.view(np.int32)[self.n :]
        np.add(x, np.float32(0), out=bits)  # -0.0 becomes 0.0
        np.right_shift(half.view(np.int32), 31, out=sign)  # all ones where negative
        sign |= np.int32(np.iinfo(np.int32).min)
        half ^= sign.view(np.uint32)  # negative: every bit flipped; positive: the sign bit set
        np.copyto(packed, half)
        packed <<= np.uint64(32)
        packed |= self._index.view(np.uint64)
        packed.sort()
        np.bitwise_and(packed, np.uint64(0xFFFFFFFF), out=self._order.view(np.uint64))
        packed >>= np.uint64(32)
        new_value[0] = True
        np.not_equal(packed[1:], packed[:-1], out=new_value[1:])

    def _sort_float64(self, x: np.ndarray, low: float, high: float) -> bool:
        """Sort by a coarse key (the value's place in [min, max] on 64 - index_bits bits, which keeps the order
        but may merge close values), then put the runs of merged, unequal values in exact order with a lexsort
        of just them. False when the range overflows or too many unequal values merge (rankdata then)."""
        n, bits = self.n, self.index_bits
        packed, order, new_value = self._packed, self._order, self._new_value
        span, top = high - low, float(2 ** min(64 - bits, 52) - 1)  # exact in float64, fits beside the position
        if not math.isfinite(span):
            return False
        scaled = self._keys.view(np.float64)
        if span > 0:  # monotone: x <= y gives scaled(x) <= scaled(y), rounding included
            np.subtract(x, low, out=scaled)
            scaled /= span
            scaled *= top
            np.minimum(scaled, top, out=scaled)
        else:
            scaled[:] = 0.0
        np.copyto(packed, scaled, casting="unsafe")  # truncation: the integer part
        packed <<= np.uint64(bits)
        packed |= self._index.view(np.uint64)
        packed.sort()
        np.bitwise_and(packed, np.uint64((1 << bits) - 1), out=order.view(np.uint64))
        packed >>= np.uint64(bits)
        new_value[0] = True
        np.not_equal(packed[1:], packed[:-1], out=new_value[1:])
        shared = np.flatnonzero(~new_value)  # positions whose coarse key equals the previous position's
        if len(shared) == 0:
            return True
        values = x[order[shared]]
        unequal = values != x[order[shared - 1]]  # merged but not tied: their order is not known yet
        if not unequal.any():
            return True
        if unequal.sum() > n // 8:
            return False
        # Runs of merged values are consecutive shared positions plus the one before them: found from `shared`
        # alone (small), never from a pass over all n positions.
        starts = np.flatnonzero(np.diff(shared, prepend=-2) != 1)  # where in `shared` each run begins
        run_of = np.cumsum(np.diff(shared, prepend=-2) != 1) - 1
        needed = np.unique(run_of[unequal])  # the runs holding an unequal pair
        first = shared[starts[needed]] - 1
        ends = np.append(starts[1:], len(shared))[needed] - 1
        lengths = shared[ends] - first + 1
        run = np.repeat(np.arange(len(needed)), lengths)
        positions = np.arange(len(run)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(first, lengths)
        members = order[positions]
        values = x[members]
        exact = np.lexsort((values, run))
        order[positions] = members[exact]
        values = values[exact]
        new_value[positions[1:]] = (values[1:] != values[:-1]) | (run[1:] != run[:-1])
        return True

    def _ranks(self, out: np.ndarray) -> np.ndarray:
        """Average ranks from the sorted order and where along it a new value starts."""
        n, order, new_value = self.n, self._order, self._new_value
        in_order = self._packed.view(np.float64)
        tied = np.flatnonzero(~new_value)  # positions holding the same value as the previous one
        if len(tied) <= n // 8:  # few ties: ranks 1..n, then each run of ties gets its mean
            np.add(self._index, 1, out=in_order)
            if len(tied):
                starts = np.diff(tied, prepend=-2) != 1
                first = tied[starts] - 1
                last = tied[np.append(starts[1:], True)]
                mean = (first + last) / 2 + 1
                in_order[first] = mean
                in_order[tied] = mean[np.cumsum(starts) - 1]
        else:  # positions are below 2^53: exact in float64
            first = self._keys.view(np.float64)
            np.multiply(self._index, new_value, out=first)
            np.maximum.accumulate(first, out=first)  # first position of the run of equal values
            np.logical_not(new_value[1:], out=new_value[:-1])  # now: the next position holds the same value
            new_value[-1] = False
            np.copyto(in_order, self._index)
            np.copyto(in_order, float(n), where=new_value)  # not the last of its run
            np.minimum.accumulate(in_order[::-1], out=in_order[::-1])  # last position of the run
            in_order += first
            in_order *= 0.5
            in_order += 1
        out[order] = in_order
        return out


def rank_transform(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties averaged (the transform behind Spearman's rho); equal to
    scipy.stats.rankdata's. Finite float rows go through one `Ranker`, much faster on long vectors."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64) or x.ndim == 0 or x.shape[-1] < 2 or not np.all(np.isfinite(x)):
        return rankdata(x, axis=-1)
    rows = x.reshape(-1, x.shape[-1])
    out = np.empty(rows.shape)
    ranker = Ranker(rows.shape[1])
    for k, row in enumerate(rows):
        ranker(np.ascontiguousarray(row), out[k])
    return out.reshape(x.shape)


def rank_unit(vector: np.ndarray) -> np.ndarray:
    """Ranks (ties averaged) scaled to [0, 1]: the same units for vectors of any length."""
    return (rank_transform(vector) - 1) / max(len(vector) - 1, 1)


def correlation_rdm(correlations: np.ndarray) -> np.ndarray:
    """1 - r of an (N, N) matrix of Pearson correlations, with an exact zero diagonal and exact symmetry."""
    rdm = 1.0 - np.asarray(correlations, dtype=np.float64)
    np.fill_diagonal(rdm, 0.0)
    return (rdm + rdm.T) / 2


def rdm_from_features(features: np.ndarray) -> np.ndarray:
    """Correlation-distance RDM (1 - Pearson r) of (N, D) response patterns."""
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    centred = features - features.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    normed = centred / np.where(norms > 0, norms, 1.0)
    return correlation_rdm(normed @ normed.T)


def rescale(vector: np.ndarray, method: str = "minmax") -> tuple[np.ndarray, dict[str, float]]:
    """Rescale dissimilarities for training; returns the values and the parameters used.

    minmax maps to [0, 1] (the paper's choice), rank to evenly spaced values in [0, 1], zscore to mean 0 and
    sd 1. Spearman scoring is blind to all three, so they change only what the loss emphasises.
    """
    vector = np.asarray(vector, dtype=np.float64)
    if method == "minmax":
        low, high = float(vector.min()), float(vector.max())
        return (vector - low) / max(high - low, 1e-12), {"low": low, "high": high}
    if method == "rank":
        return rank_unit(vector), {}
    if method == "zscore":
        mean, sd = float(vector.mean()), float(vector.std())
        return (vector - mean) / max(sd, 1e-12), {"mean": mean, "sd": sd}
    if method == "none":
        return vector.copy(), {}
    raise ValueError(f"unknown rescale method '{method}' (choose from {', '.join(RESCALE_METHODS)})")
