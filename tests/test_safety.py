"""Reliability and security (issue #8): no code runs from a user's file, one run per folder, options checked
before any work with nothing written on refusal, a NaN loss stops the run, and the best epoch is never the
untrained model.

The runs are tiny: 12 real images of the 92-image set as "your own data" (15 subjects' IT RDMs under the key
V4, so no official ceiling), the default efficientnet_lite0 body with random weights at 64 px, one epoch.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, mark_run, run_process_limited
from helpers import run_cli as run_main
from PIL import Image

from siamrdm import cli, train
from siamrdm.errors import DataError
from siamrdm.io import files
from siamrdm.io.datasets import BrainDataset, load_algonauts_set
from siamrdm.io.images import load_image_set
from siamrdm.io.rdmfiles import save_rdms
from siamrdm.rdm.noise_ceiling import noise_ceilings, official_noise_ceiling, reference_ceiling
from siamrdm.train.predict import MODEL_FORMAT, RDMPredictor

FAST = ("--epochs", "1", "--image-size", "64", "--weights", "random", "--no-augment", "--quiet", "--device", "cpu")



def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes); a changed, added or removed file changes it."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class RunsCode:
    """Unpickling this calls open(marker, 'w'): a loader that runs code from the file leaves the marker behind."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def craft(path: Path, marker: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**payload, "hook": RunsCode(marker)}, path)
    return path


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory: pytest.TempPathFactory, own_data: tuple[str, ...]) -> Path:
    """A genuine run folder written by `siamrdm fit` (model.pt, seed0/last.pt, seed0/log.csv). Do not modify."""
    out = tmp_path_factory.mktemp("fitted") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["fit", *own_data, *FAST, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def evc92(data_root: Path) -> BrainDataset:
    return load_algonauts_set(data_root, "92", ("EVC",))


def fast_config(**overrides) -> train.TrainConfig:
    values = dict(image_size=64, weights="random", augment=False, frozen_epochs=1, unfrozen_epochs=0, lr=3e-3,
                  device="cpu", targets=("EVC",))
    values.update(overrides)
    return train.TrainConfig(**values)


# --------------------------------------------------------------------------- 1. no code from a user's file


def test_crafted_model_file_runs_no_code(capsys, tmp_path: Path, own_data: tuple[str, ...]) -> None:
    marker = tmp_path / "pwned"
    crafted = craft(tmp_path / "crafted.pt", marker, {"format": MODEL_FORMAT, "config": {}, "members": []})
    prediction = tmp_path / "pred.mat"
    code, out, err = run_main(capsys, "predict", crafted, "--images", own_data[1], "--out", prediction,
                              "--device", "cpu")
    assert not marker.exists()
    assert code == 2 and out == ""
    assert_one_line_error(err, str(crafted))
    assert not prediction.exists()
    with pytest.raises(DataError, match="crafted.pt") as info:
        train.load_checkpoint(crafted)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # The bait is real: a loader that unpickles code runs it.
    torch.load(crafted, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_in_a_model_file_is_one_line_that_advises_nothing_unsafe(capsys, tmp_path: Path, legacy: bool,
                                                                           own_data: tuple[str, ...]) -> None:
    """torch's own message advises weights_only=False, and its legacy format adds a warning of two lines: the
    user gets one line saying why the file is refused."""
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": MODEL_FORMAT, "hook": RunsCode(marker)}, crafted, _use_new_zipfile_serialization=not legacy)
    code, out, err = run_main(capsys, "predict", crafted, "--images", own_data[1], "--out", tmp_path / "p.npy")
    assert (code, out) == (2, "") and not marker.exists()
    assert_one_line_error(err, str(crafted), "loading anything else could run code")
    assert "weights_only" not in err


def test_crafted_checkpoint_is_not_run_on_resume(capsys, tmp_path: Path, own_data: tuple[str, ...]) -> None:
    """`fit --resume` reads <out>/seed0/last.pt: a crafted one is refused in one line and runs nothing."""
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    last = out / "seed0" / "last.pt"
    with files.run_folder(out, "fit"), files.atomic_path(last) as tmp:  # in its manifest, as a genuine one is
        craft(tmp, marker, {"epoch": 1, "config": {}})
    code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out, "--resume")
    assert not marker.exists()
    assert code == 2 and stdout == ""
    assert_one_line_error(err, str(last), "unreadable checkpoint")
    assert not (out / "model.pt").exists()


def test_genuine_files_still_load_and_predict(capsys, tmp_path: Path, fitted_run: Path,
                                              own_data: tuple[str, ...]) -> None:
    last = train.load_checkpoint(fitted_run / "seed0" / "last.pt")
    assert last["epoch"] == 1 and last["config"]["image_size"] == 64
    prediction = tmp_path / "pred.npy"
    code, out, err = run_main(capsys, "predict", fitted_run / "model.pt", "--images", own_data[1], "--out",
                              prediction, "--device", "cpu")
    assert code == 0 and err == "", err
    rdm = np.load(prediction)
    assert rdm.shape == (12, 12) and np.all(np.isfinite(rdm))
    np.testing.assert_array_equal(rdm, rdm.T)


def test_predict_replaces_an_existing_file_only_when_asked(capsys, tmp_path: Path, fitted_run: Path,
                                                           own_data: tuple[str, ...]) -> None:
    """A user's file at --out stays unless --overwrite; a prediction never goes into a run that is in progress."""
    mine = tmp_path / "mine.npy"
    mine.write_bytes(b"my own results")
    args = ("predict", fitted_run / "model.pt", "--images", own_data[1], "--device", "cpu", "--out", mine)
    code, out, err = run_main(capsys, *args)
    assert (code, out) == (2, "")
    assert_one_line_error(err, str(mine), "exists; pass --overwrite")
    assert mine.read_bytes() == b"my own results"
    code, _, err = run_main(capsys, *args, "--overwrite")
    assert code == 0, err
    assert np.load(mine).shape == (12, 12)
    live = tmp_path / "live"
    with files.run_folder(live, "fit"):  # a fit running there holds the folder
        code, _, err = run_main(capsys, *args[:-1], live / "pred.npy")
        assert code == 2
        assert_one_line_error(err, "pred.npy", "a siamrdm run is in progress")
        assert not (live / "pred.npy").exists()


def test_predict_never_replaces_a_file_that_appeared_meanwhile(capsys, tmp_path: Path, fitted_run: Path,
                                                               own_data: tuple[str, ...], monkeypatch) -> None:
    """--out was free at start-up; a file written there while predict ran (the user's, or a second predict to
    the same --out that finished first) is not replaced: the later one gets one line, exit 2."""
    out = tmp_path / "late.npy"
    predict = RDMPredictor.predict

    def meanwhile(self, images):
        out.write_bytes(b"the other run's prediction")
        return predict(self, images)

    monkeypatch.setattr(RDMPredictor, "predict", meanwhile)
    code, stdout, err = run_main(capsys, "predict", fitted_run / "model.pt", "--images", own_data[1], "--device",
                                 "cpu", "--out", out)
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, str(out), "appeared while siamrdm was working")
    assert out.read_bytes() == b"the other run's prediction"
    assert [p.name for p in tmp_path.iterdir()] == ["late.npy"]  # no temporary file left


