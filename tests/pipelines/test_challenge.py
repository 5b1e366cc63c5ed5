"""The challenge pipeline: submission files in the official format, scored by `siamrdm score`, and a tiny real run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from helpers import run_cli as run_main

from siamrdm.errors import DataError
from siamrdm.io.datasets import TARGET_NAMES, load_algonauts_set, target_key
from siamrdm.io.rdmfiles import save_rdms
from siamrdm.pipelines import challenge
from siamrdm.pipelines.methods import baseline_names
from siamrdm.rdm.compare import score_rdm
from siamrdm.rdm.noise_ceiling import OFFICIAL_NOISE_CEILINGS, noise_ceilings, reference_ceiling, target_name
from siamrdm.rdm.paired import paired_rows
from siamrdm.train import selection

SUBMISSION_KEYS = {"submit_fmri.mat": ["EVC_RDMs", "IT_RDMs"], "submit_meg.mat": ["MEG_RDMs_early", "MEG_RDMs_late"]}



def check_submission(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """A challenge submission file: MATLAB v5 (scipy.io.loadmat reads it), 78 x 78 float64 RDMs."""
    mat = scipy.io.loadmat(path)
    assert sorted(k for k in mat if not k.startswith("__")) == sorted(keys)
    for key in keys:
        rdm = mat[key]
        assert rdm.shape == (78, 78) and rdm.dtype == np.float64, key
        np.testing.assert_array_equal(rdm, rdm.T)
        np.testing.assert_array_equal(np.diag(rdm), 0)
        assert np.all(np.isfinite(rdm)) and np.ptp(rdm[np.triu_indices(78, 1)]) > 0
    return {k: mat[k] for k in keys}


def test_write_submissions_and_score_them(capsys, tmp_path: Path, make_rdms) -> None:
    predictions = {target: make_rdms(78, seed=k) for k, target in enumerate(TARGET_NAMES)}
    written = challenge.write_submissions(tmp_path / "sub", predictions)
    assert [p.name for p in written] == ["submit_fmri.mat", "submit_meg.mat"]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["submit_fmri.mat", "submit_meg.mat"]
    for name, keys in SUBMISSION_KEYS.items():
        saved = check_submission(tmp_path / "sub" / name, keys)
        for key, rdm in saved.items():
            np.testing.assert_array_equal(rdm, predictions[target_name(key)])

    # Targets shaped like the 78-image test data: fMRI (subjects, 78, 78), official MEG (subjects, 2, 78, 78).
    targets = {"EVC_RDMs": make_rdms(78, subjects=4, seed=10), "IT_RDMs": make_rdms(78, subjects=4, seed=11)}
    save_rdms(tmp_path / "fmri_targets.mat", targets)
    meg = {"MEG_RDMs_early": make_rdms(78, subjects=3, k=2, seed=12), "MEG_RDMs_late": make_rdms(78, subjects=3, k=2,
                                                                                                  seed=13)}
    save_rdms(tmp_path / "meg_targets.mat", meg)
    for name, target_file, truth in (("submit_fmri.mat", "fmri_targets.mat", targets),
                                     ("submit_meg.mat", "meg_targets.mat", meg)):
        code, out, err = run_main(capsys, "score", str(tmp_path / "sub" / name), "--target",
                                  str(tmp_path / target_file), "--json")
        assert code == 0 and err == ""
        result = json.loads(out)
        assert sorted(result) == sorted([*truth, "score"])
        for key, subjects in truth.items():
            expected = score_rdm(predictions[target_name(key)], subjects).r2
            assert result[key]["r2"] == pytest.approx(expected, rel=1e-9)
            # made-up subjects are not the official files: their own ceiling, never the published one (issue 33)
            assert result[key]["ceiling_source"] == "computed"
            assert result[key]["noise_ceiling"] == pytest.approx(noise_ceilings(subjects).upper)


def test_write_submissions_partial_and_invalid(tmp_path: Path, make_rdms) -> None:
    written = challenge.write_submissions(tmp_path / "a", {"EVC": make_rdms(78), "MEG_late": make_rdms(78, seed=1)})
    assert [p.name for p in written] == ["submit_fmri.mat", "submit_meg.mat"]
    check_submission(tmp_path / "a" / "submit_fmri.mat", ["EVC_RDMs"])
    check_submission(tmp_path / "a" / "submit_meg.mat", ["MEG_RDMs_late"])
    only_it = challenge.write_submissions(tmp_path / "b", {"IT": make_rdms(78)})
    assert [p.name for p in only_it] == ["submit_fmri.mat"]
    asymmetric = make_rdms(78)
    asymmetric[0, 1] += 0.5
    with pytest.raises(DataError, match="submit_fmri.mat:EVC_RDMs.*not symmetric"):
        challenge.write_submissions(tmp_path / "c", {"EVC": asymmetric})
    assert not (tmp_path / "c" / "submit_fmri.mat").exists()


def test_challenge_command_end_to_end(capsys, tmp_path: Path, data_root: Path) -> None:
    """`siamrdm challenge` with tiny settings on the real data: validation across sets, the final fits on
    92 + 118, predictions of the 78 test images, submission files, validation table, settings and report.
    The AlexNet body with random weights at 128 px is the quickest body here (this is a pipeline test).
    Without --quiet, stderr (not a terminal here) has a line per phase as it starts, and no progress bars."""
    out = tmp_path / "challenge"
    code, stdout, err = run_main(capsys, "challenge", "--data", str(data_root), "--targets", "EVC,MEG_late",
                                 "--epochs", "2", "--backbone", "alexnet", "--weights", "random", "--image-size", "128",
                                 "--no-augment", "--device", "cpu", "--out", str(out))
    assert code == 0, err
    check_progress_lines(err, out)
    check_submission(out / "submit_fmri.mat", ["EVC_RDMs"])
    check_submission(out / "submit_meg.mat", ["MEG_RDMs_late"])

    with open(out / "validation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cells = [("EVC", "92->118"), ("EVC", "118->92"), ("MEG_late", "92->118"), ("MEG_late", "118->92")]
    # The Siamese network first, then the pretrained network's baselines on the same pairs (the paper's point).
    assert [(r["method"], r["target"], r["direction"]) for r in rows] == [
        (m, t, d) for m in ("siamese", "layers", "regression", "frrsa") for t, d in cells]
    assert all(r["detail"] for r in rows if r["method"] != "siamese")  # the stage chosen, the weights
    assert all(r["detail"].startswith("stages=") and "penalty=" in r["detail"] for r in rows if r["method"] == "frrsa")
    for row in rows:
        assert 0 <= float(row["r2"]) <= 1 and 0 <= float(row["p"]) <= 1
        test_set = row["direction"].split("->")[1]
        # fMRI: the official ceiling; the window-averaged MEG files: the ceiling computed from them.
        subjects = load_algonauts_set(data_root, test_set, (row["target"],)).targets[row["target"]]
        ceiling = reference_ceiling(target_key(row["target"], official=True), subjects)
        official = OFFICIAL_NOISE_CEILINGS[int(test_set)][row["target"]]
        assert (ceiling == official) == (row["target"] == "EVC")
        assert row["ceiling_source"] == ("official" if row["target"] == "EVC" else "computed")
        assert float(row["noise_ceiling"]) == pytest.approx(ceiling)
        assert float(row["pct_nc"]) == pytest.approx(100 * float(row["r2"]) / ceiling)
        # every row has its own test set's lower ceiling, the Siamese rows as the baselines (issue 21)
        same = [r for r in rows if (r["target"], r["direction"]) == (row["target"], row["direction"])]
        for name in ("noise_ceiling_lower", "nc_lower_pct", "rho_lower_ceiling"):
            assert float(row[name]) > 0 and [float(r[name]) for r in same] == pytest.approx([float(row[name])] * 4)
        if row["method"] == "siamese":
            assert int(row["epochs"]) in (0, 1, 2)  # with the prior, epoch 0 (the prior alone) is a candidate
            assert -1 <= float(row["rho_mean"]) <= 1 and float(row["rho_se"]) > 0
    scores, paired = (out / "validation.md").read_text().split("## Paired tests against the baselines")
    assert scores.count("| siamese |") == 4
    # The Siamese network against each baseline on the same subjects, per target and direction (issue 21).
    tests = paired_rows(rows, baseline_names())
    assert [(r["target"], r["baseline"], r["direction"], r["method"], r["over"]) for r in tests] == [
        (t, b, d, "siamese", "subjects") for t in ("EVC", "MEG_late") for b in ("layers", "regression", "frrsa")
        for d in ("92->118", "118->92")]
    assert paired.count("| siamese |") == 12 and all(f"{r['p_t']:.2g}" in paired for r in tests)

    # Each direction's epochs were chosen on folds within its training set (new images of new people), the final
    # fit's on the cross-set curves of both directions together.
    curves = json.loads((out / "validation_curves.json").read_text())
    folds = [f"{name} fold {k}" for name in ("92", "118") for k in (1, 2, 3)]
    for target in ("EVC", "MEG_late"):
        assert sorted(curves[target]) == sorted(["92->118", "118->92", *folds])
        per_set = {name: selection.best_epoch(selection.fold_curve([curves[target][f"{name} fold {k}"]
                                                                     for k in (1, 2, 3)]))
                   for name in ("92", "118")}
        for row in rows[:4]:
            if row["target"] == target:
                assert int(row["epochs"]) == per_set[row["direction"].split("->")[0]]

    settings = json.loads((out / "settings.json").read_text())
    assert settings["targets"] == ["EVC", "MEG_late"] and settings["seeds"] == [0]
    assert settings["submission_files"] == ["submit_fmri.mat", "submit_meg.mat"]
    assert settings["config"]["backbone"] == "alexnet" and settings["config"]["image_size"] == 128
    assert settings["config"]["weights"] == "random" and settings["config"]["frozen_epochs"] == 2
    assert set(settings["fits"]) == {"EVC", "MEG_late"}
    assert all(fit["epochs"] in (0, 1, 2) for fit in settings["fits"].values())
    for target in ("EVC", "MEG_late"):
        chosen = selection.best_epoch(selection.fold_curve([curves[target][d] for d in ("92->118", "118->92")]))
        assert settings["fits"][target]["epochs"] == chosen
    for target in ("EVC", "MEG_late"):
        assert (out / target / "model.pt").is_file()
    assert (out / "report.md").is_file()
    assert "wrote submit_fmri.mat, submit_meg.mat" in stdout
    assert stdout.count("validation ") == 16
    assert stdout.splitlines()[-1].endswith(f"report.md and report.html in {out}")
    assert (out / "report.html").is_file()


def check_progress_lines(err: str, out: Path) -> None:
    """The challenge's phase lines (issue 21): the data loaded, then each fit k of n as it starts (8 curves per
    target: both directions and 3 folds of each set, then the final fits, then the baselines), and a closing line
    naming report.html; no carriage return or bar when stderr is not a terminal."""
    assert "\r" not in err and "it/s" not in err and "epoch/s" not in err
    lines = [line for line in err.splitlines() if line.startswith("challenge")]
    assert lines[0].startswith("challenge: loaded 92 (92 images), 118 (118 images), 78 (78 images) from ")
    phases = [line for line in lines if line.startswith("challenge [")]
    labels = ["92->118", "118->92", *(f"{s} fold {k}" for s in ("92", "118") for k in (1, 2, 3))]
    expected = [f"curve {t} {label} (seed 0)" for t in ("EVC", "MEG_late") for label in labels]
    expected += ["final fit EVC on 92+118", "final fit MEG_late on 92+118", "baselines layers, regression, frrsa"]
    assert len(phases) == len(expected) == 19
    for k, (line, text) in enumerate(zip(phases, expected, strict=True), 1):
        assert line.startswith(f"challenge [{k}/19] {text}"), line
    assert lines[-1].startswith("challenge: done in ")
    assert ": wrote submit_fmri.mat, submit_meg.mat, validation.md, report.md and " in lines[-1]
    assert lines[-1].endswith(f"{out / 'report.html'}")


def test_challenge_quiet_prints_no_progress(capsys, tmp_path: Path, data_root: Path) -> None:
    """--quiet silences the phase lines (the smallest run: one target, no validation, one epoch); without
    validation the final fit's line says its epochs were not chosen."""
    flags = ("challenge", "--data", str(data_root), "--targets", "EVC", "--epochs", "1", "--backbone", "alexnet",
             "--weights", "random", "--image-size", "128", "--no-augment", "--no-validate", "--device", "cpu")
    code, stdout, err = run_main(capsys, *flags, "--quiet", "--out", str(tmp_path / "quiet"))
    assert code == 0, err
    assert "challenge" not in err and "\r" not in err
    assert stdout.splitlines()[-1] == f"wrote submit_fmri.mat, report.md and report.html in {tmp_path / 'quiet'}"


