"""Feature-reweighted RSA (Kaniuth & Hebart 2022, NeuroImage 257:119294): every feature gets its own weight.

A stage's RDM weighs all its features alike. FR-RSA instead predicts a pair's dissimilarity as

    d(i, j) = c + sum_k w_k (x_ik - x_jk)^2        (predictor "differences", the default), or
    d(i, j) = c - sum_k w_k x_ik x_jk              (predictor "products": a weighted similarity, negated)

with every w_k >= 0, the features x z-scored on the training images only, and the weights fitted by ridge
regression on the training pairs. The penalty and the features used (one stage's, or all stages' together) are
chosen by inner cross-validation over the training *images* (`inner_folds`): each inner fit sees the pairs among
some training images and is scored (Spearman rho with the target) on the pairs among the others, so no validation
pair shares an image with a fitting pair.

Cost: the pairs' design matrix (N(N-1)/2 x features) is never formed. Both predictors' normal equations are sums
over pairs of products of per-image terms, so they reduce to per-image sums (`normal_equations`): time
O(N p^2 + N^2 p) and memory O(p^2 + N p + N^2) for N images and p features (the N^2 is the target's square RDM).
The non-negative ridge problem is then solved on the p x p system by projected, accelerated gradient
(`solve_nonnegative`), and held-out RDMs are predicted from per-image terms too (`predict_rdm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from ..rdm.core import rank_transform, square_rdm, upper_tri

PREDICTORS = ("differences", "products")
# Ridge penalties tried, as multiples of the largest eigenvalue of the centred, per-pair Gram matrix: the same grid
# fits any number of features and images, and bounds the problem's condition number by 1 + 1 / penalty, so the
# solver's iterations are bounded too.
PENALTIES = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 1.0)
INNER_FOLDS = 3
ALL_STAGES = "all"
MIN_FOLD_IMAGES = 3  # an inner validation fold needs 3 pairs at least for a rank correlation
TOLERANCE = 1e-6
MAX_ITERATIONS = 5000


@dataclass
class NormalEquations:
    """Sums over the pairs i < j of one image set: Z'Z, Z't, the column sums of Z, the sum of t and the count,
    where Z holds each pair's predictors and t its target."""

    gram: np.ndarray  # (p, p)
    moment: np.ndarray  # (p,)
    sums: np.ndarray  # (p,)
    target_sum: float
    pairs: int

    def centred(self) -> tuple[np.ndarray, np.ndarray]:
        """Per pair, centred: the least-squares problem with a free intercept, as (H, g) of 0.5 w'Hw - g'w."""
        mean = self.sums / self.pairs
        gram = self.gram / self.pairs - np.outer(mean, mean)
        moment = self.moment / self.pairs - mean * (self.target_sum / self.pairs)
        return (gram + gram.T) / 2, moment


def _check_predictor(predictor: str) -> int:
    """+1 for squared differences (a dissimilarity), -1 for products (a similarity, so it predicts -target)."""
    if predictor not in PREDICTORS:
        raise DataError(f"unknown FR-RSA predictor '{predictor}' (choose from {', '.join(PREDICTORS)})")
    return 1 if predictor == "differences" else -1


