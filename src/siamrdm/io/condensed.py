"""Condensed RDM files: subject RDMs as condensed upper triangles (scipy's squareform order, as `rdm.upper_tri`),
one row per subject, read a block of rows of the RDM at a time (`CondensedRDMs`), so that no subject's N x N
matrix is built for a set of 10,000+ images.

A memory-mapped .npy of shape (S, P) or (P,) (`arrayfiles.read_npy`, never unpickled) or an HDF5 dataset of those
shapes, P = N(N-1)/2. Square RDMs, (S, N, N) or (N, N), in any file the plain path reads (.npy, .mat, .npz,
rsatoolbox RDMs, an HDF5 dataset), are taken too where they fit in memory: read whole, checked as every RDM file
is (`rdmfiles`), and condensed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError
from ..rdm.core import upper_tri
from .arrayfiles import read_npy
from .limits import check_hdf5_stored, check_read_size, check_real_dtype, check_regular_file, hdf5_get, hdf5_members
from .rdmfiles import read_rdms, validate_rdms
from .rsafiles import RSATOOLBOX_SUFFIXES, rdm_grouping

HDF5_SUFFIXES = (".h5", ".hdf5")
BLOCK_VALUES = 2**22  # values per subject read at a time: 16 MB of float32


# --------------------------------------------------------------------------- where a pair sits


def condensed_index(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """Where pair (i, j), i < j, of n images sits in the condensed upper triangle."""
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    return i * (2 * n - i - 1) // 2 + (j - i - 1)


def row_start(i: int, n: int) -> int:
    """Condensed index of pair (i, i + 1): where row i of the upper triangle starts."""
    return i * (2 * n - i - 1) // 2


def _pair_of(k: int, n: int) -> tuple[int, int]:
    """The pair (i, j) at condensed index k."""
    i = int(n - 2 - math.floor(math.sqrt(-8 * k + 4 * n * (n - 1) - 7) / 2 - 0.5))
    return i, int(k - row_start(i, n) + i + 1)


# --------------------------------------------------------------------------- the reader


def _readable_square(path: Path) -> bool:
    """Files the plain path reads (rdmfiles.load_rdms): .mat, .npz and rsatoolbox RDMs; a plain HDF5 file of
    datasets (h5py's axis order, not MATLAB's) is read here."""
    return path.suffix.lower() in (".mat", ".npz") or bool(rdm_grouping(path))


def _condensed_in_memory(rdms: np.ndarray, where: str) -> np.ndarray:
    """Square subject RDMs, (N, N) or (S, N, N), as the condensed rows the mini-batch path reads, (P,) or
    (S, P) in `rdm.upper_tri`'s order: for sets whose square RDMs fit in memory."""
    if rdms.ndim == 4:
        raise DataError(f"{where}: (subjects, K, N, N) RDMs (shape {rdms.shape}): the mini-batch path takes one RDM "
                        "per subject; average each subject's K RDMs first, or train without --batch-images")
    return upper_tri(rdms)


