"""Predictors: symmetric RDMs, seed ensembles, model files, and the fit/predict commands on real and custom data."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision
from helpers import assert_one_line_error
from helpers import run_cli as run_main

from siamrdm import cli, train
from siamrdm.errors import DataError
from siamrdm.io.datasets import BrainDataset
from siamrdm.io.images import ImageSet, load_image_set
from siamrdm.model import all_pairs
from siamrdm.model.backbones import images_to_tensor
from siamrdm.train import checkpoint
from siamrdm.train.predict import RDMPredictor, fit_predict, fit_predictor


def fast_config(**overrides) -> train.TrainConfig:
    values = dict(backbone="alexnet", weights="random", image_size=128, augment=False, frozen_epochs=1,
                  unfrozen_epochs=0, device="cpu", targets=("EVC", "IT"))
    values.update(overrides)
    return train.TrainConfig(**values)



def assert_rdm(rdm: np.ndarray, n: int) -> None:
    assert rdm.shape == (n, n) and rdm.dtype == np.float64
    np.testing.assert_array_equal(rdm, rdm.T)
    np.testing.assert_array_equal(np.diag(rdm), 0)
    assert np.all(np.isfinite(rdm)) and np.ptp(rdm[np.triu_indices(n, 1)]) > 0


@pytest.fixture(scope="module")
def images78(data_root: Path) -> ImageSet:
    return load_image_set(data_root / "Test_Data" / "78images")


@pytest.fixture(scope="module")
def two_seeds() -> tuple[train.TrainConfig, list]:
    """Two untrained networks (seeds 0 and 1) with two outputs each."""
    config = fast_config()
    return config, [train.build_model(replace(config, seed=seed)).eval() for seed in (0, 1)]


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[Path, dict]:
    """`siamrdm fit --sets 92 --epochs 1` for EVC and IT: model.pt (AlexNet body, random weights, for speed)."""
    out = tmp_path_factory.mktemp("cli-fit") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["fit", "--data", str(data_root), "--sets", "92", "--targets", "EVC,IT", "--epochs", "1",
                         "--backbone", "alexnet", "--weights", "random", "--image-size", "128", "--no-augment",
                         "--quiet", "--out", str(out)])
    assert code == 0
    return out / "model.pt", json.loads(stdout.getvalue())


# --------------------------------------------------------------------------- the predictor


def test_predict_is_symmetric_with_zero_diagonal(two_seeds, images78: ImageSet) -> None:
    config, models = two_seeds
    images = images78.images[:9]
    single = RDMPredictor(models[:1], config)
    rdms = single.predict(images)
    assert list(rdms) == ["EVC", "IT"] and single.targets == ("EVC", "IT")
    for rdm in rdms.values():
        assert_rdm(rdm, 9)
    # The off-diagonal entries are the network's symmetric pair outputs; (i, j) and (j, i) agree.
    batch = images_to_tensor(images, config.image_size)
    i, j = all_pairs(9)
    with torch.no_grad():
        direct = models[0](batch, i, j).double().numpy()
        reverse = models[0](batch, j, i).double().numpy()
    np.testing.assert_allclose(rdms["EVC"][i.numpy(), j.numpy()], direct[:, 0], atol=1e-6)
    np.testing.assert_allclose(rdms["IT"][j.numpy(), i.numpy()], reverse[:, 1], atol=1e-6)
    # An ensemble predicts the mean of its members; an ImageSet works like a list of images.
    other = RDMPredictor(models[1:], config).predict(images)
    both = RDMPredictor(models, config).predict(ImageSet(images78.names[:9], images, images78.source))
    for target in ("EVC", "IT"):
        np.testing.assert_allclose(both[target], (rdms[target] + other[target]) / 2, atol=1e-9)
        assert not np.allclose(rdms[target], other[target])


def test_save_and_load_without_the_weights_file(tmp_path: Path, images78: ImageSet) -> None:
    """A model file holds the body's weights: loading it needs neither the weights file nor a download."""
    torch.manual_seed(5)
    weights = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).features.state_dict(), weights)
    config = fast_config(weights=str(weights), targets=("EVC",))
    model = train.build_model(config).eval()
    model.set_feature_stats(torch.randn(10, *model.feature_shape) * 3 + 1)
    predictor = RDMPredictor([model], config, {"92": {"EVC": {"low": 0.1, "high": 0.9}}}, {"seed0": {"best_epoch": 1}})
    path = predictor.save(tmp_path / "models" / "model.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]
    weights.unlink()
    loaded = RDMPredictor.load(path, device="cpu")
    assert loaded.config.weights == str(weights) and loaded.targets == ("EVC",)
    assert loaded.normalisation == predictor.normalisation and loaded.metrics == predictor.metrics
    images = images78.images[:6]
    np.testing.assert_array_equal(loaded.predict(images)["EVC"], predictor.predict(images)["EVC"])
    torch.testing.assert_close(loaded.models[0].feature_std, model.feature_std)


def test_load_rejects_other_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("not a model\n")
    other = tmp_path / "state.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    last = tmp_path / "last.pt"
    checkpoint.save_checkpoint(last, {"epoch": 3, "model": {}})
    for path, phrase in ((text, "unreadable checkpoint"), (other, "not a siamrdm model file"),
                         (last, "not a siamrdm model file"), (tmp_path / "missing.pt", "no such checkpoint")):
        with pytest.raises(DataError) as info:
            RDMPredictor.load(path)
        message = str(info.value)
        assert str(path) in message and phrase in message and "\n" not in message
    with pytest.raises(ValueError, match="at least one model"):
        RDMPredictor([], fast_config())


def test_fit_predictor_seeds_and_fit_predict(tmp_path: Path, dataset92: BrainDataset,
                                             images78: ImageSet) -> None:
    small = train.subset(dataset92, np.arange(8), "92-eight")
    config = fast_config(targets=("IT",), frozen_epochs=2)
    predictor = fit_predictor(config, [small], seeds=(0, 4), out_dir=tmp_path / "run", progress=False)
    assert len(predictor.models) == 2
    assert set(predictor.metrics) == {"seed0", "seed4"} and predictor.metrics["seed4"]["epochs_run"] == 2
    for seed in (0, 4):
        assert (tmp_path / "run" / f"seed{seed}" / "last.pt").is_file()
        assert (tmp_path / "run" / f"seed{seed}" / "log.csv").is_file()
    assert (tmp_path / "run" / "model.pt").is_file()
    assert predictor.normalisation["92-eight"]["IT"].keys() == {"low", "high"}
    rdms = fit_predict(config, [small], images78.images[:5], val_fraction=0.25, progress=False)
    assert list(rdms) == ["IT"]
    assert_rdm(rdms["IT"], 5)


# --------------------------------------------------------------------------- the commands


def test_fit_command_summary(cli_model) -> None:
    path, summary = cli_model
    assert summary["model"] == str(path) and summary["targets"] == ["EVC", "IT"]
    assert summary["seeds"]["seed0"]["epochs_run"] == 1
    assert (path.parent / "seed0" / "last.pt").is_file() and (path.parent / "seed0" / "log.csv").is_file()
    predictor = RDMPredictor.load(path)
    assert predictor.config.backbone == "alexnet" and predictor.config.image_size == 128
    assert predictor.config.targets == ("EVC", "IT") and predictor.config.frozen_epochs == 1


def test_predict_command_mat(capsys, tmp_path: Path, cli_model, data_root: Path) -> None:
    model, _ = cli_model
    out = tmp_path / "pred" / "x.mat"
    code, stdout, err = run_main(capsys, "predict", str(model), "--images", str(data_root / "Test_Data" / "78images"),
                                 "--out", str(out), "--device", "cpu")
    assert code == 0 and err == ""
    assert f"wrote {out}" in stdout and "78 x 78" in stdout
    assert stdout.strip().endswith("the model's per-image part learnt: for new images of the same study")
    mat = scipy.io.loadmat(out)
    assert sorted(k for k in mat if not k.startswith("__")) == ["EVC_RDMs", "IT_RDMs"]
    for key in ("EVC_RDMs", "IT_RDMs"):
        assert_rdm(mat[key], 78)
    assert not np.array_equal(mat["EVC_RDMs"], mat["IT_RDMs"])  # two outputs, trained apart for one epoch


def test_predict_command_errors(capsys, tmp_path: Path, cli_model, data_root: Path) -> None:
    model, _ = cli_model
    few = tmp_path / "few"
    few.mkdir()
    for name in ("image_01.jpg", "image_02.jpg", "image_03.jpg", "image_04.jpg"):
        shutil.copy(data_root / "Test_Data" / "78images" / name, few / name)
    code, _, err = run_main(capsys, "predict", str(model), "--images", str(few), "--out", str(tmp_path / "x.npy"))
    assert code == 2
    assert_one_line_error(err, "x.npy", ".npy holds one RDM")
    bad = tmp_path / "model.pt"
    bad.write_text("this is not a model\n")
    code, out, err = run_main(capsys, "predict", str(bad), "--images", str(few), "--out", str(tmp_path / "y.mat"))
    assert code == 2 and out == ""
    assert_one_line_error(err, str(bad))
    code, _, err = run_main(capsys, "predict", str(model), "--images", str(tmp_path / "none"), "--out",
                            str(tmp_path / "y.mat"))
    assert code == 2
    assert_one_line_error(err, "none", "no such image folder")
    assert not (tmp_path / "y.mat").exists()


def test_predict_shows_the_keys_of_its_model_file_escaped(capsys, tmp_path: Path, cli_model, data_root: Path) -> None:
    """A model's output keys come from its training data (an HDF5 key may hold anything): the line that says
    what predict wrote shows them escaped, as one line."""
    model, _ = cli_model
    payload = torch.load(model, weights_only=True)
    payload["output_keys"] = {"EVC": "E\nVC\x1b[2J", "IT": "IT"}
    torch.save(payload, tmp_path / "model.pt")
    out = tmp_path / "x.hdf5"
    code, stdout, err = run_main(capsys, "predict", tmp_path / "model.pt", "--images",
                                 data_root / "Test_Data" / "78images", "--out", out, "--device", "cpu")
    assert (code, err) == (0, "")
    assert stdout.count("\n") == 1 and "\x1b" not in stdout
    assert f"wrote {out}: E\\nVC\\x1b[2J, IT (78 x 78)" in stdout


def test_fit_and_predict_on_custom_data(capsys, tmp_path: Path, dataset92: BrainDataset, data_root: Path) -> None:
    """Your own data: a folder of images and an .npy of subject RDMs under a key of your choosing."""
    images = tmp_path / "my_images"
    images.mkdir()
    index = np.arange(0, 92, 8)  # 12 images
    for rank, k in enumerate(index):
        shutil.copy(data_root / "Training_Data" / "92_Image_Set" / "92images" / dataset92.images.names[k],
                    images / f"stim_{rank:02d}.jpg")
    rdms = tmp_path / "my_rdms.npy"
    np.save(rdms, dataset92.targets["IT"][:, index[:, None], index[None, :]])
    out = tmp_path / "run"
    code, stdout, err = run_main(capsys, "fit", "--images", str(images), "--rdms", str(rdms), "--key", "V4",
                                 "--epochs", "2", "--backbone", "alexnet", "--weights", "random", "--image-size",
                                 "128", "--no-augment", "--quiet", "--out", str(out))
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["targets"] == ["V4"] and summary["seeds"]["seed0"]["epochs_run"] == 2
    log = (out / "seed0" / "log.csv").read_text().strip().splitlines()
    assert len(log) == 3  # header and two epochs
    npy = tmp_path / "pred.npy"
    code, stdout, err = run_main(capsys, "predict", str(out / "model.pt"), "--images", str(images), "--out", str(npy))
    assert code == 0 and err == ""
    assert_rdm(np.load(npy), 12)
    # The prediction is the saved model's (same numbers as the library gives).
    expected = RDMPredictor.load(out / "model.pt").predict(load_image_set(images))["V4"]
    np.testing.assert_allclose(np.load(npy), expected, atol=1e-12)
    # A key that does not fit the RDM file is one line.
    bad_rdms = tmp_path / "bad.npy"
    np.save(bad_rdms, dataset92.targets["IT"][:, :5, :5])
    code, _, err = run_main(capsys, "fit", "--images", str(images), "--rdms", str(bad_rdms), "--key", "V4",
                            "--epochs", "1", "--backbone", "alexnet", "--weights", "random", "--out", str(out))
    assert code == 2
    assert_one_line_error(err, "bad.npy", "5 x 5", "12 images")


def test_own_data_keeps_its_key_even_when_named_like_a_challenge_target(capsys, tmp_path: Path,
                                                                         data_root: Path) -> None:
    """A user's own RDMs keyed 'EVC' come back as 'EVC', not as the challenge's 'EVC_RDMs'; a model trained on the
    Algonauts sets still writes the challenge's keys (the submission format)."""
    images = load_image_set(data_root / "Test_Data" / "78images")
    names = images.names[:6]
    rng = np.random.default_rng(0)
    subjects = np.stack([np.abs(rng.normal(size=(6, 6))) for _ in range(3)])
    subjects = (subjects + subjects.transpose(0, 2, 1)) / 2
    subjects[:, np.arange(6), np.arange(6)] = 0
    six = ImageSet(names=list(names), images=images.images[:6], source=images.source)
    own = BrainDataset("own", six, {"EVC": subjects})
    config = fast_config(targets=("EVC",))
    own_model = fit_predictor(config, [own], progress=False, out_dir=tmp_path / "own", image_order=list(names))
    assert own_model.output_keys == {"EVC": "EVC"}
    assert RDMPredictor.load(tmp_path / "own" / "model.pt").output_keys == {"EVC": "EVC"}
    out = tmp_path / "own.mat"
    code, _, err = run_main(capsys, "predict", str(tmp_path / "own" / "model.pt"), "--images",
                            str(data_root / "Test_Data" / "78images"), "--out", str(out), "--device", "cpu")
    assert code == 0 and err == ""
    assert [k for k in scipy.io.loadmat(out) if not k.startswith("__")] == ["EVC"]
    official = fit_predictor(config, [own], progress=False)  # no image order: the Algonauts sets
    assert official.output_keys == {"EVC": "EVC_RDMs"}
