"""The challenge's submission format: a dict of model RDMs scored key by key against a dict of targets, as
`siamrdm score` prints it (`score_submission`), and the same for upper triangles too large for square RDMs.

A key's ceiling is the challenge's published one only where the target is the challenge's own file, recognised by
its content (`noise_ceiling.ceiling_source`), else the one computed from its subjects.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from ..io.limits import check_real_dtype
from ..io.tables import SCORE_FIELDS, Record, to_frame
from .compare import TargetError
from .core import subject_rdms, upper_tri
from .inference import chance_scores, check_permutations, check_seed
from .noise_ceiling import NoiseCeiling, keyed_ceiling, percent_of_ceiling
from .records import ScoreRecord, pair_fields, score_condensed, score_record
from .stream import Subjects, stream
from .transform import OFFICIAL_METHOD, check_method


def shown_keys(keys) -> str:
    """A file's keys for a message: the one array of a file without keys (a .npy) shows as '(no key)'."""
    return ", ".join(key or "(no key)" for key in keys) or "none"


def _checked_model(key: str, model, n: int) -> np.ndarray:
    """A submission's model RDM as float64, refused (naming its key) unless it is one finite, non-constant n x n
    RDM."""
    model = np.asarray(model)
    check_real_dtype(model.dtype, f"{key}: model RDM")
    model = np.asarray(model, dtype=np.float64)
    if model.shape != (n, n):
        raise ValueError(f"{key}: model RDM has shape {model.shape}, expected one {n} x {n} RDM")
    if not np.all(np.isfinite(model)):
        raise ValueError(f"{key}: model RDM contains NaN or inf")
    if np.ptp(upper_tri(model)) == 0:
        raise ValueError(f"{key}: model RDM is constant, so its Spearman correlation is undefined")
    return model


def _score_key(key: str, model: np.ndarray, target: np.ndarray, method: str) -> tuple[np.ndarray, NoiseCeiling]:
    """A key's per-subject comparison values and its ceiling, in one pass (scores and computed ceilings share the
    ranks)."""
    several = subject_rdms(target).shape[0] >= 2
    try:  # the model is checked before: what goes wrong now is the target's (a subject, or their mean)
        rho, computed = stream(upper_tri(model), Subjects(target, condensed=False), method, ceiling=several)
    except ValueError as exc:
        raise TargetError(f"{key}: {exc}") from None
    if not np.all(np.isfinite(rho)):  # finite RDMs give finite values: never pass NaN on as a score
        raise FloatingPointError(f"{key}: the comparison values came out as {rho} from finite RDMs")
    return rho, keyed_ceiling(key, target.shape[-1], computed, method)


@dataclasses.dataclass(frozen=True)
class SubmissionScore(Record):
    """A submission scored key by key (`score_submission`): each key's record and the overall score. `to_dict()` is
    the JSON object `siamrdm score --json` prints (key -> record with its method, then 'score', and 'missing' where
    keys are missing); `to_frame()` has a row per key."""

    targets: dict[str, ScoreRecord]  # key -> its record
    method: str
    r2: float | None  # the mean r2 of the keys; None where some of the target's keys are missing
    pct_nc: float | None  # that mean in % of the mean of their ceilings (None without a ceiling, or keys missing)
    missing: list[str] = dataclasses.field(default_factory=list)  # the target's keys the submission lacks

    def to_dict(self) -> dict:
        result: dict = {key: {**record.to_dict(), "method": self.method} for key, record in self.targets.items()}
        result["score"] = None if self.missing else {"r2": self.r2, "pct_nc": self.pct_nc}
        if self.missing:
            result["missing"] = list(self.missing)
        return result

    def to_frame(self):
        """A row per key: the columns 'key', 'method' and `tables.SCORE_FIELDS` (the overall r2 is the mean of the
        r2 column)."""
        rows = [{"key": key, "method": self.method, **record.to_dict()} for key, record in self.targets.items()]
        return to_frame(rows, ["key", "method", *SCORE_FIELDS])


def score_submission(
    submission: dict[str, np.ndarray], targets: dict[str, np.ndarray], permutations: int | None = None, seed: int = 0,
    method: str = OFFICIAL_METHOD,
) -> SubmissionScore:
    """Score every key present in both dicts (model, target, then options); `.to_dict()` is the JSON object
    `siamrdm score --json` prints.

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
    records: dict[str, ScoreRecord] = {}
    ceilings = []
    for key in keys:
        model, target = _checked_model(key, submission[key], targets[key].shape[-1]), targets[key]
        rho, ceiling = _score_key(key, model, target, method)
        record = score_record(rho, ceiling, chance_scores(model, target, permutations, seed, method))
        ceilings.append(ceiling.upper)
        records[key] = dataclasses.replace(record, **pair_fields(model, target, method, permutations, seed))
    if missing:
        return SubmissionScore(records, method, None, None, missing)
    mean_r2 = float(np.mean([records[k].r2 for k in keys]))
    mean_ceiling = None if any(c is None for c in ceilings) else float(np.mean(ceilings))
    return SubmissionScore(records, method, mean_r2, percent_of_ceiling(mean_r2, mean_ceiling))


def submission_frame(result: SubmissionScore | dict):
    """Deprecated: `score_submission(...).to_frame()`. A row per key of a result or of its `.to_dict()`."""
    warnings.warn("submission_frame() is deprecated: use score_submission(...).to_frame()", DeprecationWarning,
                  stacklevel=2)
    if isinstance(result, SubmissionScore):
        return result.to_frame()
    rows = [{"key": key, **row} for key, row in result.items() if key not in ("score", "missing")]
    return to_frame(rows, ["key", "method", *SCORE_FIELDS])


def score_condensed_submission(model_vector, subject_vectors, key: str, method: str = OFFICIAL_METHOD,
                               threads: int = 1) -> SubmissionScore:
    """What `score_submission` returns, for one key given as upper triangles (`records.score_condensed`'s
    record): the form `siamrdm score` prints for sets too large for square RDMs. Their ceiling is computed from
    the subjects (no official set is that large); there are no chance fields (each permutation would re-rank every
    subject's 50 million pairs)."""
    record = score_condensed(model_vector, subject_vectors, method, threads=threads)
    return SubmissionScore({key: record}, method, record.r2, record.pct_nc)
