"""RDM files: `load_rdms` and `load_rdm_dict` read .mat v5, .mat v7.3, .npy, .npz and rsatoolbox's RDMs HDF5
files, and validate what they read (`validate_rdms`); `read_rdms` and `read_rdm_dict` read the same, with the
notes on how they were read (rsafiles.grouping_notes) for the caller to show; `save_rdms` writes them.

Errors are `DataError`s with a one-line message that names the file (and key) and the problem; the CLI turns
that into exit code 2. Nothing is read before the file's headers say it fits (see limits).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError
from ..rdm.core import upper_tri
from .arrayfiles import MAT_ARRAY_KINDS, chosen_shapes, mat_variables, npy_shape, npz_shapes, read_mat_v5, read_npy
from .limits import (
    check_hdf5_stored,
    check_read_size,
    check_real_dtype,
    check_regular_file,
    hdf5_members,
    key_name,
    one_line,
)
from .rsafiles import (
    RSATOOLBOX_SUFFIXES,
    check_rdm_names,
    grouping_notes,
    is_rsatoolbox,
    read_rsatoolbox,
    rsatoolbox_rows,
    write_rsatoolbox,
)

RDM_SUFFIXES = (".mat", ".npy", ".npz", ".hdf5", ".h5")
PICKLE_SUFFIXES = (".pkl", ".pickle")
# |d_ij - d_ji| and |d_ii| allowed, relative to an RDM's largest |d| (at least 8 ulps of its stored float type):
# rounding scales with the values, so an absolute tolerance refuses large RDMs and passes tiny asymmetric ones.
SYMMETRY_RTOL = 1e-5


def _read_rdm_file(path: Path, keys: Sequence[str] | None = None, read: bool = True) -> dict:
    """The numeric arrays in a file (every one, or those of `keys`), keyed by name, axes in the order MATLAB/numpy
    users expect. With `read` False, only their shapes, from the file's headers. Before anything is read the path
    must be a regular file, an HDF5 file must keep everything inside it, and the arrays must fit
    (`check_read_size`)."""
    check_regular_file(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise DataError(f"{path}: pickle files are refused (loading one can run code); save rsatoolbox RDMs as "
                        "HDF5 instead: rdms.save(path, file_type='hdf5')")
    if suffix not in RDM_SUFFIXES:
        raise DataError(f"{path}: unsupported RDM file type '{suffix}' (use {', '.join(RDM_SUFFIXES)})")
    try:
        if suffix == ".npy":
            return _read_npy_file(path, keys, read)
        if suffix == ".npz":
            return _read_npz_file(path, keys, read)
        if h5py.is_hdf5(path):
            return _read_hdf5_file(path, keys, read)
        if suffix in RSATOOLBOX_SUFFIXES:
            raise DataError(f"{path}: not an HDF5 file (rsatoolbox RDMs are saved with file_type='hdf5')")
    except DataError:
        raise
    except Exception as exc:  # a library's own failure on a damaged file: one line naming it
        raise DataError(f"{path}: unreadable file ({one_line(exc)})") from None
    return _read_mat_file(path, keys, read)


def _read_npy_file(path: Path, keys: Sequence[str] | None, read: bool) -> dict:
    """A .npy file's one array, under the key ''."""
    with open(path, "rb") as f:
        shapes = chosen_shapes({"": npy_shape(f)}, keys)
    if not read:
        return shapes
    check_read_size(path, shapes)
    return {"": read_npy(path)} if shapes else {}


def _read_npz_file(path: Path, keys: Sequence[str] | None, read: bool) -> dict:
    shapes = chosen_shapes(npz_shapes(path), keys)
    if not read:
        return shapes
    check_read_size(path, shapes)
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in shapes}


