"""Bodies by name from timm and torchvision (`--backbone timm:NAME`, `torchvision:NAME`), offline: weights from
state_dict files made here with random values, a fit and a prediction through the CLI, layer RDMs against the
same network run directly, and one line when no weights can be had."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from helpers import assert_one_line_error, run_cli

from siamrdm.io.images import load_image_set
from siamrdm.model import backbones, library_bodies
from siamrdm.model.backbones import create_body
from siamrdm.model.baselines import layer_rdms
from siamrdm.rdm.core import correlation_rdm

# (body, stage compared against the network run directly): a CNN from each library and a timm transformer.
BODIES = [("timm:resnet18", "layer3"), ("torchvision:mobilenet_v3_small", "features.8"), ("timm:test_vit", "blocks.5")]
SIZE = 48  # the smallest size at which each default stage (1/16 of the image) still gives the head 3 x 3 maps


def library_model(body: str) -> torch.nn.Module:
    """The library's own network for `body`, with random weights drawn from a fixed seed."""
    family, _, name = body.partition(":")
    torch.manual_seed(0)
    net = timm.create_model(name) if family == "timm" else torchvision.models.get_model(name, weights=None)
    return net.eval()


def weights_file(body: str, folder: Path) -> Path:
    """The library model's whole state_dict, as `torch.save(model.state_dict(), FILE)` writes it."""
    path = folder / f"{body.replace(':', '_')}.pt"
    torch.save(library_model(body).state_dict(), path)
    return path


def direct_stage(body: str, stage: str, pixels: torch.Tensor) -> torch.Tensor:
    """A stage's output of the library model run directly, as (N, C, H, W) maps: a forward hook on the stage's
    module, or for a timm transformer timm's own forward_intermediates."""
    net = library_model(body)
    spec = backbones.backbone_spec(body)
    x = (pixels - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        if body == "timm:test_vit":
            index = int(stage.rsplit(".", 1)[1])
            return net.forward_intermediates(x, indices=[index], intermediates_only=True)[0]
        captured = {}
        net.get_submodule(stage).register_forward_hook(lambda m, i, out: captured.setdefault("out", out))
        net(x)
    return captured["out"]


@pytest.mark.parametrize("body,stage", BODIES)
def test_layer_rdms_are_the_library_networks(body: str, stage: str, tmp_path: Path, set92: Path) -> None:
    """The body loaded by name with --weights FILE computes the library network's stage: its layer RDM equals the
    RDM of the stage's output taken from the library model run directly."""
    file = weights_file(body, tmp_path)
    images = load_image_set(set92 / "92images").images[:6]
    spec = backbones.backbone_spec(body)
    assert spec.default_stage == stage and stage in backbones.backbone_stages(body)
    rdms = layer_rdms(images, body, str(file), image_size=SIZE, progress=False)
    assert list(rdms) == backbones.backbone_stages(body)
    direct = direct_stage(body, stage, backbones.images_to_tensor(images, SIZE))
    flat = direct.reshape(len(images), -1).double()
    flat = flat - flat.mean(dim=1, keepdim=True)
    flat = flat / flat.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(rdms[stage], correlation_rdm((flat @ flat.T).numpy()), atol=1e-5)
    # Random weights are never what a file holds.
    random_rdm = layer_rdms(images, body, "random", image_size=SIZE, progress=False)[stage]
    assert not np.allclose(random_rdm, rdms[stage], atol=1e-3)


def fit_one_epoch(capsys, body: str, tmp_path: Path, own_data: tuple[str, ...]) -> tuple[Path, Path]:
    """`fit` of one epoch with `body` and a weights file of random values: (the weights file, the run folder)."""
    file = weights_file(body, tmp_path)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "fit", *own_data, "--backbone", body, "--weights", file, "--image-size", SIZE,
                           "--epochs", "1", "--no-augment", "--prior", "none", "--quiet", "--device", "cpu",
                           "--out", run)
    assert code == 0, err
    return file, run


