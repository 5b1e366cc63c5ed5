"""The other-study check: held-out predictions scored against another study's RDMs of the same images.

A model fitted on one study's RDMs can look better on new images of that study while predicting another study's
RDMs of the same images worse than the pretrained stage it starts from: how dissimilar an image is to all others
(the per-image part) is largely a property of the study (its people, scanner, analysis, background), and only the
pair structure carries (RESULTS.md, "Other studies"). `--external FILE[:KEY]` names such RDMs: wherever a
held-out prediction covers images of that file, it is also scored against the file's subjects, with the full
score record, as a target of its own, '<target> @ <study>', so that every table, paired test and figure shows the
within-study and the other-study columns side by side.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..io.datasets import TARGET_NAMES
from ..io.images import natural_key
from ..io.limits import key_name
from ..io.progress import Progress
from ..io.rdmfiles import check_scorable, list_rdm_keys, read_rdms
from ..io.rsafiles import check_rdm_names
from ..rdm.noise_ceiling import target_name
from ..rdm.records import prediction_record

OPTION = "external"


@dataclasses.dataclass(frozen=True)
class ExternalRDMs:
    """Another study's subject RDMs of images a run predicts: (S, N, N) or (S, K, N, N) in the order of `names`."""

    label: str  # '<folder>/<file stem>[:key]': how the tables name the study
    path: Path
    key: str  # the array's key in the file ('' for a file of one array)
    target: str  # the target whose held-out predictions it scores
    rdms: np.ndarray
    names: tuple[str, ...] = ()  # the images of its rows, once bound to an image set (`bind`)
    notes: tuple[str, ...] = ()  # how the file was read (rdmfiles.read_rdms), for the CLI to show

    @property
    def column(self) -> str:
        """The target name of its score rows: the target, then the study."""
        return f"{self.target} @ {self.label}"

    def bind(self, names: Sequence[str]) -> ExternalRDMs:
        """The file's rows are these images, in this order (a file that names its images must name these)."""
        if self.rdms.shape[-1] != len(names):
            raise ConfigError(OPTION, f"{self.path}: {self.rdms.shape[-1]} images, the image set has {len(names)}")
        check_rdm_names(self.path, names, among="the images it is bound to")
        return dataclasses.replace(self, names=tuple(names))

    def covering(self, names: Sequence[str]) -> np.ndarray | None:
        """Its subjects' RDMs of these images (rows and columns in their order), or None where it lacks one.
        They must be scorable among these images alone (`check_scorable`), else a ConfigError, not a crash."""
        index = {name: k for k, name in enumerate(self.names)}
        if not self.names or any(name not in index for name in names):
            return None
        rows = np.array([index[name] for name in names])
        rdms = self.rdms[..., rows[:, None], rows[None, :]]
        try:
            check_scorable(rdms, key_name(self.path, self.key))
        except DataError as exc:
            raise ConfigError(OPTION, f"{exc}, among the {len(names)} held-out images it would score") from None
        return rdms


def split_spec(spec: str) -> tuple[Path, str | None]:
    """'FILE' or 'FILE:KEY' (the key after the last colon, when FILE alone is not a file)."""
    path = Path(spec)
    if path.is_file() or ":" not in spec:
        return path, None
    head, _, key = spec.rpartition(":")
    return Path(head), key or None


def load_external(spec: str, targets: Sequence[str]) -> ExternalRDMs:
    """One `--external FILE[:KEY]`: its RDMs, validated as any target's, and the target it scores: the key's own
    target ('IT_RDMs' -> 'IT') when that is trained; with your own data's one target, that target; a ConfigError
    naming the option otherwise (an IT study is never scored against EVC predictions)."""
    path, key = split_spec(spec)
    if not path.is_file():
        raise ConfigError(OPTION, f"{path}: no such file")
    try:
        keys = list(list_rdm_keys(path))
        if key is None and len(keys) > 1:
            raise ConfigError(OPTION, f"{path} holds several arrays ({', '.join(keys)}): name one as {path}:KEY")
        rdms, notes = read_rdms(path, key)
    except DataError as exc:
        raise ConfigError(OPTION, str(exc)) from None
    key = key if key is not None else keys[0]
    if len(rdms.shape) < 3 or rdms.shape[0] < 2:
        raise ConfigError(OPTION, f"{path}: one RDM; another study's check needs its subjects (at least 2)")
    named = target_name(key)
    algonauts = all(t in TARGET_NAMES for t in targets)  # the challenge's targets: a key must name one of them
    if key in targets or named in targets:
        target = key if key in targets else named
    elif len(targets) == 1 and not algonauts:  # your own data: its one target, whatever the other file's key
        target = targets[0]
    else:
        raise ConfigError(OPTION, f"{path}: key '{key}' names none of the targets ({', '.join(targets)})")
    label = f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
    return ExternalRDMs(label + (f":{key}" if len(keys) > 1 else ""), path, key, target, rdms, notes=notes)


def bind_to_sets(externals: Sequence[ExternalRDMs], sets: dict[str, Sequence[str]]) -> list[ExternalRDMs]:
    """Each file bound to the one image set (name -> its images, in RDM order) of its size (the Algonauts sets: 92
    or 118 images)."""
    bound = []
    for external in externals:
        matching = [names for names in sets.values() if len(names) == external.rdms.shape[-1]]
        if len(matching) != 1:
            sizes = ", ".join(f"{name}: {len(names)}" for name, names in sets.items())
            raise ConfigError(OPTION, f"{external.path}: {external.rdms.shape[-1]} images match "
                                      f"{len(matching)} of the image sets ({sizes}); it must match one")
        bound.append(external.bind(matching[0]))
    return bound