def test_a_model_whose_features_cannot_be_standardised_is_refused(capsys, tmp_path: Path, fitted_run: Path,
                                                                  own_data: tuple[str, ...]) -> None:
    """A zero feature_std (fit clamps it above 0) would divide by zero: refused, no NaN RDM written."""
    payload = train.load_checkpoint(fitted_run / "model.pt")
    for state in payload["members"]:
        state["feature_std"] = torch.zeros_like(state["feature_std"])
    crafted = tmp_path / "zero_std.pt"
    torch.save(payload, crafted)
    prediction = tmp_path / "pred.npy"
    code, out, err = run_main(capsys, "predict", crafted, "--images", own_data[1], "--out", prediction,
                              "--device", "cpu")
    assert (code, out) == (2, "")
    assert_one_line_error(err, str(crafted), "feature_std is not positive")
    assert not prediction.exists()


def test_a_folder_in_a_checkpoints_place_is_refused_before_training(capsys, tmp_path: Path, fitted_run: Path,
                                                                     own_data: tuple[str, ...]) -> None:
    """`fit --resume` where seed0/last.pt is a folder: one line naming it, before an epoch runs, the run as it was."""
    run = tmp_path / "run"
    shutil.copytree(fitted_run, run)
    (run / "seed0" / "last.pt").unlink()
    (run / "seed0" / "last.pt").mkdir()
    before = snapshot(run)
    code, out, err = run_main(capsys, "fit", *own_data, *FAST, "--out", run, "--resume")
    assert (code, out) == (2, "")
    assert_one_line_error(err, "last.pt", "is a folder")
    assert snapshot(run) == before and (run / "seed0" / "last.pt").is_dir()


