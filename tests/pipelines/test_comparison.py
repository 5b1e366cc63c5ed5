"""The report's leading figure: every method against the best one per target (paired.method_comparison, Holm's
correction, plots.plot_method_comparison), placed above the first table, and seen so in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamrdm.io import files, tables
from siamrdm.pipelines.report import write_report
from siamrdm.rdm import rdm_from_features
from siamrdm.rdm.inference import holm, paired_test
from siamrdm.rdm.paired import method_comparison
from siamrdm.rdm.records import score_with_ceiling

N_IMAGES = 16


def test_holm_adjusts_for_the_number_of_comparisons():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 x 0.8, capped at 1; monotone
    assert holm([]) == []


def _rows(directions: tuple[str, ...]) -> list[dict]:
    """Three methods scored on the same subjects: 'good' near the subjects' structure, 'fair' half of it,
    'none' unrelated to it; records from score_with_ceiling, with their chance fields."""
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(N_IMAGES, 6))
    subjects = np.stack([rdm_from_features(truth + 0.8 * rng.normal(size=truth.shape)) for _ in range(8)])
    models = {"good": rdm_from_features(truth), "fair": rdm_from_features(truth + 1.5 * rng.normal(size=truth.shape)),
              "none": rdm_from_features(rng.normal(size=truth.shape))}
    rows = []
    for method, model in models.items():
        for direction in directions:
            record = score_with_ceiling(model, subjects, permutations=200).to_dict()
            rows.append({"method": method, "target": "EVC", "direction": direction, **record, "detail": ""})
    return rows


def test_every_method_is_compared_with_the_best_one():
    bars = method_comparison(_rows(("A->B",)))
    assert [b["method"] for b in bars] == ["good", "fair", "none"]
    best = bars[0]
    assert best["best"] and best["p_vs_best"] is None and best["differs"] is None
    raw = [paired_test(r["rhos"], _rows(("A->B",))[0]["rhos"]).p_t for r in _rows(("A->B",))[1:]]
    assert [b["p_vs_best"] for b in bars[1:]] == pytest.approx(raw)
    assert [b["p_holm"] for b in bars[1:]] == pytest.approx(holm(raw))
    assert bars[2]["differs"] is True  # unrelated to the subjects: clearly below the best
    for b in bars:
        assert b["rho_ci_low"] <= b["rho_mean"] <= b["rho_ci_high"]
        assert b["rho_lower_ceiling"] > 0 and b["chance_rho_95"] > 0


def test_image_folds_are_compared_over_all_folds():
    """For image folds one panel per target: each subject's rho averaged over the folds, as paired_rows does."""
    rows = _rows(("fold 1", "fold 2"))
    bars = method_comparison(rows)
    assert {b["direction"] for b in bars} == {"all folds"} and len(bars) == 3
    good = [r for r in rows if r["method"] == "good"]
    assert bars[0]["rho_mean"] == pytest.approx(np.mean([np.mean(r["rhos"]) for r in good]))


def _report(tmp_path: Path) -> Path:
    """An evaluate-like run folder with a score table of three methods, reported."""
    run = tmp_path / "run"
    with files.run_folder(run, "evaluate"):
        tables.write_csv(_rows(("A->B", "B->A")), run / "evaluation.csv", tables.SCORE_COLUMNS)
    write_report(run, title="comparison")
    return run


def test_the_report_opens_with_the_comparison_figure(tmp_path: Path):
    run = _report(tmp_path)
    page = (run / "report.html").read_text()
    assert page.index("<h2>") == page.index("<h2>Methods compared (evaluation.csv)</h2>")
    assert page.index('<img src="data:image/png;base64,') < page.index("<table>")
    md = (run / "report.md").read_text()
    assert md.index("![methods.png](methods.png)") < md.index("| method |")
    with Image.open(run / "methods.png") as image:
        assert image.format == "PNG" and image.size[0] >= 700
    write_report(run, title="comparison")  # again: its own figure is replaced, not refused
    assert page.count("methods.png") == (run / "report.html").read_text().count("methods.png")


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install -y chromium); the HTML order is "
                    "checked in test_the_report_opens_with_the_comparison_figure")
def test_chromium_shows_the_figure_above_the_tables(tmp_path: Path):
    """Headless Chromium renders report.html: the first screen (1200 x 900) shows the figure's bars (its method
    colours, which no table has), and the figure's position on the page is above the first table's."""
    run = _report(tmp_path)
    shot = tmp_path / "top.png"
    ran = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--screenshot={shot}", "--window-size=1200,900", (run / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), ran.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    blue = np.array([0x1F, 0x77, 0xB4])  # matplotlib's C0: the first method's bars
    assert (np.abs(pixels - blue).sum(axis=2) < 30).sum() > 200
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (run / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 0 < dom.index("<img") < dom.index("<table>")
