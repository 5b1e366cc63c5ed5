"""The other-study check (pipelines/external.py): another study's RDMs of the same images score every held-out
prediction beside the study's own, the prior is kept where the trained model is below it there, and bad
`--external` values are one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from siamrdm.io.datasets import load_algonauts_set
from siamrdm.io.rdmfiles import save_rdms
from siamrdm.pipelines import evaluate
from siamrdm.pipelines.external import ExternalRDMs, check_held_out, load_external, score_external
from siamrdm.rdm.compare import compare_rdms
from siamrdm.train import config_from_preset

COLUMN = "IT @ kriegeskorte2008/target_fmri_hIT"


def test_image_folds_are_scored_on_the_other_study_too(data_root: Path, kriegeskorte_it: Path) -> None:
    """Each fold's held-out images are scored against the other study's subjects of those images: its own
    computed ceiling and the full record (the paired tests there: the challenge test below)."""
    dataset = load_algonauts_set(data_root, "92", ("IT",))
    external = load_external(str(kriegeskorte_it), ("IT",))
    assert (external.target, external.column, external.rdms.shape) == ("IT", COLUMN, (4, 2, 92, 92))
    config = config_from_preset("quick", image_size=32)
    result = evaluate.evaluate_folds(dataset, 3, ("layers", "regression"), config, progress=False,
                                     externals=(external,))
    other = [r for r in result.rows if r["target"] == COLUMN]
    assert [(r["method"], r["direction"]) for r in other] == [
        (m, f"fold {k}") for m in ("layers", "regression") for k in (1, 2, 3)]
    for row in other:
        held = result.held_out[row["direction"]].images.names
        index = np.array([dataset.images.names.index(name) for name in held])
        subjects = external.rdms[..., index[:, None], index[None, :]]
        predicted = result.predictions[(row["method"], row["target"], row["direction"])]
        assert row["rhos"] == pytest.approx(list(compare_rdms(predicted, subjects)))
        assert row["ceiling_source"] == "computed" and len(row["rhos"]) == 4 and row["pair_rho_mean"] is not None
    assert "IT @ kriegeskorte2008" in evaluate.fold_table(result.rows)


def _external(make_rdms, subjects: np.ndarray) -> ExternalRDMs:
    return ExternalRDMs("other/study", Path("other.npz"), "V4", "V4", subjects).bind([f"i{k}" for k in range(10)])


def test_the_prior_is_kept_where_the_trained_model_is_below_it(make_rdms) -> None:
    subjects = make_rdms(10, subjects=5, seed=3)
    external = _external(make_rdms, subjects)
    names = [f"i{k}" for k in (2, 5, 7, 1, 9, 0)]
    index = np.array([2, 5, 7, 1, 9, 0])
    prior = subjects.mean(axis=0)[index[:, None], index[None, :]]  # as good as a model of these subjects gets
    trained = make_rdms(6, seed=11)  # unrelated to them
    row, note = score_external(external, names, trained, prior)
    assert note is not None and "below its prior on other/study" in note
    assert row["rhos"] == pytest.approx(list(compare_rdms(prior, subjects[:, index[:, None], index])))
    assert row["detail_note"].startswith("prior kept: trained rho")
    row, note = score_external(external, names, trained, prior, keep_prior=False)  # --external-fallback none
    assert note is None and row["rhos"] == pytest.approx(
        list(compare_rdms(trained, subjects[:, index[:, None], index])))
    row, note = score_external(external, names, prior, trained)  # above its prior: the trained model stays
    assert note is None and "detail_note" not in row
    assert score_external(external, ["i1", "elsewhere"], trained[:2, :2], None) == (None, None)


def test_a_study_whose_held_out_rdms_cannot_be_scored_is_refused_before_training(make_rdms) -> None:
    """A subject of the other study with all-equal dissimilarities among the held-out images alone: fit trained,
    wrote its run, then crashed scoring it (exit 1). It is the --external file's bad input, found before fit trains
    (check_held_out) and wherever a prediction is scored on it (covering)."""
    from siamrdm.errors import ConfigError
    from siamrdm.io.datasets import BrainDataset
    from siamrdm.io.images import ImageSet

    subjects = make_rdms(10, subjects=3, seed=3)
    held = np.array([1, 4, 6])
    subjects[np.ix_([2], held, held)] = 0.5 * (1 - np.eye(3))
    external = _external(make_rdms, subjects)
    names = [f"i{k}" for k in held]
    val = BrainDataset("own-val", ImageSet(names, [np.zeros((4, 4, 3), np.uint8)] * 3, "own"), {})
    for check in (lambda: check_held_out([external], [val]), lambda: external.covering(names)):
        with pytest.raises(ConfigError, match=r"^external: .*subject 3 of 3 has a constant upper triangle.*among "
                                              "the 3 held-out images"):
            check()
    assert external.covering(["i0", "i1", "i4", "i6"]).shape == (3, 4, 4)  # with a fourth image it orders pairs


def test_bad_external_values_are_one_line(capsys, tmp_path: Path, data_root: Path, kriegeskorte_it: Path,
                                          make_rdms) -> None:
    set92 = data_root / "Training_Data" / "92_Image_Set"
    own = ["evaluate", "--images", set92 / "92images", "--rdms", set92 / "target_fmri.mat", "--key", "IT_RDMs",
           "--out", tmp_path / "out"]
    save_rdms(tmp_path / "two.npz", {"a": make_rdms(92, subjects=3, seed=1), "b": make_rdms(92, subjects=3, seed=2)})
    save_rdms(tmp_path / "small.npz", {"IT_RDMs": make_rdms(20, subjects=3, seed=3)})
    save_rdms(tmp_path / "one.npz", {"IT_RDMs": make_rdms(92, seed=4)})
    cases = [
        ([*own, "--external", tmp_path / "missing.mat"], "missing.mat: no such file"),
        ([*own, "--external", tmp_path / "two.npz"], "holds several arrays"),
        ([*own, "--external", f"{tmp_path / 'two.npz'}:c"], "missing key 'c'"),
        ([*own, "--external", tmp_path / "small.npz"], "20 images, the image set has 92"),
        ([*own, "--external", tmp_path / "one.npz"], "one RDM"),
        ([*own, "--external", ""], "an empty value"),
        (["evaluate", "--data", data_root, "--targets", "EVC,MEG_late", "--external", kriegeskorte_it,
          "--out", tmp_path / "out"], "names none of the targets"),
        (["evaluate", "--data", data_root, "--targets", "EVC", "--external", kriegeskorte_it,
          "--out", tmp_path / "out"], "names none of the targets (EVC)"),
    ]
    for args, part in cases:
        code, out, err = run_cli(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("siamrdm: error: --external: "), (part, err)
        assert part in lines[0], (part, err)
        assert not (tmp_path / "out").exists()


def test_the_challenge_scores_the_92_sets_it_on_the_other_study(capsys, tmp_path: Path, data_root: Path) -> None:
    """Without --external, the challenge scores IT 118 -> 92 on ../shared/kriegeskorte2008 when it is there,
    for the Siamese network and every registered baseline, with the paired tests."""
    out = tmp_path / "challenge"
    code, _, err = run_cli(capsys, "challenge", "--data", data_root, "--targets", "IT", "--epochs", "2",
                           "--backbone", "alexnet", "--weights", "random", "--image-size", "128", "--no-augment",
                           "--device", "cpu", "--out", out, "--quiet")
    assert code == 0, err
    with open(out / "validation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    other = [(r["method"], r["direction"]) for r in rows if r["target"] == COLUMN]
    assert other == [("siamese", "118->92"), ("layers", "118->92"), ("regression", "118->92"), ("frrsa", "118->92")]
    assert all(r["ceiling_source"] == "computed" for r in rows if r["target"] == COLUMN)
    assert f"| {COLUMN} | 118->92 | siamese | layers |" in (out / "validation.md").read_text()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["external"][0]["label"] == "kriegeskorte2008/target_fmri_hIT"


def test_fit_scores_its_held_out_images_on_the_other_study(capsys, tmp_path: Path, data_root: Path,
                                                           kriegeskorte_it: Path) -> None:
    """fit --external: the kept model's prediction of the held-out images against the other study's subjects of
    them; refused in one line without held-out images. Your own data's default is the pair structure (remove)."""
    set92 = data_root / "Training_Data" / "92_Image_Set"
    own = ["fit", "--images", set92 / "92images", "--rdms", set92 / "target_fmri.mat", "--key", "IT_RDMs",
           "--backbone", "alexnet", "--weights", "random", "--image-size", "128", "--epochs", "1", "--no-augment",
           "--external", kriegeskorte_it, "--quiet"]
    code, _, err = run_cli(capsys, *own, "--out", tmp_path / "none")
    assert code == 2 and err.strip() == ("siamrdm: error: --external scores predictions of held-out images: give "
                                         "--val-fraction or --val-set") and not (tmp_path / "none").exists()
    code, out, err = run_cli(capsys, *own, "--val-fraction", "0.3", "--out", tmp_path / "run")
    assert code == 0, err
    summary = json.loads(out)
    (label, row), = summary["external"].items()
    assert label == "92images-val/IT_RDMs @ kriegeskorte2008/target_fmri_hIT"
    assert row["images"] == 28 and len(row["rhos"]) == 4 and row["ceiling_source"] == "computed"
    from siamrdm.train.checkpoint import load_checkpoint

    saved = load_checkpoint(tmp_path / "run" / "model.pt")
    assert saved["config"]["per_image"] == "remove" and saved["purpose"].endswith("for other studies")
