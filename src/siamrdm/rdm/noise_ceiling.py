"""Noise ceilings: how well the subjects' own mean predicts each subject, what a model's score is read against.

Upper: each subject against the mean of all subjects; lower: each subject against the mean of the others. In r2
(the challenge's unit, what pct_nc divides by) and in rho (rsatoolbox's `boot_noise_ceiling`, the unit of a
model's `rho_mean`). One record, `NoiseCeiling`, holds them all and where the upper bound comes from: the
challenge's published one for its own files, recognised by their content (`ceiling_source`), else the one
computed from the subjects; none for a single RDM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from ..io.datasets import TARGETS
from ..io.tables import Record
from .core import subject_rdms
from .stream import CeilingValues, Subjects, stream
from .transform import OFFICIAL_METHOD

# Official noise ceilings (upper bound, mean over subjects of r^2) from the challenge's scoring scripts.
OFFICIAL_NOISE_CEILINGS: dict[int, dict[str, float]] = {
    92: {"EVC": 0.1589, "IT": 0.3075, "MEG_early": 0.4634, "MEG_late": 0.2275},
    118: {"EVC": 0.1048, "IT": 0.0728, "MEG_early": 0.3468, "MEG_late": 0.2265},
    78: {"EVC": 0.0640, "IT": 0.0647, "MEG_early": 0.3562, "MEG_late": 0.4452},
}
_KEY_TO_TARGET = {key: name for name, (_, key) in TARGETS.items()}

NO_CEILING_NOTE = "one RDM, no subjects to estimate a noise ceiling from: scores are r2 only"


@dataclasses.dataclass(frozen=True)
class NoiseCeiling(Record):
    """A target's noise ceiling in both units, and where its upper bound comes from. Upper: each subject against
    the mean of all subjects; lower: each subject against the mean of the others; None throughout for one RDM."""

    upper: float | None  # r2 units: what pct_nc divides by (the official one for the challenge's own files)
    lower: float | None  # r2 units: mean over subjects of rho^2 with the mean of the others
    rho_lower: float | None  # rho units: mean over subjects of rho with the mean of the others
    rho_upper: float | None = None  # rho units: ... with the mean of all subjects (computed, never official)
    method: str = OFFICIAL_METHOD
    source: str | None = "computed"  # 'official' (the challenge's own files), 'computed' or None (one RDM)

    @property
    def rho(self) -> tuple[float | None, float | None]:
        """(lower, upper) in rho units, in rsatoolbox's order."""
        return self.rho_lower, self.rho_upper


NO_CEILING = NoiseCeiling(None, None, None, None, source=None)


def percent_of_ceiling(r2: float | None, ceiling: float | None) -> float | None:
    return None if r2 is None or ceiling is None or ceiling <= 0 else 100.0 * r2 / ceiling


def noise_ceilings(target_rdms, method: str = OFFICIAL_METHOD, condensed: bool = False,
                   threads: int = 1) -> NoiseCeiling:
    """The noise ceiling of subject RDMs in r2 and in rho units (`NoiseCeiling`), compared with `method`: from
    square RDMs, or with `condensed` from upper triangles, (S, P) or (S, K, P) (see `records.score_condensed`).

    Raises ValueError, never returns NaN, when a mean RDM is constant (e.g. two subjects whose RDMs add up
    to a constant); `data.validate_rdms` already rejects constant individual RDMs. Each subject is ranked once
    and each mean once (see `stream.stream`).
    """
    subjects = Subjects(target_rdms if condensed else np.asarray(target_rdms), condensed=condensed)
    _, computed = stream(None, subjects, method, ceiling=True, threads=threads)
    return NoiseCeiling(*computed, method=method)