def bind_held_out(externals: Sequence[ExternalRDMs], datasets: Sequence, order: Sequence[str] | None
                  ) -> list[ExternalRDMs]:
    """fit --external: other studies' RDMs of a set's images, bound to that set (your own data: its image `order`;
    an Algonauts set: its images in `datasets`, split or not, in their natural order)."""
    if not externals:
        return []
    if order is not None:
        return [e.bind(order) for e in externals]
    names: dict[str, set[str]] = {}
    for dataset in datasets:  # '92-train' and '92-val' are the 92 set
        names.setdefault(dataset.name.split("-")[0], set()).update(dataset.images.names)
    return bind_to_sets(externals, {name: sorted(found, key=natural_key) for name, found in names.items()})


def check_held_out(externals: Sequence[ExternalRDMs], val: Sequence) -> None:
    """fit --external, before it trains: each study's RDMs of each validation set's images can be scored."""
    for dataset in val:
        for external in externals:
            external.covering(dataset.images.names)


def score_held_out(predictor, val: Sequence, externals: Sequence[ExternalRDMs], keep_prior: bool
                   ) -> tuple[dict, list[str]]:
    """Per validation set and other study ('set/<target> @ <study>'): a fit's kept model (predict.RDMPredictor)
    predicting the held-out images, scored against that study (score_external; the prior in its place where it
    is below it); and the notes saying where the prior took its place ('set/target: ...')."""
    out, notes = {}, []
    for dataset in val:
        predicted, prior = predictor.predict(dataset.images), predictor.predict_prior(dataset.images)
        for external in externals:
            row, note = score_external(external, dataset.images.names, predicted[external.target],
                                       None if prior is None else prior[external.target], keep_prior)
            if row is None:
                continue
            if note:
                notes.append(f"{dataset.name}/{external.target}: {note}")
            out[f"{dataset.name}/{external.column}"] = {"images": len(dataset), **row}
    return out, notes


def below_prior(trained_rhos: Sequence[float], prior_rhos: Sequence[float]) -> bool:
    """Whether the trained model predicts the other study worse than its prior alone: the mean of the paired
    differences over that study's subjects (each subject's rho, trained minus prior) below 0."""
    return float(np.mean(np.subtract(trained_rhos, prior_rhos))) < 0


def score_external(external: ExternalRDMs, names: Sequence[str], predicted: np.ndarray, prior: np.ndarray | None,
                   keep_prior: bool = True) -> tuple[dict | None, str | None]:
    """A held-out prediction of the images `names` scored against the other study (the full record, its chance
    fields on by default where cheap), or (None, None) where the study lacks one of the images. A trained model
    below its own `prior` there (`below_prior`) is not used for that study: with `keep_prior` the prior alone is
    scored in its place, and the second value says so in one line (else None). The record's `detail_note` says
    it too, for the row's detail."""
    subjects = external.covering(names)
    if subjects is None:
        return None, None
    row = prediction_record(predicted, subjects, external.key).to_dict()
    if prior is None or not keep_prior:
        return row, None
    prior_row = prediction_record(prior, subjects, external.key).to_dict()
    if not below_prior(row["rhos"], prior_row["rhos"]):
        return row, None
    note = (f"the trained model is below its prior on {external.label} (rho {row['rho_mean']:+.3f} against "
            f"{prior_row['rho_mean']:+.3f}): the prior is kept for it")
    return {**prior_row, "detail_note": f"prior kept: trained rho {row['rho_mean']:+.3f} was below"}, note


def external_row(external: ExternalRDMs, method: str, direction: str, names: Sequence[str], predicted: np.ndarray,
                 prior: np.ndarray | None, keep_prior: bool, detail: str, epochs: int | None,
                 progress: Progress) -> tuple[dict | None, np.ndarray]:
    """A score table's row of a held-out prediction of the images `names` on the other study, as the target
    '<target> @ <study>' (`score_external`; where the prior is kept, said on `progress` and in the detail), and the
    RDM the row scores; (None, predicted) where the study lacks one of the images."""
    row, note = score_external(external, names, predicted, prior, keep_prior)
    if row is None:
        return None, predicted
    if note:
        progress.line(f"{external.target} {direction}: {note}")
    detail = "; ".join(filter(None, (detail, row.pop("detail_note", None))))
    return ({"method": method, "target": external.column, "direction": direction, **row, "detail": detail,
             "epochs": epochs}, prior if note else predicted)


def bind_default(externals: Sequence[ExternalRDMs], root: Path, targets: Sequence[str]) -> list[ExternalRDMs]:
    """`challenge`'s other study where none is given: Kriegeskorte et al. (2008), human IT of the 92 images,
    when it lies beside the data root (`../shared/kriegeskorte2008`) and IT is a target."""
    path = Path(root).parent / "kriegeskorte2008" / "target_fmri_hIT.mat"
    if externals or "IT" not in targets or not path.is_file():
        return list(externals)
    return [load_external(os.fspath(path), targets)]


def load_externals(specs: Sequence[str] | None, targets: Sequence[str]) -> tuple[ExternalRDMs, ...]:
    """Every `--external` value (`load_external`); an empty one is refused."""
    specs = list(specs or [])
    if any(not isinstance(s, str) or not s.strip() for s in specs):
        raise ConfigError(OPTION, "an empty value: give FILE or FILE:KEY")
    return tuple(load_external(spec, targets) for spec in specs)


def describe(externals: Sequence[ExternalRDMs]) -> list[dict]:
    """What settings.json records of each file."""
    return [{"file": os.fspath(e.path), "key": e.key, "target": e.target, "label": e.label,
             "subjects": int(e.rdms.shape[0]), "images": int(e.rdms.shape[-1])} for e in externals]
