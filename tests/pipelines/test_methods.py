"""The method registry (pipelines.methods) and FR-RSA through it: evaluate across sets and over image folds, the
paired tests against the registered baselines, and the CLI's --methods."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import spaced_training_sets

from siamrdm import cli
from siamrdm.io.datasets import BrainDataset
from siamrdm.model import frrsa
from siamrdm.pipelines import evaluate, methods
from siamrdm.rdm.paired import paired_rows
from siamrdm.train import config_from_preset

TARGETS = ("EVC", "MEG_late")


@pytest.fixture(scope="module")
def small_sets(data_root: Path) -> list[BrainDataset]:
    """24 images of each training set (evenly spaced), with their RDMs."""
    return spaced_training_sets(data_root, 24, TARGETS)


def test_the_registry_lists_the_methods_and_its_baselines():
    assert methods.METHODS == evaluate.METHODS == ("siamese", "layers", "regression", "frrsa")
    assert methods.baseline_names() == ("layers", "regression", "frrsa")
    assert methods.uses(("frrsa",), "stage_features") and not methods.uses(("frrsa",), "stage_rdms")


def test_a_registered_method_runs_in_evaluate_and_is_paired_as_a_baseline(small_sets, monkeypatch):
    """One registration is all a method needs: evaluate scores it, and the paired tests test the other methods
    against it once it says it is a baseline."""
    monkeypatch.setattr(methods, "REGISTRY", dict(methods.REGISTRY))

    def mean_of_others(train, test, target, context):  # the stage RDMs' plain mean
        rdm = np.mean(list(context.stages[test.name].values()), axis=0)
        return methods.Prediction(rdm, "mean of the stages", {"stages": len(context.stages[test.name])})

    methods.register_method(methods.Method("stage-mean", True, mean_of_others, "test", uses_stage_rdms=True))
    config = config_from_preset("quick", image_size=32)
    result = evaluate.evaluate_sets(small_sets, ("layers", "stage-mean"), ("EVC",), config, progress=False)
    assert [(r["method"], r["direction"]) for r in result.rows] == [
        (m, d) for m in ("layers", "stage-mean") for d in ("92->118", "118->92")]
    assert result.chosen["stage-mean"]["92->118"]["EVC"]["stages"] > 1
    assert all(r["detail"] == "mean of the stages" for r in result.rows if r["method"] == "stage-mean")
    # layers is now tested against stage-mean? No: both are baselines; a non-baseline is tested against both.
    assert evaluate.Evaluation(result.rows, {}).paired() == []  # against the registry's baselines
    rows = result.rows + [{**r, "method": "mine"} for r in result.rows if r["method"] == "layers"]
    assert {(p["method"], p["baseline"]) for p in paired_rows(rows, methods.baseline_names())} == {
        ("mine", "layers"), ("mine", "stage-mean")}


def test_frrsa_across_sets(tmp_path: Path, small_sets: list[BrainDataset]):
    """FR-RSA fitted on one set's images and target (the group target and rescaling the network learns), scored
    on the other set's images; its detail names the stage set and penalty, evaluation.json what it chose."""
    config = config_from_preset("quick", image_size=32)
    evaluation, _ = evaluate.run_evaluation(None, tmp_path, ("frrsa", "layers"), ("EVC",), config,
                                            sets=small_sets, batch_size=8, progress=False, make_plots=False)
    rows = [r for r in evaluation.rows if r["method"] == "frrsa"]
    assert [(r["target"], r["direction"]) for r in rows] == [("EVC", d) for d in ("92->118", "118->92")]
    for row in rows:
        assert np.isfinite(row["r2"]) and np.isfinite(row["rho_mean"]) and row["permutations"] > 0
        assert row["detail"].startswith("stages=") and "penalty=" in row["detail"]
        assert row["p_perm"] is not None and row["rho_ci_low"] <= row["rho_mean"] <= row["rho_ci_high"]
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    chosen = saved["frrsa"]["92->118"]["EVC"]
    assert chosen["predictor"] == "differences" and chosen["penalty"] in frrsa.PENALTIES
    assert chosen["stages"] in {*chosen["inner_rho"]} and evaluation.rows[0]["detail"].startswith(
        f"stages={chosen['stages']}; penalty={chosen['penalty']:g}")
    with open(tmp_path / "evaluation.csv", newline="") as f:
        assert {r["method"] for r in csv.DictReader(f)} == {"frrsa", "layers"}
    # frrsa is a baseline: nothing is tested against layers here, and the same run gives the same rows
    again = evaluate.evaluate_sets(small_sets, ("frrsa",), ("EVC",), config, batch_size=8, progress=False)
    assert again.rows == rows


def test_frrsa_over_image_folds_against_the_siamese_network(small_sets: list[BrainDataset]):
    """Image folds: FR-RSA's weights fitted on the other folds' images; the Siamese network is paired with it."""
    dataset = small_sets[1]
    config = config_from_preset("quick", image_size=64, frozen_epochs=1, augment_views=1)
    result = evaluate.evaluate_folds(BrainDataset(dataset.name, dataset.images, {"EVC": dataset.targets["EVC"]}),
                                     2, ("siamese", "frrsa"), config, progress=False)
    assert [(r["method"], r["direction"]) for r in result.rows] == [
        (m, f"fold {k}") for m in ("siamese", "frrsa") for k in (1, 2)]
    assert all(np.isfinite(r["r2"]) for r in result.rows)
    paired = evaluate.Evaluation(result.rows, {}).paired()
    assert {(p["method"], p["baseline"], p["over"]) for p in paired} == {
        ("siamese", "frrsa", "folds"), ("siamese", "frrsa", "subjects")}


def test_cli_methods_come_from_the_registry(capsys):
    assert cli.main(["evaluate", "--methods", "frrsa,bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("siamrdm: error: --methods: unknown bogus")
    assert "siamese, layers, regression, frrsa" in err[0]
