"""Options and model files checked before any work (issue #19): a crafted or malformed plain-data model.pt or
last.pt is one line naming the file (exit 2), a model with non-finite weights predicts nothing, every number
option has its bounds in its message, every comma-separated option refuses empty and repeated entries, and a
rank's bad input under torchrun is its one line, that rank's exit code 2, and the root cause torchrun names.

The model is tiny: 12 real images of the 92-image set as your own data, efficientnet_lite0 with random weights
at 64 px, one epoch, with a prior (so the file has a prior's scale and offset). A case whose old behaviour was
to run for long is given a missing data root, so that the old code fails fast (on the data) instead.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run_cli

from siamrdm import cli
from siamrdm.io.images import load_image_set
from siamrdm.rdm import upper_tri
from siamrdm.rdm.splits import holdout_indices
from siamrdm.train.config import ConfigError
from siamrdm.train.distributed import init_from_env

REPO = Path(__file__).resolve().parents[1]
FAST = ("--epochs", "1", "--image-size", "64", "--weights", "random", "--no-augment", "--quiet", "--device", "cpu",
        "--prior", "layer")
NO_DATA = ("--data", "/no/such/algonauts")


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory: pytest.TempPathFactory, own_data: tuple[str, ...]) -> Path:
    """A genuine run folder written by `siamrdm fit` with a prior (model.pt, seed0/last.pt). Do not modify."""
    out = tmp_path_factory.mktemp("fitted") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["fit", *own_data, *FAST, "--out", str(out)]) == 0
    return out


def edited(source: Path, target: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of a genuine plain-data file with `edit` applied to its payload, saved as torch.save does."""
    payload = copy.deepcopy(torch.load(source, map_location="cpu", weights_only=True))
    edit(payload)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, target)
    return target


def _fill_first_head_weight(payload: dict) -> None:
    state = payload["members"][0]
    name = next(k for k in state if k.startswith("head.") and state[k].is_floating_point())
    state[name].fill_(float("nan"))


# --------------------------------------------------------------------------- 1. model files and checkpoints


MODEL_EDITS = {
    "no members": (lambda p: p.update(members=[]), "no trained networks"),
    "members not a list": (lambda p: p.update(members=3), "no trained networks"),
    "body_chunk 0": (lambda p: p["config"].update(body_chunk=0), "body_chunk"),
    "no config": (lambda p: p.pop("config"), "'config'"),
    "image_size out of bounds": (lambda p: p["config"].update(image_size=100000), "1024"),
    "image_size a string": (lambda p: p["config"].update(image_size="64"), "image_size"),
    "tta a string": (lambda p: p["config"].update(tta="yes"), "tta"),
    "targets a string": (lambda p: p["config"].update(targets="V4"), "targets"),
    "a setting that is not one": (lambda p: p["config"].update(colour="red"), "colour"),
    "a weight not a tensor": (lambda p: p["members"][0].update({"feature_mean": "x"}), "feature_mean"),
    "NaN head weight": (_fill_first_head_weight, "non-finite"),
    "infinite feature mean": (lambda p: p["members"][0]["feature_mean"].fill_(float("inf")), "non-finite"),
    "NaN prior scale": (lambda p: p["priors"]["V4"].update(scale=float("nan")), "scale"),
    "infinite prior offset": (lambda p: p["priors"]["V4"].update(intercept=float("inf")), "intercept"),
    "infinite stage weight": (lambda p: p["priors"]["V4"]["weights"].update(stem=float("inf")), "stem"),
    "priors not a dict": (lambda p: p.update(priors=[1]), "priors"),
    "output_keys not a dict": (lambda p: p.update(output_keys=[1, 2]), "malformed"),
}


@pytest.mark.parametrize("case", list(MODEL_EDITS))
def test_malformed_model_file_is_one_line_and_predicts_nothing(case: str, capsys, tmp_path: Path, fitted_run: Path,
                                                               own_data: tuple[str, ...]) -> None:
    edit, part = MODEL_EDITS[case]
    model = edited(fitted_run / "model.pt", tmp_path / "model.pt", edit)
    prediction = tmp_path / "pred.npy"
    code, out, err = run_cli(capsys, "predict", model, "--images", own_data[1], "--out", prediction,
                             "--device", "cpu")
    assert code == 2 and out == "", err
    assert_one_line_error(err, str(model), part)
    assert not prediction.exists()