def _read_hdf5_file(path: Path, keys: Sequence[str] | None, read: bool) -> dict:
    """An rsatoolbox RDMs file, or a MATLAB v7.3 file's datasets (an HDF5 file of another kind with an rsatoolbox
    suffix is refused)."""
    with h5py.File(path, "r") as f:
        if is_rsatoolbox(f, path):
            return read_rsatoolbox(f, path, keys, read)
        if path.suffix.lower() in RSATOOLBOX_SUFFIXES:
            raise DataError(f"{path}: an HDF5 file, but not rsatoolbox RDMs (no 'dissimilarities' dataset "
                            "beside a 'pattern_descriptors' group)")
        datasets = {k: v for k, v in hdf5_members(f, path).items()
                    if isinstance(v, h5py.Dataset) and not k.startswith("#")}
        # MATLAB v7.3: h5py gives the axes reversed
        shapes = chosen_shapes({k: tuple(reversed(v.shape or ())) for k, v in datasets.items()}, keys)
        if not read:
            return shapes
        check_read_size(path, shapes)
        for k in shapes:
            check_hdf5_stored(datasets[k], path)
        return {k: np.asarray(datasets[k]).transpose() for k in shapes}


def _read_mat_file(path: Path, keys: Sequence[str] | None, read: bool) -> dict:
    """A MATLAB v5 file's numeric variables (its own reader, arrayfiles.read_mat_v5, reports its own errors)."""
    variables = {k: v for k, v in mat_variables(path).items() if not k.startswith("__") and v.kind != "sparse"}
    shapes = chosen_shapes({k: v.shape for k, v in variables.items()}, keys)
    if not read:
        return shapes
    other = next((k for k in shapes if variables[k].kind not in MAT_ARRAY_KINDS), None)
    if other is not None:
        raise DataError(f"{path}:{other}: a MATLAB {variables[other].kind} array, not a numeric array")
    if not shapes:
        return {}
    # scipy decompresses every compressed variable it passes, even one not asked for
    check_read_size(path, shapes, extra_bytes=sum(v.stored_bytes for v in variables.values() if v.compressed))
    mat = read_mat_v5(path, list(shapes))
    return {k: v for k, v in mat.items() if k in shapes and isinstance(v, np.ndarray)}