def test_resume_needs_a_run_to_continue(capsys, tmp_path: Path, own_data: tuple[str, ...]) -> None:
    """`--resume` on a mistyped or empty folder is refused in one line rather than starting a new run."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "typo", empty):
        code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out, "--resume")
        assert (code, stdout) == (2, "")
        assert_one_line_error(err, str(out), "no siamrdm run to resume")
    assert not (tmp_path / "typo").exists() and list(empty.iterdir()) == []


# --------------------------------------------------------------------------- 2. one run per folder


def test_locked_folder_is_refused_then_free(capsys, tmp_path: Path, own_data: tuple[str, ...]) -> None:
    out = tmp_path / "run"
    with files.run_folder_lock(out):  # another run holds the folder
        code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out)
        assert code == 2 and stdout == ""
        assert_one_line_error(err, str(out), "locked")
        assert sorted(p.name for p in out.iterdir()) == [files.LOCK_NAME]  # nothing written
    code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out)
    assert code == 0, err
    assert (out / "model.pt").is_file() and json.loads(stdout)["seeds"]["seed0"]["epochs_run"] == 1


@pytest.mark.parametrize("flag", [None, "--overwrite", "--resume"])
def test_a_running_runs_folder_is_refused_as_locked_before_any_work(capsys, tmp_path: Path, fitted_run: Path,
                                                                    own_data: tuple[str, ...], flag) -> None:
    """A second run on a folder whose run is still going is told so at once: not 'pass --overwrite' (which would
    then be refused too), and not after its own work and lines on stderr (here the reliability lines, shown
    without --quiet)."""
    out = tmp_path / "run"
    shutil.copytree(fitted_run, out)
    before = snapshot(out)
    with files.run_folder_lock(out):  # the first run, still training
        code, stdout, err = run_main(capsys, "fit", *own_data, *[a for a in FAST if a != "--quiet"], "--out", out,
                                     *([flag] if flag else []))
    assert code == 2 and stdout == ""
    assert_one_line_error(err, str(out), "locked")
    assert snapshot(out) == before


# --------------------------------------------------------------------------- 3. re-runs into an existing folder


def test_challenge_rerun_needs_overwrite(capsys, tmp_path: Path, data_root: Path, make_rdms) -> None:
    out = tmp_path / "challenge"
    args = ("challenge", "--data", data_root, "--targets", "EVC", *FAST, "--no-validate", "--out", out)
    code, _, err = run_main(capsys, *args)
    assert code == 0, err
    # What an earlier run with MEG targets left (this run did EVC only): stale beside the new outputs.
    save_rdms(out / "submit_meg.mat", {"MEG_RDMs_late": make_rdms(78)})
    files.write_text(out / "MEG_late" / "seed0" / "log.csv", "epoch,loss\n1,0.1\n")
    before = snapshot(out)

    code, stdout, err = run_main(capsys, *args)
    assert code == 2 and stdout == ""
    assert_one_line_error(err, str(out), "--overwrite")
    assert snapshot(out) == before

    code, _, err = run_main(capsys, *args, "--overwrite")
    assert code == 0, err
    assert not (out / "submit_meg.mat").exists() and not (out / "MEG_late").exists()
    assert (out / "submit_fmri.mat").is_file() and (out / "EVC" / "model.pt").is_file()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["targets"] == ["EVC"] and settings["submission_files"] == ["submit_fmri.mat"]


def test_challenge_refusals_write_nothing(capsys, tmp_path: Path, data_root: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not a siamrdm run")
    before = snapshot(mine)
    code, stdout, err = run_main(capsys, "challenge", "--data", data_root, "--targets", "EVC", *FAST, "--out", mine,
                                 "--overwrite")
    assert code == 2 and stdout == ""
    assert_one_line_error(err, str(mine), "not a siamrdm run folder")
    assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    new = tmp_path / "new"
    code, stdout, err = run_main(capsys, "challenge", "--data", data_root, "--targets", "EVC", *FAST, "--lr", "nan",
                                 "--out", new)
    assert code == 2 and stdout == ""
    assert_one_line_error(err, "--lr")
    assert not new.exists()


def test_fit_rerun_needs_overwrite_or_resume(capsys, tmp_path: Path, fitted_run: Path,
                                            own_data: tuple[str, ...]) -> None:
    out = tmp_path / "run"
    shutil.copytree(fitted_run, out)
    before = snapshot(out)
    code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out)
    assert code == 2 and stdout == ""
    assert_one_line_error(err, str(out), "--overwrite")
    assert snapshot(out) == before
    code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out, "--resume", "--overwrite")
    assert code == 2 and stdout == ""
    assert_one_line_error(err, "--resume", "--overwrite")
    assert snapshot(out) == before

    # --overwrite replaces the earlier fit: an old seed's files go, the new run's come.
    with files.atomic_path(out / "seed5" / "last.pt") as tmp:  # as a run with --seeds 5 would have written it
        shutil.copy(out / "seed0" / "last.pt", tmp)
    code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out, "--overwrite")
    assert code == 0, err
    expected = sorted([*files.OWN_NAMES, "images.txt", "model.pt", "seed0", "settings.json"])
    assert sorted(p.name for p in out.iterdir()) == expected


# --------------------------------------------------------------------------- 4. options checked before any work


@pytest.mark.parametrize(("options", "flag"), [
    (("--lr", "nan"), "--lr"),
    (("--lr", "-1"), "--lr"),
    (("--lr", "inf"), "--lr"),
    (("--lr", "0"), "--lr"),
    (("--image-size", "16"), "--image-size"),  # 1 x 1 maps at efficientnet_lite0's blocks4; the head needs 3 x 3
    (("--image-size", "8"), "--image-size"),
    (("--stage", "blocks1"), "--stage"),  # 24 channels: not a multiple of the paper head's 16 groups
    (("--val-fraction", "0.99"), "--val-fraction"),  # all 12 images held out
    (("--val-fraction", "0.8"), "--val-fraction"),  # 2 left to train on
    (("--val-fraction", "1.5"), "--val-fraction"),
    (("--device", "tpu"), "--device"),
    (("--device", "cuda:7"), "--device"),
])
def test_bad_fit_options_exit_2_and_write_nothing(capsys, tmp_path: Path, own_data: tuple[str, ...],
                                                  options: tuple[str, ...], flag: str) -> None:
    if options == ("--device", "cuda:7") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "new"
    code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, *options, "--out", out)
    assert code == 2 and stdout == ""
    assert_one_line_error(err, flag)
    assert not out.exists()


def test_bad_predict_outputs_exit_2_and_write_nothing(capsys, tmp_path: Path, fitted_run: Path,
                                                      own_data: tuple[str, ...]) -> None:
    folder = tmp_path / "existing.mat"
    folder.mkdir()
    code, stdout, err = run_main(capsys, "predict", fitted_run / "model.pt", "--images", own_data[1], "--out", folder,
                                 "--device", "cpu")
    assert code == 2 and stdout == ""
    assert_one_line_error(err, str(folder), "folder")
    assert list(folder.iterdir()) == []
    a_file = tmp_path / "somefile.txt"
    a_file.write_text("keep me")
    code, stdout, err = run_main(capsys, "predict", fitted_run / "model.pt", "--images", own_data[1], "--out",
                                 a_file / "x.mat", "--device", "cpu")
    assert code == 2 and stdout == ""
    assert_one_line_error(err, "somefile.txt", "is a file")
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.mat", "somefile.txt"]


# --------------------------------------------------------------------------- 5. a NaN loss stops the run


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, evc92: BrainDataset) -> None:
    out = tmp_path / "run"
    trainer = train.Trainer(fast_config(), [train.subset(evc92, np.arange(10), "92-ten")], out_dir=out,
                            progress=False)
    trainer.fit(checkpoint_every_s=0)
    good_checkpoint, good_log = (out / "last.pt").read_bytes(), (out / "log.csv").read_bytes()
    # One more epoch with the head's weights poisoned: its loss is NaN.
    trainer.config = replace(trainer.config, frozen_epochs=2)
    with torch.no_grad():
        for p in trainer.model.head_parameters():
            p.fill_(math.nan)
    with pytest.raises(DataError, match="diverged at epoch 2") as info:  # the command line: one line, exit 2
        trainer.fit(checkpoint_every_s=0)
    assert isinstance(info.value, train.TrainingDiverged)
    assert (out / "last.pt").read_bytes() == good_checkpoint
    assert (out / "log.csv").read_bytes() == good_log
    assert sorted(p.name for p in out.iterdir()) == ["last.pt", "log.csv"]  # no temporary file left
    saved = train.load_checkpoint(out / "last.pt")
    assert saved["epoch"] == 1 and [row["epoch"] for row in saved["history"]] == [1]
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


# --------------------------------------------------------------------------- 6. choosing the best epoch


def test_best_epoch_without_a_ceiling_is_chosen_on_rho_mean(evc92: BrainDataset) -> None:
    """Validation RDMs of one subject have no noise ceiling (pct_nc None): the best epoch is the one of the
    highest signed mean rho, which needs no ceiling; the untrained model (epoch 0) is one candidate among them,
    not the default (before, a missing ceiling left every epoch unchosen and kept it)."""
    val = train.subset(evc92, np.arange(50, 58), "92-val")
    one_subject = BrainDataset("one-subject", val.images, {"EVC": val.targets["EVC"][:1]})
    result = train.fit(fast_config(frozen_epochs=3), [train.subset(evc92, np.arange(10), "92-ten")], [one_subject],
                       progress=False)
    assert [row["val_pct_nc"] for row in result.history] == [None, None, None, None]
    rho = [row["val_rho"] for row in result.history]
    assert all(math.isfinite(x) for x in rho) and len(set(rho)) > 1  # the epochs differ: a real choice
    assert [row["epoch"] for row in result.history] == [0, 1, 2, 3]
    assert result.best_epoch == int(np.argmax(rho))
    assert result.best_score == pytest.approx(max(rho))


def test_selection_score() -> None:
    """The mean over targets of the signed mean rho: an anti-correlated model does not count as a good one (its
    r2 would), a missing ceiling does not matter, NaN is the worst."""
    scores = {"a": {"r2": 0.2, "pct_nc": 40.0, "rho_mean": 0.4}, "b": {"r2": 0.1, "pct_nc": None, "rho_mean": 0.2}}
    assert train.selection_score(scores) == pytest.approx(0.3)
    anti = {"a": {"r2": 0.25, "pct_nc": 50.0, "rho_mean": -0.5}}
    assert train.selection_score(anti) < train.selection_score(scores)
    assert train.selection_score({"a": {"r2": math.nan, "pct_nc": None, "rho_mean": math.nan}}) == -math.inf
    assert train.selection_score({"a": {"r2": 0.3, "pct_nc": 9.0, "rho_mean": -0.99}}) > -math.inf


def test_computed_ceiling_without_an_official_one(evc92: BrainDataset) -> None:
    """15 subjects of 8 images: no official ceiling for 8 images, so the computed one gives pct_nc."""
    val = train.subset(evc92, np.arange(50, 58), "92-val")
    assert official_noise_ceiling("EVC", 8) is None
    trainer = train.Trainer(fast_config(), [train.subset(evc92, np.arange(10), "92-ten")], [val], progress=False)
    row = trainer.stepper.validate(frozen=True)["92-val/EVC"]
    ceiling = reference_ceiling("EVC", val.targets["EVC"])
    assert ceiling is not None and row["noise_ceiling"] == pytest.approx(ceiling)
    assert row["pct_nc"] == pytest.approx(100 * row["r2"] / ceiling)


# --------------------------------------------------------------------------- found in review


def test_missing_weights_file_is_refused_before_any_folder(capsys, tmp_path: Path, own_data) -> None:
    out = tmp_path / "run"
    fast = [a for a in FAST if a not in ("--weights", "random")]
    code, _, err = run_main(capsys, "fit", *own_data, *fast, "--weights", tmp_path / "nope.pth", "--out", out)
    assert code == 2 and not out.exists()
    assert_one_line_error(err, "nope.pth")


def test_a_folder_with_only_locks_is_empty_and_a_failed_fit_can_be_overwritten(capsys, tmp_path: Path,
                                                                                 own_data) -> None:
    out = tmp_path / "run"
    with files.run_folder_lock(out), files.run_folder_lock(out / "seed0"):
        pass  # what a run that failed before writing anything leaves
    code, _, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out)
    assert code == 0, err
    (out / "model.pt").unlink()  # now only a checkpoint, as a diverged fit leaves
    code, _, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out, "--overwrite")
    assert code == 0, err


def test_repeated_image_names_are_refused(tmp_path: Path) -> None:
    """Names identify images (order files, feature caches, rsatoolbox descriptors): they must be unique."""
    import scipy.io

    pixels = [np.full((8, 8, 3), v, dtype=np.uint8) for v in (0, 100, 200)]
    stimuli = np.zeros((1, 3), dtype=[("names", object), ("pixels", object)])
    for k, (name, p) in enumerate(zip(["face", "house", "face"], pixels, strict=True)):
        stimuli[0, k] = (name, p)
    path = tmp_path / "stimuli.mat"
    scipy.io.savemat(path, {"visual_stimuli": stimuli})
    with pytest.raises(DataError, match="'face' appears more than once"):
        load_image_set(path)


def test_malformed_model_file_is_one_line(capsys, tmp_path: Path, set92: Path) -> None:
    bad = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "config": {}}, bad)
    code, _, err = run_main(capsys, "predict", bad, "--images", set92 / "92images", "--out", tmp_path / "x.mat")
    assert code == 2 and not (tmp_path / "x.mat").exists()
    assert_one_line_error(err, "malformed siamrdm model file")


def test_computed_ceilings_are_cached_by_content(make_rdms) -> None:
    """Two stacks with the same sums but entries swapped between subjects get their own ceilings."""
    a = np.round(make_rdms(9, subjects=3, seed=5) * 4)
    b = a.copy()
    b[0, 0, 1], b[1, 0, 1] = a[1, 0, 1], a[0, 0, 1]
    b[0, 1, 0], b[1, 1, 0] = b[0, 0, 1], b[1, 0, 1]
    assert float(a.sum()) == float(b.sum()) and float((a * a).sum()) == float((b * b).sum())
    assert reference_ceiling("V4", b) == pytest.approx(noise_ceilings(b).upper)
    assert reference_ceiling("V4", a) == pytest.approx(noise_ceilings(a).upper)


def test_a_prior_whose_weights_file_changed_is_refused(tmp_path: Path, evc92: BrainDataset) -> None:
    from siamrdm.model.backbones import create_body
    from siamrdm.train.predict import RDMPredictor, fit_predictor

    weights = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save(create_body("alexnet", "random", "conv5").stages.state_dict(), weights)
    small = train.subset(evc92, np.arange(8), "s")
    config = train.TrainConfig(backbone="alexnet", weights=str(weights), image_size=128, augment=False,
                               frozen_epochs=1, targets=("EVC",), prior="layer", device="cpu")
    fit_predictor(config, [small], out_dir=tmp_path / "run", progress=False)
    RDMPredictor.load(tmp_path / "run" / "model.pt", "cpu")  # unchanged: loads
    torch.manual_seed(1)
    torch.save(create_body("alexnet", "random", "conv5").stages.state_dict(), weights)
    with pytest.raises(DataError, match="changed since this model was trained"):
        RDMPredictor.load(tmp_path / "run" / "model.pt", "cpu")


# --------------------------------------------------------------------------- 5. a folder is siamrdm's only if marked


def user_folder(root: Path, layout: str) -> Path:
    """The three layouts of users' folders that an older siamrdm took for its runs and emptied."""
    folder = root / layout
    files_of = {
        "project": {"settings.json": "{}", "thesis.tex": "years of work", "data/raw.csv": "1,2,3\n"},
        "yolo": {"weights/last.pt": "weights", "data.yaml": "nc: 3\n", "results.csv": "epoch,map\n"},
        "own_model": {"model.pt": "my model", "train.py": "print('train')\n"},
    }[layout]
    for name, text in files_of.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("layout", ["project", "yolo", "own_model"])