def test_an_unedited_copy_still_predicts(capsys, tmp_path: Path, fitted_run: Path, own_data: tuple[str, ...]) -> None:
    """The edits above are refused for what they change, not for being re-saved."""
    model = edited(fitted_run / "model.pt", tmp_path / "model.pt", lambda p: None)
    code, _, err = run_cli(capsys, "predict", model, "--images", own_data[1], "--out", tmp_path / "p.npy",
                           "--device", "cpu")
    assert code == 0, err
    assert np.all(np.isfinite(np.load(tmp_path / "p.npy")))


CHECKPOINT_EDITS = {
    "generator state cut short": (lambda s: s.update(generator=s["generator"][:10]), "CPUGeneratorImplState"),
    "generator state a string": (lambda s: s.update(generator="abc"), "ByteTensor"),
    "epoch a string": (lambda s: s.update(epoch="1"), "epoch"),
    "history not a list": (lambda s: s.update(history=3), "history"),
    "no config": (lambda s: s.pop("config"), "'config'"),
    "config with a string lr": (lambda s: s["config"].update(lr="fast"), "lr"),
    "optimizer of another shape": (lambda s: s.update(optimizer={"x": 1}), "param_groups"),
    "best_state not a state_dict": (lambda s: s.update(best_state="x"), "best_state"),
    "NaN weights": (lambda s: s["model"]["feature_mean"].fill_(float("nan")), "non-finite"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_EDITS))
def test_malformed_checkpoint_on_resume_is_one_line(case: str, capsys, tmp_path: Path, fitted_run: Path,
                                                    own_data: tuple[str, ...]) -> None:
    edit, part = CHECKPOINT_EDITS[case]
    out = tmp_path / "run"
    shutil.copytree(fitted_run, out)
    (out / "model.pt").unlink()
    last = edited(fitted_run / "seed0" / "last.pt", out / "seed0" / "last.pt", edit)
    code, stdout, err = run_cli(capsys, "fit", *own_data, *FAST, "--out", out, "--resume")
    assert code == 2 and stdout == "", err
    assert_one_line_error(err, str(last), part)
    assert not (out / "model.pt").exists()


# --------------------------------------------------------------------------- 2. bounds, 3. lists


BAD_OPTIONS = [
    # upper and lower bounds, the bound in the message
    (["score", "a.mat", "--target", "b.mat", "--permutations", "10000000000000"], ["--permutations", "100000"]),
    (["score", "a.mat", "--target", "b.mat", "--seed", "-1"], ["--seed", "2**32"]),
    (["fit", *NO_DATA, "--seeds", "99999999999999999999999", "--out", "{out}"], ["--seeds", "2**32"]),
    (["fit", *NO_DATA, "--seeds", "-1", "--out", "{out}"], ["--seeds", "2**32"]),
    (["evaluate", *NO_DATA, "--fold-seed", "-1", "--out", "{out}"], ["--fold-seed", "2**32"]),
    (["baseline", "layers", *NO_DATA, "--image-size", "5000"], ["--image-size", "1024"]),
    # the weights of one body, read before the sets (after them, below a progress line)
    (["baseline", "layers", *NO_DATA, "--weights", "/no/such/weights.pt"], ["--weights", "no such weights file"]),
    (["baseline", "layers", *NO_DATA, "--backbone", "timm:no_such_model"], ["--backbone", "timm has no model"]),
    (["challenge", *NO_DATA, "--jobs", "100000", "--out", "{out}"], ["--jobs", "between 1"]),
    (["fit", "--images", "x.h5", "--rdms", "r.npy", "--key", "X", "--batch-images", "12", "--loader-workers",
      "100000", "--out", "{out}"], ["--loader-workers", "at most"]),
    # --loader-workers alone blamed the RDM file, as if it were a large set's
    (["fit", "--images", "imgs", "--rdms", "r.npy", "--key", "X", "--loader-workers", "2", "--out", "{out}"],
     ["--loader-workers", "give --batch-images"]),
    # empty and repeated list entries
    (["fit", *NO_DATA, "--targets", ",", "--out", "{out}"], ["--targets", "empty entry"]),
    (["fit", *NO_DATA, "--targets", "EVC,", "--out", "{out}"], ["--targets", "empty entry"]),
    (["fit", *NO_DATA, "--targets", "EVC,EVC", "--out", "{out}"], ["--targets", "EVC given more than once"]),
    (["fit", *NO_DATA, "--sets", "92,92", "--out", "{out}"], ["--sets", "92 given more than once"]),
    (["fit", *NO_DATA, "--seeds", "0,0", "--out", "{out}"], ["--seeds", "0 given more than once"]),
    (["fit", *NO_DATA, "--seeds", "0,00", "--out", "{out}"], ["--seeds", "0 given more than once"]),
    (["lr-find", *NO_DATA, "--targets", "IT,,EVC", "--out", "{out}"], ["--targets", "empty entry"]),
    (["challenge", *NO_DATA, "--targets", "IT,IT", "--out", "{out}"], ["--targets", "IT given more than once"]),
    (["evaluate", *NO_DATA, "--methods", "layers,layers", "--out", "{out}"], ["--methods", "more than once"]),
    (["evaluate", *NO_DATA, "--targets", ",", "--out", "{out}"], ["--targets", "empty entry"]),
    (["baseline", "regression", *NO_DATA, "--targets", "IT,IT"], ["--targets", "more than once"]),
    # the test set has no RDMs
    (["fit", *NO_DATA, "--sets", "78", "--out", "{out}"], ["--sets", "78 is the test set"]),
    (["fit", *NO_DATA, "--val-set", "78", "--out", "{out}"], ["--val-set", "78 is the test set"]),
]


