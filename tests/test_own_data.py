"""Your own data, first class: image order (natural, explicit, recorded), ceilings for own data, image-fold
cross-validation, the Python API and the README example, end to end through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli
from PIL import Image

from siamrdm.errors import DataError
from siamrdm.io.datasets import BrainDataset, load_dataset
from siamrdm.io.images import load_image_set, natural_key
from siamrdm.io.rdmfiles import load_rdm_dict, load_rdms, save_rdms
from siamrdm.io.rsafiles import read_rdm_names
from siamrdm.rdm.splits import fold_splits

N_IMAGES = 12
NATURAL = [f"img{k}.png" for k in range(1, N_IMAGES + 1)]  # as plain strings img1, img10, img11, img12, img2, ...


def write_images(folder: Path, n: int = N_IMAGES, size: int = 32, seed: int = 0) -> Path:
    """img1.png .. imgN.png: smooth random colour fields, a different one per image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(1, n + 1):
        small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(folder / f"img{k}.png")
    return folder


# --------------------------------------------------------------------------- image order


def test_folders_sort_naturally(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "images")
    assert sorted(NATURAL) != NATURAL  # the plain string order would put img10 second
    assert load_image_set(folder).names == NATURAL
    names = ["b2.png", "B10.png", "a.png", "b02.png", "b1.png"]
    assert sorted(names, key=natural_key) == ["a.png", "b1.png", "b02.png", "b2.png", "B10.png"]


def test_explicit_order(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "images")
    plain = load_image_set(folder)
    order = tmp_path / "order.txt"
    listed = sorted(NATURAL)  # img1, img10, img11, img12, img2, ...
    order.write_text("# my RDM's row order\n" + "\n".join(n.removesuffix(".png") if k % 2 else n
                                                          for k, n in enumerate(listed)) + "\n\n")
    images = load_image_set(folder, order)
    assert images.names == listed  # stems name the files too
    np.testing.assert_array_equal(images.images[1], plain.images[9])  # img10
    assert load_image_set(folder, listed[::-1]).names == listed[::-1]  # a list works in code


@pytest.mark.parametrize("lines, expected", [
    (NATURAL[:-1], r"does not list 'img12\.png' of the 12 images in"),
    (NATURAL + ["cat.png"], r"lists 'cat\.png', not among the 12 images in"),
    (NATURAL + ["img3"], r"lists 'img3\.png' twice"),
    ([], r"order file lists no image names"),
])
def test_bad_order_file(tmp_path: Path, lines: list[str], expected: str) -> None:
    folder = write_images(tmp_path / "images")
    order = tmp_path / "order.txt"
    order.write_text("\n".join(lines))
    with pytest.raises(DataError, match=f"^{order}: {expected}") as info:
        load_image_set(folder, order)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=r"nowhere\.txt: no such order file"):
        load_image_set(folder, tmp_path / "nowhere.txt")


def test_stimulus_mat_keeps_its_own_order(set92: Path) -> None:
    from_mat = load_image_set(set92 / "92images.mat")
    assert len(from_mat) == 92
    reversed_order = load_image_set(set92 / "92images.mat", from_mat.names[::-1])
    np.testing.assert_array_equal(reversed_order.images[0], from_mat.images[-1])


def test_load_dataset_checks_names_and_names_the_target(tmp_path: Path, make_rdms) -> None:
    folder = write_images(tmp_path / "images")
    rdms = make_rdms(N_IMAGES, subjects=3, seed=1)
    np.save(tmp_path / "it.npy", rdms)
    dataset = load_dataset(folder, tmp_path / "it.npy")
    assert dataset.name == "images" and list(dataset.targets) == ["it"]  # a .npy has no key: its name
    assert list(load_dataset(folder, tmp_path / "it.npy", "IT").targets) == ["IT"]
    hdf5 = save_rdms(tmp_path / "it.hdf5", {"IT": rdms}, names=NATURAL)
    assert list(load_dataset(folder, hdf5).targets) == ["IT"]
    order = tmp_path / "order.txt"
    order.write_text("\n".join(sorted(NATURAL)))
    with pytest.raises(DataError, match=rf"{hdf5}: pattern descriptor 'images' orders the images "
                                             rf"differently from {folder} \(row 2: 'img2\.png' in the file"):
        load_dataset(folder, hdf5, order=order)
    (folder / "img12.png").unlink()
    with pytest.raises(DataError, match=r"it\.npy: RDMs are 12 x 12 but there are 11 images"):
        load_dataset(folder, tmp_path / "it.npy")


