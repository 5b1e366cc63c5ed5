"""The comparison methods and the one transform each applies to an upper triangle before comparing.

Other comparison methods (one table of them, `COMPARISONS`) can replace the challenge's Spearman's rho, named as
rsatoolbox names them (`rsatoolbox.rdm.compare(..., method=NAME)`): 'corr' (Pearson r), 'cosine', 'tau-a' and
'kendall' (Kendall's tau a and b), 'rho-a' (Spearman without tie correction). They are implemented here with numpy
and scipy, so rsatoolbox is not needed at run time. A method that is a dot product of transformed vectors
(`DOT_METHODS`) compares many RDMs in one matrix product; Kendall's taus count pairs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import ConfigError
from .core import Ranker

OFFICIAL_METHOD = "spearman"


@dataclasses.dataclass(frozen=True)
class _Comparison:
    """How one comparison method turns an upper triangle into what it compares (`Transform` applies it)."""

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

# Values within 2**±400: sums of up to 2**64 of them, and of their squares, neither overflow nor underflow.
_SAFE_EXPONENT = 400


def check_method(method: str) -> str:
    """`method` if it is one of COMPARISON_METHODS; else a ConfigError naming the `method` setting (--method)."""
    if not isinstance(method, str) or method not in COMPARISON_METHODS:
        raise ConfigError("method", f"unknown comparison method '{method}' (choose from "
                          f"{', '.join(COMPARISON_METHODS)})")
    return method


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


class Transform:
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


def dot_vectors(vectors: np.ndarray, method: str) -> np.ndarray:
    """Upper-triangle vectors (along the last axis) transformed so that the method's similarity of two RDMs is a
    dot product: `Transform` applied to each vector."""
    if check_method(method) not in DOT_METHODS:
        raise ValueError(f"'{method}' is not a dot product of transformed vectors (one of {', '.join(DOT_METHODS)})")
    x = np.asarray(vectors)
    rows = x.reshape(-1, x.shape[-1])
    transform = Transform(method, rows.shape[1])
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


def compare_transformed(a: np.ndarray, b: np.ndarray, method: str) -> float:
    """The comparison value of two vectors transformed by `Transform`."""
    if method in DOT_METHODS:
        return float(np.dot(a, b))
    return _kendall(a, b, method)
