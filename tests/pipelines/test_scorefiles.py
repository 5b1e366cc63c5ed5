"""The library behind `siamrdm score`, `noise-ceiling`, `data-info` and fit's report, called directly: which keys
are compared, files scored as scoring scores arrays, condensed .npy RDMs read and refused, the score table, the
data root's reliability sweep, and what fit reports of its seeds and chosen epochs (the CLI tests run them as
commands)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from siamrdm.errors import DataError, UsageError
from siamrdm.io.rdmfiles import read_condensed_model, read_condensed_subjects, save_rdms
from siamrdm.pipelines.fitsummary import BEST_VAL_SCORE_IS, seed_records, selected_epochs
from siamrdm.pipelines.scorefiles import file_ceilings, paired_keys, score_files, score_table
from siamrdm.rdm import upper_tri
from siamrdm.rdm.noise_ceiling import noise_ceilings
from siamrdm.rdm.reliability import describe_root
from siamrdm.rdm.submission import score_submission


def test_paired_keys_pairs_shared_keys_or_the_named_pair() -> None:
    assert paired_keys("s.mat", "t.mat", ["EVC", "IT"], ["IT", "V4"]) == {"IT": ("IT", "IT")}
    assert paired_keys("s.npy", "t.npy", [""], [""]) == {"t": ("", "")}  # one unkeyed array each: the target's stem
    assert paired_keys("s.mat", "t.mat", ["A", "B"], ["X"], key="B") == {"X": ("B", "X")}
    assert paired_keys("s.npy", "t.mat", [""], ["X", "Y"], key="mine", target_key="Y") == {"Y": ("", "Y")}
    with pytest.raises(UsageError, match="no key in common between s.mat .* and t.mat"):
        paired_keys("s.mat", "t.mat", ["A"], ["B"])
    with pytest.raises(UsageError, match="--key C: s.mat has no key 'C'"):
        paired_keys("s.mat", "t.mat", ["A", "B"], ["X"], key="C")
    with pytest.raises(UsageError, match="--target-key: t.mat holds .*; name the one to score"):
        paired_keys("s.mat", "t.mat", ["A"], ["X", "Y"], key="A")


def test_score_files_scores_as_scoring_does(tmp_path: Path, make_rdms) -> None:
    subjects = {"EVC": make_rdms(10, subjects=4, seed=1), "IT": make_rdms(10, subjects=4, seed=2)}
    model = make_rdms(10, seed=3)
    target = save_rdms(tmp_path / "target.npz", subjects)
    submission = save_rdms(tmp_path / "sub.npz", {"EVC": model})
    result, notes = score_files(str(submission), str(target), permutations=0)
    assert notes == ()  # .npz files: nothing to say about how they were read
    assert result["missing"] == ["IT"] and result["score"] is None  # a key the submission lacks withholds the score
    assert result["EVC"] == score_submission({"EVC": model}, subjects, 0).to_dict()["EVC"]
    table = score_table(result, "corr")
    assert table.splitlines()[0].startswith("key") and "withheld: the submission lacks IT" in table
    assert "note: compared with 'corr'" in table
    ceilings, _ = file_ceilings(str(target))
    expected = noise_ceilings(subjects["IT"])
    assert ceilings["IT"] == {"upper": expected.upper, "lower": expected.lower, "rho_lower": expected.rho_lower,
                              "rho_upper": expected.rho_upper, "source": "computed"}


def test_condensed_rdms_are_read_memory_mapped_and_checked(tmp_path: Path, make_rdms) -> None:
    subjects, model = make_rdms(8, subjects=3, seed=4), make_rdms(8, seed=5)
    np.save(tmp_path / "subjects.npy", upper_tri(subjects))
    np.save(tmp_path / "square.npy", subjects)
    np.save(tmp_path / "model.npy", model)
    read = read_condensed_subjects(tmp_path / "subjects.npy")
    assert isinstance(read, np.memmap) and read.shape == (3, 28)
    assert read_condensed_subjects(tmp_path / "square.npy") is None  # square RDMs: read as any RDM file
    assert read_condensed_subjects(tmp_path / "absent.npy") is None
    np.testing.assert_array_equal(read_condensed_model(tmp_path / "model.npy", 28), upper_tri(model))
    np.save(tmp_path / "odd.npy", np.ones((3, 27)))
    with pytest.raises(DataError, match="neither square RDMs nor upper triangles"):
        read_condensed_subjects(tmp_path / "odd.npy")
    np.save(tmp_path / "flat.npy", np.full(28, 0.5))
    with pytest.raises(DataError, match="constant"):
        read_condensed_model(tmp_path / "flat.npy", 28)
    with pytest.raises(DataError, match="must be a .npy file too"):
        read_condensed_model(save_rdms(tmp_path / "model.npz", {"M": model}), 28)


def test_an_empty_or_non_regular_npy_is_one_line_naming_it(tmp_path: Path, make_rdms) -> None:
    """An empty .npy where score and noise-ceiling look for upper triangles was numpy's EOFError (exit 1), and a
    FIFO given as the model was 'no such file'."""
    (tmp_path / "empty.npy").touch()
    with pytest.raises(DataError, match=r"empty\.npy: unreadable \.npy file"):
        read_condensed_subjects(tmp_path / "empty.npy")
    with pytest.raises(DataError, match=r"empty\.npy: unreadable \.npy file"):
        read_condensed_model(tmp_path / "empty.npy", 28)
    os.mkfifo(tmp_path / "fifo.npy")
    with pytest.raises(DataError, match=r"fifo\.npy: not a regular file"):
        read_condensed_model(tmp_path / "fifo.npy", 28)


def test_upper_triangles_of_no_subjects_are_refused(tmp_path: Path, make_rdms) -> None:
    """(0, P) subjects were scored: numpy's warnings on stderr, exit 0 and a result of nulls."""
    np.save(tmp_path / "none.npy", np.zeros((0, 28)))
    np.save(tmp_path / "model.npy", upper_tri(make_rdms(8, seed=5)))
    with pytest.raises(DataError, match=r"none\.npy: upper triangles of no subjects \(shape \(0, 28\)\)"):
        score_files(str(tmp_path / "model.npy"), str(tmp_path / "none.npy"))