# --------------------------------------------------------------------------- a synthetic own-data set

BACKBONE_ARGS = ("efficientnet_lite0", "random", 64)  # the body that made the data, as stage_rdms takes it
TRAINING_FLAGS = ("--weights", "random", "--image-size", "64", "--epochs", "20", "--quiet")


def make_own_data(root: Path, subjects: int = 4, noise: float = 0.3) -> tuple[Path, Path]:
    """img1..img12 and their subjects' RDMs from a known model: the 'blocks2' stage RDM of a fixed (seeded)
    random EfficientNet-Lite0 at 64 px, plus independent noise per subject; saved as an rsatoolbox RDMs file
    that names the images. Returns (image folder, RDM file)."""
    from siamrdm.model.prior import stage_rdms
    from siamrdm.rdm import rdm_from_features

    folder = write_images(root / "images")
    images = load_image_set(folder)
    truth = stage_rdms(images, *BACKBONE_ARGS)["blocks2"]
    rng = np.random.default_rng(1)
    stack = np.stack([truth + noise * truth.std() * rdm_from_features(rng.normal(size=(N_IMAGES, 6)))
                      for _ in range(subjects)])
    return folder, save_rdms(root / "rdms.hdf5", {"V4": stack if subjects > 1 else stack[0]}, names=NATURAL)


def untrained_fold_r2(dataset: BrainDataset, folds: int, config) -> list[float]:
    """Held-out r2 of the untrained network, fold by fold: no training step and no prior, only the training
    images' feature statistics, so it is the network `fit` starts from."""
    from dataclasses import replace

    from siamrdm.rdm.compare import score_rdm
    from siamrdm.train import Trainer
    from siamrdm.train.predict import RDMPredictor

    untrained = replace(config, prior="none")
    scores = []
    for train, test in fold_splits(dataset, folds, 0).values():
        model = Trainer(untrained, [train], progress=False).model
        predicted = RDMPredictor([model], untrained).predict(test.images)["V4"]
        scores.append(score_rdm(predicted, test.targets["V4"]).r2)
    return scores


