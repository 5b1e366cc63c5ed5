"""One score record (issue 20) that says whether it beats chance (issue 23): the fields, the one builder, the
chance level of the model's own RDM, and every table that shows them (score, evaluate, challenge, report, plot)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import mark_run, run_cli
from PIL import Image

from siamrdm.io import jsonfiles, tables
from siamrdm.io.datasets import load_algonauts_set
from siamrdm.io.rdmfiles import save_rdms
from siamrdm.io.rsafiles import to_rsatoolbox
from siamrdm.pipelines import challenge, evaluate, plots
from siamrdm.pipelines.methods import baseline_names
from siamrdm.pipelines.report import write_report
from siamrdm.rdm import reliability, square_rdm, upper_tri
from siamrdm.rdm.compare import compare_rdms, spearman_rhos
from siamrdm.rdm.core import group_average
from siamrdm.rdm.inference import (
    BOOTSTRAP_SAMPLES,
    BOOTSTRAP_SEED,
    DEFAULT_PERMUTATIONS,
    PERMUTE_UP_TO_IMAGES,
    default_permutations,
    mean_summary,
    paired_test,
)
from siamrdm.rdm.noise_ceiling import (
    NO_CEILING,
    NoiseCeiling,
    ceilings_for,
    noise_ceiling,
    noise_ceiling_condensed,
    noise_ceilings,
)
from siamrdm.rdm.paired import paired_rows
from siamrdm.rdm.records import ScoreRecord, score_record, score_row, score_with_ceiling
from siamrdm.rdm.submission import score_submission, submission_frame
from siamrdm.rdm.transform import COMPARISON_METHODS, DOT_METHODS, Transform, dot_vectors
from siamrdm.train import subset
from siamrdm.train.largeset import HeldOutTarget


def per_image_rdm(n: int, seed: int) -> np.ndarray:
    """d(i, j) = a_i + a_j with a ~ N(0, 1): strong per-image structure that knows nothing of the images."""
    effects = np.random.default_rng(seed).standard_normal(n)
    rdm = effects[:, None] + effects[None, :]
    np.fill_diagonal(rdm, 0)
    return rdm


def strict_json(row: dict) -> dict:
    return json.loads(json.dumps(jsonfiles.json_safe(row), allow_nan=False))


# --------------------------------------------------------------------------- one record, one column list


def test_the_record_is_the_one_column_list_of_every_table() -> None:
    assert tuple(f.name for f in dataclasses.fields(ScoreRecord)) == tables.SCORE_FIELDS
    assert challenge.VALIDATION_COLUMNS is tables.SCORE_COLUMNS and evaluate.COLUMNS is tables.SCORE_COLUMNS
    assert tables.SCORE_COLUMNS == ["method", "target", "direction", *tables.SCORE_FIELDS, "epochs", "detail"]


def test_the_builder_reads_chance_from_the_null() -> None:
    """p_perm = (1 + #{null >= observed}) / (1 + n); the chance level in r2 and in % of the same ceiling."""
    rho = np.array([0.3, 0.2, 0.4])
    r2 = float(np.mean(rho**2))
    null = np.array([0.0, 0.01, r2, r2 + 0.01, 0.02, 0.03, 0.05, 0.001, 0.002, 0.004])
    ceilings = NoiseCeiling(0.2, 0.1, 0.25, source="computed")
    record = score_record(rho, ceilings, null)
    assert record.r2 == pytest.approx(r2) and record.pct_nc == pytest.approx(100 * r2 / 0.2)
    assert record.p_perm == pytest.approx((1 + 2) / (1 + 10)) and record.beats_chance is False
    assert record.permutations == 10
    assert record.chance_r2_mean == pytest.approx(null.mean())
    assert record.chance_r2_95 == pytest.approx(np.quantile(null, 0.95))
    assert record.chance_pct_mean == pytest.approx(100 * null.mean() / 0.2)
    assert record.chance_pct_95 == pytest.approx(100 * np.quantile(null, 0.95) / 0.2)
    assert record.rho_mean == pytest.approx(0.3) and record.rho_se == pytest.approx(np.std(rho, ddof=1) / np.sqrt(3))
    assert record.rho_lower_ceiling == 0.25 and record.nc_lower_pct == pytest.approx(50)
    assert score_record(rho, ceilings, np.zeros(99)).beats_chance is True  # p_perm = 1 / 100

    # No ceiling: chance in r2 only; no null: no chance fields; one subject: no t-tests. None, never NaN.
    bare = score_record(np.array([0.5]), NO_CEILING, null)
    assert bare.chance_pct_95 is None and bare.chance_r2_95 == pytest.approx(np.quantile(null, 0.95))
    assert bare.p is None and bare.p_signed is None and bare.rho_se is None and bare.pct_nc is None
    off = score_record(rho, ceilings).to_dict()
    assert all(off[k] is None for k in ("chance_pct_mean", "chance_pct_95", "p_perm", "beats_chance"))
    assert off["permutations"] == 0
    assert strict_json(bare.to_dict()) == bare.to_dict() and strict_json(off) == off


def test_a_diverged_prediction_never_beats_chance() -> None:
    record = score_record(np.array([np.nan, 0.2]), NO_CEILING, np.zeros(50))
    assert record.p_perm is None and record.beats_chance is None


# --------------------------------------------------------------------------- chance on the real data


def test_per_image_structure_scores_above_zero_but_not_above_chance(fmri118) -> None:
    """The 118 set's IT: a random RDM with strong per-image structure takes several % of the ceiling and an
    official p below 0.05, yet stays within this RDM's own chance band (image labels permuted)."""
    target = fmri118["IT_RDMs"]
    for seed in range(4):
        row = score_with_ceiling(per_image_rdm(118, seed), target, key="IT_RDMs", permutations=None)
        assert row.permutations == DEFAULT_PERMUTATIONS  # on by default at 118 images
        assert row.pct_nc > 2 and row.p < 0.05  # what the official score and p say
        assert row.chance_pct_mean > 4  # what such a structure scores by chance
        assert row.pct_nc <= row.chance_pct_95
        assert row.p_perm >= 0.05 and row.beats_chance is False


def test_a_real_model_beats_chance(fmri92, fmri118) -> None:
    """The mean RDM of half the subjects, scored on the other half: above its chance band (92 IT by far)."""
    it = fmri92["IT_RDMs"]
    row = score_with_ceiling(group_average(it[:7]), it[7:], key="IT_RDMs", permutations=None)
    assert row.beats_chance is True and row.p_perm == pytest.approx(1 / 1001)
    assert row.pct_nc > 10 * row.chance_pct_95
    assert row.rho_mean - 2 * row.rho_se > 0
    # The lower ceiling in rho units is what reliability reports as lower_ceiling_rho: the same unit as rho_mean.
    full = score_with_ceiling(group_average(it), it, key="IT_RDMs")
    assert full.rho_lower_ceiling == pytest.approx(reliability.target_reliability(it)["lower_ceiling_rho"])
    assert full.noise_ceiling_lower == pytest.approx(noise_ceilings(it).lower)


def test_the_report_ranks_what_beats_chance_first(tmp_path: Path, fmri118) -> None:
    """118 IT against the same 8 subjects: the per-image RDM has the higher percent of the ceiling, the other
    subjects' mean RDM the only score above chance; the report's first table puts the latter first."""
    mark_run(tmp_path, "evaluate")
    it = fmri118["IT_RDMs"]
    rows = [{"method": method, "target": "IT", "direction": "118", "detail": "",
             **score_with_ceiling(model, it[7:], key="IT_RDMs", permutations=None).to_dict()}
            for method, model in (("per-image", per_image_rdm(118, 1)), ("subjects", group_average(it[:7])))]
    per_image, subjects = rows
    assert per_image["pct_nc"] > subjects["pct_nc"]  # the raw percent would rank the per-image RDM first
    assert per_image["beats_chance"] is False and subjects["beats_chance"] is True
    assert tables.chance_ranking(rows) == ["subjects", "per-image"]

    challenge.write_table(rows, tmp_path, "validation")
    with open(tmp_path / "validation.csv", newline="") as f:
        saved = list(csv.DictReader(f))
    assert list(saved[0]) == tables.SCORE_COLUMNS
    assert [tables.flag(r["beats_chance"]) for r in saved] == [False, True]
    md = (tmp_path / "validation.md").read_text()
    for title in ("chance % (95th)", "p_perm", "beats chance", "mean rho +- se", "lower ceiling rho"):
        assert title in md
    assert f"{per_image['chance_pct_mean']:.1f} ({per_image['chance_pct_95']:.1f})" in md
    assert f"{subjects['rho_mean']:.3f} +- {subjects['rho_se']:.3f}" in md

    report = write_report(tmp_path)[0].read_text()
    scores = report[report.index("## Scores (validation.csv)"):]
    first_table = scores[scores.index("| rank |"):]
    assert first_table.index("| 1 | subjects | 1 of 1 |") < first_table.index("| 2 | per-image | 0 of 1 |")
    assert scores.index("| rank |") < scores.index("Percent of the noise ceiling")
    assert "chance % (95th)" in scores[scores.index("All scores"):]


def test_the_bar_chart_draws_the_chance_band(tmp_path: Path) -> None:
    rows = [{"method": m, "target": "IT", "direction": "", "pct_nc": pct, "nc_lower_pct": 40.0}
            for m, pct in (("a", 30.0), ("b", 60.0))]
    with_chance = [{**r, "chance_pct_mean": 20.0, "chance_pct_95": 35.0} for r in rows]
    plain = np.asarray(Image.open(plots.plot_scores(rows, tmp_path / "plain.png")).convert("L"), dtype=int)
    banded = np.asarray(Image.open(plots.plot_scores(with_chance, tmp_path / "band.png")).convert("L"), dtype=int)
    assert plain.shape == banded.shape
    assert (banded < plain - 40).sum() > 200  # the dark chance band over the bars (and its legend entry)


# --------------------------------------------------------------------------- where the record is built


def test_permutations_are_on_by_default_only_where_cheap(make_rdms) -> None:
    assert default_permutations(118) == DEFAULT_PERMUTATIONS == 1000
    assert default_permutations(PERMUTE_UP_TO_IMAGES + 1) == 0
    assert default_permutations(92, "tau-a") == 0  # Kendall has no dot product to permute
    large = {"EVC_RDMs": make_rdms(PERMUTE_UP_TO_IMAGES + 1, subjects=2, seed=3)}
    model = {"EVC_RDMs": make_rdms(PERMUTE_UP_TO_IMAGES + 1, seed=4)}
    row = score_submission(model, large).targets["EVC_RDMs"]
    assert row.permutations == 0 and row.p_perm is None and row.chance_pct_95 is None
    row = score_submission(model, large, permutations=20).targets["EVC_RDMs"]  # asked for: computed
    assert row.permutations == 20 and row.chance_pct_95 is not None
    small = {"IT_RDMs": make_rdms(12, subjects=3, seed=5)}
    off = score_submission({"IT_RDMs": make_rdms(12, seed=6)}, small, permutations=0).targets["IT_RDMs"]
    assert off.permutations == 0 and off.beats_chance is None
    with pytest.raises(ValueError, match="permutations: must be 0"):
        score_submission({"IT_RDMs": make_rdms(12, seed=6)}, small, permutations=-3)


def test_evaluate_rows_carry_the_chance_fields(fmri92) -> None:
    it = fmri92["IT_RDMs"][:, :30, :30]
    row = evaluate._row("layers", "IT", "92->118", per_image_rdm(30, 0), it, "stage=x", "IT")
    assert set(row) == {"method", "target", "direction", "detail", *tables.SCORE_FIELDS}
    assert row["permutations"] == DEFAULT_PERMUTATIONS and row["beats_chance"] is not None
    assert row["nc_lower_pct"] == pytest.approx(100 * noise_ceilings(it).lower / noise_ceilings(it).upper)
    table = evaluate.markdown_table([row])
    assert "chance % (95th)" in table and f"{row['p_perm']:.2g}" in table


def test_the_challenge_reports_the_chosen_epoch_with_its_chance(data_root: Path) -> None:
    """Curves are scored without permutations; the reported epoch gets the chance fields of its own predicted
    RDM, its other fields unchanged, and no prediction is left in the curve (validation_curves.json)."""
    test = subset(load_algonauts_set(data_root, "92", ("IT",)), np.arange(25), "t")
    predictions = [upper_tri(per_image_rdm(25, 9)), upper_tri(group_average(test.targets["IT"]))]
    curve = [{"epoch": epoch, "loss": 1.0, "predicted": predicted,
              **score_row(compare_rdms(square_rdm(predicted, 25), test.targets["IT"]), "IT",
                                  test.targets["IT"])} for epoch, predicted in enumerate(predictions)]
    assert curve[1]["p_perm"] is None and curve[1]["permutations"] == 0
    row = challenge.chosen_row(curve, 1, test, "IT")
    assert all("predicted" not in r for r in curve)
    expected = score_with_ceiling(square_rdm(predictions[1], 25), test.targets["IT"], permutations=None).to_dict()
    assert row["epoch"] == 1 and row["loss"] == 1.0
    for key in tables.SCORE_FIELDS:
        assert row[key] == (pytest.approx(expected[key]) if isinstance(expected[key], float) else expected[key]), key
    assert row["beats_chance"] is True
    json.dumps(jsonfiles.json_safe(curve), allow_nan=False)


def test_held_out_pairs_give_the_same_record(make_rdms) -> None:
    """The mini-batch validation's target (largeset.HeldOutTarget) builds the same record, its ceilings from the
    one ceiling code (also on a sample of pairs, which is no whole upper triangle)."""
    subjects = make_rdms(12, subjects=4, seed=7)
    model = make_rdms(12, seed=8)
    held = HeldOutTarget.from_values(upper_tri(subjects))
    got = held.score(upper_tri(model))
    want = score_with_ceiling(model, subjects).to_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key.startswith("pair_"):  # the pair structure is measured on final records, not on training curves
            assert got[key] is None, key
            continue
        assert got[key] == (pytest.approx(value, rel=1e-9) if isinstance(value, float | list) else value), key
    assert want["pair_rho_mean"] is not None and len(want["pair_rhos"]) == 4
    sample = HeldOutTarget.from_values(upper_tri(subjects)[:, :40])
    assert sample.ceilings.source == "computed" and 0 < sample.ceilings.lower < sample.ceilings.upper
    assert HeldOutTarget.from_values(upper_tri(subjects)[:1]).score(upper_tri(model))["pct_nc"] is None


def test_one_table_of_comparison_methods(make_rdms) -> None:
    """dot_vectors is `Transform` row by row, for the dot-product methods only (Kendall's taus used to come out
    as rho-a vectors)."""
    assert DOT_METHODS == ("spearman", "rho-a", "corr", "cosine")
    assert COMPARISON_METHODS == (*DOT_METHODS, "tau-a", "kendall")
    vectors = upper_tri(make_rdms(9, subjects=3, seed=9))
    for method in DOT_METHODS:
        transformed = dot_vectors(vectors, method)
        for row, out in zip(vectors, transformed, strict=True):
            np.testing.assert_array_equal(out, Transform(method, vectors.shape[1])(row))
        model = make_rdms(9, seed=10)
        np.testing.assert_allclose(transformed @ dot_vectors(upper_tri(model), method),
                                   compare_rdms(model, np.stack([square_rdm(v, 9) for v in vectors]), method),
                                   rtol=1e-12, atol=1e-15)
    for method in ("tau-a", "kendall"):
        with pytest.raises(ValueError, match="not a dot product"):
            dot_vectors(vectors, method)


# --------------------------------------------------------------------------- siamrdm score


def test_score_command_shows_chance(capsys, tmp_path: Path, fmri118) -> None:
    submission = save_rdms(tmp_path / "sub.npz", {"EVC_RDMs": group_average(fmri118["EVC_RDMs"]),
                                                  "IT_RDMs": per_image_rdm(118, 1)})
    target = save_rdms(tmp_path / "target.npz", fmri118)
    code, out, err = run_cli(capsys, "score", str(submission), "--target", str(target), "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["IT_RDMs"]["beats_chance"] is False and result["EVC_RDMs"]["beats_chance"] is True
    assert result["IT_RDMs"]["permutations"] == 1000 and result["IT_RDMs"]["rho_lower_ceiling"] > 0
    code, out, err = run_cli(capsys, "score", str(submission), "--target", str(target))
    lines = out.splitlines()
    header = lines[0].split()
    assert {"chance%", "chance95", "rho_mean+-se", "lower_rho", "p_perm"} <= set(header)
    it = dict(zip(header[:7] + header[8:], lines[2].split(), strict=True))  # "% NC" is two words in the header
    row = result["IT_RDMs"]
    assert it["chance%"] == f"{row['chance_pct_mean']:.2f}" and it["chance95"] == f"{row['chance_pct_95']:.2f}"
    assert it["rho_mean+-se"] == f"{row['rho_mean']:.3f}+-{row['rho_se']:.3f}"
    assert any(line.startswith("note: chance%") for line in lines)
    code, out, _ = run_cli(capsys, "score", str(submission), "--target", str(target), "--permutations", "0",
                           "--json")
    assert code == 0 and json.loads(out)["IT_RDMs"]["p_perm"] is None


def test_an_rdm_that_runs_against_the_subjects_does_not_beat_chance(fmri92) -> None:
    """The squared score is blind to sign: the reversed group mean passes the permutation test of r^2, yet it
    predicts the subjects the wrong way round, so it does not beat chance."""

    subjects = fmri92["IT_RDMs"]
    reverse = subjects.mean(axis=0).max() - subjects.mean(axis=0)
    np.fill_diagonal(reverse, 0)
    row = score_row(spearman_rhos(reverse, subjects), "IT_RDMs", subjects, model_rdm=reverse,
                            permutations=200)
    assert row["p_perm"] < 0.05 and row["rho_mean"] < 0
    assert row["beats_chance"] is False


# --------------------------------------------------------------------------- intervals, paired tests, frames
# (issue 21: what rsatoolbox users expect beside a mean over subjects, and tables a notebook can use)


def test_the_record_carries_a_bootstrap_interval_and_the_subjects_rhos() -> None:
    """The percentile interval of the mean over 1000 seeded resamples of the subjects: the same resamples for
    rho_mean and r2, deterministic, containing the mean, narrower with more subjects."""
    rng = np.random.default_rng(5)
    few, many = rng.normal(0.3, 0.1, 6), rng.normal(0.3, 0.1, 60)
    record = score_record(few, NO_CEILING)
    idx = np.random.default_rng(BOOTSTRAP_SEED).integers(0, 6, (BOOTSTRAP_SAMPLES, 6))
    assert (record.rho_ci_low, record.rho_ci_high) == pytest.approx(np.quantile(few[idx].mean(1), [0.025, 0.975]))
    assert (record.r2_ci_low, record.r2_ci_high) == pytest.approx(np.quantile((few[idx] ** 2).mean(1),
                                                                              [0.025, 0.975]))
    assert record.rho_ci_low < record.rho_mean < record.rho_ci_high and record.r2_ci_low < record.r2 < record.r2_ci_high
    assert record.rhos == pytest.approx(list(few))
    assert score_record(few, NO_CEILING) == record  # seeded: the same interval every run
    wide = record.rho_ci_high - record.rho_ci_low
    more = score_record(many, NO_CEILING)
    assert more.rho_ci_high - more.rho_ci_low < wide / 2  # ~ 1 / sqrt(subjects): 10 times the subjects
    # About +- 1.96 standard errors, as an interval over subjects should be.
    assert (more.rho_ci_high - more.rho_ci_low) / (2 * 1.96 * more.rho_se) == pytest.approx(1, abs=0.15)
    one = score_record(np.array([0.4]), NO_CEILING)
    assert one.rho_ci_low is None and one.r2_ci_high is None and one.rhos == [0.4]
    assert mean_summary([2.0, 4.0, 6.0])["se"] == pytest.approx(np.std([2, 4, 6], ddof=1) / np.sqrt(3))


def test_the_paired_test_is_scipys_paired_t_and_wilcoxon() -> None:
    from scipy import stats

    a = np.array([0.31, 0.25, 0.40, 0.18, 0.29, 0.35, 0.22, 0.27])
    b = np.array([0.20, 0.27, 0.30, 0.15, 0.30, 0.21, 0.18, 0.19])
    test = paired_test(a, b)
    assert test.p_t == pytest.approx(stats.ttest_rel(a, b).pvalue) and test.t == pytest.approx(
        stats.ttest_rel(a, b).statistic)
    assert test.p_wilcoxon == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert test.mean_diff == pytest.approx(np.mean(a - b)) and test.n == 8
    assert test.diff_se == pytest.approx(np.std(a - b, ddof=1) / np.sqrt(8))
    assert test.diff_ci_low < test.mean_diff < test.diff_ci_high
    # Known values: 5 positive differences give Wilcoxon's smallest exact two-sided p, 2 / 2^5; the issue's
    # hand computation (t = 1.63 over 5 folds) is p = 0.18.
    ranks = paired_test([1.0, 2, 3, 4, 5], [0.0, 0, 0, 0, 0])
    assert ranks.p_wilcoxon == pytest.approx(0.0625) and ranks.t == pytest.approx(3 / (np.std([1, 2, 3, 4, 5],
                                                                                              ddof=1) / np.sqrt(5)))
    diffs = np.array([1.0, -0.5, 2.0, 0.4, 1.5])
    folds = paired_test(diffs, np.zeros(5))
    assert folds.t == pytest.approx(diffs.mean() / (diffs.std(ddof=1) / np.sqrt(5)))
    assert folds.p_t == pytest.approx(2 * stats.t.sf(folds.t, 4))
    same = paired_test(a, a)
    assert same.p_t is None and same.p_wilcoxon is None and same.mean_diff == 0  # no difference: no test, no NaN
    with pytest.raises(ValueError, match="differ in number"):
        paired_test(a, b[:-1])


def _scored(method: str, direction: str, rho, target: str = "IT") -> dict:
    return {"method": method, "target": target, "direction": direction, "detail": "",
            **score_record(np.asarray(rho), NoiseCeiling(0.2, 0.1, 0.3, 0.45, source="computed")).to_dict()}


def test_paired_rows_over_subjects_and_over_folds(tmp_path: Path) -> None:
    """Across sets: per direction over the subjects; image folds: over the folds (their rho_mean) and over the
    subjects (each one's rho averaged over the folds). The same from the rows' CSV text (the report's input)."""
    mark_run(tmp_path, "evaluate")
    rng = np.random.default_rng(3)
    base = {m: rng.normal(0.2, 0.05, (5, 10)) for m in ("layers", "regression")}
    siamese = base["layers"] + rng.normal(0.03, 0.05, (5, 10))
    rows = [_scored(m, f"fold {k + 1}", values[k]) for m, values in
            (("siamese", siamese), ("layers", base["layers"]), ("regression", base["regression"])) for k in range(5)]
    paired = paired_rows(rows, baseline_names())
    assert [(r["method"], r["baseline"], r["over"]) for r in paired] == [
        ("siamese", "layers", "folds"), ("siamese", "layers", "subjects"),
        ("siamese", "regression", "folds"), ("siamese", "regression", "subjects")]
    folds, subjects = paired[0], paired[1]
    expected = paired_test(siamese.mean(axis=1), base["layers"].mean(axis=1))
    assert folds["n"] == 5 and folds["p_t"] == pytest.approx(expected.p_t)
    assert folds["p_wilcoxon"] == pytest.approx(expected.p_wilcoxon)
    expected = paired_test(siamese.mean(axis=0), base["layers"].mean(axis=0))
    assert subjects["n"] == 10 and subjects["p_t"] == pytest.approx(expected.p_t)

    challenge.write_table(rows, tmp_path, "validation")
    with open(tmp_path / "validation.csv", newline="") as f:
        saved = list(csv.DictReader(f))
    assert tables.number_list(saved[0]["rhos"]) == pytest.approx(list(siamese[0]))
    again = paired_rows(saved, baseline_names())
    assert [r["p_t"] for r in again] == pytest.approx([r["p_t"] for r in paired])
    md = (tmp_path / "validation.md").read_text()
    header, body = tables.paired_table(paired)
    assert "p (paired t)" in header and "p (Wilcoxon)" in header
    assert tables.markdown(header, body) in md and f"{paired[0]['p_t']:.2g}" in md
    report = write_report(tmp_path)[0].read_text()
    assert tables.markdown(header, body) in report  # the report pairs the CSV's rows the same way

    cross = [_scored("siamese", "92->118", siamese[0]), _scored("layers", "92->118", base["layers"][0])]
    (row,) = paired_rows(cross, baseline_names())
    assert row["direction"] == "92->118" and row["over"] == "subjects" and row["n"] == 10
    assert row["p_t"] == pytest.approx(paired_test(siamese[0], base["layers"][0]).p_t)


def test_fold_table_shows_the_standard_error_and_interval_over_folds() -> None:
    rho = np.random.default_rng(4).normal(0.3, 0.1, (5, 10))
    rows = [_scored("layers", f"fold {k + 1}", rho[k]) for k in range(5)]
    pct = [r["pct_nc"] for r in rows]
    stats = mean_summary(pct)
    table = evaluate.fold_table(rows)
    assert "| mean +- se | 95% CI (folds) |" in table
    # brackets escaped, as in every Markdown table (tables.markdown_text): a value's [text](url) is no link
    interval = f"\\[{stats['ci_low']:.1f}, {stats['ci_high']:.1f}\\]"
    assert f"| {stats['mean']:.1f} +- {stats['se']:.1f} | {interval} |" in table
    assert stats["ci_low"] < stats["mean"] < stats["ci_high"]


def test_tables_as_data_frames(make_rdms, monkeypatch) -> None:
    pandas = pytest.importorskip("pandas")
    rows = [_scored(m, "fold 1", np.array([0.2, 0.3, 0.25])) for m in ("siamese", "layers")]
    evaluation = evaluate.Evaluation(rows, {})
    frame = evaluation.to_frame()
    assert isinstance(frame, pandas.DataFrame) and list(frame.columns) == tables.SCORE_COLUMNS
    assert frame["rho_mean"].tolist() == pytest.approx([0.25, 0.25]) and frame["method"].tolist() == [
        "siamese", "layers"]
    assert list(evaluation.paired_frame().columns) == tables.PAIRED_COLUMNS
    record = score_record(np.array([0.2, 0.4]), NO_CEILING)
    assert list(record.to_frame().columns) == list(tables.SCORE_FIELDS)
    assert record.to_frame()["rho_ci_low"][0] == record.rho_ci_low
    subjects = make_rdms(10, subjects=4, seed=1)
    ceiling = noise_ceilings(subjects)
    assert ceiling.to_frame().loc[0, "rho_upper"] == ceiling.rho_upper
    result = score_submission({"IT_RDMs": make_rdms(10, seed=2)}, {"IT_RDMs": subjects}, permutations=0)
    scores = result.to_frame()
    assert scores["key"].tolist() == ["IT_RDMs"] and scores.loc[0, "r2"] == result.targets["IT_RDMs"].r2
    assert list(scores.columns) == ["key", "method", *tables.SCORE_FIELDS] and scores.loc[0, "method"] == "spearman"
    with pytest.warns(DeprecationWarning, match=r"use score_submission\(\.\.\.\)\.to_frame\(\)"):
        assert submission_frame(result).equals(scores)
    with pytest.warns(DeprecationWarning):
        assert submission_frame(result.to_dict()).equals(scores)
    monkeypatch.setitem(__import__("sys").modules, "pandas", None)  # pandas absent: one line saying so
    with pytest.raises(ImportError, match=r"^to_frame\(\) needs pandas \(pip install pandas\)$"):
        evaluation.to_frame()


def test_every_public_result_is_a_record(make_rdms) -> None:
    """One API style: the public scoring calls take (model, target, then options) and return records whose
    `.to_dict()` is plain JSON and whose `.to_frame()` holds the same values, a row per key for a submission."""
    pytest.importorskip("pandas")
    import siamrdm

    subjects, model = make_rdms(10, subjects=4, seed=1), make_rdms(10, seed=2)
    submission = siamrdm.score_submission({"IT": model}, {"IT": subjects}, permutations=0)
    results = [siamrdm.score_rdm(model, subjects), siamrdm.score_with_ceiling(model, subjects, key="IT"),
               siamrdm.noise_ceilings(subjects), submission,
               siamrdm.paired_test(siamrdm.compare_rdms(model, subjects), siamrdm.compare_rdms(subjects[0], subjects))]
    assert [type(r).__name__ for r in results] == ["Score", "ScoreRecord", "NoiseCeiling", "SubmissionScore",
                                                   "PairedTest"]
    for result in results:
        values = result.to_dict()
        assert strict_json(values) == values, type(result).__name__
        frame = result.to_frame()
        if isinstance(result, siamrdm.SubmissionScore):
            assert frame.to_dict("records") == [{"key": "IT", **values["IT"]}]
        else:
            assert list(frame.columns) == list(values) and frame.iloc[0].to_dict() == values
    assert submission.targets["IT"] == siamrdm.score_with_ceiling(model, subjects)  # the same record
    with pytest.raises(TypeError, match=r"key is a keyword: score_with_ceiling\(model_rdm, target_rdms, key="):
        siamrdm.score_with_ceiling(model, "IT", subjects)  # the old order, (model, key, target)


def test_noise_ceiling_in_rho_units(fmri92) -> None:
    """rho (lower, upper) beside r2: the means over subjects of rho with the mean of the others and of all,
    whose squares' means are the r2 ceilings; the deprecated `noise_ceiling` and `noise_ceiling_condensed` give the
    same r2 values, and say what replaces them."""
    from scipy import stats

    it = fmri92["IT_RDMs"]
    ceiling = noise_ceilings(it)
    with pytest.warns(DeprecationWarning, match=r"^noise_ceiling\(\) is deprecated: use noise_ceilings\(\)"):
        assert (ceiling.upper, ceiling.lower) == noise_ceiling(it)
    with pytest.warns(DeprecationWarning, match=r"use noise_ceilings\(\.\.\., condensed=True\)"):
        assert (ceiling.upper, ceiling.lower) == noise_ceiling_condensed(upper_tri(it))
    mean = group_average(it)
    upper = [stats.spearmanr(upper_tri(s), upper_tri(mean)).statistic for s in it]
    lower = [stats.spearmanr(upper_tri(s), upper_tri(group_average(np.delete(it, k, 0)))).statistic
             for k, s in enumerate(it)]
    assert ceiling.rho == pytest.approx((np.mean(lower), np.mean(upper)))
    assert ceiling.upper == pytest.approx(np.mean(np.square(upper)))
    assert 0 < ceiling.rho_lower < ceiling.rho_upper < 1
    assert ceilings_for("IT", it).rho_upper == pytest.approx(ceiling.rho_upper)


def test_the_bar_chart_draws_error_bars(tmp_path: Path) -> None:
    rows = [{"method": m, "target": "IT", "direction": "", "pct_nc": pct, "nc_lower_pct": 40.0, "noise_ceiling": 0.2}
            for m, pct in (("a", 30.0), ("b", 60.0))]
    with_bars = [{**r, "r2_ci_low": 0.2 * (r["pct_nc"] - 15) / 100, "r2_ci_high": 0.2 * (r["pct_nc"] + 15) / 100}
                 for r in rows]
    plain = np.asarray(Image.open(plots.plot_scores(rows, tmp_path / "plain.png")).convert("L"), dtype=int)
    bars = np.asarray(Image.open(plots.plot_scores(with_bars, tmp_path / "bars.png")).convert("L"), dtype=int)
    assert plain.shape == bars.shape
    assert (bars < plain - 100).sum() > 100  # the black error bars (and the legend's entry)


# --------------------------------------------------------------------------- against rsatoolbox's inference


def test_the_statistics_match_rsatoolbox(fmri92) -> None:
    """rsatoolbox 0.3.2's eval_fixed on the same subjects: the per-subject rho (rdm.compare, spearman), the mean,
    the SE (its ddof=0 variance corrected by n / (n - 1): the sample SE), the paired tests (test_pairwise: its
    t-test, the paired t-test, and the Wilcoxon 'ranksum'), the noise ceiling in rho (for
    'corr' on standardised subjects, where its pooled RDM is our mean RDM up to a constant), and a bootstrap
    interval over subjects like its eval_bootstrap_rdm's (its own random numbers: close, not equal)."""
    rsatoolbox = pytest.importorskip("rsatoolbox", reason="rsatoolbox is not installed (pip install siamrdm[rsa])")
    from scipy import stats

    it = fmri92["IT_RDMs"][:, :40, :40]  # 40 images: rsatoolbox's 1000 bootstrap evaluations take a few seconds
    subjects, models = it[7:], {"group": group_average(it[:7]), "per-image": per_image_rdm(40, 2)}
    records = {name: score_record(spearman_rhos(m, subjects), NO_CEILING)
               for name, m in models.items()}
    data = to_rsatoolbox({"IT": subjects})
    fixed = [rsatoolbox.model.ModelFixed(name, to_rsatoolbox(m)) for name, m in models.items()]
    result = rsatoolbox.inference.eval_fixed(fixed, data, method="spearman")
    n = len(subjects)
    for k, name in enumerate(models):
        theirs = rsatoolbox.rdm.compare(to_rsatoolbox(models[name]), data, method="spearman")[0]
        np.testing.assert_allclose(records[name].rhos, theirs, rtol=1e-10)
        assert result.get_means()[k] == pytest.approx(records[name].rho_mean, rel=1e-10)
        assert result.get_sem()[k] == pytest.approx(records[name].rho_se, rel=1e-8)
    test = paired_test(records["group"].rhos, records["per-image"].rhos)
    assert result.test_pairwise("ranksum")[0, 1] == pytest.approx(test.p_wilcoxon, rel=1e-10)
    assert result.test_pairwise("t-test")[0, 1] == pytest.approx(test.p_t, rel=1e-6)
    assert test.p_t == pytest.approx(2 * stats.t.sf(abs(test.t), n - 1))

    rng = np.random.default_rng(0)
    z = np.stack([square_rdm((v - v.mean()) / v.std(), 40) for v in upper_tri(it + rng.random(it.shape) * 1e-9)])
    ours = noise_ceilings(z, "corr")
    theirs = rsatoolbox.inference.boot_noise_ceiling(to_rsatoolbox(z), method="corr")
    assert ours.rho == pytest.approx(theirs, rel=1e-8)

    np.random.seed(0)  # rsatoolbox's bootstrap draws from numpy's global generator
    boot = rsatoolbox.inference.eval_bootstrap_rdm(fixed[:1], data, method="spearman", N=1000,
                                                   boot_noise_ceil=False)
    low, high = (float(v[0]) for v in boot.get_ci(0.95, test_type="bootstrap"))
    ours = records["group"]
    width = ours.rho_ci_high - ours.rho_ci_low
    assert abs(low - ours.rho_ci_low) < 0.2 * width and abs(high - ours.rho_ci_high) < 0.2 * width
