"""`write_report` and `siamrdm report`: a generic run folder becomes report.md and a self-contained report.html."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, fast_config, mark_run
from PIL import Image

from siamrdm import cli
from siamrdm.errors import DataError
from siamrdm.io.tables import MAX_SUMMARY_COLUMNS
from siamrdm.pipelines import plots
from siamrdm.pipelines.report import write_report


@pytest.fixture
def challenge_dir(tmp_path: Path) -> Path:
    """A folder laid out like `siamrdm challenge --out`: settings, validation table, per-target logs, lr_find."""
    run = mark_run(tmp_path / "challenge")
    (run / "settings.json").write_text(json.dumps({"config": {"lr": 0.001}, "seeds": [0], "wall_s": 12.5}))
    rows = [{"method": "siamese", "target": t, "direction": d, "r2": 0.02, "pct_nc": 12.5, "p": 1e-3,
             "noise_ceiling": 0.16} for t in ("EVC", "IT") for d in ("92->118", "118->92")]
    with open(run / "validation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (run / "validation.md").write_text("| method | target |\n|---|---|\n| siamese | EVC |\n")
    for target in ("EVC", "IT"):
        log = run / target / "seed0" / "log.csv"
        log.parent.mkdir(parents=True)
        with open(log, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", "phase", "loss", "lr", "val_pct_nc", "val_rho", "seconds"])
            writer.writeheader()  # EVC: percent of the ceiling peaks at epoch 5, the mean rho (chosen on) at epoch 3
            writer.writerows({"epoch": e, "phase": "frozen", "loss": 1 / e, "lr": 1e-3,
                              "val_pct_nc": "" if target == "IT" else 5 + e,
                              "val_rho": "" if target == "IT" else 0.1 - abs(e - 3) / 100, "seconds": 0.2}
                             for e in range(1, 6))
    lrs = np.logspace(-5, 0, 20)
    (run / "lr_find.json").write_text(json.dumps({"lr": lrs.tolist(), "loss": (1 / (1 + lrs)).tolist(),
                                                  "smoothed_loss": (1 / (1 + lrs)).tolist(), "suggested_lr": 3e-3}))
    rng = np.random.default_rng(0)
    plots.plot_mds(np.abs(rng.normal(size=(4, 4))) * (1 - np.eye(4)), [np.zeros((8, 8, 3), np.uint8)] * 4,
                   run / "mds_EVC.png")
    (run / "EVC" / "seed0" / "last.pt").write_bytes(b"not read")
    return run


def test_report_has_a_section_per_thing_found(challenge_dir: Path):
    md_path, html_path = write_report(challenge_dir)
    assert (md_path, html_path) == (challenge_dir / "report.md", challenge_dir / "report.html")
    md = md_path.read_text()
    for heading in ("## Settings (settings.json)", "## Scores (validation.csv)", "## Training",
                    "### LR range test (lr_find.json)", "### Training curves (EVC/seed0/log.csv)",
                    "### Training curves (IT/seed0/log.csv)", "## Figures"):
        assert heading in md, heading
    assert "Suggested learning rate: 0.003" in md
    # no model.pt (a run stopped before it wrote one): the epoch of the highest mean rho, not said to be kept
    assert "highest mean validation rho at epoch 3 (8.0% of the noise ceiling)" in md and "kept epoch" not in md
    assert "| siamese | 12.5 | 12.5 | 12.5 | 12.5 | 12.5 |" in md  # the percent-of-ceiling summary
    # Plots drawn from the data found, next to it, and linked with relative paths.
    for rel in ("validation_scores.png", "lr_find.png", "EVC/seed0/training_curves.png",
                "IT/seed0/training_curves.png", "mds_EVC.png"):
        assert (challenge_dir / rel).is_file()
        assert f"]({rel})" in md
    assert md.count("![") == 5


def test_the_report_names_the_epoch_the_fit_kept(tmp_path: Path, data_root: Path):
    """With a prior, a fit keeps a trained epoch only where every target shows a validated gain, so the epoch of
    the highest mean validation rho in its log need not be the one kept (here the fit keeps the prior alone, epoch
    0, though training raised the mean rho): the report names the kept epoch, from model.pt, and the other as the
    highest mean rho, not kept. A damaged model file is one line naming it."""
    from siamrdm.io.datasets import load_algonauts_set
    from siamrdm.train import subset
    from siamrdm.train.predict import fit_predictor

    dataset = load_algonauts_set(data_root, "92", ("EVC", "IT"))
    fit_set, val_set = subset(dataset, np.arange(12), "fit"), subset(dataset, np.arange(50, 56), "val")
    run = tmp_path / "run"
    config = fast_config(targets=("EVC", "IT"), prior="layer", frozen_epochs=4, lr=3e-3)
    kept = fit_predictor(config, [fit_set], [val_set], out_dir=run, progress=False).metrics["seed0"]["best_epoch"]
    with open(run / "seed0" / "log.csv", newline="") as f:
        validated = [row for row in csv.DictReader(f) if row["val_rho"]]
    highest = int(max(validated, key=lambda row: float(row["val_rho"]))["epoch"])
    assert (kept, highest) == (0, 4)  # the case at issue: the log's highest mean rho is not the kept epoch
    md = write_report(run)[0].read_text()
    assert "; kept epoch 0, the untrained start (" in md and "best validation epoch" not in md
    assert "; highest mean validation rho at epoch 4 (" in md and ", not kept: not a validated gain" in md
    (run / "model.pt").write_bytes(b"damaged")
    with pytest.raises(DataError, match="model.pt: unreadable checkpoint"):
        write_report(run)


@pytest.mark.parametrize(("prior", "start"), [("layer", "the prior alone"), ("none", "the untrained head")])
def test_the_training_chart_names_a_kept_epoch_0_by_the_fits_prior(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   prior: str, start: str):
    """Epoch 0 is the prior alone only for a fit with a prior; without one it is the untrained head's start (the
    chart called it the prior alone whatever the fit). Which, the model file's config says."""
    import torch

    from siamrdm.train.predict import MODEL_FORMAT

    run = mark_run(tmp_path / "run")
    log = run / "seed0" / "log.csv"
    log.parent.mkdir()
    log.write_text("epoch,phase,loss,val_pct_nc,val_rho\n0,frozen,,20.0,0.3\n1,frozen,0.5,10.0,0.2\n")
    torch.save({"format": MODEL_FORMAT, "config": {"prior": prior}, "metrics": {"seed0": {"best_epoch": 0}}},
               run / "model.pt")
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or save(fig, path))  # to read it
    write_report(run)
    [chart] = [fig for fig in figures if fig.axes[0].get_title() == "training"]
    assert f"epoch 0 used: kept by the fit ({start})" in chart.axes[1].get_legend_handles_labels()[1]