def test_done_when_own_data_through_the_cli(tmp_path: Path, capsys) -> None:
    """fit, evaluate --folds and predict on a synthetic set whose names sort differently as strings: the order
    used is natural and recorded, ceilings are computed from the images scored, the fitted network beats the
    untrained one on held-out images, and predictions carry the image names for rsatoolbox."""
    import csv
    import json

    from siamrdm.rdm.noise_ceiling import noise_ceilings
    from siamrdm.train import config_from_preset

    folder, rdms = make_own_data(tmp_path)
    own = ("--images", folder, "--rdms", rdms, "--key", "V4")

    # fit: stdout is the JSON summary alone; the order is recorded beside model.pt; the ceilings are reported
    code, out, err = run_cli(capsys, "fit", *own, *TRAINING_FLAGS, "--val-fraction", "0.5", "--out", tmp_path / "fit")
    assert code == 0, err
    summary = json.loads(out)
    assert (tmp_path / "fit" / "images.txt").read_text().splitlines() == NATURAL
    settings = json.loads((tmp_path / "fit" / "settings.json").read_text())  # the run's settings, one process
    assert settings["world_size"] == 1 and settings["config"]["targets"] == ["V4"]
    (validation,) = summary["validation"].values()
    # best_val_score is the signed mean rho the epoch was chosen on, and the JSON says so (not pct_nc beside it)
    assert validation["ceiling_source"] == "computed" and validation["best_val_score_is"] == "rho_mean"
    assert summary["seeds"]["seed0"]["best_val_score_is"] == "rho_mean"
    assert isinstance(summary["seeds"]["seed0"]["best_val_score"], float)
    assert validation["permutations"] == 1000 and 0 < validation["p_perm"] <= 1  # the kept model's chance level
    assert isinstance(validation["beats_chance"], bool) and validation["chance_pct_95"] is not None
    assert validation["noise_ceiling"] >= validation["noise_ceiling_lower"] > 0 and validation["images"] == 6

    # evaluate --folds: every method on held-out images, scored over the held-out subjects' own ceiling
    loud = [flag for flag in TRAINING_FLAGS if flag != "--quiet"]
    code, out, err = run_cli(capsys, "evaluate", *own, *loud, "--folds", "2", "--out", tmp_path / "ev")
    assert code == 0, err
    ev = tmp_path / "ev"
    with open(ev / "evaluation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["direction"]) for r in rows] == [
        (m, f"fold {k}") for m in ("siamese", "layers", "regression", "frrsa") for k in (1, 2)]
    dataset = load_dataset(folder, rdms, "V4")
    splits = list(fold_splits(dataset, 2, 0).values())
    for row in rows:
        held_out = splits[int(row["direction"][-1]) - 1][1]
        ceiling = noise_ceilings(held_out.targets["V4"])
        upper, lower = ceiling.upper, ceiling.lower
        assert row["ceiling_source"] == "computed"
        assert float(row["noise_ceiling"]) == pytest.approx(upper) and float(row["noise_ceiling_lower"]) == (
            pytest.approx(lower))
        assert float(row["pct_nc"]) == pytest.approx(100 * float(row["r2"]) / upper)
    assert "| siamese | V4 | % of noise ceiling |" in out and "computed upper" in out
    assert "| layers | V4 | % of noise ceiling |" in (ev / "evaluation.md").read_text()
    assert all((ev / name).is_file() for name in ("scores.png", "rdm_V4_fold_1.png", "mds_V4_fold_2.png",
                                                  "report.md", "report.html", "settings.json"))
    assert (ev / "images.txt").read_text().splitlines() == NATURAL
    title = (ev / "report.md").read_text().splitlines()[0]  # issue 21: it read "2 image folds of images"
    assert title == f"# siamrdm evaluate: 2-fold cross-validation over the 12 images of {Path(folder).name} (V4)"
    # without --quiet: a line per phase (stderr) as it starts, k of n: the stage RDMs, then each fold and method
    phases = [line.split(" (")[0] for line in err.splitlines() if line.startswith("evaluate [")]
    assert phases[0].startswith("evaluate [1/9] stage RDMs and stage features of") and phases[1:] == [
        f"evaluate [{k}/9] fold {fold}: {method} V4" for k, (method, fold) in enumerate(
            ((m, f) for m in ("siamese", "layers", "regression", "frrsa") for f in (1, 2)), 2)]
    assert err.splitlines()[-1].startswith("evaluate: done in ") and err.splitlines()[-1].endswith(
        f"{ev / 'report.html'}")
    assert out.splitlines()[-1].endswith(f"the report: {ev / 'report.html'}")
    folds = json.loads((ev / "evaluation.json").read_text())["folds"]
    assert folds == {f"fold {k + 1}": test.images.names for k, (_, test) in enumerate(splits)}
    fold_file = load_rdm_dict(ev / "predictions_fold_1.hdf5", names=folds["fold 1"])
    assert set(fold_file) == {"siamese/V4", "layers/V4", "regression/V4", "frrsa/V4"}

    # the fitted network beats the untrained one on the held-out images
    config = config_from_preset("quick", targets=("V4",), weights="random", image_size=64, frozen_epochs=20)
    fitted = [float(r["r2"]) for r in rows if r["method"] == "siamese"]
    untrained = untrained_fold_r2(dataset, 2, config)
    assert np.mean(fitted) > np.mean(untrained) + 0.1, (fitted, untrained)
    assert {r["detail"] for r in rows if r["method"] == "layers"} == {"stage=blocks2"}  # the stage that made the data

    # predict: rsatoolbox RDMs with the image names, in the order asked for
    model = tmp_path / "fit" / "model.pt"
    code, out, err = run_cli(capsys, "predict", model, "--images", folder, "--out", tmp_path / "pred.hdf5")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'pred.hdf5'}: V4 (12 x 12)"), err
    assert read_rdm_names(tmp_path / "pred.hdf5") == ("images", [n.removesuffix(".png") for n in NATURAL])
    order = tmp_path / "order.txt"
    order.write_text("\n".join(NATURAL[::-1]))
    code, _, err = run_cli(capsys, "predict", model, "--images", folder, "--order", order, "--out", tmp_path / "r.h5")
    assert code == 0, err
    forward, backward = load_rdms(tmp_path / "pred.hdf5"), load_rdms(tmp_path / "r.h5")
    np.testing.assert_allclose(backward, forward[::-1, ::-1], atol=1e-6)

    # score: the names agree, so it scores; the reversed prediction is refused, naming the file
    code, out, err = run_cli(capsys, "score", tmp_path / "pred.hdf5", "--target", rdms, "--json")
    assert code == 0 and json.loads(out)["V4"]["ceiling_source"] == "computed", err
    code, out, err = run_cli(capsys, "score", tmp_path / "r.h5", "--target", rdms)
    assert code == 2 and out == ""
    assert_one_line_error(err, "r.h5: pattern descriptor 'images' orders the images differently", str(rdms))


