"""fit in mini-batches (--batch-images): one process and two torchrun ranks train the same model, a run resumes on
another number of ranks, a streamed 2,000-image set trains end to end, and bad values are one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run_cli
from scipy.io import loadmat
from scipy.spatial.distance import squareform

from siamrdm.io import files
from siamrdm.io.condensed import CondensedRDMs
from siamrdm.rdm import reliability
from siamrdm.train import build_model, largeset
from siamrdm.train.checkpoint import load_checkpoint, save_checkpoint
from siamrdm.train.config import config_from_dict
from siamrdm.train.distributed import BatchSettings, LargeSet, read_targets
from siamrdm.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
# A small body and head at 32 px: efficientnet_lite0's blocks2 (40 x 4 x 4 maps), the pairwise head.
SMALL = ["--stage", "blocks2", "--head", "pairwise", "--image-size", "32", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory, data_root: Path) -> Path:
    out = tmp_path_factory.mktemp("small-set")
    largeset.make_large_set(data_root / "Training_Data" / "92_Image_Set" / "92images", out, 40, image_size=32,
                            subjects=2, noise=0.5)
    return out


def fit_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "--images", str(data / "images.h5"), "--rdms", str(data / "rdms.npy"), "--key", "X",
            "--batch-images", "12", "--val-fraction", "0.2", "--frozen-epochs", "2", "--unfrozen-epochs", "1",
            "--loader-workers", "0",
            "--lr", "0.003", *SMALL, "--out", str(out), *extra]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "siamrdm", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "seed0" / "last.pt")["model"]


def assert_same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5, msg=name)


def test_two_torchrun_ranks_train_the_model_one_process_trains(small_set: Path, tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    code, out, err = run_cli(capsys, *fit_args(small_set, tmp_path / "one"))
    assert code == 0, err
    assert json.loads(out)["world_size"] == 1
    ran = torchrun(*fit_args(small_set, tmp_path / "two"))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout)["world_size"] == 2  # the summary is printed once, by rank 0
    assert "Warning" not in ran.stderr, ran.stderr[-3000:]  # e.g. torch's deprecated differentiable all_gather
    one, two = (json.loads((tmp_path / run / "settings.json").read_text()) for run in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["config"] == two["config"] and one["batch"]["batch_images"] == 12
    # 2 frozen epochs and 1 with the body trained (3 steps each): the same weights, body and head, and losses
    assert_same_model(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"))
    histories = [load_checkpoint(tmp_path / run / "seed0" / "last.pt")["history"] for run in ("one", "two")]
    assert [r["phase"] for r in histories[0]] == ["start", "frozen", "frozen", "unfrozen"]
    losses = [[r["loss"] for r in history[1:]] for history in histories]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert losses[0][-1] < losses[0][0]  # it trained
    pretrained = build_model(config_from_dict(one["config"]), torch.device("cpu")).state_dict()
    moved = [name for name, value in final_weights(tmp_path / "two").items()
             if name.startswith("body.") and not torch.equal(value, pretrained[name])]
    assert moved  # the unfrozen epoch trained the body on both ranks
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted([*files.OWN_NAMES, "model.pt", "seed0",
                                                                          "settings.json"])

    # a run checkpointed by one process after epoch 1 resumes on two ranks and ends where one process ended
    config, batch = config_from_dict(one["config"]), BatchSettings(**one["batch"])
    data = read_targets({"X": CondensedRDMs(small_set / "rdms.npy", 40)}, 40, batch, config.rescale)
    trainer = Trainer(config, LargeSet(largeset.open_image_store(small_set / "images.h5"), data, batch),
                      progress=False)
    trainer.validate_start()
    trainer.run_epoch()
    with files.run_folder(tmp_path / "resumed", "fit"):  # as a killed one-process `fit` would have left it
        save_checkpoint(tmp_path / "resumed" / "seed0" / "last.pt", trainer.state())
    ran = torchrun(*fit_args(small_set, tmp_path / "resumed", "--resume"))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert_same_model(final_weights(tmp_path / "one"), final_weights(tmp_path / "resumed"))
    assert json.loads((tmp_path / "resumed" / "settings.json").read_text())["world_size"] == 2


def test_a_streamed_2000_image_set_trains_end_to_end(tmp_path: Path, data_root: Path, capsys) -> None:
    torch.set_num_threads(1)
    largeset.make_large_set(data_root / "Training_Data" / "92_Image_Set" / "92images", tmp_path / "set", 2000,
                            image_size=32, subjects=2, noise=1.0)
    args = fit_args(tmp_path / "set", tmp_path / "run")
    args[args.index("--batch-images") + 1] = "250"
    args[args.index("--val-fraction") + 1] = "0.1"
    args[args.index("--loader-workers") + 1] = "1"
    args[args.index("--unfrozen-epochs") + 1] = "0"
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    history = load_checkpoint(tmp_path / "run" / "seed0" / "last.pt")["history"]
    untrained, first, last = history
    assert last["steps"] == 8 and last["loss"] < first["loss"]  # 1,800 training images in batches of 250
    assert np.isfinite(last["val_r2"]) and last["val_r2"] > untrained["val_r2"]
    assert json.loads(out)["seeds"]["seed0"]["best_epoch"] == 2


@pytest.mark.parametrize(("extra", "parts"), [
    (["--batch-images", "1"], ["--batch-images", "at least 2"]),
    (["--loader-workers", "-1"], ["--loader-workers", "0 or more"]),
    (["--val-fraction", "1.5"], ["--val-fraction"]),
    (["--val-fraction", "0.99"], ["--val-fraction", "leaves 0 for training"]),
    # refused as a prior on this path, with SMALL's pairwise head before the full-batch check (it cannot correct
    # a prior), and with the paper head, which that check passes
    (["--prior", "nnls"], ["--prior", "without a prior"]),
    (["--prior", "layer", "--head", "paper"], ["--prior", "without a prior"]),
    (["--val-set", "118"], ["--val-set", "--val-fraction"]),
    (["--precision", "bf16"], ["--precision", "fp32 only", "bf16"]),  # full-batch settings: refused, not ignored
    (["--validate-every", "3"], ["--validate-every", "1 only"]),
    (["--channels-last"], ["--channels-last", "False only"]),
])
def test_bad_mini_batch_options_are_one_line_errors(small_set: Path, tmp_path: Path, capsys, extra, parts) -> None:
    args = fit_args(small_set, tmp_path / "run")
    if len(extra) == 1:  # a switch
        args, extra = args + extra, []
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert_one_line_error(err, *parts)
    assert not (tmp_path / "run").exists()


def test_large_inputs_need_batch_images(small_set: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "fit", "--images", str(small_set / "images.h5"), "--rdms",
                           str(small_set / "rdms.npy"), "--key", "X", "--out", str(tmp_path / "run"))
    assert code == 2
    assert_one_line_error(err, "images.h5", "--batch-images N")
    code, _, err = run_cli(capsys, "fit", "--images", str(tmp_path), "--rdms", str(small_set / "rdms.npy"), "--key",
                           "X", "--out", str(tmp_path / "run"))  # condensed RDMs, with a folder of images
    assert code == 2
    assert_one_line_error(err, "rdms.npy", "--batch-images N")
    code, _, err = run_cli(capsys, *fit_args(small_set, tmp_path / "run")[:-2], "--out", str(tmp_path / "run"),
                           "--rdms", str(small_set / "answer.json"))
    assert code == 2
    assert_one_line_error(err, "answer.json", ".npy file, an HDF5")


def test_a_folder_of_images_with_condensed_rdms_trains(small_set: Path, tmp_path: Path, capsys) -> None:
    """The mini-batch path reads a folder too (natural order): the same images as the HDF5 file train the same."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    store = largeset.open_image_store(small_set / "images.h5")
    for k in range(len(store)):
        Image.fromarray(store.read(k)).save(folder / f"img{k}.png")
    args = fit_args(small_set, tmp_path / "folder")
    args[args.index("--images") + 1] = str(folder)
    args[args.index("--unfrozen-epochs") + 1] = "0"
    args[args.index("--key") + 1] = "IT"
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    # predict writes your key as given, though it is named like a challenge target (not 'IT_RDMs')
    code, out, err = run_cli(capsys, "predict", str(tmp_path / "folder" / "model.pt"), "--images", str(folder),
                             "--out", str(tmp_path / "predicted.mat"), "--device", "cpu")
    assert code == 0, err
    assert sorted(k for k in loadmat(tmp_path / "predicted.mat") if not k.startswith("__")) == ["IT"]
    args = fit_args(small_set, tmp_path / "hdf5")
    args[args.index("--unfrozen-epochs") + 1] = "0"
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert_same_model(final_weights(tmp_path / "folder"), final_weights(tmp_path / "hdf5"))