def test_a_users_folder_survives_overwrite_and_resume(capsys, tmp_path: Path, data_root: Path, layout: str,
                                                      own_data: tuple[str, ...]) -> None:
    folder = user_folder(tmp_path, layout)
    before = snapshot(folder)
    runs = [("fit", *own_data, *FAST, "--out", folder, "--overwrite"),
            ("fit", *own_data, *FAST, "--out", folder, "--resume"),
            ("fit", *own_data, *FAST, "--out", folder),
            ("challenge", "--data", data_root, "--targets", "EVC", *FAST, "--no-validate", "--out", folder,
             "--overwrite"),
            ("evaluate", *own_data, *FAST, "--folds", "3", "--methods", "layers", "--out", folder, "--overwrite")]
    for args in runs:
        code, stdout, err = run_main(capsys, *args)
        assert code == 2 and stdout == "", (args, err)
        assert_one_line_error(err, str(folder), "not a siamrdm run folder")
        assert snapshot(folder) == before and sorted(p.name for p in folder.rglob("*")) == sorted(
            p.name for p in folder.rglob("*"))
    assert not any(name in files.OWN_NAMES for name in (p.name for p in folder.rglob("*")))  # not even a lock


def test_overwrite_removes_only_what_siamrdm_wrote(capsys, tmp_path: Path, fitted_run: Path,
                                                   own_data: tuple[str, ...]) -> None:
    out = tmp_path / "run"
    shutil.copytree(fitted_run, out)
    (out / "notes.md").write_text("what I learnt from this run")
    (out / "seed0" / "plot.py").write_text("import matplotlib\n")
    code, _, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out, "--overwrite")
    assert code == 0, err
    assert (out / "notes.md").read_text() == "what I learnt from this run"
    assert (out / "seed0" / "plot.py").read_text() == "import matplotlib\n"
    assert (out / "model.pt").is_file() and files.read_marker(out)["status"] == "finished"


