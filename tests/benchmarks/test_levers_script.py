"""benchmarks/levers.py's other-study column: which held-out images another study covers, and what the column
reads of a curve (the epoch the within-study column chose, beside the prior alone at epoch 0)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from siamrdm.io.datasets import BrainDataset
from siamrdm.rdm.splits import subset

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import levers  # noqa: E402  (a script of benchmarks/, found through the path above)


def test_the_other_study_scores_the_held_out_images_it_covers(data_root: Path, dataset92: BrainDataset,
                                                            dataset118: BrainDataset) -> None:
    others = levers.other_studies(str(data_root), {"92": dataset92, "118": dataset118})
    assert list(others) == ["IT"]  # Kriegeskorte et al. (2008) lies beside the data: human IT of the 92 images
    study = others["IT"]
    held = subset(dataset92, np.array([5, 1, 40]), "92 fold")
    [scored] = levers.as_other_study(held, study)
    assert scored.name == f"92 fold @ {study.label}" and scored.images.names == held.images.names
    rows = np.array([5, 1, 40])
    np.testing.assert_array_equal(scored.targets["IT"], study.rdms[..., rows[:, None], rows[None, :]])
    assert scored.targets["IT"].shape == (4, 2, 3, 3)  # its 4 subjects, 2 sessions each
    assert levers.as_other_study(subset(dataset118, np.arange(3), "118 fold"), study) == []  # not its images
    assert levers.as_other_study(held, None) == []


def test_the_other_study_column_reads_the_chosen_epoch_beside_the_prior() -> None:
    curve = [{"epoch": e, "rho_mean": 0.2 + 0.01 * e, "rho_se": 0.01 + 0.001 * e} for e in range(6)]
    entry = levers.other_entry(curve, 4)
    assert entry == {"epochs": 4, "rho": curve[4]["rho_mean"], "se": curve[4]["rho_se"],
                     "prior_rho": 0.2, "prior_se": 0.01}
    cell = levers.other_cell({"label": "x", "92 folds": entry, "118->92": levers.other_entry(curve, 0)})
    assert cell == "+0.240 (+0.200) / +0.200 (+0.200)"
    assert levers.other_cell(None) == "-"