def test_bad_target_values_are_refused_before_the_run_folder_is_made(small_set: Path, tmp_path: Path,
                                                                     capsys) -> None:
    rdms = np.load(small_set / "rdms.npy")
    rdms[1, 100] = np.nan
    np.save(tmp_path / "nan.npy", rdms)
    args = fit_args(small_set, tmp_path / "run")
    args[args.index("--rdms") + 1] = str(tmp_path / "nan.npy")
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert_one_line_error(err, "nan.npy: subject 2 has a non-finite value")
    assert not (tmp_path / "run").exists()  # no lock, no settings.json: the same command runs once the file is fixed


def test_a_sample_of_condensed_rdms_is_the_square_rdms_among_those_images(small_set: Path) -> None:
    condensed = np.load(small_set / "rdms.npy")
    square = np.stack([squareform(v) for v in condensed])
    images = np.array([31, 2, 17, 5, 39])
    sampled = CondensedRDMs(small_set / "rdms.npy", 40).sample(images)
    order = np.sort(images)
    np.testing.assert_array_equal(sampled, square[:, order][:, :, order])


def test_open_large_set_and_its_sampled_reliability(small_set: Path) -> None:
    """What `fit --batch-images` opens: the store and its condensed targets by key (a .npy's one array takes the
    key as its name), and the reliability of a fixed sample of the images (all 40 here: fewer than the sample)."""
    images, targets = largeset.open_large_set(small_set / "images.h5", small_set / "rdms.npy", "X")
    assert len(images) == 40 and list(targets) == ["X"]
    sampled, summary = largeset.sample_reliability(targets["X"], len(images))
    assert sampled == 40
    square = np.stack([squareform(v) for v in np.load(small_set / "rdms.npy")])
    assert summary == reliability.target_reliability(square)


