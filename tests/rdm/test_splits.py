"""splits: held-out images, image folds, cross-set directions and subject halves, with one minimum size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from siamrdm.errors import ConfigError
from siamrdm.io.datasets import load_algonauts_set
from siamrdm.rdm import splits


def test_holdout_indices_partition_and_the_minimum_size() -> None:
    kept, held = splits.holdout_indices(20, 0.2, seed=3)
    assert len(held) == 4 and len(kept) == 16
    assert sorted([*kept, *held]) == list(range(20)) and list(kept) == sorted(kept) and list(held) == sorted(held)
    assert splits.holdout_indices(20, 0.2, seed=3)[1].tolist() == held.tolist()  # seeded
    assert splits.holdout_indices(20, 0.2, seed=4)[1].tolist() != held.tolist()
    assert len(splits.holdout_indices(10, 0.01, seed=0)[1]) == splits.MIN_SPLIT_IMAGES  # never fewer than 3
    kept, held = splits.holdout_indices(7, 0.0, seed=0)
    assert kept.tolist() == list(range(7)) and held.size == 0
    # Both sides need 3 images: 6 images with half held out pass, 5 do not (2 left to train on).
    assert [len(part) for part in splits.holdout_indices(6, 0.5, seed=0)] == [3, 3]
    with pytest.raises(ConfigError, match="val_fraction: 0.5 of the 5 images leaves 2 for training"):
        splits.holdout_indices(5, 0.5, seed=0)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="val_fraction"):
            splits.holdout_indices(20, bad, seed=0)


def test_split_holdout_keeps_rows_and_columns(data_root: Path) -> None:
    dataset = load_algonauts_set(data_root, "92", ("EVC",))
    train, val = splits.split_holdout(dataset, 0.25, seed=0)
    kept, held = splits.holdout_indices(92, 0.25, seed=0)
    assert train.images.names == [dataset.images.names[k] for k in kept]
    np.testing.assert_array_equal(val.targets["EVC"], dataset.targets["EVC"][:, held][:, :, held])
    assert (train.name, val.name) == ("92-train", "92-val")
    with pytest.raises(ConfigError, match="val_fraction: must be between 0 and 1"):
        splits.split_holdout(dataset, 0.0, seed=0)


def test_a_split_whose_rdms_cannot_be_scored_is_refused_naming_its_option(make_rdms) -> None:
    """Held-out images (or a fold) among which a subject's dissimilarities are all equal, or the subjects' mean's:
    the held-out score was a crash (exit 1) or a silent rho of 0; it is the split's option, in one line."""
    from siamrdm.io.datasets import BrainDataset
    from siamrdm.io.images import ImageSet

    n = 8
    images = ImageSet([f"img{k}.png" for k in range(n)], [np.zeros((4, 4, 3), np.uint8)] * n, "own")
    _, held = splits.holdout_indices(n, 0.4, seed=0)
    fold = splits.fold_indices(n, 2, seed=0)[0]
    for index, split in ((held, lambda d: splits.split_holdout(d, 0.4, seed=0)),
                         (fold, lambda d: splits.fold_splits(d, 2, seed=0))):
        for flat in ([1], [0, 1, 2]):  # one subject, or every subject: their mean too
            rdms = make_rdms(n, subjects=3, seed=2)
            for s in flat:
                rdms[np.ix_([s], index, index)] = 0.5 * (1 - np.eye(len(index)))
            option = "val_fraction" if index is held else "folds"
            with pytest.raises(ConfigError, match=rf"^{option}: own-.*/X: the RDM of subject {flat[0] + 1} of 3 "
                                                  f"has a constant upper triangle.*among the {len(index)} images"):
                split(BrainDataset("own", images, {"X": rdms}))
    # Two subjects whose orders cancel among the held-out images alone: their mean there is constant.
    rdms = np.round(make_rdms(n, subjects=2, seed=3) * 8) / 8  # multiples of 1/8: the mean is exact
    rdms[np.ix_([1], held, held)] = (2 * rdms[0].max() - rdms[np.ix_([0], held, held)]) * (1 - np.eye(len(held)))
    with pytest.raises(ConfigError, match=r"^val_fraction: own-val/X: the mean RDM of its 2 subjects"):
        splits.split_holdout(BrainDataset("own", images, {"X": rdms}), 0.4, seed=0)