# --------------------------------------------------------------------------- curves, folds and ensembles


def test_validation_curves_score_the_seed_ensembles_mean_rdm(data_root: Path) -> None:
    """Several seeds: each epoch scores the mean of the seeds' predicted RDMs (what the final predictor
    predicts), not the mean of their scores."""
    from dataclasses import replace

    from siamrdm.train import TrainConfig, Trainer, subset

    set_a = subset(load_algonauts_set(data_root, "92", ("EVC",)), np.arange(8), "a")
    set_b = subset(load_algonauts_set(data_root, "118", ("EVC",)), np.arange(7), "b")
    config = TrainConfig(backbone="alexnet", weights="random", image_size=128, augment=False, frozen_epochs=2,
                         targets=("EVC",), device="cpu")
    curves = selection.validation_curves(config, {"a->b": (set_a, set_b)}, seeds=(0, 1), progress=False)
    assert [row["epoch"] for row in curves["a->b"]] == [1, 2]
    rdms, single = [], []
    for seed in (0, 1):
        trainer = Trainer(replace(config, seed=seed), [set_a], [set_b], progress=False)
        for _ in range(2):
            trainer.run_epoch()
        rdms.append(trainer.stepper.last_rdms["b"][0])
        single.append(trainer.last_scores["b/EVC"]["r2"])
    expected = score_rdm(np.mean(rdms, axis=0), set_b.targets["EVC"])
    assert curves["a->b"][-1]["r2"] == pytest.approx(expected.r2, rel=1e-9)
    assert not np.allclose(rdms[0], rdms[1])  # two different members


def test_challenge_without_validation_stops_the_final_fit_at_the_configs_stop_epoch(tmp_path: Path,
                                                                                      data_root: Path) -> None:
    """Without validation the final fit trains the config's epochs as the config ends them: a `stop_epoch` that
    cuts the schedule short is kept (fit keeps it too), not replaced by the schedule's full length."""
    from siamrdm.train import TrainConfig

    config = TrainConfig(backbone="alexnet", weights="random", image_size=128, augment=False, frozen_epochs=3,
                         stop_epoch=1, targets=("EVC",), device="cpu")
    result = challenge.run_challenge(config, data_root, tmp_path / "run", targets=("EVC",), validate=False,
                                     progress=False)
    fit = result["settings"]["fits"]["EVC"]
    assert fit["epochs"] == 1 and fit["seed0"]["epochs_run"] == 1
