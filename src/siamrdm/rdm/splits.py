"""How images and subjects are split for validation: held-out images, image folds, cross-set directions, subject
halves. One rule for every split: each side keeps at least MIN_SPLIT_IMAGES images, because a side's RDM must
have pairs to rank (3 images give 3 pairs) and a training side must have pairs to learn from.

No pair ever crosses a split: a model is trained on pairs among one side's images and scored on pairs among the
other's, so held-out scores measure generalisation to new images (and, with subject halves, to new people).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError
from ..io.datasets import BrainDataset
from ..io.images import ImageSet
from ..io.rdmfiles import check_scorable
from .core import subject_rdms

MIN_SPLIT_IMAGES = 3


def subset(dataset: BrainDataset, index: np.ndarray, name: str, option: str = "val_fraction") -> BrainDataset:
    """The images `index` of a dataset with their RDMs (rows and columns). Their RDMs must still be scorable
    (`check_scorable`: a subject's dissimilarities may all be equal among these images alone): a ConfigError
    naming the `option` that chose the split, not a NaN score or a crash."""
    images = ImageSet([dataset.images.names[k] for k in index], [dataset.images.images[k] for k in index],
                      dataset.images.source)
    targets = {t: r[..., index[:, None], index[None, :]] for t, r in dataset.targets.items()}
    for target, rdms in targets.items():
        try:
            check_scorable(rdms, f"{name}/{target}")
        except DataError as exc:
            raise ConfigError(option, f"{exc}, among the {len(index)} images of this split: choose another "
                                      "split") from None
    return BrainDataset(name, images, targets, dataset.official, dataset.notes)


def holdout_indices(n: int, fraction: float, seed: int, option: str = "val_fraction",
                    what: str = "images") -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices of n images, each sorted: a random `fraction` held out, both sides at least
    MIN_SPLIT_IMAGES; fraction 0 holds out nothing. A bad fraction is a ConfigError naming `option`."""
    if not (isinstance(fraction, int | float) and 0 <= fraction < 1):
        raise ConfigError(option, f"must be at least 0 and below 1, got {fraction}")
    if fraction == 0:
        return np.arange(n), np.arange(0)
    n_val = max(MIN_SPLIT_IMAGES, round(n * fraction))
    if n - n_val < MIN_SPLIT_IMAGES:
        raise ConfigError(option, f"{fraction} of the {n} {what} leaves {n - n_val} for training; both sides need "
                                  f"at least {MIN_SPLIT_IMAGES}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def split_holdout(dataset: BrainDataset, fraction: float, seed: int) -> tuple[BrainDataset, BrainDataset]:
    """Hold out a random `fraction` (above 0) of a set's images for validation (pairs among them only)."""
    if not (isinstance(fraction, int | float) and 0 < fraction < 1):
        raise ConfigError("val_fraction", f"must be between 0 and 1, got {fraction}")
    kept, held = holdout_indices(len(dataset), fraction, seed, what=f"images of set {dataset.name}")
    return subset(dataset, kept, f"{dataset.name}-train"), subset(dataset, held, f"{dataset.name}-val")


def fold_indices(n: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Each fold's held-out image indices, sorted: a seeded shuffle cut into `folds` parts of MIN_SPLIT_IMAGES
    or more images (a ConfigError naming 'folds' otherwise)."""
    if not (isinstance(folds, int) and 2 <= folds <= n // MIN_SPLIT_IMAGES):
        raise ConfigError("folds", f"{folds} folds of {n} images (each fold needs at least {MIN_SPLIT_IMAGES} "
                                   "images)")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


def fold_splits(dataset: BrainDataset, folds: int, seed: int = 0) -> dict[str, tuple[BrainDataset, BrainDataset]]:
    """Image-level folds within one set, '<set> fold k' -> (training images, held-out fold's images)."""
    splits = {}
    for k, held_out in enumerate(fold_indices(len(dataset), folds, seed)):
        kept = np.setdiff1d(np.arange(len(dataset)), held_out)
        splits[f"{dataset.name} fold {k + 1}"] = (subset(dataset, kept, f"{dataset.name}-f{k + 1}-train", "folds"),
                                                   subset(dataset, held_out, f"{dataset.name}-f{k + 1}-val", "folds"))
    return splits


def direction_label(train: str, test: str) -> str:
    return f"{train}->{test}"


def cross_set_splits(sets: dict[str, BrainDataset]) -> dict[str, tuple[BrainDataset, BrainDataset]]:
    """Fit on one set, score on another: every ordered pair of the sets given ('92->118' and '118->92' for the
    two Algonauts training sets), in the order the sets are given."""
    return {direction_label(a, b): (sets[a], sets[b]) for a in sets for b in sets if a != b}


def subject_halves(n_subjects: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the subjects (sorted indices; the first gets the odd one): train on one half's
    mean RDM, score on the other's subjects, so that a score cannot come from learning the same people."""
    if n_subjects < 2:
        raise ConfigError("subjects", f"{n_subjects} subject(s) cannot be split in halves; at least 2 are needed")
    order = np.random.default_rng(seed).permutation(n_subjects)
    first = (n_subjects + 1) // 2
    return np.sort(order[:first]), np.sort(order[first:])


def subject_subset(dataset: BrainDataset, halves: dict[str, np.ndarray], name: str) -> BrainDataset:
    """Some subjects of a set (each target's own indices: its subjects may differ in number), with all its images.
    Not `official`: the published ceilings are those of all the subjects, so a subset's are its own."""
    return BrainDataset(name, dataset.images, {t: subject_rdms(r)[halves[t]] for t, r in dataset.targets.items()},
                        False, dataset.notes)


def subject_split(dataset: BrainDataset, seed: int = 0) -> tuple[BrainDataset, BrainDataset]:
    """The set twice, all its images, each target's subjects halved on their own (`subject_halves`): (the first
    half, the second half). A ConfigError naming 'subjects' where a target has one subject."""
    halves = {t: subject_halves(len(subject_rdms(r)), seed) for t, r in dataset.targets.items()}
    return tuple(subject_subset(dataset, {t: h[k] for t, h in halves.items()}, dataset.name) for k in (0, 1))


def subject_fold_splits(dataset: BrainDataset, folds: int, seed: int = 0,
                        ) -> dict[str, tuple[BrainDataset, BrainDataset, BrainDataset]]:
    """Image folds crossed with subject halves, '<set> fold k' -> (training images with the first half's RDMs,
    held-out images with the first half's, held-out images with the second half's): one fit, scored on new
    images of the people it learned from and of people it never saw. Each target's subjects are halved on
    their own (a ConfigError naming 'subjects' where a target has one subject)."""
    trained, unseen = subject_split(dataset, seed)
    splits = {}
    folded = zip(fold_splits(trained, folds, seed).items(), fold_indices(len(dataset), folds, seed), strict=True)
    for (label, (train, held)), index in folded:  # the same seeded folds: `index` is the held-out fold's images
        splits[label] = (train, held, subset(unseen, index, f"{held.name}-new-subjects", "folds"))
    return splits