def list_rdm_keys(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Keys of an RDM file with their array shapes (the key of a .npy is ''), from the file's headers: no array
    is read."""
    return _read_rdm_file(Path(path), read=False)


def symmetry_tolerance(scale: float, dtype) -> float:
    """The largest |d_ij - d_ji| (and |d_ii|) accepted in an RDM whose largest |d| is `scale`, stored as
    `dtype`: `SYMMETRY_RTOL` of the scale, or 8 ulps of the stored float type where that is more."""
    dtype = np.dtype(dtype)
    rtol = max(SYMMETRY_RTOL, 8 * float(np.finfo(dtype).eps)) if dtype.kind == "f" else SYMMETRY_RTOL
    return scale * rtol


def validate_rdms(rdms: np.ndarray, where: str, n_images: int | None = None, constant: bool = False) -> np.ndarray:
    """Check an (N, N), (S, N, N) or (S, K, N, N) stack of RDMs, at least one; return it as float64.

    `where` names the file and key in the error message. Besides real values (`check_real_dtype`), shape,
    finiteness, symmetry and a zero diagonal (to `symmetry_tolerance`, relative to each RDM's magnitude), no
    RDM in the stack may have a constant upper triangle: its Spearman correlation (and so the score and the
    noise ceiling) would be NaN. `constant` allows one: a model RDM that orders no pair, which scores 0.
    """
    try:
        raw = np.asarray(rdms)
    except (TypeError, ValueError):
        raise DataError(f"{where}: not a numeric array") from None
    check_real_dtype(raw.dtype, where)
    rdms = np.asarray(raw, dtype=np.float64)
    if rdms.ndim not in (2, 3, 4):
        raise DataError(f"{where}: shape {rdms.shape} is not (N, N), (subjects, N, N) or (subjects, K, N, N)")
    n = rdms.shape[-1]
    if rdms.shape[-2] != n:
        raise DataError(f"{where}: RDMs are not square (shape {rdms.shape})")
    if n < 3:
        raise DataError(f"{where}: RDMs need at least 3 images (shape {rdms.shape})")
    if n_images is not None and n != n_images:
        raise DataError(f"{where}: RDMs are {n} x {n} but there are {n_images} images")
    if rdms.size == 0:
        raise DataError(f"{where}: holds no RDM (shape {rdms.shape})")
    if not np.all(np.isfinite(rdms)):
        raise DataError(f"{where}: contains NaN or inf")
    for rdm in rdms.reshape(-1, n, n):  # one RDM at a time, each to its own scale
        tolerance = symmetry_tolerance(max(float(rdm.max()), -float(rdm.min())), raw.dtype)
        block = max(1, 2**22 // n)  # rows compared with their columns at a time: no N x N temporaries
        worst = max(float(np.max(np.abs(rdm[i : i + block] - rdm[:, i : i + block].T))) for i in range(0, n, block))
        if worst > tolerance:
            raise DataError(f"{where}: RDMs are not symmetric (largest |d_ij - d_ji| = {worst:.3g}, tolerance "
                            f"{tolerance:.3g})")
        diagonal = float(np.max(np.abs(np.diagonal(rdm))))
        if diagonal > tolerance:
            raise DataError(f"{where}: RDMs have a non-zero diagonal (largest |d_ii| = {diagonal:.3g}, tolerance "
                            f"{tolerance:.3g})")
    if not constant:
        _check_not_constant(rdms, where)
    return rdms


def check_scorable(rdms: np.ndarray, where: str) -> None:
    """Subject RDMs that a score and a ceiling can be computed on: none with a constant upper triangle, and no
    mean of them (of all subjects, or of all but one: the lower ceiling's) constant, as when one subject's
    order is the reverse of another's. A DataError naming `where` (file:key, or a split of a set)."""
    _check_not_constant(rdms, where)
    _check_means_not_constant(rdms, where)


def _check_means_not_constant(rdms: np.ndarray, where: str) -> None:
    """`check_scorable`'s second half, for stacks whose RDMs were each checked already (`validate_rdms`): no mean
    of all subjects, or of all but one, with a constant upper triangle."""
    uppers = upper_tri(np.asarray(rdms, dtype=np.float64))
    per_subject = uppers.sum(axis=1) if uppers.ndim == 3 else uppers  # (S, P); sums: constancy is scale-free
    if per_subject.ndim < 2 or len(per_subject) < 2:
        return
    total = per_subject.sum(axis=0)
    which = f"its {len(per_subject)} subjects" if np.ptp(total) == 0 else next(
        (f"its subjects other than subject {s + 1} of {len(per_subject)}" for s in range(len(per_subject))
         if len(per_subject) > 2 and np.ptp(total - per_subject[s]) == 0), None)
    if which is not None:
        raise DataError(f"{where}: the mean RDM of {which} has a constant upper triangle (their orders cancel), so "
                        "the noise ceiling and the training target are undefined")


def _check_not_constant(rdms: np.ndarray, where: str) -> None:
    """A DataError naming the first RDM of the stack whose upper triangle is constant, by subject (and K)."""
    uppers = upper_tri(rdms)
    constant = np.ptp(uppers, axis=-1) == 0
    if not constant.any():
        return
    if rdms.ndim == 2:
        which = "the RDM"
    else:
        index = tuple(int(i) for i in np.argwhere(constant)[0])
        which = f"the RDM of subject {index[0] + 1} of {rdms.shape[0]}"
        if rdms.ndim == 4:
            which += f" (RDM {index[1] + 1} of its {rdms.shape[1]})"
    raise DataError(
        f"{where}: {which} has a constant upper triangle (all dissimilarities {uppers[constant][0][0]:.3g}), "
        "so its Spearman correlation and the noise ceiling are undefined"
    )


def read_rdms(path: str | os.PathLike, key: str | None = None, n_images: int | None = None,
              names: Sequence[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """`load_rdms`'s array and the notes on how it was read (`grouping_notes`: subjects grouped by a descriptor),
    returned rather than printed, so that each caller (the CLI) shows those of what it read."""
    path = Path(path)
    keys = list_rdm_keys(path)
    if key is None or list(keys) == [""]:
        if len(keys) != 1:
            raise DataError(f"{path}: holds several arrays ({', '.join(keys)}); name one with a key")
        key = next(iter(keys))
    elif key not in keys:
        raise DataError(f"{path}: missing key '{key}' (keys: {', '.join(keys) or 'none'})")
    value = _read_rdm_file(path, [key])[key]  # only the array asked for
    rdms = validate_rdms(value, key_name(path, key), n_images)  # each RDM, then (check_scorable) their means
    _check_means_not_constant(rdms, key_name(path, key))
    notes = grouping_notes(path, [key])
    if names is not None:
        check_rdm_names(path, names)
    return rdms, notes


def load_rdms(path: str | os.PathLike, key: str | None = None, n_images: int | None = None,
              names: Sequence[str] | None = None) -> np.ndarray:
    """One validated RDM array from a file. `key` may be omitted when the file holds a single array (it is
    ignored for .npy files and for rsatoolbox files without a 'target'/'roi' RDM descriptor). With `names`
    (the images, in order), an rsatoolbox file that names its images must name these, in this order."""
    return read_rdms(path, key, n_images, names)[0]


def read_rdm_dict(path: str | os.PathLike, n_images: int | None = None, names: Sequence[str] | None = None
                  ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """`load_rdm_dict`'s RDMs and the notes on how they were read (as `read_rdms`)."""
    path = Path(path)
    arrays = _read_rdm_file(path)
    if not arrays:
        raise DataError(f"{path}: holds no arrays")
    rdms = {k: validate_rdms(v, key_name(path, k), n_images) for k, v in arrays.items()}
    notes = grouping_notes(path, list(rdms))
    if names is not None:
        check_rdm_names(path, names)
    return rdms, notes


def load_rdm_dict(path: str | os.PathLike, n_images: int | None = None,
                  names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every array of a file that is a valid RDM stack, keyed by name (a submission or a target file); with
    `names`, checked against the file's own image names as in `load_rdms`."""
    return read_rdm_dict(path, n_images, names)[0]


MATLAB_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")  # a MATLAB variable name (namelengthmax is 63)
NPZ_RESERVED_KEYS = ("file", "allow_pickle")  # np.savez's own arguments: such a key would not be written as one


def check_rdm_keys(path: str | os.PathLike, keys: Sequence[str]) -> None:
    """Refuse, before anything is written, an output key the file at `path` would not hold under that name: a
    .mat needs MATLAB variable names (scipy's savemat silently drops a key that starts with '_'), and np.savez
    takes a key named like one of its own arguments as that argument. .npy (one unnamed array) and HDF5 (keys
    are text) hold any key."""
    path = Path(path)
    suffix = path.suffix.lower()
    for key in keys:
        if suffix == ".mat" and not MATLAB_NAME.fullmatch(key):
            raise DataError(f"{path}: cannot write the key '{key}': a .mat key must be a MATLAB variable name "
                            "(a letter, then letters, digits or underscores, 63 characters at most)")
        if suffix == ".npz" and key in NPZ_RESERVED_KEYS:
            raise DataError(f"{path}: cannot write the key '{key}' to a .npz file (np.savez takes "
                            f"{', '.join(NPZ_RESERVED_KEYS)} as its own arguments)")


def save_rdms(path: str | os.PathLike, rdms: dict[str, np.ndarray], names: Sequence[str] | None = None,
              measure: str = "siamrdm prediction", replace_existing: bool = True) -> Path:
    """Write RDMs atomically: .mat (v5, readable by scipy.io.loadmat and MATLAB), .npz, .npy (one array), or
    .hdf5/.h5 in rsatoolbox's RDMs layout (`rsatoolbox.rdm.load_rdm(path, file_type='hdf5')` reads it), with
    the image `names` as its 'images' pattern descriptor and each key as a 'target' RDM descriptor.
    Without `replace_existing` a file that appeared at `path` meanwhile is refused, not replaced (atomic_path)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mat", ".npz", ".npy", *RSATOOLBOX_SUFFIXES):
        raise DataError(f"{path}: unsupported output type '{suffix}' (use .mat, .npy, .npz, .hdf5 or .h5)")
    if suffix == ".npy" and len(rdms) != 1:
        raise DataError(f"{path}: .npy holds one array, got {len(rdms)}; use .mat, .npz or .hdf5")
    if not rdms:
        raise DataError(f"{path}: no RDMs to write")
    if suffix != ".npy":
        check_rdm_keys(path, list(rdms))
    rows = rsatoolbox_rows(path, rdms, names) if suffix in RSATOOLBOX_SUFFIXES else {}
    import scipy.io

    from .files import atomic_path

    with atomic_path(path, replace_existing) as tmp:
        if suffix == ".mat":
            scipy.io.savemat(tmp, {k: np.asarray(v, dtype=np.float64) for k, v in rdms.items()})
        elif suffix == ".npz":
            np.savez(tmp, **{k: np.asarray(v, dtype=np.float64) for k, v in rdms.items()})
        elif suffix == ".npy":
            np.save(tmp, np.asarray(next(iter(rdms.values())), dtype=np.float64))
        else:
            write_rsatoolbox(tmp, rows, measure)
    return path


# --------------------------------------------------------------------------- condensed RDMs in .npy files
# Sets too large for square RDMs (10,000 images: 50 million pairs) come as subjects' upper triangles, read
# memory-mapped (`siamrdm score` and `noise-ceiling` take them).


def _mapped_npy(path: str | os.PathLike) -> np.ndarray | None:
    """A .npy file, memory-mapped and never unpickled; None for a path that is not an existing .npy file."""
    if Path(path).suffix.lower() != ".npy" or not Path(path).is_file():
        return None
    try:
        return read_npy(path, mmap=True)
    except (ValueError, OSError, OverflowError, EOFError) as exc:  # Overflow: a negative dimension; EOF: empty
        raise DataError(f"{path}: unreadable .npy file ({one_line(exc)[:160]})") from None


def read_condensed_subjects(path: str | os.PathLike) -> np.ndarray | None:
    """Subjects' upper triangles in a .npy file, (S, P) with P = N(N-1)/2 (not square), memory-mapped: the form
    of sets too large for square RDMs (10,000 images: 50 million pairs). None for any other file."""
    array = _mapped_npy(path)
    if array is None or array.ndim != 2 or array.shape[0] == array.shape[1]:
        return None
    n = (1 + math.isqrt(1 + 8 * array.shape[1])) // 2
    if n * (n - 1) // 2 != array.shape[1] or n < 3:
        raise DataError(f"{path}: {array.shape} {array.dtype} is neither square RDMs nor upper triangles "
                        "(subjects, N(N-1)/2)")
    if array.shape[0] == 0:
        raise DataError(f"{path}: upper triangles of no subjects (shape {array.shape})")
    check_real_dtype(array.dtype, path)  # integers and booleans are read as float64 a subject at a time
    return array


def read_condensed_model(path: str | os.PathLike, pairs: int) -> np.ndarray:
    """A model RDM for condensed subjects: its upper triangle (P,) or its square (N, N), in a .npy file."""
    check_regular_file(Path(path))
    model = _mapped_npy(path)
    if model is None:
        raise DataError(f"{path}: the subjects are upper triangles in a .npy file, so the model must be a .npy "
                        "file too (its upper triangle, or its square RDM)")
    check_real_dtype(model.dtype, path)
    check_read_size(path, {"": model.shape})
    if model.ndim == 2 and model.shape[0] == model.shape[1]:  # checked as any square RDM file is
        model = upper_tri(validate_rdms(model, path, n_images=(1 + math.isqrt(1 + 8 * pairs)) // 2))
    if model.shape != (pairs,):
        raise DataError(f"{path}: model RDM has shape {model.shape} {model.dtype}; the subjects have {pairs} "
                        "pairs (give its upper triangle, or its square RDM)")
    model = np.asarray(model, dtype=np.float64)
    if np.isfinite(model).all() and np.ptp(model) == 0:  # refused, as a square one is
        raise DataError(f"{path}: the model RDM's upper triangle is constant (all dissimilarities "
                        f"{model[0]:.3g}), so its Spearman correlation is undefined")
    return model
