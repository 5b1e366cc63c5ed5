"""Tables as data frames (siamrdm.io.tables.to_frame): without pandas, every result's `.to_frame()` is one
ImportError line saying what to install; with it, tests/rdm/test_records.py."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from siamrdm.pipelines import evaluate
from siamrdm.rdm.noise_ceiling import NO_CEILING, noise_ceilings
from siamrdm.rdm.records import score_record
from siamrdm.rdm.submission import score_submission


def test_every_frame_without_pandas_is_one_line(make_rdms, monkeypatch) -> None:
    subjects = make_rdms(10, subjects=4, seed=1)
    record = score_record(np.array([0.2, 0.4]), NO_CEILING)
    row = {"method": "siamese", "target": "IT", "direction": "fold 1", "detail": "", **record.to_dict()}
    evaluation = evaluate.Evaluation([row], {})
    result = score_submission({"IT_RDMs": make_rdms(10, seed=2)}, {"IT_RDMs": subjects}, permutations=0)
    monkeypatch.setitem(sys.modules, "pandas", None)  # pandas absent
    for frame in (evaluation.to_frame, evaluation.paired_frame, record.to_frame,
                  noise_ceilings(subjects).to_frame, result.to_frame):
        with pytest.raises(ImportError, match=r"^to_frame\(\) needs pandas \(pip install pandas\)$"):
            frame()