def test_resume_with_other_settings_is_refused_before_anything_is_written(capsys, tmp_path: Path, fitted_run: Path,
                                                                         own_data: tuple[str, ...]) -> None:
    out = tmp_path / "run"
    shutil.copytree(fitted_run, out)
    before = snapshot(out)
    code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out, "--resume", "--lr", "0.5")
    assert code == 2 and stdout == ""
    assert_one_line_error(err, "--resume", "lr")
    assert snapshot(out) == before
    code, _, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out, "--resume")  # the same settings: fine
    assert code == 0, err


def test_resume_on_other_images_or_rdms_is_refused(capsys, tmp_path: Path, fitted_run: Path,
                                                   own_data: tuple[str, ...]) -> None:
    """The data a run trains on are its settings too: a resume that held out images (or read another RDM file)
    trained on other pairs and rewrote model.pt with that data's prior and scale."""
    out = tmp_path / "run"
    shutil.copytree(fitted_run, out)
    before = snapshot(out)
    rdms = tmp_path / "other.npy"
    shutil.copy(own_data[3], rdms)
    for changed in (("--val-fraction", "0.3"), ("--rdms", str(rdms))):
        data = [*own_data[:3], changed[1], *own_data[4:]] if changed[0] == "--rdms" else [*own_data, *changed]
        code, stdout, err = run_main(capsys, "fit", *data, *FAST, "--out", out, "--resume")
        assert code == 2 and stdout == "", err
        assert_one_line_error(err, "--resume", "other settings (inputs)")
        assert snapshot(out) == before


