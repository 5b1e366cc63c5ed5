"""Cross-set evaluation: tables, plots and determinism on subsets of the real sets; train-only model choice."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import spaced_training_sets
from PIL import Image

from siamrdm import cli
from siamrdm.errors import DataError
from siamrdm.io import jsonfiles
from siamrdm.io.datasets import BrainDataset
from siamrdm.io.images import ImageSet
from siamrdm.io.tables import Record
from siamrdm.pipelines import evaluate, plots
from siamrdm.rdm import rdm_from_features
from siamrdm.train import config_from_preset, prepare_set, subset

TARGETS = ("EVC", "MEG_late")


@pytest.fixture(scope="module")
def small_sets(data_root: Path) -> list[BrainDataset]:
    """20 images of each training set (evenly spaced), with their RDMs."""
    return spaced_training_sets(data_root, 20, TARGETS)


def test_layers_and_regression_end_to_end(tmp_path: Path, small_sets: list[BrainDataset]):
    config = config_from_preset("quick", image_size=64)
    evaluation, paths = evaluate.run_evaluation(None, tmp_path, ("layers", "regression"), TARGETS, config,
                                                sets=small_sets, batch_size=8, progress=False)
    rows = evaluation.rows
    assert [(r["method"], r["target"], r["direction"]) for r in rows] == [
        (m, t, d) for m in ("layers", "regression") for t in TARGETS for d in ("92->118", "118->92")]
    for row in rows:
        assert np.isfinite(row["r2"]) and 0 <= row["r2"] <= 1
        assert row["pct_nc"] == pytest.approx(100 * row["r2"] / row["noise_ceiling"])
        assert 0 < row["nc_lower_pct"] < 100
    assert all(r["detail"].startswith("stage=") for r in rows if r["method"] == "layers")

    with open(tmp_path / "evaluation.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == evaluate.COLUMNS and len(table) == 8
    md = (tmp_path / "evaluation.md").read_text()
    assert "| layers | EVC | 92->118 |" in md and "| regression |" in md
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["layers"]["92->118"]["EVC"]["chosen"] in saved["layers"]["92->118"]["EVC"]["train_r2"]
    assert evaluation.to_dict() == {key: value for key, value in saved.items() if key != "settings"}
    assert json.loads((tmp_path / "settings.json").read_text())["sets"] == {"92": 20, "118": 20}
    with np.load(tmp_path / "predictions.npz") as npz:
        assert npz["layers/EVC/92->118"].shape == (20, 20)

    for stem, kind in [("scores", "scores")] + [(f"{p}_{t}_{d}", p) for p in ("rdm", "mds") for t in TARGETS
                                                  for d in ("92to118", "118to92")]:
        path = tmp_path / f"{stem}.png"
        assert paths[stem if stem != "scores" else "scores_png"] == path
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == plots.pixel_size(kind)

    # Same settings, same table.
    again = evaluate.evaluate_sets(small_sets, ("layers", "regression"), TARGETS, config, batch_size=8,
                                   progress=False)
    assert again.rows == rows


def _fake_set(name: str, stage_rdms: dict[str, np.ndarray], follows: str, seed: int) -> BrainDataset:
    n = len(next(iter(stage_rdms.values())))
    rng = np.random.default_rng(seed)
    subjects = np.stack([stage_rdms[follows] + 0.02 * rdm_from_features(rng.normal(size=(n, 4))) for _ in range(4)])
    images = ImageSet([f"{k}.png" for k in range(n)], [np.zeros((8, 8, 3), np.uint8)] * n, Path(name))
    return BrainDataset(name, images, {"EVC": subjects})


def test_a_set_without_a_targets_rdms_is_refused_as_fit_refuses_it(small_sets: list[BrainDataset]):
    """evaluate_sets and a fit's prepare_set share one check and one message, before any work."""
    message = f"^image set {small_sets[0].name}: no RDMs for target\\(s\\) IT$"
    with pytest.raises(DataError, match=message):
        evaluate.evaluate_sets(small_sets, ("layers",), ("EVC", "IT"), progress=False)
    with pytest.raises(DataError, match=message):
        prepare_set(small_sets[0], ("EVC", "IT"), config_from_preset("quick"))


