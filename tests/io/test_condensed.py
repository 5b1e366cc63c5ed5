"""Condensed RDM files (siamrdm.io.condensed): where each pair sits, bad files refused with one line, an HDF5
file's one dataset read whatever its name."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from siamrdm.errors import DataError
from siamrdm.io import condensed
from siamrdm.io.condensed import CondensedRDMs, condensed_index
from siamrdm.rdm import upper_tri


def test_pair_indices_follow_the_upper_triangle() -> None:
    n = 9
    rows, cols = np.triu_indices(n, 1)
    assert np.array_equal(condensed_index(rows, cols, n), np.arange(len(rows)))
    for k in (0, 7, 8, 20, len(rows) - 1):
        assert condensed_index(*condensed._pair_of(k, n), n) == k


@pytest.fixture
def rdm_stack(make_rdms) -> np.ndarray:
    return make_rdms(40, subjects=3, seed=2)


def test_bad_condensed_rdms_are_refused_with_one_line(tmp_path) -> None:
    np.save(tmp_path / "short.npy", np.zeros((2, 10), np.float32))
    with pytest.raises(DataError, match=r"short.npy: expected condensed RDMs of 6 images, \(subjects, 15\)"):
        CondensedRDMs(tmp_path / "short.npy", 6)
    values = np.random.default_rng(0).random((2, 15)).astype(np.float32)
    values[1, 7] = np.nan
    np.save(tmp_path / "nan.npy", values)
    with pytest.raises(DataError, match=r"nan.npy: subject 2 has a non-finite value \(pair 1, 4\)"):
        CondensedRDMs(tmp_path / "nan.npy", 6).split(np.arange(6), np.arange(0))
    values[1] = 0.5
    np.save(tmp_path / "flat.npy", values)
    with pytest.raises(DataError, match="flat.npy: subject 2's RDM is constant"):
        CondensedRDMs(tmp_path / "flat.npy", 6).split(np.arange(4), np.arange(4, 6))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="objects.npy: unreadable file"):  # never unpickled
        CondensedRDMs(tmp_path / "objects.npy", 3)
    (tmp_path / "rdms.txt").write_bytes(b"x")
    with pytest.raises(DataError, match="must be a .npy file, an HDF5"):
        CondensedRDMs(tmp_path / "rdms.txt", 3)
    (tmp_path / "rdms.mat").write_bytes(b"x")  # square RDMs in a .mat are read as the plain path reads them
    with pytest.raises(DataError, match="rdms.mat: unreadable .mat file"):
        CondensedRDMs(tmp_path / "rdms.mat", 3)
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"], f["b"] = np.zeros(3), np.zeros(3)
    with pytest.raises(DataError, match="two.h5: expected one dataset of condensed RDMs, .* found a, b"):
        CondensedRDMs(tmp_path / "two.h5", 3)
    with pytest.raises(DataError, match="two.h5: no dataset .IT. and not one dataset"):
        CondensedRDMs(tmp_path / "two.h5", 3, "IT")


def test_an_hdf5_file_of_rdms_with_one_dataset_is_read_whatever_its_name(tmp_path, rdm_stack) -> None:
    """--key names the target; the file's only dataset is read even when named otherwise (as the README says)."""
    with h5py.File(tmp_path / "rdms.h5", "w") as f:
        f["rdms"] = upper_tri(rdm_stack).astype(np.float32)
    assert CondensedRDMs(tmp_path / "rdms.h5", 40, "IT").where.endswith("rdms.h5:rdms")
    with h5py.File(tmp_path / "rdms.h5", "a") as f:
        f["other"] = np.zeros(780, np.float32)
    with pytest.raises(DataError, match="rdms.h5: no dataset 'IT' and not one dataset .* found other, rdms"):
        CondensedRDMs(tmp_path / "rdms.h5", 40, "IT")