@pytest.mark.parametrize(("options", "flag"), [
    (("--seeds", "99999999999999999999999"), "seed"),
    (("--lr", "1e30", "--epochs", "2"), "diverged"),
])
def test_a_failed_run_leaves_nothing_behind(capsys, tmp_path: Path, own_data: tuple[str, ...], options, flag) -> None:
    """A run that fails after it started leaves no settings.json or images.txt, so the next run needs no
    --overwrite; nor does it claim a checkpoint that was never written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new", empty):
        code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, *options, "--out", out)  # options win
        assert code == 2 and stdout == "", err
        assert_one_line_error(err, flag)
        assert "checkpoint is kept" not in err
        assert (not out.exists()) if out.name == "new" else list(out.iterdir()) == []
    code, _, err = run_main(capsys, "fit", *own_data, *FAST, "--out", empty)
    assert code == 0, err


def test_an_empty_out_is_refused(capsys, tmp_path: Path, own_data: tuple[str, ...], monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", "")
    assert code == 2 and stdout == ""
    assert_one_line_error(err, "--out", "empty")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- issue 33: names images.txt can hold


@pytest.mark.parametrize("bad", ["a\nb.png", "a\u2028b.png", "#1.png", " lead.png"])
def test_fit_refuses_an_image_name_its_order_file_could_not_give_back(capsys, tmp_path: Path, make_rdms,
                                                                       bad: str) -> None:
    """images.txt (one name a line, read back with --order) cannot hold a line break, a leading '#' or spaces
    around a name: such a name is refused in one line before any run folder is made, as predict and data-info
    refuse it."""
    folder = tmp_path / "images"
    folder.mkdir()
    for k, name in enumerate(["img1.png", "img2.png", "img3.png", bad]):
        Image.new("RGB", (8, 8), (60 * k, 20, 90)).save(folder / name, format="PNG")
    rdms = tmp_path / "rdms.npy"
    np.save(rdms, make_rdms(4, subjects=3, seed=5))
    out = tmp_path / "run"
    code, stdout, err = run_main(capsys, "fit", "--images", folder, "--rdms", rdms, "--key", "V4", "--out", out,
                                 "--image-size", "32", "--epochs", "1")
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, str(folder), repr(bad), "cannot be listed in an order file")
    assert not out.exists()
    code, stdout, err = run_main(capsys, "data-info", "--images", folder, "--rdms", rdms)
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, repr(bad))


def test_a_deeply_nested_manifest_is_refused_before_the_lock(capsys, tmp_path: Path, own_data: tuple[str, ...]) -> None:
    """`fit --overwrite` clears by the manifest: a damaged one is one line naming it, exit 2, refused before the
    folder is locked, so not even a lock file is left behind."""
    out = mark_run(tmp_path / "run", "fit")
    (out / files.LOCK_NAME).unlink()
    (out / files.MANIFEST_NAME).write_text('"settings.json"\n' + "[" * 50_000 + "]" * 50_000 + "\n")
    (out / "settings.json").write_text("{}")
    before = snapshot(out)
    code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out, "--overwrite")
    assert code == 2 and stdout == ""
    assert_one_line_error(err, str(out / files.MANIFEST_NAME), "line 2", "nested")
    assert snapshot(out) == before and not (out / files.LOCK_NAME).exists()


HOLD_RUN = """
import sys
from siamrdm.io.files import run_folder
with run_folder(sys.argv[1], "fit"):
    print("running", flush=True)
    sys.stdin.read()
