"""RDM arithmetic in the vocabulary of RSA: upper triangles, rank transforms, rescaling, RDMs from features."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

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


def rank_transform(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties averaged (the transform behind Spearman's rho)."""
    return rankdata(x, axis=-1)


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