def normal_equations(x: np.ndarray, target: np.ndarray, predictor: str = "differences") -> NormalEquations:
    """The pairs' normal equations from per-image sums, exactly, without the pairs x features matrix.

    `x`: (n, p) features; `target`: the (n, n) symmetric target (zero diagonal), negated for products. With
    a = x[:, k], b = x[:, l] and S the sum over images, the sum over pairs i < j of
    (a_i - a_j)^2 (b_i - b_j)^2 is n S(a^2 b^2) + S(a^2) S(b^2) - 2 S(a^2 b) S(b) - 2 S(a b^2) S(a) + 2 S(ab)^2,
    and of a_i a_j b_i b_j it is (S(ab)^2 - S(a^2 b^2)) / 2.
    """
    sign = _check_predictor(predictor)
    x = np.asarray(x, dtype=np.float64)
    t = sign * np.asarray(target, dtype=np.float64)
    n = len(x)
    sq = x * x
    s, q = x.sum(axis=0), sq.sum(axis=0)
    cross, fourth = x.T @ x, sq.T @ sq
    tx = t @ x
    if predictor == "differences":
        mixed = sq.T @ x  # S(a^2 b)
        gram = n * fourth + np.outer(q, q) - 2 * mixed * s[None, :] - 2 * mixed.T * s[:, None] + 2 * cross**2
        moment = sq.T @ t.sum(axis=1) - np.einsum("ik,ik->k", x, tx)
        sums = n * q - s**2
    else:
        gram = (cross**2 - fourth) / 2
        moment = np.einsum("ik,ik->k", x, tx) / 2
        sums = (s**2 - q) / 2
    return NormalEquations(gram, moment, sums, float(upper_tri(t).sum()), n * (n - 1) // 2)


def _largest_eigenvalue(h: np.ndarray, iterations: int = 60) -> float:
    """The largest eigenvalue of a symmetric positive semi-definite matrix (power iteration, seeded)."""
    v = np.random.default_rng(0).normal(size=len(h))
    value = 0.0
    for _ in range(iterations):
        w = h @ v
        norm = float(np.linalg.norm(w))
        if norm == 0:
            return 0.0
        value, v = float(v @ w) / float(v @ v), w / norm
    return value


def solve_nonnegative(h: np.ndarray, g: np.ndarray, start: np.ndarray | None = None, lipschitz: float | None = None,
                      tolerance: float = TOLERANCE, max_iterations: int = MAX_ITERATIONS) -> np.ndarray:
    """argmin over w >= 0 of 0.5 w'Hw - g'w (H positive definite): accelerated projected gradient (FISTA) with
    adaptive restart, from `start`, until the projected gradient is below `tolerance` times |g|."""
    lipschitz = (lipschitz or _largest_eigenvalue(h)) * 1.1  # power iteration approaches it from below
    if lipschitz <= 0:
        return np.zeros_like(g)
    w = np.zeros_like(g) if start is None else np.maximum(start, 0.0)
    y, momentum = w.copy(), 1.0
    scale = tolerance * max(float(np.linalg.norm(g)), 1e-300)
    for _ in range(max_iterations):
        grad = h @ y - g
        new = np.maximum(y - grad / lipschitz, 0.0)
        step = new - y
        if float(np.linalg.norm(step)) * lipschitz < scale:
            return new
        if float(step @ (new - w)) < 0:  # the momentum points uphill: restart it from here
            w, y, momentum = new, new.copy(), 1.0
            continue
        following = (1 + np.sqrt(1 + 4 * momentum**2)) / 2
        y = new + ((momentum - 1) / following) * (new - w)
        w, momentum = new, following
    return w


def ridge_path(equations: NormalEquations, penalties=PENALTIES) -> list[tuple[np.ndarray, float]]:
    """(weights, intercept) for each relative penalty, fitted from the largest penalty down (warm starts)."""
    h, g = equations.centred()
    p = len(g)
    top = _largest_eigenvalue(h)
    scale = max(top, 1e-300)
    out: dict[float, tuple[np.ndarray, float]] = {}
    w = None
    for alpha in sorted(penalties, reverse=True):
        penalty = alpha * scale
        w = solve_nonnegative(h + penalty * np.eye(p), g, w, top + penalty)
        intercept = (equations.target_sum - float(equations.sums @ w)) / equations.pairs
        out[alpha] = (w, intercept)
    return [out[alpha] for alpha in penalties]


def predict_rdm(x: np.ndarray, weights: np.ndarray, intercept: float, predictor: str = "differences") -> np.ndarray:
    """The (n, n) RDM of images with (standardised) features `x`, from per-image terms (no pairs x features)."""
    sign = _check_predictor(predictor)
    x = np.asarray(x, dtype=np.float64)
    weighted = (x * weights) @ x.T
    if predictor == "differences":
        u = (x * x) @ weights
        rdm = intercept + u[:, None] + u[None, :] - 2 * weighted
    else:
        rdm = intercept + weighted
    rdm = sign * (rdm + rdm.T) / 2
    np.fill_diagonal(rdm, 0.0)
    return rdm


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rho of two vectors; 0 where one is constant (it ranks no pair above another)."""
    ra, rb = rank_transform(a), rank_transform(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = float(np.sqrt((ra @ ra) * (rb @ rb)))
    return float(ra @ rb) / norm if norm > 0 else 0.0


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each feature over these (training) images; 1 where a feature is constant."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=0)
    return x.mean(axis=0), np.where(std > 0, std, 1.0)


def inner_folds(n: int, folds: int = INNER_FOLDS, seed: int = 0) -> list[np.ndarray]:
    """The held-out images of each inner fold (a seeded permutation cut into `folds` parts)."""
    if n < folds * MIN_FOLD_IMAGES:
        raise DataError(f"FR-RSA needs at least {folds * MIN_FOLD_IMAGES} training images for {folds} inner folds "
                        f"of {MIN_FOLD_IMAGES}, got {n}")
    return [np.sort(part) for part in np.array_split(np.random.default_rng(seed).permutation(n), folds)]


@dataclass
class FRRSAFit:
    """The chosen features (stage set), predictor and penalty, and the weights fitted on all training images."""

    stages: tuple[str, ...]
    label: str  # the stage set's name: one stage, or 'all'
    predictor: str
    penalty: float  # relative to the largest eigenvalue of the centred, per-pair Gram matrix
    weights: np.ndarray  # per feature, in the order of `stages` concatenated
    intercept: float
    mean: np.ndarray  # the training images' feature means and standard deviations
    std: np.ndarray
    inner_rho: dict[str, dict[float, float]] = field(default_factory=dict)  # stage set -> penalty -> mean rho
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """What evaluation.json keeps: the choice, the inner scores and how many weights are not zero."""
        return {"stages": self.label, "predictor": self.predictor, "penalty": self.penalty,
                "intercept": self.intercept, "features": len(self.weights),
                "nonzero_weights": int(np.count_nonzero(self.weights)), "inner_rho": self.inner_rho,
                "notes": self.notes}


def _stack(features: dict[str, np.ndarray], stages: tuple[str, ...]) -> np.ndarray:
    missing = [s for s in stages if s not in features]
    if missing:
        raise DataError(f"features lack the stage(s) {', '.join(missing)}")
    return np.concatenate([np.asarray(features[s], dtype=np.float64) for s in stages], axis=1)


def stage_sets(stages: list[str]) -> dict[str, tuple[str, ...]]:
    """The candidate feature sets: each stage alone, and all stages together."""
    return {**{s: (s,) for s in stages}, **({ALL_STAGES: tuple(stages)} if len(stages) > 1 else {})}


def fit_frrsa(features: dict[str, np.ndarray], target: np.ndarray, predictor: str = "differences",
              penalties=PENALTIES, folds: int = INNER_FOLDS, seed: int = 0,
              candidates: dict[str, tuple[str, ...]] | None = None) -> FRRSAFit:
    """FR-RSA fitted on training images: `features` stage -> (n, c) per image, `target` the training pairs'
    values (upper triangle, or an (n, n) RDM). The stage set and penalty of the best mean inner-fold Spearman
    rho are refitted on all training images."""
    _check_predictor(predictor)
    if not features:
        raise DataError("FR-RSA: no stage features to fit")
    n = len(next(iter(features.values())))
    target = np.asarray(target, dtype=np.float64)
    square = target if target.ndim == 2 else square_rdm(target, n)
    if square.shape != (n, n):
        raise DataError(f"FR-RSA: the target has {square.shape[-1]} images, the features {n}")
    if not np.all(np.isfinite(square)):
        raise DataError("FR-RSA: the target contains NaN or inf")
    candidates = candidates or stage_sets(list(features))
    penalties = tuple(penalties)
    folds = min(folds, n // MIN_FOLD_IMAGES)  # small training sets: as many inner folds as fit, 2 at least
    if folds < 2:  # nothing to cross-validate on: a fixed choice, said in the notes
        label = ALL_STAGES if ALL_STAGES in candidates else next(iter(candidates))
        return _refit(features, square, candidates, label, penalties[len(penalties) // 2], predictor, {},
                      [f"{n} training images are too few for inner folds of {MIN_FOLD_IMAGES}: stages "
                       f"{label} and the middle penalty, not chosen"])
    parts = inner_folds(n, folds, seed)
    inner: dict[str, dict[float, float]] = {}
    for label, stages in candidates.items():
        x = _stack(features, stages)
        rhos = np.zeros(len(penalties))
        for held in parts:
            fit_idx = np.setdiff1d(np.arange(n), held)
            mean, std = standardiser(x[fit_idx])
            eq = normal_equations((x[fit_idx] - mean) / std, square[np.ix_(fit_idx, fit_idx)], predictor)
            truth = upper_tri(square[np.ix_(held, held)])
            for k, (w, c) in enumerate(ridge_path(eq, penalties)):
                rhos[k] += _spearman(upper_tri(predict_rdm((x[held] - mean) / std, w, c, predictor)), truth)
        inner[label] = {alpha: float(r / len(parts)) for alpha, r in zip(penalties, rhos, strict=True)}
    label, alpha = max(((lab, a) for lab in inner for a in penalties), key=lambda key: inner[key[0]][key[1]])
    notes = [] if folds == INNER_FOLDS else [f"{folds} inner folds ({n} training images)"]
    return _refit(features, square, candidates, label, alpha, predictor, inner, notes)


def _refit(features: dict[str, np.ndarray], square: np.ndarray, candidates: dict[str, tuple[str, ...]], label: str,
           alpha: float, predictor: str, inner: dict[str, dict[float, float]], notes: list[str]) -> FRRSAFit:
    """The chosen stage set and penalty fitted on all training images."""
    stages = candidates[label]
    x = _stack(features, stages)
    mean, std = standardiser(x)
    eq = normal_equations((x - mean) / std, square, predictor)
    (w, c), = ridge_path(eq, (alpha,))
    if not np.any(w > 0):  # no feature agrees with the target: keep the one that disagrees least
        h, g = eq.centred()
        w = np.zeros_like(g)
        w[int(np.argmax(g / np.maximum(np.diag(h), 1e-300)))] = 1e-12
        c = (eq.target_sum - float(eq.sums @ w)) / eq.pairs
        notes.append("all weights were 0; kept the least disagreeing feature with a negligible weight")
    return FRRSAFit(stages, label, predictor, alpha, w, float(c), mean, std, inner, notes)


def apply_frrsa(fit: FRRSAFit, features: dict[str, np.ndarray]) -> np.ndarray:
    """The (n, n) RDM predicted for new images from their stage features (standardised as the training images)."""
    x = _stack(features, fit.stages)
    if x.shape[1] != len(fit.weights):
        raise DataError(f"FR-RSA: the features have {x.shape[1]} columns, the fit {len(fit.weights)}")
    return predict_rdm((x - fit.mean) / fit.std, fit.weights, fit.intercept, fit.predictor)