def test_fit_in_mini_batches_reports_the_reliability_of_its_target(small_set: Path, tmp_path: Path,
                                                                   capsys) -> None:
    """The line `fit` prints for the Algonauts sets, measured on a sample of the images; a target of pure noise
    is warned about even with --quiet, and a bad value in the sample is the one-line error before any folder."""
    args = [a for a in fit_args(small_set, tmp_path / "run") if a != "--quiet"]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    expected = reliability.target_reliability(np.stack([squareform(v) for v in np.load(small_set / "rdms.npy")]))
    line = next(s for s in err.splitlines() if s.startswith("siamrdm: X (40 of 40 images): reliability"))
    assert f"reliability {expected['reliability']:.2f}" in line and "2 subjects" in line
    noise = np.random.default_rng(5).random((6, 40 * 39 // 2))
    np.save(tmp_path / "noise.npy", noise)
    args = fit_args(small_set, tmp_path / "noise-run")
    args[args.index("--rdms") + 1] = str(tmp_path / "noise.npy")
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    warnings = [s for s in err.splitlines() if s.startswith("siamrdm: warning: X (40 of 40 images)")]
    assert len(warnings) == 1 and "too unreliable to learn from" in warnings[0]


def test_the_mini_batch_path_trains_on_the_mean_whatever_the_preset(small_set: Path, tmp_path: Path,
                                                                   capsys) -> None:
    """The quick preset trains on each subject's ranks, which this path cannot: it trains on the mean and says
    so in its settings; asking for ranks here is refused before any folder is made."""
    code, _, err = run_cli(capsys, *fit_args(small_set, tmp_path / "run"))
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "settings.json").read_text())["config"]["group_target"] == "mean"
    code, _, err = run_cli(capsys, *fit_args(small_set, tmp_path / "ranks", "--group-target", "ranks"))
    assert code == 2 and not (tmp_path / "ranks").exists()
    assert_one_line_error(err, "--group-target", "mean")


def test_the_python_api_fits_a_large_set_as_fit_does(small_set: Path, tmp_path: Path, capsys) -> None:
    """`siamrdm.open_large_set` and `siamrdm.fit_large`, with the settings `fit --batch-images` ran with, train the
    same model (same seed, bit for bit) and write the same run folder."""
    import siamrdm

    code, _, err = run_cli(capsys, *fit_args(small_set, tmp_path / "cli"))
    assert code == 0, err
    settings = json.loads((tmp_path / "cli" / "settings.json").read_text())
    store, targets = siamrdm.open_large_set(small_set / "images.h5", small_set / "rdms.npy", "X")
    predictor = siamrdm.fit_large(config_from_dict(settings["config"]), siamrdm.BatchSettings(**settings["batch"]),
                                  store, targets, out_dir=tmp_path / "api", progress=False, settings=settings)
    assert isinstance(predictor, siamrdm.RDMPredictor)
    cli_weights, api_weights = final_weights(tmp_path / "cli"), final_weights(tmp_path / "api")
    assert cli_weights.keys() == api_weights.keys()
    assert all(torch.equal(cli_weights[name], api_weights[name]) for name in cli_weights)  # bit for bit
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == sorted(p.name for p in (tmp_path / "cli").iterdir())


def test_the_python_api_refuses_augment_views_it_would_ignore(small_set: Path, tmp_path: Path) -> None:
    """augment_views is how many views the full-batch fit caches; the mini-batch path augments each epoch afresh,
    so a value other than the default is refused in one line before any folder is made, never silently ignored."""
    import siamrdm

    store, targets = siamrdm.open_large_set(small_set / "images.h5", small_set / "rdms.npy", "X")
    config = siamrdm.TrainConfig(targets=("X",), stage="blocks2", head="pairwise", image_size=32, prior="none",
                                 frozen_epochs=1, device="cpu", augment_views=2)
    batch = siamrdm.BatchSettings(batch_images=12, val_fraction=0.2, loader_workers=0)
    with pytest.raises(siamrdm.DataError, match="no use for it .* leave it at 4, not 2") as info:
        siamrdm.fit_large(config, batch, store, targets, out_dir=tmp_path / "run", progress=False)
    assert info.value.option == "augment_views" and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()