def test_a_report_without_figures_draws_and_shows_none(challenge_dir: Path):
    """figures=False (a run's --no-plots): the same tables and text, but no figure drawn (it drew methods.png,
    scores.png, lr_find.png and the training curves) and none named, not even one already in the folder."""
    before = sorted(challenge_dir.rglob("*.png"))
    md_path, html_path = write_report(challenge_dir, figures=False)
    assert sorted(challenge_dir.rglob("*.png")) == before == [challenge_dir / "mds_EVC.png"]
    md, page = md_path.read_text(), html_path.read_text()
    assert "![" not in md and ".png" not in md and "<img" not in page and ".png" not in page
    assert "## Figures" not in md and "Methods compared" not in md and "Training curves" not in md
    for text in ("## Scores (validation.csv)", "Suggested learning rate: 0.003", "### Training (EVC/seed0/log.csv)",
                 "highest mean validation rho at epoch 3", "## Settings (settings.json)"):
        assert text in md, text


def test_html_embeds_every_image(challenge_dir: Path):
    _, html_path = write_report(challenge_dir)
    page = html_path.read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 5
    assert all(s.startswith("data:image/png;base64,iVBORw0KGgo") for s in sources)  # base64 of the PNG signature
    assert "<table>" in page and "12.5" in page
    # Self-contained: nothing is fetched from elsewhere (no external links, scripts, styles or fonts).
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # Results first, settings last.
    assert page.index("Scores") < page.index("Settings")


def test_report_is_repeatable(challenge_dir: Path):
    first = write_report(challenge_dir)[0].read_text()
    assert write_report(challenge_dir)[0].read_text() == first


def test_report_errors(tmp_path: Path):
    with pytest.raises(DataError, match="no such run folder"):
        write_report(tmp_path / "missing")
    with pytest.raises(DataError, match="nothing to report"):
        write_report(mark_run(tmp_path / "empty"))


