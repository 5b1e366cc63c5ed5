"""The benchmarks' appended logs (levers.jsonl, train_stages.jsonl, and the nested epoch checks' logs of cells.py):
every line strict JSON (a NaN measured is null), and each `--summarize` table shows a null as '-'."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import cells  # noqa: E402  (scripts of benchmarks/, found through the path above)
import epoch_rules  # noqa: E402
import epoch_scaling  # noqa: E402
import levers  # noqa: E402
import train_stages  # noqa: E402

NAN = math.nan


def strict_lines(path: Path) -> list[dict]:
    """The log's records, read as strict JSON: a NaN, Infinity or -Infinity in a line fails the test."""
    def refuse(constant: str):
        raise AssertionError(f"{path}: {constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def appended(tmp_path: Path, *records: dict) -> Path:
    path = tmp_path / "log.jsonl"
    for record in records:
        cells.append_record(path, record)
    return path


def test_the_nested_checks_log_a_nan_as_null(capsys, tmp_path: Path, data_root: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """cells.run_cells appends each check's record as it finishes: a NaN in it is written as null."""
    def check(target, dataset, device, **settings) -> dict:
        return {"target": target, "set": dataset.name, "rho": NAN, "seconds": 0.5}

    monkeypatch.setattr(sys, "argv", ["epoch_check", "--data", str(data_root), "--sets", "92", "--targets", "EVC",
                                      "--out", str(tmp_path)])
    cells.run_cells("a check", "check", check, str, lambda record: f"rho {record['rho']}")
    assert strict_lines(tmp_path / "check.jsonl") == [{"target": "EVC", "set": "92", "rho": None, "seconds": 0.5}]
    assert capsys.readouterr().out == "EVC          92: rho nan (0 s)\n"


def test_the_lever_table_shows_a_null_as_a_dash(tmp_path: Path) -> None:
    folds = {"rho": 0.25, "se": 0.01, "epochs": 12}
    cross = {d: {"new": {"pct_nc": NAN, "rho": 0.1}, "same": {"pct_nc": 30.0}, "best_epoch": 9}
             for d in ("92->118", "118->92")}
    record = {"lever": "default", "target": "EVC", "folds_new": {**folds, "rho": NAN}, "folds_same": folds,
              "joint_folds": {**folds, "se": NAN}, "cross": cross, "cross_mean_pct": NAN,
              "other_study": {"label": "x", "118->92": {"rho": NAN, "prior_rho": 0.2}}}
    path = appended(tmp_path, record)
    assert strict_lines(path)[0]["folds_new"]["rho"] is None
    row = levers.summarize(str(path)).splitlines()[-1]
    assert row == ("| EVC | default | - ± 0.010 (12) | 0.250 ± 0.010 (12) | 0.250 ± - (12) | - (+0.100) | "
                   "- (+0.100) | - | 30.0 | 9 / 9 | - (+0.200) |")


def test_the_train_stages_table_shows_a_null_as_a_dash(tmp_path: Path) -> None:
    run = {"backbone": "alexnet", "image_size": 128, "setup_s": 1.5, "frozen_epoch_s": 0.25, "peak_rss_mb": 900,
           "load_start": 1.5, "load_end": 2.25, "loss": NAN}
    path = appended(tmp_path, {**run, "train_stages": "1", "unfrozen_epoch_s": NAN},
                    {**run, "train_stages": "all", "unfrozen_epoch_s": 2.0})
    assert [r["loss"] for r in strict_lines(path)] == [None, None]
    lines = train_stages.table(strict_lines(path)).splitlines()
    assert lines[2:] == ["| alexnet | 128 | 1 | - | - | 0.25 | 1.5 | 900 | 1.5 / 2.25 |",
                         "| alexnet | 128 | all | 2.00 | 1.00 | 0.25 | 1.5 | 900 | 1.5 / 2.25 |"]


def test_the_epoch_check_tables_show_a_null_as_a_dash(tmp_path: Path) -> None:
    """epoch_scaling's and epoch_rules's tables; the rules' means and verdict leave out a cell with a null."""
    def at(epoch: int, rho: float) -> dict:
        return {"epoch": epoch, "rho": rho, "se": 0.01}

    scaling = {"target": "EVC", "set": "92", "small_chosen": 4, "large_chosen": 6, "small_best": 5, "large_best": 7,
               "large_at_own": at(6, NAN), "large_at_small": at(4, 0.2), "large_at_scaled": at(8, 0.3)}
    row = epoch_scaling.summarize(str(appended(tmp_path, scaling))).splitlines()[-1]
    assert row == "| EVC | 92 | 4 -> 6 | 1.5 | 5 -> 7 | - (6) | 0.200 (4) | 0.300 (8) |"

    (tmp_path / "log.jsonl").unlink()
    measured = {rule: {"rho": 0.2, "se": 0.01, "epochs": [3, 4, 5]} for rule in epoch_rules.RULES}
    missing = {**measured, "best": {"rho": NAN, "se": 0.01, "epochs": [3, 4, 5]}}
    text = epoch_rules.summarize(str(appended(tmp_path, {"target": "EVC", "set": "92", **measured},
                                              {"target": "IT", "set": "92", **missing})))
    assert "| IT | 92 | 0.200 ± 0.010 (3, 4, 5) | 0.200 ± 0.010 (3, 4, 5) | - ± 0.010 (3, 4, 5) |" in text
    assert "mean over the cells (1 cell with a missing value left out): one_se 0.2000 rule4 0.2000 best 0.2000" in text
    assert text.endswith("verdict: no rule qualifies; rule4 stays")
