"""Inference on scores: chance by permuting the image labels, bootstrap intervals over subjects, paired tests.

Chance. The official score squares each subject's rho, so an RDM with strong per-image structure scores above 0
by chance: on a noisy target (the 118 set's IT) a random such RDM reaches about 5% of the ceiling, more than any
real model explains. So every score table shows this very model RDM's chance level: its score with the image
labels permuted (rows and columns together), as mean and 95th percentile, and `p_perm`: how often relabelling
scores at least as well as the real labels. About 0.3 s per 1000 permutations at 118 images and 15 subjects (0.2 s
at 92), so they are on by default up to PERMUTE_UP_TO_IMAGES images (`default_permutations`).

Intervals and paired tests. What rsatoolbox users read beside a mean over subjects: its standard error (the sample
SE, ddof=1: what rsatoolbox's eval_fixed reports, its ddof=0 variance corrected by n / (n - 1)), a 95% bootstrap
interval over subjects (percentile interval of the mean over resampled subjects, as rsatoolbox's bootstrap
evaluations give), and paired tests of one method against another on the same subjects (rsatoolbox's
test_pairwise: 't-test' and 'ranksum', the Wilcoxon signed-rank test). Seeded: the same values give the same
interval on every run. Across a score table's rows, `paired.paired_rows` and `paired.method_comparison` apply them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import ConfigError
from ..io.tables import Record
from .compare import compare_rdms
from .core import square_rdm, subject_rdms, upper_tri
from .transform import DOT_METHODS, OFFICIAL_METHOD, check_method, dot_vectors

# Seeds are 0 <= seed < 2**32, what numpy's and torch's generators all take; here (torch-free) for the command
# line's checks of `score`, config re-exports it for the training settings.
SEED_LIMIT = 2**32
PERMUTATION_CHUNK = 2**22  # upper-triangle entries gathered per batch of permutations (32 MiB of float64)
DEFAULT_PERMUTATIONS = 1000
PERMUTE_UP_TO_IMAGES = 150
CHANCE_ALPHA = 0.05  # beats_chance: p_perm below this

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95


def check_seed(seed) -> int:
    """The permutations' seed: a whole number of 0 or more (numpy's generators take no negative seed); a
    ConfigError naming the `seed` setting, so that the command line names --seed, not an input file."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError("seed", f"must be a whole number of 0 or more, got {seed!r}")
    return int(seed)


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- chance: permuted image labels


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


def p_from_null(observed: float, null: np.ndarray) -> float:
    """(1 + #{null >= observed}) / (1 + n): one-sided, never 0."""
    at_least = int(np.sum(null >= observed - 1e-12))  # tolerance: the identity relabelling ties with rounding
    return (1 + at_least) / (1 + len(null))


def permutation_p(model_rdm: np.ndarray, target_rdms: np.ndarray, n_permutations: int, seed: int = 0,
                  method: str = OFFICIAL_METHOD) -> float:
    """p of the score under random image labels: (1 + #{permuted score >= observed}) / (1 + n_permutations).

    The null hypothesis is that the model RDM's image labels carry no information about the subjects'
    RDMs. The smallest p it can give is 1 / (1 + n_permutations).
    """
    if n_permutations < 1:
        raise ValueError(f"a permutation test needs at least 1 permutation, got {n_permutations}")
    observed = float(np.mean(compare_rdms(model_rdm, target_rdms, method) ** 2))
    return p_from_null(observed, permutation_scores(model_rdm, target_rdms, n_permutations, seed, method))


def default_permutations(n_images: int, method: str = OFFICIAL_METHOD) -> int:
    """How many permutations a score gets when none are asked for: DEFAULT_PERMUTATIONS up to
    PERMUTE_UP_TO_IMAGES images with a dot-product method (where they take under a second), else 0 (off)."""
    return DEFAULT_PERMUTATIONS if n_images <= PERMUTE_UP_TO_IMAGES and method in DOT_METHODS else 0


def check_permutations(permutations: int | None, n_images: int, method: str = OFFICIAL_METHOD) -> int:
    """The number of permutations to run: `default_permutations` for None, else `permutations` (0: off)."""
    if permutations is None:
        return default_permutations(n_images, method)
    if isinstance(permutations, bool) or not isinstance(permutations, int | np.integer) or permutations < 0:
        raise ConfigError("permutations", f"must be 0 (no permutation test) or more, got {permutations!r}")
    if permutations and method not in DOT_METHODS:
        raise ValueError(f"permutation p-values need one of {', '.join(DOT_METHODS)}, not '{method}'")
    return int(permutations)


def chance_scores(model_rdm: np.ndarray, target_rdms: np.ndarray, permutations: int | None = None, seed: int = 0,
                  method: str = OFFICIAL_METHOD) -> np.ndarray | None:
    """This model RDM's official scores under random image labels (`permutation_scores`), the null its chance
    level and p_perm are read from; None without permutations (0 asked for, or None above PERMUTE_UP_TO_IMAGES)."""
    count = check_permutations(permutations, np.shape(model_rdm)[-1], method)
    return permutation_scores(model_rdm, target_rdms, count, seed, method) if count else None


# --------------------------------------------------------------------------- bootstrap intervals and paired tests


def bootstrap_indices(n: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(samples, n) indices of `samples` resamples with replacement of n units (subjects, folds), seeded."""
    return np.random.default_rng(check_seed(seed)).integers(0, n, size=(samples, n))


def percentile_interval(means: np.ndarray, level: float = CI_LEVEL) -> tuple[float | None, float | None]:
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return finite_or_none(float(low)), finite_or_none(float(high))


def bootstrap_ci(values, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = CI_LEVEL) -> tuple[float | None, float | None]:
    """The `level` percentile interval of the mean of `values` over `samples` resamples of them (with
    replacement, seeded); (None, None) with fewer than 2 values or any that is not finite."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) < 2 or not np.all(np.isfinite(values)):
        return None, None
    return percentile_interval(values[bootstrap_indices(len(values), samples, seed)].mean(axis=1), level)


def mean_summary(values) -> dict:
    """n, mean, standard error (ddof=1) and the 95% bootstrap interval of the mean (`bootstrap_ci`) of values
    over units such as subjects or folds; None where undefined (one value), never NaN."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not len(values):
        return {"n": 0, "mean": None, "se": None, "ci_low": None, "ci_high": None}
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) >= 2 else None
    low, high = bootstrap_ci(values)
    return {"n": len(values), "mean": finite_or_none(float(values.mean())),
            "se": None if se is None else finite_or_none(se), "ci_low": low, "ci_high": high}


@dataclasses.dataclass(frozen=True)
class PairedTest(Record):
    """One method against another on the same units (subjects, or folds), the differences a - b."""

    n: int
    mean_diff: float | None  # mean of a - b
    diff_se: float | None  # its standard error (ddof=1)
    diff_ci_low: float | None  # 95% bootstrap interval of the mean difference
    diff_ci_high: float | None
    t: float | None  # paired t statistic
    p_t: float | None  # two-sided paired t-test (scipy.stats.ttest_rel): the tables' p
    p_wilcoxon: float | None  # two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon; exact for small n)


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

        from scipy import stats  # on first use: slow to import

        with warnings.catch_warnings():  # identical differences: scipy warns about precision
            warnings.simplefilter("ignore", RuntimeWarning)
            test = stats.ttest_rel(a, b)
            t, p_t = finite_or_none(float(test.statistic)), finite_or_none(float(test.pvalue))
            p_w = finite_or_none(float(stats.wilcoxon(a, b).pvalue))
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