def noise_ceiling(target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> tuple[float, float]:
    """Deprecated: `noise_ceilings(target_rdms, method)`, whose `.upper` and `.lower` these are (one way to ask
    for a ceiling, one record for its answer)."""
    warnings.warn("noise_ceiling() is deprecated: use noise_ceilings(), its .upper and .lower",
                  DeprecationWarning, stacklevel=2)
    ceiling = noise_ceilings(target_rdms, method)
    return ceiling.upper, ceiling.lower


def noise_ceiling_condensed(subject_vectors, method: str = OFFICIAL_METHOD, threads: int = 1) -> tuple[float, float]:
    """Deprecated: `noise_ceilings(subject_vectors, method, condensed=True, threads=threads)`, whose `.upper` and
    `.lower` these are."""
    warnings.warn("noise_ceiling_condensed() is deprecated: use noise_ceilings(..., condensed=True), its .upper "
                  "and .lower", DeprecationWarning, stacklevel=2)
    ceiling = noise_ceilings(subject_vectors, method, condensed=True, threads=threads)
    return ceiling.upper, ceiling.lower


def vector_ceilings(subject_vectors: np.ndarray, method: str = OFFICIAL_METHOD) -> NoiseCeiling:
    """The ceilings computed from subjects' vectors of the same pairs, (S, P): a whole upper triangle or any
    sample of pairs (held-out pairs, a random sample of a large RDM's). None of them with one subject."""
    if len(subject_vectors) < 2:
        return NO_CEILING
    _, computed = stream(None, Subjects(subject_vectors, condensed=True, sampled=True), method, ceiling=True)
    return NoiseCeiling(*computed, method=method)


# --------------------------------------------------------------------------- the official ceilings, by content


def target_name(key: str) -> str:
    """'EVC_RDMs' -> 'EVC'; names that are already target names pass through."""
    return _KEY_TO_TARGET.get(key, key)


def official_noise_ceiling(key: str, n_images: int) -> float | None:
    """The challenge's ceiling for one of its keys ('EVC_RDMs', 'MEG_RDMs_late', ...) on an official set (92,
    118, 78 images), else None. Plain target names ('EVC') are not the challenge's keys: data keyed so are
    your own (see io.datasets.target_key), and their ceiling is computed from the subjects."""
    if key not in _KEY_TO_TARGET:
        return None
    return OFFICIAL_NOISE_CEILINGS.get(n_images, {}).get(_KEY_TO_TARGET[key])


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


def keyed_ceiling(key: str, n_images: int, computed: CeilingValues | None, method: str) -> NoiseCeiling:
    """The ceiling of a target under `key` from the one computed from its subjects (None: one RDM, no ceiling):
    the published upper bound in its place where the data are the challenge's own (`ceiling_source`)."""
    if computed is None:
        return NO_CEILING
    upper, lower, rho_lower, rho_upper = computed
    source = _source(key, n_images, lambda: upper, method)
    if source == "official":
        upper = official_noise_ceiling(key, n_images)
    return NoiseCeiling(upper, lower, rho_lower, rho_upper, method, source)


# Training validates against the same subjects every epoch: their computed ceilings are kept, for the few most
# recent data (a run scores a handful of targets), so that a long session's memory does not grow with every target.
_CACHE_SIZE = 32
_COMPUTED_CEILINGS: OrderedDict[tuple, CeilingValues] = OrderedDict()


def _computed_ceilings(target_rdms: np.ndarray, method: str) -> CeilingValues:
    """The ceiling computed from the subjects (`stream.CeilingValues`), kept per data and method (the
    `_CACHE_SIZE` most recently used)."""
    data = np.asarray(target_rdms, dtype=np.float64)
    fingerprint = (method, data.shape, hashlib.blake2b(np.ascontiguousarray(data).tobytes(), digest_size=16).digest())
    if fingerprint in _COMPUTED_CEILINGS:
        _COMPUTED_CEILINGS.move_to_end(fingerprint)
        return _COMPUTED_CEILINGS[fingerprint]
    _, computed = stream(None, Subjects(data, condensed=False), method, ceiling=True)
    _COMPUTED_CEILINGS[fingerprint] = computed
    if len(_COMPUTED_CEILINGS) > _CACHE_SIZE:
        _COMPUTED_CEILINGS.popitem(last=False)
    return computed


def ceilings_for(key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> NoiseCeiling:
    """The ceilings of a target's subject RDMs for `key` (see `ceiling_source`); those computed from the
    subjects are kept per data (`_computed_ceilings`)."""
    if subject_rdms(np.asarray(target_rdms)).shape[0] < 2:
        return NO_CEILING
    return keyed_ceiling(key, target_rdms.shape[-1], _computed_ceilings(target_rdms, method), method)


def reference_ceiling(key: str, target_rdms: np.ndarray, method: str = OFFICIAL_METHOD) -> float | None:
    """The ceiling a score is divided by (see `ceiling_source`)."""
    return ceilings_for(key, target_rdms, method).upper