@pytest.mark.parametrize("body", [b for b, _ in BODIES])
def test_fit_then_predict_from_the_model_file_alone(capsys, body: str, tmp_path: Path,
                                                    own_data: tuple[str, ...]) -> None:
    """`fit --backbone NAME --weights FILE` then `predict` with the weights file gone: the body is rebuilt from
    the library's code and the model file (which records its name, stages and normalisation)."""
    file, run = fit_one_epoch(capsys, body, tmp_path, own_data)
    saved = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    spec = backbones.backbone_spec(body)
    assert saved["body"] == {"name": body, "stage": spec.default_stage, "stages": backbones.backbone_stages(body),
                             "mean": list(spec.mean), "std": list(spec.std)}
    file.unlink()  # no weights anywhere but in the model file (and no internet on the test machine either)
    prediction = tmp_path / "predicted.npy"
    code, out, err = run_cli(capsys, "predict", run / "model.pt", "--images", own_data[1], "--out", prediction,
                             "--device", "cpu")
    assert code == 0, err
    rdm = np.load(prediction)
    assert rdm.shape == (12, 12) and np.isfinite(rdm).all() and np.allclose(rdm, rdm.T)


def test_a_body_the_libraries_build_otherwise_is_refused(capsys, tmp_path: Path, own_data: tuple[str, ...]) -> None:
    """A model file whose recorded body differs from what the installed library builds (another version cutting
    the model elsewhere) is refused in one line naming the file, not loaded into a different network."""
    body = "timm:resnet18"
    file, run = fit_one_epoch(capsys, body, tmp_path, own_data)
    payload = copy.deepcopy(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    payload["body"]["stages"] = ["stem", *payload["body"]["stages"][1:]]
    edited = tmp_path / "edited.pt"
    torch.save(payload, edited)
    prediction = tmp_path / "predicted.npy"
    code, _, err = run_cli(capsys, "predict", edited, "--images", own_data[1], "--out", prediction)
    assert code == 2
    assert_one_line_error(err, str(edited), "timm:resnet18", "stages", "another timm or torchvision version")
    assert not prediction.exists()


@pytest.mark.parametrize("body,host", [("timm:resnet18", "https://huggingface.co"),
                                       ("torchvision:resnet18", "https://download.pytorch.org")])
def test_no_weights_is_one_line_naming_both_ways(capsys, body: str, host: str, tmp_path: Path,
                                                 own_data: tuple[str, ...]) -> None:
    """Neither --weights nor the internet (nor the library's cache): fit stops at once with one line that names
    both ways to get weights, exit 2, no run folder; never random weights silently."""
    if library_bodies._reachable(host):
        pytest.skip(f"{host} is reachable: the library would download the weights")
    run = tmp_path / "run"
    start = time.perf_counter()
    code, out, err = run_cli(capsys, "fit", *own_data, "--backbone", body, "--image-size", SIZE, "--epochs", "1",
                             "--quiet", "--out", run)
    assert time.perf_counter() - start < 30  # no minute of hub retries
    assert code == 2 and out == ""
    assert_one_line_error(err, "--weights", body, "weights file", "internet", "'random'")
    assert not run.exists()


@pytest.mark.parametrize("body,phrase", [("timm:no_such_net", "timm has no model 'no_such_net'"),
                                         ("torchvision:no_such_net", "torchvision has no classification model")])
def test_unknown_library_model(capsys, body: str, phrase: str, tmp_path: Path, own_data: tuple[str, ...]) -> None:
    code, _, err = run_cli(capsys, "fit", *own_data, "--backbone", body, "--weights", "random", "--out",
                           tmp_path / "run")
    assert code == 2
    assert_one_line_error(err, "--backbone", phrase)
    assert not (tmp_path / "run").exists()


def test_a_weights_file_of_another_model_is_refused(tmp_path: Path) -> None:
    """A state_dict of another network: one line naming the file, for either library."""
    other = weights_file("timm:test_vit", tmp_path)
    for body in ("timm:resnet18", "torchvision:resnet18"):
        with pytest.raises(backbones.WeightsError) as info:
            create_body(body, str(other))
        assert str(other) in str(info.value) and "\n" not in str(info.value)


def test_transformer_tokens_become_maps_or_are_refused() -> None:
    """(B, T, C) tokens: a class token then a square grid becomes (B, C, side, side) in row-major order; a count
    that makes no square grid is refused in one line naming the stage."""
    grid = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 3, 4, 4)
    tokens = torch.cat([torch.full((2, 1, 3), -1.0), grid.flatten(2).transpose(1, 2)], dim=1)
    assert torch.equal(library_bodies._as_map(tokens, "net", "encoder"), grid)
    with pytest.raises(backbones.ConfigError, match="stage encoder of net gives 110 tokens"):
        library_bodies._as_map(torch.zeros(1, 110, 3), "net", "encoder")