def test_report_never_replaces_a_users_files(challenge_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    """A folder siamrdm did not mark is refused before anything is drawn; in a run folder, a report.md that
    siamrdm did not write is refused rather than replaced."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "settings.json").write_text('{"lr": 0.001}')
    (mine / "report.md").write_text("my notes\n")
    code, _, err = run_report(capsys, mine)
    assert code == 2
    assert_one_line_error(err, str(mine), "not a siamrdm run folder")
    assert sorted(p.name for p in mine.iterdir()) == ["report.md", "settings.json"]
    assert (mine / "report.md").read_text() == "my notes\n"
    (challenge_dir / "report.md").write_text("my notes\n")
    code, _, err = run_report(capsys, challenge_dir)
    assert code == 2 and (challenge_dir / "report.md").read_text() == "my notes\n"
    assert_one_line_error(err, "report.md", "not written by siamrdm")
    assert not (challenge_dir / "validation_scores.png").exists()  # refused before anything was drawn


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("settings.json", "{bad json", "malformed settings"),
    ("settings.json", '{"x": NaN}', "NaN is not a number JSON allows"),
    ("settings.json", None, "is a folder"),
    ("EVC/seed0/log.csv", "epoch,phase,loss\n1,frozen,nan\n", "line 2: loss 'nan' is not a finite number"),
    ("EVC/seed0/log.csv", "epoch,phase,loss\nabc,frozen,0.1\n", "line 2: epoch 'abc' is not a whole number"),
    ("EVC/seed0/log.csv", "epoch,phase,loss\n1,frozen,0.1\n2,frozen\n", "training log: line 3 has 2 fields where "
                                                                        "the header has 3"),
    # a short row was shown as target 'None', a long row's extra fields left out unseen
    ("validation.csv", "method,target,pct_nc\nsiamese\n", "malformed score table: line 2 has 1 field "
                                                          "where the header has 3"),
    ("validation.csv", "method,target,pct_nc\nsiamese,EVC,12.5,3\n", "line 2 has 4 fields where the header has 3"),
])
def test_a_damaged_run_file_is_named_not_reported(challenge_dir: Path, capsys: pytest.CaptureFixture, name: str,
                                                  content: str | None, expected: str):
    path = challenge_dir / name
    path.unlink()
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    code, _, err = run_report(capsys, challenge_dir)
    assert code == 2
    assert_one_line_error(err, name.split("/")[-1], expected)
    assert not (challenge_dir / "report.md").exists() and not (challenge_dir / "report.html").exists()


DEEP = "[" * 50_000 + "]" * 50_000  # valid JSON that overflows a recursive parser


@pytest.mark.parametrize(("name", "named"), [
    ("settings.json", "settings.json"),
    ("lr_find.json", "lr_find.json"),
    (".siamrdm-run.json", "challenge"),  # a damaged marker marks nothing: the folder is refused as not a run
])
def test_a_deeply_nested_json_file_is_one_line(challenge_dir: Path, capsys: pytest.CaptureFixture, name: str,
                                               named: str):
    (challenge_dir / name).write_text(DEEP)
    code, out, err = run_report(capsys, challenge_dir)
    assert code == 2 and out == ""
    assert_one_line_error(err, named)
    assert not (challenge_dir / "report.md").exists() and not (challenge_dir / "report.html").exists()


def run_report(capsys: pytest.CaptureFixture, folder: Path) -> tuple[int, str, str]:
    code = cli.main(["report", str(folder)])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_command(challenge_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    assert cli.main(["report", str(challenge_dir), "--title", "My run"]) == 0
    assert "report.md" in capsys.readouterr().out
    assert (challenge_dir / "report.md").read_text().startswith("# My run")
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("siamrdm: error: ") and "missing" in err[0]


def test_report_command_shows_its_folder_escaped(challenge_dir: Path, capsys: pytest.CaptureFixture):
    """The folder's name is the user's: an escape sequence or a line break in it is shown escaped, one line."""
    run = challenge_dir.rename(challenge_dir.parent / "run\x1b[2J\nx")
    code, out, err = run_report(capsys, run)
    assert (code, err) == (0, "")
    assert out.count("\n") == 1 and "\x1b" not in out and "run\\x1b[2J\\nx/report.md" in out


def test_report_flags_a_fit_of_the_prior_alone(tmp_path: Path):
    """A fit of 0 epochs keeps the prior alone (issue 21: it was not flagged): the score table's epochs column,
    the final fits' table (from settings.json) and the log's line say so."""
    run = mark_run(tmp_path / "challenge")
    (run / "IT" / "seed0").mkdir(parents=True)
    fits = {"EVC": {"epochs": 24, "seed0": {"best_epoch": 24, "prior_alone": False}},
            "IT": {"epochs": 0, "seed0": {"best_epoch": 0, "prior_alone": True}}}
    (run / "settings.json").write_text(json.dumps({"seeds": [0], "fits": fits}))
    rows = [{"method": "siamese", "target": t, "direction": "118->92", "epochs": e, "r2": 0.02, "pct_nc": 12.5}
            for t, e in (("EVC", 21), ("IT", 0))]
    with open(run / "validation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (run / "IT" / "seed0" / "log.csv").write_text("epoch,phase,loss\n0,start,\n")
    md = write_report(run)[0].read_text()
    assert "| siamese | IT | 118->92 | 0 (prior alone) |" in md and "| siamese | EVC | 118->92 | 21 |" in md
    assert "## Final fits" in md
    assert "| IT | 0 | seed0 | the prior alone (no trained epoch) |" in md and "| EVC | 24 | seed0 |  |" in md
    assert "0 epochs trained: the prior alone." in md


def test_numbers_a_float_cannot_hold_are_shown_as_missing(tmp_path: Path, capsys: pytest.CaptureFixture):
    """settings.json may hold 1e999 (valid JSON, infinite as a float) and a score table's epochs 'inf': the report
    shows them as missing (null, '-'), never as Infinity, so its settings block stays strict JSON."""
    run = mark_run(tmp_path / "run")
    (run / "settings.json").write_text('{"config": {"lr": 1e999, "epochs": 3}, "wall_s": -1e999}')
    (run / "validation.csv").write_text("method,target,direction,epochs,r2,pct_nc\nsiamese,EVC,92->118,inf,0.02,12.5\n")
    code, _, err = run_report(capsys, run)
    assert code == 0, err
    md, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    for text in (md, page):
        assert "Infinity" not in text and "inf |" not in text and ">inf<" not in text
    assert "| siamese | EVC | 92->118 | - |" in md

    def refuse(constant: str):
        raise ValueError(constant)

    block = md.split("```json\n")[1].split("\n```")[0]
    assert json.loads(block, parse_constant=refuse) == {"config": {"lr": None, "epochs": 3}, "wall_s": None}


def test_a_table_of_many_targets_is_reported_in_seconds(tmp_path: Path):
    """20,000 score rows of distinct targets (100 took a minute, 1,500 never ended): the chart draws the first
    MAX_CHART_TARGETS targets and the page says so in one line; every row is in the table of all scores, the
    summary shows the first MAX_SUMMARY_COLUMNS columns with the mean over all."""
    run = mark_run(tmp_path / "run")
    n = 20_000
    lines = ["method,target,direction,r2,pct_nc,rho_mean,p_perm,beats_chance"]
    lines += [f"{('siamese', 'layers')[k % 2]},T{k},92->118,0.02,{k % 90}.5,0.1,0.01,True" for k in range(n)]
    (run / "evaluation.csv").write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "siamrdm", "report", str(run)], capture_output=True, text=True,
                          timeout=120)
    seconds = time.perf_counter() - start
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert seconds < 60, seconds  # about 2 s; quadratic in the targets before
    assert Image.open(run / "scores.png").size == plots.pixel_size("scores")
    md = (run / "report.md").read_text()
    assert md.count(f"The chart shows the first {plots.MAX_CHART_TARGETS} of {n} targets") == 1
    assert md.count(f"compares the methods on the first {plots.MAX_CHART_TARGETS} of {n} targets") == 1
    assert f"(the first {MAX_SUMMARY_COLUMNS} of {n} targets and directions; the mean is over all" in md
    assert all(f"| T{k} |" in md for k in (0, 1, n // 2, n - 1))
    summary = next(line for line in md.splitlines() if line.startswith("| method | T0 92->118 |"))
    assert summary.count("|") == MAX_SUMMARY_COLUMNS + 3


def test_numbers_no_axis_can_show_are_left_out_of_the_figures(tmp_path: Path, capsys: pytest.CaptureFixture):
    """+-1e308 in a training log, an LR range test and a score table: finite, so the files are usable, but no
    axis spans them (matplotlib warned four lines, then raised LinAlgError). Each figure leaves them out and
    says so; the report is written with no warning."""
    run = mark_run(tmp_path / "run")
    (run / "log.csv").write_text("epoch,phase,loss,lr,val_pct_nc,val_rho,val/92/EVC\n"
                                 "1,frozen,1e308,0.001,-1e308,0.1,1e308\n2,frozen,-1e308,0.001,6,1e308,5\n"
                                 "3,unfrozen,0.5,1e308,7,0.3,6\n")
    (run / "lr_find.json").write_text(json.dumps({"lr": [1e-5, 1e-3, 1e308], "loss": [1e308, -1e308, 1.0],
                                                  "smoothed_loss": [1e308, 1.0, -1e308], "suggested_lr": 1e308}))
    (run / "evaluation.csv").write_text(
        "method,target,direction,r2,pct_nc,chance_pct_mean,chance_pct_95,r2_ci_low,r2_ci_high,noise_ceiling,"
        "nc_lower_pct\nm,EVC,a,0.1,1e308,-1e308,1e308,-1e308,1e308,1e-300,-1e308\nm,IT,a,0.1,-1e308,0,1,0,1,0.5,50\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_report(capsys, run)
    assert code == 0 and err == "", err
    assert [str(w.message) for w in caught] == []
    for name, kind in (("training_curves.png", "training"), ("lr_find.png", "lr_range"), ("scores.png", "scores")):
        assert Image.open(run / name).size == plots.pixel_size(kind)
    drawn = plots._Drawn()
    assert np.isnan(drawn.array([1e308, -1e308, 2 * plots.PLOT_LIMIT, None, ""])).all() and drawn.left_out == 3


HOSTILE = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<iframe src=javascript:alert(1)>",
           "a|b", "two\nlines", "[click](javascript:alert(1))")


def _table_pipes(md: str) -> list[set[int]]:
    """Per Markdown table, the counts of unescaped pipes of its lines: one count when no value split a cell."""
    counts, current = [], set()
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            current.add(len(re.findall(r"(?<!\\)\|", line)))
        elif current:
            counts.append(current)
            current = set()
    return counts


def test_markdown_escapes_every_value_from_a_file_or_a_name(tmp_path: Path, capsys: pytest.CaptureFixture):
    """report.md (a Markdown viewer renders HTML) holds no tag from a CSV cell, a folder or file name or the
    settings, no link from a value, and a '|' or a line break in a value neither splits a cell nor a row."""
    run = mark_run(tmp_path / HOSTILE[1])
    rows = [{"method": method, "target": target, "direction": "92->118", "r2": 0.02, "pct_nc": 12.5,
             "detail": HOSTILE[5], "ceiling_source": HOSTILE[2]} for method in HOSTILE[:3] for target in HOSTILE[3:5]]
    with open(run / "evaluation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (run / "settings.json").write_text(json.dumps({"note": HOSTILE[0], "fits": {
        HOSTILE[2]: {"epochs": 3, "seed0": {"prior_alone": False}}}}))
    log = run / HOSTILE[0].replace("/", "") / "log.csv"
    log.parent.mkdir()
    log.write_text("epoch,phase,loss\n1,frozen,0.5\n2,frozen,0.4\n")
    Image.new("RGB", (8, 8)).save(run / "<img src=x onerror=alert(2)>.png")
    code, _, err = run_report(capsys, run)
    assert code == 0, err
    md = (run / "report.md").read_text()
    assert "<" not in md and "[click](" not in md and "\\[click\\](javascript:alert(1))" in md
    assert "two lines" in md and "a\\|b" in md
    assert all(len(pipes) == 1 for pipes in _table_pipes(md)), _table_pipes(md)
    assert "](%3Cimg%20src%3Dx%20onerror%3Dalert%282%29%3E.png)" in md  # image paths percent-encoded
    block = md.split("```json\n")[1].split("\n```")[0]
    assert json.loads(block)["note"] == HOSTILE[0]  # the same JSON, '<' written as \u003c
    assert "<script>" not in (run / "report.html").read_text()


def test_every_markdown_table_writer_escapes_its_values(tmp_path: Path):
    """evaluate's fold table and score tables and challenge's validation.md share tables.markdown's escaping."""
    from siamrdm.pipelines import challenge, evaluate

    rows = [{"method": method, "target": HOSTILE[3], "direction": f"fold {k}", "r2": 0.02, "pct_nc": 12.5,
             "ceiling_source": HOSTILE[4], "noise_ceiling": 0.1, "detail": HOSTILE[5]}
            for method in HOSTILE[:3] for k in (1, 2)]
    challenge.write_table(rows, tmp_path, "validation")
    for md in (evaluate.fold_table(rows), evaluate.markdown_table(rows), evaluate.summary_table(rows),
               (tmp_path / "validation.md").read_text()):
        assert "<" not in md and "[click](" not in md and "\n" not in md.strip().replace("\n|", "|")
        assert all(len(pipes) == 1 for pipes in _table_pipes(md)), md