class CondensedRDMs:
    """Subject RDMs as condensed upper triangles, (S, P) or (P,) (one subject), from a memory-mapped .npy or an
    HDF5 dataset; read a block of rows of the RDM at a time. Square RDMs that fit in memory (any file the plain
    path reads) are condensed on opening; `notes` says how a file of them was read (rdmfiles.read_rdms)."""

    def __init__(self, path: str | os.PathLike, n_images: int, key: str | None = None):
        path = self.path = check_regular_file(Path(path))
        suffix = path.suffix.lower()
        self._file = None
        self.notes: tuple[str, ...] = ()
        try:
            if suffix == ".npy":
                array = read_npy(path, mmap=True)
                self.where = str(path)
                if array.ndim in (3, 4) or array.shape == (n_images, n_images):  # square RDMs
                    square, self.notes = read_rdms(path, n_images=n_images)
                    array = _condensed_in_memory(square, self.where)
            elif suffix in RSATOOLBOX_SUFFIXES + (".mat", ".npz") and _readable_square(path):
                # rsatoolbox files (condensed rows, but grouped by key and subject), .mat and .npz: read as the
                # plain path reads them, then condensed
                self.where = f"{path}:{key}" if key else str(path)
                square, self.notes = read_rdms(path, key, n_images=n_images)
                array = _condensed_in_memory(square, self.where)
            elif suffix in HDF5_SUFFIXES and h5py.is_hdf5(path):
                self._file = h5py.File(path, "r")
                names = [k for k, v in hdf5_members(self._file, path).items()
                         if isinstance(v, h5py.Dataset) and v.ndim in (1, 2, 3)]
                array = hdf5_get(self._file, key, path) if key else None
                if not isinstance(array, h5py.Dataset):  # the dataset named by the key, else the only one
                    if len(names) != 1:
                        wanted = f"no dataset '{key}' and not" if key else "expected"
                        raise DataError(f"{path}: {wanted} one dataset of condensed RDMs, (S, P) or (P,), found "
                                        f"{', '.join(names) or 'none'}")
                    key = names[0]
                    array = hdf5_get(self._file, key, path)
                self.where = f"{path}:{key}"
                check_hdf5_stored(array, path)
                if array.ndim == 3 or array.shape == (n_images, n_images):  # square RDMs, as h5py wrote them
                    check_read_size(path, {key: array.shape})
                    square = validate_rdms(array[()], self.where, n_images)
                    self._file.close()
                    self._file = None
                    array = _condensed_in_memory(square, self.where)
            else:
                raise DataError(f"{path}: target RDMs must be a .npy file, an HDF5 (.h5, .hdf5) dataset, an rsatoolbox "
                                "RDMs file, a .mat or a .npz")
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: unreadable file ({' '.join(str(exc).split())[:200]})") from None
        pairs = n_images * (n_images - 1) // 2
        if array.ndim not in (1, 2) or array.shape[-1] != pairs:
            raise DataError(f"{self.where}: expected condensed RDMs of {n_images} images, (subjects, {pairs}) or "
                            f"({pairs},), got {array.shape} {array.dtype}")
        check_real_dtype(array.dtype, self.where)  # integers and booleans are read as float64 a block at a time
        self.array, self.n = array, n_images
        self.subjects = 1 if array.ndim == 1 else array.shape[0]
        if self.subjects < 1:
            raise DataError(f"{self.where}: no subjects")

    def block(self, start: int, stop: int) -> np.ndarray:
        """Every subject's values of condensed pairs start..stop-1: (S, stop - start) float64.

        A .npy file is mapped afresh for each block and unmapped after it, so the pages read do not stay in this
        process's resident memory (the OS keeps them in its page cache while it has room)."""
        array = read_npy(self.path, mmap=True) if isinstance(self.array, np.memmap) else self.array
        values = array[start:stop] if array.ndim == 1 else array[:, start:stop]
        return np.array(values, dtype=np.float64).reshape(self.subjects, -1)

    def sample(self, images: np.ndarray) -> np.ndarray:
        """Every subject's square RDM among `images` (sorted indices), (S, m, m) float64, read one row of the
        upper triangle per image: what the reliability summary of a set too large to rank whole is measured on."""
        images = np.sort(np.asarray(images))
        out = np.zeros((self.subjects, len(images), len(images)))
        for a, i in enumerate(images[:-1]):
            i = int(i)
            row = self.block(row_start(i, self.n), row_start(i + 1, self.n))  # pairs (i, i+1 .. n-1)
            values = row[:, images[a + 1 :] - i - 1]
            if not np.isfinite(values).all():
                subject, column = np.argwhere(~np.isfinite(values))[0]
                raise DataError(f"{self.where}: subject {subject + 1} has a non-finite value (pair {i}, "
                                f"{images[a + 1 + column]})")
            out[:, a, a + 1 :] = values
            out[:, a + 1 :, a] = values
        return out

    def split(self, train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One pass over the file: (the subjects' mean over the pairs among `train`, (P_train,) float32; every
        subject's values of the pairs among `val`, (S, P_val) float32), both in the upper-triangle order of
        the sorted image indices. Every value is checked: finite, and no subject's RDM constant."""
        n = self.n
        is_train, is_val = np.zeros(n, bool), np.zeros(n, bool)
        is_train[train], is_val[val] = True, True
        train_out = np.empty(len(train) * (len(train) - 1) // 2, np.float32)
        val_out = np.empty((self.subjects, len(val) * (len(val) - 1) // 2), np.float32)
        low, high = np.full(self.subjects, np.inf), np.full(self.subjects, -np.inf)
        t_pos = v_pos = 0
        rows_per_block = max(1, BLOCK_VALUES // n)
        for i0 in range(0, n - 1, rows_per_block):
            i1 = min(n - 1, i0 + rows_per_block)
            first = row_start(i0, n)
            values = self.block(first, row_start(i1, n))
            finite = np.isfinite(values)
            if not finite.all():
                subject, column = np.argwhere(~finite)[0]
                i, j = _pair_of(first + column, n)
                raise DataError(f"{self.where}: subject {subject + 1} has a non-finite value (pair {i}, {j})")
            low, high = np.minimum(low, values.min(axis=1)), np.maximum(high, values.max(axis=1))
            mean = values.mean(axis=0)
            for i in range(i0, i1):
                if not (is_train[i] or is_val[i]):
                    continue
                offset = row_start(i, n) - first - i - 1  # pair (i, j) sits at offset + j within the block
                if is_train[i]:
                    js = np.flatnonzero(is_train[i + 1 :]) + i + 1
                    train_out[t_pos : t_pos + len(js)] = mean[offset + js]
                    t_pos += len(js)
                if is_val[i]:
                    js = np.flatnonzero(is_val[i + 1 :]) + i + 1
                    val_out[:, v_pos : v_pos + len(js)] = values[:, offset + js]
                    v_pos += len(js)
        constant = np.flatnonzero(low == high)
        if len(constant):
            raise DataError(f"{self.where}: subject {constant[0] + 1}'s RDM is constant, so it has no rank order")
        return train_out, val_out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