def test_fold_splits_partition_the_images(data_root: Path) -> None:
    dataset = load_algonauts_set(data_root, "92", ("EVC",))
    folds = splits.fold_splits(dataset, 4, seed=0)
    assert list(folds) == [f"92 fold {k}" for k in (1, 2, 3, 4)]
    held_out = [set(val.images.names) for _, val in folds.values()]
    assert sum(len(h) for h in held_out) == 92 and set().union(*held_out) == set(dataset.images.names)
    for fit_part, val in folds.values():
        assert not set(fit_part.images.names) & set(val.images.names)  # no image on both sides
        assert len(fit_part) + len(val) == 92 and val.targets["EVC"].shape[-1] == len(val)
    assert splits.fold_indices(9, 3)[0].size == 3  # 3 images a fold is the least
    with pytest.raises(ConfigError, match="folds: 40 folds of 92 images"):
        splits.fold_splits(dataset, 40)
    with pytest.raises(ConfigError, match="folds"):
        splits.fold_indices(92, 1)


def test_cross_set_directions(data_root: Path) -> None:
    sets = {name: load_algonauts_set(data_root, name, ("EVC",)) for name in ("92", "118")}
    directions = splits.cross_set_splits(sets)
    assert list(directions) == ["92->118", "118->92"]
    assert directions["92->118"][0] is sets["92"] and directions["92->118"][1] is sets["118"]


def test_subject_halves_are_disjoint_and_cover_everyone() -> None:
    first, second = splits.subject_halves(15, seed=0)
    assert len(first) == 8 and len(second) == 7 and not set(first) & set(second)
    assert sorted([*first, *second]) == list(range(15))
    assert splits.subject_halves(15, seed=1)[0].tolist() != first.tolist()
    with pytest.raises(ConfigError, match="subjects"):
        splits.subject_halves(1)


def test_subject_fold_splits_cross_image_folds_with_subject_halves(data_root) -> None:
    """One fit per fold on the first half's RDMs; scored on the same held-out images of both halves."""
    from siamrdm.io.datasets import load_algonauts_set
    from siamrdm.rdm import splits as splits_module
    from siamrdm.rdm.splits import subject_fold_splits, subject_halves

    dataset = load_algonauts_set(data_root, "92", ("EVC",))
    first, second = subject_halves(15)
    splits = subject_fold_splits(dataset, 3)
    assert list(splits) == ["92 fold 1", "92 fold 2", "92 fold 3"]
    held_out = []
    for train, same, new in splits.values():
        assert train.targets["EVC"].shape[0] == same.targets["EVC"].shape[0] == len(first) == 8
        assert new.targets["EVC"].shape[0] == len(second) == 7
        assert same.images.names == new.images.names and not set(train.images.names) & set(same.images.names)
        k = [dataset.images.names.index(n) for n in new.images.names]
        np.testing.assert_array_equal(new.targets["EVC"], dataset.targets["EVC"][second][:, k][:, :, k])
        assert not (train.official or same.official or new.official)  # the halves' ceilings are their own
        held_out += same.images.names
    assert sorted(held_out) == sorted(dataset.images.names)
    # the halves as whole sets, as the nested epoch benchmarks take them
    trained, unseen = splits_module.subject_split(dataset)
    np.testing.assert_array_equal(trained.targets["EVC"], dataset.targets["EVC"][first])
    np.testing.assert_array_equal(unseen.targets["EVC"], dataset.targets["EVC"][second])
    assert trained.images.names == unseen.images.names == dataset.images.names
    assert not (trained.official or unseen.official)