# --------------------------------------------------------------------------- no ceiling, other methods


def test_single_group_rdm_has_no_ceiling_and_says_so(tmp_path: Path, capsys) -> None:
    folder, rdms = make_own_data(tmp_path, subjects=1)
    model = save_rdms(tmp_path / "model.hdf5", {"V4": load_rdms(rdms)[::-1, ::-1]})  # no names
    code, out, err = run_cli(capsys, "score", model, "--target", rdms)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[1].split()[0] == "V4" and lines[1].split()[-1] == "none"
    assert lines[-1] == "note: one RDM, no subjects to estimate a noise ceiling from: scores are r2 only"

    out_dir = tmp_path / "folds"
    code, out, err = run_cli(capsys, "evaluate", "--images", folder, "--rdms", rdms, "--key", "V4", "--folds", "3",
                             "--methods", "layers,regression", *TRAINING_FLAGS, "--out", out_dir)
    assert code == 0, err
    table = (out_dir / "evaluation.md").read_text()
    assert "| layers | V4 | r2 |" in table and "none: one RDM, no subjects" in table
    assert (out_dir / "scores.png").is_file()  # r2 bars, no ceiling band
    assert "r2 (these data have no noise ceiling)" in (out_dir / "report.md").read_text()


def test_score_with_another_method(tmp_path: Path, capsys) -> None:
    import json

    from siamrdm.rdm.compare import compare_rdms
    from siamrdm.rdm.noise_ceiling import noise_ceilings

    _, rdms = make_own_data(tmp_path)
    subjects = load_rdms(rdms)
    model = save_rdms(tmp_path / "model.hdf5", {"V4": subjects[0]}, names=NATURAL)
    code, out, err = run_cli(capsys, "score", model, "--target", rdms, "--method", "tau-a", "--json")
    assert code == 0, err
    row = json.loads(out)["V4"]
    ceiling = noise_ceilings(subjects, "tau-a")
    upper, lower = ceiling.upper, ceiling.lower
    assert row["method"] == "tau-a" and row["ceiling_source"] == "computed"
    assert row["r2"] == pytest.approx(np.mean(compare_rdms(subjects[0], subjects, "tau-a") ** 2))
    assert row["noise_ceiling"] == pytest.approx(upper) and row["noise_ceiling_lower"] == pytest.approx(lower)
    code, out, err = run_cli(capsys, "score", model, "--target", rdms, "--method", "corr")
    assert code == 0 and "compared with 'corr'" in out.strip().splitlines()[-1]