@pytest.mark.parametrize(("args", "parts"), BAD_OPTIONS, ids=[" ".join(a[:1] + a[3:5]) for a, _ in BAD_OPTIONS])
def test_bad_option_is_refused_before_any_work(args: list[str], parts: list[str], capsys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, *[a.replace("{out}", str(out)) for a in args])
    assert code == 2 and stdout == "", err
    assert_one_line_error(err, *parts)
    assert not out.exists()


@pytest.mark.parametrize("size", ["100000", "8"])
def test_fit_image_size_bounds(size: str, capsys, tmp_path: Path, own_data: tuple[str, ...]) -> None:
    """100,000 px asked the body for 120 GB before; the bound is checked before any body runs."""
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "fit", *own_data, "--weights", "random", "--device", "cpu", "--image-size", size,
                           "--out", out)
    assert code == 2
    assert_one_line_error(err, "--image-size", "between 16 and 1024")
    assert not out.exists()


# --------------------------------------------------------------------------- 4. torchrun


def test_more_ranks_than_gpus_is_refused_before_joining(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank whose local rank has no GPU is a setting (--device), not a CUDA crash."""
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": str(torch.cuda.device_count()),
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="CUDA device") as info:
        init_from_env("cuda")
    assert info.value.option == "device"
    assert not torch.distributed.is_initialized()


def test_a_ranks_bad_input_under_torchrun_is_its_one_line_and_exit_2(tmp_path: Path, set92: Path, make_rdms) -> None:
    """Only rank 0 reads the held-out images: an unreadable one is its bad input, while rank 1 waits in a
    collective that fails when rank 0 leaves. torchrun must name rank 0 (exit code 2) as the root cause, and the
    only siamrdm line is rank 0's."""
    images = tmp_path / "images"
    images.mkdir()
    n = 40
    for k, name in enumerate(load_image_set(set92 / "92images").names[:n]):
        shutil.copy(set92 / "92images" / name, images / f"img{k:02d}.jpg")
    _, held_out = holdout_indices(n, 0.2, 0)
    bad = images / f"img{held_out[0]:02d}.jpg"
    bad.write_bytes(b"not a jpeg")
    rdms = tmp_path / "rdms.npy"
    np.save(rdms, np.stack([upper_tri(r) for r in make_rdms(n, subjects=2)]))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "siamrdm.cli", "fit", "--images", str(images), "--rdms", str(rdms), "--key", "X",
               "--batch-images", "12", "--val-fraction", "0.2", "--frozen-epochs", "1", "--loader-workers", "0",
               "--stage", "blocks2", "--head", "pairwise", "--image-size", "32", "--weights", "random",
               "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]
    ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert ran.returncode == 1, ran.stderr[-3000:]  # torchrun's own code when a worker fails
    ours = [line for line in ran.stderr.splitlines() if line.startswith("siamrdm:")]
    assert len(ours) == 1 and ours[0].startswith("siamrdm: error: ") and bad.name in ours[0], ran.stderr[-3000:]
    root = re.search(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", ran.stderr, re.DOTALL)
    assert root is not None and root.groups() == ("0", "2"), ran.stderr[-3000:]