def test_a_ceiling_error_of_a_keyless_file_names_the_file_alone(tmp_path: Path, make_rdms) -> None:
    """One subject in a .npy: the message names 'one.npy', not 'one.npy:' with an empty key after it."""
    np.save(tmp_path / "one.npy", make_rdms(6, seed=1))
    with pytest.raises(DataError, match=r"one\.npy: a noise ceiling needs at least 2 subjects"):
        file_ceilings(str(tmp_path / "one.npy"))


def test_describe_root_measures_every_training_target(data_root: Path) -> None:
    info, unread = describe_root(data_root)
    assert unread == []
    assert set(info["reliability"]) == {f"{s}/{t}" for s in ("92", "118") for t in ("EVC", "IT", "MEG_early",
                                                                                      "MEG_late")}
    assert info["reliability"]["92/IT"]["subjects"] == 15


def test_fit_reports_its_seeds_and_chosen_epochs() -> None:
    records = seed_records({0: {"best_val_score": 0.5}, 1: {"epochs": 3}})
    assert records == {0: {"best_val_score": 0.5, "best_val_score_is": BEST_VAL_SCORE_IS}, 1: {"epochs": 3}}
    assert selected_epochs(0, 2, "layer") == {
        "epochs": 0, "prior_alone": True,
        "rule": "cross-set curves of the training sets, best validated epoch (as challenge's final fit)"}
    assert selected_epochs(5, 1, "none")["rule"].startswith("folds: new images of new people")
    assert selected_epochs(0, 1, "none")["prior_alone"] is False