"""


def test_a_run_inside_another_runs_folder_is_refused(capsys, tmp_path: Path, fitted_run: Path,
                                                     own_data: tuple[str, ...]) -> None:
    """fit or lr-find --out inside a finished run's folder, or inside one another process is running: one line,
    exit 2, nothing made (its files would be listed in the outer run and removed by its --overwrite)."""
    finished = tmp_path / "finished"
    shutil.copytree(fitted_run, finished)
    before = snapshot(finished)
    code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", finished / "sub")
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, str(finished / "sub"), "inside", "another siamrdm run")
    assert snapshot(finished) == before and not (finished / "sub").exists()
    running = tmp_path / "running"
    process = subprocess.Popen([sys.executable, "-c", HOLD_RUN, str(running)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "running", process.stderr.read()
        code, stdout, err = run_main(capsys, "lr-find", *own_data, "--image-size", "64", "--weights", "random",
                                     "--device", "cpu", "--quiet", "--out", running / "lrsub")
        assert (code, stdout) == (2, "")
        assert_one_line_error(err, str(running / "lrsub"), "inside", "another siamrdm run")
        assert not (running / "lrsub").exists()
    finally:
        process.communicate(input="", timeout=30)


TEMPORARY = re.compile(r"^\..*\.[0-9a-f]{12}\.tmp")  # what an interrupted atomic write would leave


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path: Path, fitted_run: Path,
                                                                own_data: tuple[str, ...]) -> None:
    """A write that fails for want of room (here a file size limit, as a full disk fails it: EFBIG), in fit
    (torch's checkpoint) and predict (an HDF5 file): one line naming the file, exit 2, no temporary file left,
    and a new run's folder left as it was found."""
    out = tmp_path / "run"
    done = run_process_limited("fit", *own_data, *FAST, "--out", out, file_size=64 * 1024)
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, str(out), "cannot be written", "File too large")
    assert not out.exists()
    prediction = tmp_path / "pred.h5"
    done = run_process_limited("predict", fitted_run / "model.pt", "--images", own_data[1], "--device", "cpu",
                               "--out", prediction, file_size=1024)
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, str(prediction), "cannot be written", "File too large")
    assert not any(TEMPORARY.match(p.name) for p in tmp_path.rglob("*")) and not prediction.exists()