# --------------------------------------------------------------------------- bad input: one line, exit 2, no file


def test_bad_own_data_input(tmp_path: Path, capsys) -> None:
    folder, rdms = make_own_data(tmp_path)
    own = ("--images", folder, "--rdms", rdms, "--key", "V4")
    out = tmp_path / "out"
    missing_name = tmp_path / "short.txt"
    missing_name.write_text("\n".join(NATURAL[:-1]))
    pickle = tmp_path / "rdms.pkl"
    pickle.write_bytes(b"\x80\x04.")
    cases = [
        (["fit", *own, "--order", tmp_path / "nowhere.txt", "--out", out], ("nowhere.txt: no such order file",)),
        (["fit", *own, "--order", missing_name, "--out", out], ("short.txt: does not list 'img12.png'",)),
        (["fit", "--images", folder, "--rdms", pickle, "--key", "V4", "--out", out], ("rdms.pkl", "pickle")),
        (["fit", "--order", missing_name, "--out", out], ("--order", "--images")),
        (["evaluate", *own, "--folds", "5", "--out", out], ("--folds: 5 folds of 12 images",)),
        (["evaluate", "--folds", "3", "--out", out], ("--folds", "--images")),
        (["evaluate", *own, "--targets", "EVC", "--out", out], ("--targets", "--key")),
        (["score", rdms, "--target", rdms, "--method", "tau-a", "--permutations", "10"], ("--permutations",
                                                                                         "tau-a")),
        (["score", rdms, "--target", rdms, "--method", "pearson"], ("score: ", "--method", "pearson")),
        (["noise-ceiling", rdms, "--method", "r2"], ("noise-ceiling: ", "--method")),
        (["predict", tmp_path / "model.pt", "--images", folder, "--out", tmp_path / "x.pkl"],
         ("x.pkl", "unsupported output type")),
    ]
    for args, parts in cases:
        code, stdout, err = run_cli(capsys, *args)
        assert code == 2 and stdout == "", args
        assert_one_line_error(err, *parts)
        assert not out.exists() and not (tmp_path / "x.pkl").exists(), args


# --------------------------------------------------------------------------- the Python API and the README


def test_api_is_importable_from_the_package() -> None:
    import subprocess
    import sys

    import siamrdm

    undocumented = {"__version__", "COMPARISON_METHODS", "config_from_preset"}  # the last lives in train/config.py
    for name in siamrdm.__all__:
        value = getattr(siamrdm, name)
        assert name in undocumented or value.__doc__, name
    assert siamrdm.load_dataset is load_dataset and "evaluate_folds" in dir(siamrdm)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        siamrdm.nothing  # noqa: B018
    light = subprocess.run([sys.executable, "-c", "import sys, siamrdm; print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert light.stdout.strip() == "False"  # the API loads on first use


def readme_example() -> str:
    """The python block of README.md's "Your own data" section."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Your own data"):]
    section = section[:section.index("\n## ", 1)]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The README's notebook example, as written, on img1..img12 and an rsatoolbox file of 4 subjects."""
    folder, rdms = make_own_data(tmp_path)
    folder.rename(tmp_path / "my_images")
    stack = load_rdms(rdms)
    save_rdms(tmp_path / "my_rdms.hdf5", {"IT": stack}, names=NATURAL)
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "12 images: ['img1.png', 'img2.png', 'img3.png'] RDMs: (4, 12, 12)" in out
    assert out.count("computed") >= 9  # 3 methods x 3 folds, each over its held-out subjects' ceiling
    assert read_rdm_names(tmp_path / "runs" / "mine-api" / "predicted.hdf5") == ("images", NATURAL)
    assert (tmp_path / "runs" / "mine-api" / "model.pt").is_file()
