"""One rule chooses the epoch count in challenge, evaluate and fit --select-epochs: folds of the training images
scored on the other half of the subjects (a fit on one set) or the cross-set curves (a fit on several), the
best validated epoch, and the prior kept without a validated gain."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from helpers import assert_one_line_error, fast_config, run_cli

from siamrdm.io.datasets import BrainDataset, load_algonauts_set
from siamrdm.pipelines import evaluate
from siamrdm.rdm import splits
from siamrdm.train import selection

SMALL = ["--backbone", "alexnet", "--weights", "random", "--image-size", "128", "--no-augment", "--device", "cpu",
         "--quiet"]


def test_select_epochs_is_the_fold_rule_on_new_images_of_new_people(data_root: Path) -> None:
    dataset = splits.subset(load_algonauts_set(data_root, "92", ("EVC",)), np.arange(18), "a")
    config = fast_config(frozen_epochs=3, prior="layer", lr=3e-3)
    epochs, curves = selection.select_epochs(config, [dataset])
    assert sorted(curves) == [f"a fold {k}" for k in (1, 2, 3)]  # 3 folds of 6 images
    new_people = {label: (fit_on, new) for label, (fit_on, _, new) in splits.subject_fold_splits(dataset, 3).items()}
    by_hand = selection.validation_curves(config, new_people, (0,))
    assert epochs == selection.choose_epochs({"a": list(by_hand.values())})["a"]
    assert epochs == selection.best_epoch(selection.fold_curve(list(by_hand.values())))
    assert [r["rho_mean"] for r in curves["a fold 1"]] == [r["rho_mean"] for r in by_hand["a fold 1"]]
    everyone = selection.validation_curves(config, splits.fold_splits(dataset, 3, seed=0), (0,))
    assert [r["rho_mean"] for r in curves["a fold 1"]] != [r["rho_mean"] for r in everyone["a fold 1"]]
    # A target of one subject cannot be halved: its folds are of images alone.
    alone = BrainDataset("b", dataset.images, {"EVC": dataset.targets["EVC"][:1]})
    assert selection.selection_splits([alone])["b fold 1"][1].targets["EVC"].shape[0] == 1
    assert [row["epoch"] for row in curves["a fold 1"]] == [0, 1, 2, 3]  # epoch 0: the prior alone
    # Too few images for two folds of 3: nothing can be chosen.
    assert selection.select_epochs(config, [splits.subset(dataset, np.arange(5), "tiny")]) == (None, {})


def test_a_fit_on_several_sets_takes_the_epochs_of_their_cross_set_curves(data_root: Path) -> None:
    full = load_algonauts_set(data_root, "92", ("EVC",))
    a, b = splits.subset(full, np.arange(12), "a"), splits.subset(full, np.arange(12, 24), "b")
    config = fast_config(frozen_epochs=3, prior="layer", lr=3e-3)
    epochs, curves = selection.select_epochs(config, [a, b])
    assert list(curves) == ["a->b", "b->a"]
    assert epochs == selection.final_epochs(list(curves.values()))
    by_hand = selection.validation_curves(config, splits.cross_set_splits({"a": a, "b": b}), (0,))
    assert [r["rho_mean"] for r in curves["b->a"]] == [r["rho_mean"] for r in by_hand["b->a"]]
    # pooled: [0.1, 0.2, 0.25]: the best validated epoch, 2; [0.25, 0.15, 0.175]: the prior alone is best
    assert selection.final_epochs([selection_curve([0.1, 0.3, 0.2]), selection_curve([0.1, 0.1, 0.3])]) == 2
    assert selection.final_epochs([selection_curve([0.3, 0.1, 0.1]), selection_curve([0.2, 0.2, 0.25])]) == 0


def test_rule4_scales_a_count_with_the_images_it_is_fitted_on() -> None:
    """Rule 4, kept for the benchmarks that compare it (RESULTS.md): chosen on n_c images, for n images:
    x n / n_c, rounded to a validated epoch, at most the schedule's last epoch, and 0 (the prior alone) kept."""
    assert [selection.scaled_epochs(e, 61.3, 92, 60) for e in (0, 1, 10, 20, 39, 41)] == [0, 2, 15, 30, 59, 60]
    assert selection.scaled_epochs(7, 105, 210, 60, every=5) == 15  # only every 5th epoch was scored
    assert selection.scaled_epochs(30, 105, 210, 40, every=3) == 40  # capped at the last, which is always scored


