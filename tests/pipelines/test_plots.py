"""Every plot writes a valid PNG of its fixed pixel size; classical MDS recovers a known configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamrdm.pipelines import plots
from siamrdm.rdm import rdm_from_features


def assert_png(path: Path, kind: str) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == plots.pixel_size(kind)


@pytest.fixture
def rdms():
    rng = np.random.default_rng(0)
    target = np.stack([rdm_from_features(rng.normal(size=(12, 5))) for _ in range(3)])
    return target, rdm_from_features(rng.normal(size=(12, 5)))


def test_rdm_comparison(tmp_path: Path, rdms):
    target, predicted = rdms
    path = plots.plot_rdm_comparison(target, predicted, tmp_path / "sub" / "rdm.png", title="EVC")
    assert path == tmp_path / "sub" / "rdm.png"
    assert_png(path, "rdm")


def test_rdm_comparison_rejects_different_sizes(tmp_path: Path, rdms):
    with pytest.raises(ValueError, match="differ in size"):
        plots.plot_rdm_comparison(rdms[1], rdms[1][:5, :5], tmp_path / "x.png")


def test_rank_rdm_is_scaled_ranks():
    rdm = rdm_from_features(np.random.default_rng(1).normal(size=(6, 4)))
    ranked = plots.rank_rdm(rdm)
    upper = ranked[np.triu_indices(6, 1)]
    np.testing.assert_allclose(np.sort(upper), np.linspace(0, 1, 15))
    np.testing.assert_array_equal(ranked, ranked.T)
    np.testing.assert_array_equal(np.diag(ranked), 0)


def test_mds_with_thumbnails(tmp_path: Path, rdms):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, size=(30 + k, 40, 3), dtype=np.uint8) for k in range(12)]
    assert_png(plots.plot_mds(rdms[1], images, tmp_path / "mds.png"), "mds")
    with pytest.raises(ValueError, match="11 images"):
        plots.plot_mds(rdms[1], images[:11], tmp_path / "bad.png")


def test_classical_mds_recovers_euclidean_distances():
    points = np.random.default_rng(3).normal(size=(10, 2))
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    coords = plots.classical_mds(distances)
    recovered = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.testing.assert_allclose(recovered, distances, atol=1e-9)


def test_lr_range(tmp_path: Path):
    lrs = np.logspace(-6, 0, 40)
    loss = 1 / (1 + 1e3 * lrs) + 5 * lrs
    result = {"lr": lrs.tolist(), "loss": loss.tolist(), "smoothed_loss": loss.tolist(), "suggested_lr": 1e-3}
    assert_png(plots.plot_lr_range(result, tmp_path / "lr.png"), "lr_range")


def test_training_curves_from_history_and_csv_strings(tmp_path: Path):
    history = [{"epoch": e, "phase": "frozen" if e <= 5 else "unfrozen", "loss": 1 / e, "lr": 1e-3,
                "val_pct_nc": 10 + e, "val/118/EVC": 8 + e, "seconds": 0.1} for e in range(1, 9)]
    assert_png(plots.plot_training_curves(history, tmp_path / "curves.png"), "training")
    as_strings = [{k: str(v) for k, v in row.items()} for row in history]  # as csv.DictReader gives them
    assert_png(plots.plot_training_curves(as_strings, tmp_path / "csv.png"), "training")
    no_val = [{"epoch": e, "loss": 1 / e} for e in range(1, 4)]
    assert_png(plots.plot_training_curves(no_val, tmp_path / "noval.png"), "training")


def test_scores_bar_chart(tmp_path: Path):
    rows = [{"method": m, "target": t, "direction": d, "pct_nc": v, "nc_lower_pct": 70.0}
            for m, v in (("siamese", 20.0), ("layers", -3.0)) for t in ("EVC", "IT") for d in ("92->118", "118->92")]
    assert_png(plots.plot_scores(rows, tmp_path / "scores.png"), "scores")
    without_band = [{k: v for k, v in r.items() if k != "nc_lower_pct"} for r in rows]
    assert_png(plots.plot_scores(without_band, tmp_path / "scores2.png"), "scores")
    with pytest.raises(ValueError, match="no scored rows"):
        plots.plot_scores([{"method": "m", "target": "t", "pct_nc": None}], tmp_path / "none.png")


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures the plots save, to read what they draw (the PNG is still written)."""
    figures = []
    save = plots._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_training_curves_mark_the_epochs_used_and_skip_an_empty_validation_panel(tmp_path: Path, drawn):
    """A challenge's curves mark the epochs each direction and the final fit used, not the curve's own best
    (issue 21: 'best epoch 32' while 23, 21 and 24 were used); a fit without validation has no empty panel."""
    history = [{"epoch": e, "loss": 1 / (e + 1), "val/92->118": e, "val/118->92": 2 * e, "val_pct_nc": 1.5 * e}
               for e in range(0, 33)]  # the curve's best: epoch 32
    plots.plot_training_curves(history, tmp_path / "curves.png", marked={"92->118": 23, "118->92": 21,
                                                                        "final fit": 23})
    labels = drawn[-1].axes[1].get_legend_handles_labels()[1]
    assert "epoch 23 used: 92->118, final fit" in labels and "epoch 21 used: 118->92" in labels
    assert not any("32" in label for label in labels)
    lines = {line.get_xdata()[0] for line in drawn[-1].axes[1].get_lines() if len(set(line.get_xdata())) == 1}
    assert lines == {23, 21}
    for prior, start in ((True, "the prior alone"), (False, "the untrained head"), (None, "before training")):
        plots.plot_training_curves(history, tmp_path / "alone.png", marked={"118->92": 0}, prior=prior)
        assert f"epoch 0 used: 118->92 ({start})" in drawn[-1].axes[1].get_legend_handles_labels()[1]

    plots.plot_training_curves([{"epoch": e, "loss": 1 / e} for e in range(1, 4)], tmp_path / "final.png")
    assert len(drawn[-1].axes) == 1 and drawn[-1].axes[0].get_title() == "training"
    assert_png(tmp_path / "final.png", "training")
    blank = [{"epoch": e, "loss": 1 / e, "val/92": ""} for e in range(1, 4)]  # a CSV's empty validation column
    plots.plot_training_curves(blank, tmp_path / "blank.png")
    assert len(drawn[-1].axes) == 1


def test_scores_ceiling_band_is_each_rows_own_lower_ceiling(tmp_path: Path, drawn):
    """IT's band once spanned 5% (one direction's lower ceiling) to 100% for both directions, though the other's
    is 73.6%: each bar's band starts at its own row's lower ceiling."""
    lower = {"92->118": 5.0, "118->92": 73.6}
    rows = [{"method": m, "target": "IT", "direction": d, "pct_nc": 10.0, "nc_lower_pct": lower[d]}
            for m in ("siamese", "layers") for d in lower]
    plots.plot_scores(rows, tmp_path / "scores.png")
    bands = [c.get_paths()[0].vertices for c in drawn[-1].axes[0].collections if len(c.get_paths())]
    bands = [v for v in bands if np.isclose(v[:, 1].max(), 100.0) and v[:, 1].min() < 100.0]  # not the line
    assert sorted(round(float(v[:, 1].min()), 1) for v in bands) == [5.0, 5.0, 73.6, 73.6]