def test_evaluation_chooses_the_layer_on_the_training_set(monkeypatch: pytest.MonkeyPatch):
    """Set A's subjects follow stage 'early', set B's follow 'late'; A -> B must use 'early' (A's best)."""
    rng = np.random.default_rng(0)
    fake = {name: {s: rdm_from_features(rng.normal(size=(n, 5))) for s in ("early", "late")}
            for name, n in (("A", 15), ("B", 18))}
    sets = [_fake_set("A", fake["A"], "early", 1), _fake_set("B", fake["B"], "late", 2)]
    by_size = {15: fake["A"], 18: fake["B"]}
    import siamrdm.model.prior

    monkeypatch.setattr(siamrdm.model.prior, "stage_rdms", lambda images, *a, **k: by_size[len(images)])
    result = evaluate.evaluate_sets(sets, ("layers",), ("EVC",), config_from_preset("quick"), progress=False)
    choice = result.layers["A->B"]["EVC"]
    assert choice["chosen"] == "early"
    assert choice["test_r2"]["late"] > choice["test_r2"]["early"]  # the test set would have chosen otherwise
    row = next(r for r in result.rows if r["direction"] == "A->B")
    assert row["detail"] == "stage=early"
    np.testing.assert_array_equal(result.predictions[("layers", "EVC", "A->B")], fake["B"]["early"])
    assert result.layers["B->A"]["EVC"]["chosen"] == "late"


def test_siamese_rows_come_from_fit_predictor(small_sets: list[BrainDataset], monkeypatch: pytest.MonkeyPatch):
    import siamrdm.train.predict as predict

    calls = []
    real = predict.fit_predictor

    def spy(config, train, val=(), seeds=(0,), *args, **kwargs):
        calls.append((config.targets, [d.name for d in train], tuple(val), seeds))
        return real(config, train, val, seeds, *args, **kwargs)

    monkeypatch.setattr(predict, "fit_predictor", spy)
    sets = [subset(d, np.arange(12), d.name) for d in small_sets]
    config = config_from_preset("quick", frozen_epochs=2, image_size=96, augment_views=1)
    result = evaluate.evaluate_sets(sets, ("siamese",), ("EVC",), config, seeds=(0,), progress=False)
    assert calls == [(("EVC",), ["92"], (), (0,)), (("EVC",), ["118"], (), (0,))]  # the training set only
    assert [r["direction"] for r in result.rows] == ["92->118", "118->92"]
    assert all(np.isfinite(r["r2"]) for r in result.rows)
    assert result.predictions[("siamese", "EVC", "92->118")].shape == (12, 12)


@pytest.mark.parametrize("args, part", [
    (["evaluate", "--methods", "siamese,bogus"], "bogus"),
    (["evaluate", "--targets", "EVC,V4"], "V4"),
    (["evaluate", "--seeds", "x"], "--seeds"),
    (["baseline", "layers", "--targets", "V4"], "V4"),
    (["baseline", "regression", "--data", "/no/such/folder"], "/no/such/folder"),
    (["baseline", "layers", "--image-size", "4"], "--image-size"),
])
def test_bad_input_exits_2(args: list[str], part: str, capsys: pytest.CaptureFixture):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("siamrdm: error: ") and part in err[0], err