def selection_curve(values: list[float]) -> list[dict]:
    return [{"epoch": e, "rho_mean": v, "rho_se": 0.01} for e, v in enumerate(values)]


def test_evaluate_chooses_the_siamese_epochs_inside_each_fold(data_root: Path) -> None:
    dataset = splits.subset(load_algonauts_set(data_root, "92", ("EVC",)), np.arange(18), "own")
    config = fast_config(frozen_epochs=2, prior="layer", lr=3e-3)
    result = evaluate.evaluate_folds(dataset, folds=2, methods=("siamese",), config=config, progress=False)
    for (train, _), row in zip(splits.fold_splits(dataset, 2, 0).values(), result.rows, strict=True):
        assert row["epochs"] == selection.select_epochs(replace(config, targets=("EVC",)), [train])[0]
        assert "epochs chosen on" in row["detail"]


def test_fit_select_epochs(capsys, data_root: Path, own_data: tuple[str, ...], tmp_path: Path) -> None:
    out = tmp_path / "fit"
    code, stdout, err = run_cli(capsys, "fit", *own_data, "--frozen-epochs", "2", "--prior", "layer",
                                "--select-epochs", *SMALL, "--out", str(out))
    assert code == 0, err
    chosen = json.loads(stdout)["selected_epochs"]
    assert chosen["epochs"] in (0, 1, 2) and chosen["prior_alone"] == (chosen["epochs"] == 0)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["config"]["stop_epoch"] == chosen["epochs"]  # the final fit runs the chosen epochs
    code, _, err = run_cli(capsys, "fit", *own_data, "--select-epochs", "--val-fraction", "0.3", *SMALL, "--out",
                           str(tmp_path / "both"))
    assert code == 2
    assert_one_line_error(err, "--select-epochs", "--val-fraction")
    assert not (tmp_path / "both").exists()


def test_a_selection_fold_that_cannot_be_scored_names_select_epochs(make_rdms) -> None:
    """fit --select-epochs folds the images itself: a fold among whose images every subject's dissimilarities are
    equal is refused as --select-epochs (fit has no --folds to name)."""
    import pytest

    from siamrdm.errors import ConfigError
    from siamrdm.io.images import ImageSet

    n = 9
    images = ImageSet([f"img{k}.png" for k in range(n)], [np.zeros((4, 4, 3), np.uint8)] * n, "own")
    fold = splits.fold_indices(n, 3, seed=0)[0]
    rdms = make_rdms(n, subjects=4, seed=1)
    rdms[np.ix_(range(4), fold, fold)] = 0.5 * (1 - np.eye(len(fold)))
    with pytest.raises(ConfigError, match=r"constant upper triangle.*among the 3 images") as info:
        selection.selection_splits([BrainDataset("own", images, {"X": rdms})], folds=3)
    assert info.value.option == "select_epochs"


def test_best_epoch_is_the_one_se_rule_without_its_preference_for_fewer_epochs() -> None:
    """The best validated epoch: the prior alone is kept unless a trained epoch beats zero by 2 SE."""
    curve = selection_curve([0.10, 0.30, 0.305, 0.29])
    assert selection.one_se_epoch(curve) == 1 and selection.best_epoch(curve) == 2
    assert selection.best_epoch(selection_curve([0.05, 0.015, 0.019])) == 0  # no epoch 2 SE above 0: the prior
    assert selection.best_epoch(selection_curve([0.0, 0.015, 0.03, 0.025])) == 2