def test_bodies_lists_registered_and_library_models(capsys) -> None:
    """`siamrdm bodies`: the registered bodies with their stages; `--search` finds library models by name, as
    --backbone takes them, with their stages when the search matches few."""
    code, out, err = run_cli(capsys, "bodies", "--json")
    assert code == 0, err
    listed = {row["name"]: row for row in json.loads(out)["bodies"]}
    assert list(listed) == list(backbones.BACKBONES)
    assert listed["alexnet"]["stages"] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert listed["efficientnet_lite0"]["default_stage"] == "blocks4"
    code, out, err = run_cli(capsys, "bodies", "--search", "resnet18", "--json")
    assert code == 0, err
    found = {row["name"]: row for row in json.loads(out)["bodies"]}
    assert found["timm:resnet18"]["stages"] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert found["torchvision:resnet18"]["stages"][-1] == "layer4"
    code, out, _ = run_cli(capsys, "bodies", "--search", "resnet*")
    assert code == 0 and "timm:resnet50\n" in out and "torchvision:resnet50\n" in out


def test_bodies_shows_a_search_that_matches_nothing_escaped(capsys) -> None:
    code, out, err = run_cli(capsys, "bodies", "--search", "\x1b[2Jno\nsuch")
    assert (code, err) == (0, "")
    assert out == "no timm or torchvision model matches '\\x1b[2Jno\\nsuch'\n"


def test_baseline_layers_compares_bodies_in_one_table(capsys, data_root: Path) -> None:
    """`baseline layers --backbones A,B`: each body's best stage scored across sets, side by side, every row
    with the statistics of every table (percent of the ceiling, chance level, p_perm, the stage chosen)."""
    bodies = ("timm:resnet18", "torchvision:mobilenet_v3_small")
    code, out, err = run_cli(capsys, "baseline", "layers", "--data", data_root, "--backbones", ",".join(bodies),
                             "--weights", "random", "--image-size", "32", "--targets", "EVC", "--json", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    rows = result["rows"]
    assert [(r["method"], r["direction"]) for r in rows] == [
        (f"layers: {b}", d) for b in bodies for d in ("92->118", "118->92")]
    for row in rows:
        assert row["pct_nc"] is not None and row["p_perm"] is not None and row["detail"].startswith("stage=")
    assert set(result["layers"]) == {f"layers: {b}" for b in bodies}


@pytest.mark.parametrize("args,parts", [
    (("--backbones", "timm:resnet18,timm:no_such_net", "--weights", "random"),
     ("--backbones", "timm has no model 'no_such_net'")),
    (("--backbones", "timm:resnet18,timm:resnet18"), ("--backbones", "given more than once")),
    (("--backbones", "timm:resnet18,alexnet", "--weights", "w.pt"), ("--weights", "cannot be the weights of 2")),
    (("--backbones", "alexnet", "--backbone", "alexnet"), ("--backbone", "--backbones", "pass one")),
])
def test_baseline_bodies_refused_in_one_line(capsys, args: tuple[str, ...], parts: tuple[str, ...],
                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "baseline", "layers", "--data", "/no/such/data", *args, "--out", out)
    assert code == 2
    assert_one_line_error(err, *parts)
    assert not out.exists()