def test_baseline_command_prints_json(data_root: Path, capsys: pytest.CaptureFixture):
    code = cli.main(["baseline", "layers", "--data", str(data_root), "--targets", "EVC", "--image-size", "32",
                     "--json", "--quiet"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["direction"] for r in result["rows"]] == ["92->118", "118->92"]
    assert {r["method"] for r in result["rows"]} == {"layers"}


def test_fold_evaluation_writes_the_paired_tests(tmp_path: Path):
    """evaluation.md and evaluation.json carry each method against each baseline, paired over the folds (each
    fold's rho_mean) and over the subjects; the fold table its standard error and interval over folds."""
    from siamrdm.rdm.inference import paired_test

    rng = np.random.default_rng(7)
    n = 12
    truth = rdm_from_features(rng.normal(size=(n, 5)))
    subjects = np.stack([truth + 0.5 * rdm_from_features(rng.normal(size=(n, 4))) for _ in range(6)])
    rows = [evaluate._row(method, "V4", f"fold {k + 1}", truth + noise * rdm_from_features(rng.normal(size=(n, 4))),
                          subjects) for method, noise in (("siamese", 0.3), ("layers", 1.0)) for k in range(5)]
    held_out = {f"fold {k + 1}": _fake_set("f", {"s": truth}, "s", k) for k in range(5)}
    evaluation = evaluate.Evaluation(rows, {}, seconds={"layers": float("nan")}, held_out=held_out)
    paths = evaluate.write_evaluation(evaluation, [], tmp_path, make_plots=False)
    md, saved = paths["md"].read_text(), jsonfiles.parse_json(paths["json"].read_bytes(), paths["json"], "test")
    assert saved["seconds"] == {"layers": None}  # strict JSON: an undefined value is null, never NaN
    assert "## Paired tests against the baselines" in md and "| mean +- se | 95% CI (folds) |" in md
    assert saved["paired"] == jsonfiles.json_safe(evaluation.paired())
    folds, over_subjects = saved["paired"]
    assert (folds["over"], folds["n"], over_subjects["over"], over_subjects["n"]) == ("folds", 5, "subjects", 6)
    rho = {m: [r["rho_mean"] for r in rows if r["method"] == m] for m in ("siamese", "layers")}
    expected = paired_test(rho["siamese"], rho["layers"])
    assert folds["p_t"] == pytest.approx(expected.p_t) and folds["mean_diff"] == pytest.approx(expected.mean_diff)
    assert folds["mean_diff"] > 0 and f"{folds['p_t']:.2g}" in md
    assert len(saved["rows"][0]["rhos"]) == 6  # the per-subject rhos the tests pair
    # The evaluation is a record: to_dict() is evaluation.json but the settings, folds and all.
    assert isinstance(evaluation, Record)
    assert evaluation.to_dict() == {key: value for key, value in saved.items() if key != "settings"}
    assert list(evaluation.to_dict()["folds"]) == list(held_out)


def test_an_evaluations_dict_is_strict_json() -> None:
    """A diverged prediction's NaN score, a NaN second and numpy values come out of to_dict() as strict JSON
    values (None, floats, lists), as evaluation.json holds them: never NaN."""
    rng = np.random.default_rng(8)
    subjects = np.stack([rdm_from_features(rng.normal(size=(10, 4))) for _ in range(4)])
    diverged = np.full((10, 10), np.nan)
    row = evaluate._row("siamese", "V4", "fold 1", diverged, subjects)
    assert np.isnan(row["r2"])
    fitted = {"weights": {"s1": np.float32(0.5)}, "residual": np.array([1.0, np.inf])}
    chosen = {"regression": {"fold 1": {"V4": fitted}}}
    evaluation = evaluate.Evaluation([row], {}, chosen=chosen, seconds={"siamese": float("nan"), "layers": 1.5})
    values = evaluation.to_dict()
    assert json.loads(json.dumps(values, allow_nan=False)) == values
    assert values["rows"][0]["r2"] is None and values["seconds"] == {"siamese": None, "layers": 1.5}
    assert values["regression"] == {"fold 1": {"V4": {"weights": {"s1": 0.5}, "residual": [1.0, None]}}}
    assert list(values) == ["rows", "paired", "layers", "regression", "seconds"]
    assert evaluation.to_frame()["method"].tolist() == ["siamese"]


def test_no_plots_writes_no_figure(own_data: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture):
    """evaluate --no-plots: no PNG anywhere in the run (its report drew methods.png and scores.png), and the report
    names none; the tables are all there."""
    out = tmp_path / "ev"
    code = cli.main(["evaluate", *own_data, "--methods", "layers,regression", "--image-size", "48", "--folds", "2",
                     "--no-plots", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert sorted(out.rglob("*.png")) == []
    assert all((out / name).is_file() for name in ("evaluation.csv", "evaluation.md", "report.md", "report.html"))
    assert ".png" not in (out / "report.md").read_text() and "<img" not in (out / "report.html").read_text()
