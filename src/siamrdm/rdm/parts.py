"""The two parts of every RDM: a per-image part and the pair structure.

Each dissimilarity is split as d(i, j) = a_i + a_j + c + r(i, j): the per-image part a_i + a_j (+ c) is the
least-squares fit of how dissimilar each image is to all others; the pair structure r is what is left, which
images are close to which. In the brain RDMs here the per-image part is 34-85% of the variance, and it is largely a
property of the study (its people, scanner, analysis, the background the images were shown on): it carries across
the two Algonauts sets, which share their subjects, but not to another study of the same images, where the pair
structure does (RESULTS.md, "Other studies"). The official score rewards both and cannot tell them apart, so
siamrdm scores them apart: `pair_structure` is what a record's `pair_*` fields compare.
"""

from __future__ import annotations

import numpy as np

from .core import square_rdm, upper_tri

ROUNDING = 1e-9  # residuals below this (in units of the largest dissimilarity) are rounding error


def per_image_fit(vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares per-image effects a of d(i, j) ~ a_i + a_j + c over the upper triangle, and the fitted
    pair values. Solved through the normal equations, whose matrix is known in closed form (O(N^2), no design
    matrix of pairs x images)."""
    rows, cols = np.triu_indices(n, 1)
    sums = np.bincount(rows, vector, n) + np.bincount(cols, vector, n)  # each image's pairs
    total = vector.sum()
    # Normal equations of [a; c]: (n-2) I + J for a (each image in n-1 pairs, two images share one), n-1 for c.
    gram = np.full((n + 1, n + 1), 1.0)
    gram[:n, :n] += (n - 2) * np.eye(n)
    gram[:n, n] = gram[n, :n] = n - 1
    gram[n, n] = len(rows)
    coef = np.linalg.lstsq(gram, np.append(sums, total), rcond=None)[0]
    effects = coef[:n]
    return effects, effects[rows] + effects[cols] + coef[n]


def per_image_share(vector: np.ndarray, n: int) -> float | None:
    """The share of an upper triangle's variance that its per-image part explains (None for a constant one)."""
    variance = float(np.var(vector))
    if variance <= 0:
        return None
    return 1 - float(np.var(vector - per_image_fit(vector, n)[1])) / variance


def pair_structure(rdms: np.ndarray) -> np.ndarray:
    """The pair structure of square RDMs, (..., N, N) -> the same shape: each RDM less its own per-image fit
    (symmetric, zero diagonal), in units of its largest dissimilarity (so that RDMs near float64's range fit
    without overflow; every comparison siamrdm makes is scale-free)."""
    rdms = np.asarray(rdms, dtype=np.float64)
    n = rdms.shape[-1]
    vectors = upper_tri(rdms).reshape(-1, n * (n - 1) // 2)
    scales = np.max(np.abs(vectors), axis=1, keepdims=True)
    vectors = vectors / np.where(scales > 0, scales, 1.0)
    residuals = [v - per_image_fit(v, n)[1] for v in vectors]
    # What is left of an RDM made of per-image effects alone is rounding error: 0, not an order of pairs.
    residuals = [square_rdm(np.where(np.abs(r) > ROUNDING, r, 0.0), n) for r in residuals]
    return np.stack(residuals).reshape(rdms.shape)