def test_a_dangling_link_as_out_is_one_line(capsys, tmp_path: Path, own_data: tuple[str, ...]) -> None:
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "nowhere")
    code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", link)
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, str(link), "not a folder", "link to nothing")
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@contextlib.contextmanager
def undeletable(path: Path):
    """`path` cannot be removed for the duration: its folder read-only, or for root (whom permissions do not
    stop) the file immutable (chattr +i; skipped where the file system or the container does not allow it)."""
    if os.geteuid() != 0:
        mode = path.parent.stat().st_mode
        path.parent.chmod(0o555)
        try:
            yield
        finally:
            path.parent.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", path], capture_output=True).returncode:
        pytest.skip("running as root, and no immutable file here (chattr +i): nothing root cannot remove")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", path], check=True)


def test_a_file_overwrite_cannot_remove_is_one_line_and_the_run_stays(capsys, tmp_path: Path, fitted_run: Path,
                                                                      own_data: tuple[str, ...]) -> None:
    """--overwrite removes what the manifest lists; one it cannot remove is one line naming it, exit 2, and the
    folder stays a run (its marker and manifest kept), so --overwrite can finish once it is fixed."""
    out = tmp_path / "run"
    shutil.copytree(fitted_run, out)
    with undeletable(out / "seed0" / "last.pt"):
        code, stdout, err = run_main(capsys, "fit", *own_data, *FAST, "--out", out, "--overwrite")
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, str(out / "seed0" / "last.pt"), "cannot be removed")
    assert (out / "seed0" / "last.pt").is_file() and files.folder_state(out) == "run"
    assert {"seed0/last.pt", "model.pt"} <= files.read_manifest(out)


def test_ctrl_c_exits_130_with_one_line_and_the_run_stays_resumable(tmp_path: Path, own_data: tuple[str, ...]) -> None:
    """SIGINT (Ctrl-C) during a fit: exit 130 as shells expect (1 is kept for defects), the one line, and the run
    left to --resume."""
    out = tmp_path / "run"
    fast = [a if a != "1" else "100000" for a in FAST]  # still training when interrupted, however loaded the machine
    env = {k: v for k, v in os.environ.items() if k != "SIAMRDM_DEBUG"}
    # Ctrl-C as in a terminal, however the tests were started: a background job of a shell without job control
    # (`pytest &` in a script, CI) ignores SIGINT, and a Python started so never raises KeyboardInterrupt.
    process = subprocess.Popen([sys.executable, "-m", "siamrdm", "fit", *own_data, *fast, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for _ in range(1200):  # the marker says the run has started (at most 120 s)
            if files.read_marker(out) is not None or process.poll() is not None:
                break
            time.sleep(0.1)
        assert process.poll() is None, process.communicate()[1]
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["siamrdm: interrupted"] and stdout == ""
    assert files.read_marker(out)["status"] == "running"  # not undone: --resume continues it
