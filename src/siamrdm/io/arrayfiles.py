"""Array files from their headers: MATLAB v4/v5 .mat variables, .npy and .npz shapes, read without decompressing
or reading any array; and the one reader of .npy arrays (`read_npy`, never unpickling, memory-mapped on request)."""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .limits import one_line

# MATLAB v5 files. scipy.io.whosmat and loadmat decompress every compressed variable whole just to read its header,
# even one not asked for, so a file of 1 kB can make them allocate gigabytes; the headers are read here instead.
MAT_CLASSES = {1: "cell", 2: "struct", 3: "object", 4: "char", 5: "sparse", 6: "double", 7: "single", 8: "int8",
               9: "uint8", 10: "int16", 11: "uint16", 12: "int32", 13: "uint32", 14: "int64", 15: "uint64",
               16: "function", 17: "opaque"}
MAT_ARRAY_KINDS = ("char", "logical", "double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32",
                   "int64", "uint64")  # read as plain arrays, their size known from their header
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MAT_HEADER_BYTES = 4096  # more than a variable's header ever takes (flags, up to hundreds of dimensions, name)


@dataclass
class _MatVariable:
    shape: tuple[int, ...]
    kind: str  # the MATLAB class; 'logical' for a logical array
    stored_bytes: int  # the variable as stored, decompressed: what a reader holds to get past it
    compressed: bool


def _mat_element(head: bytes, offset: int, order: str) -> tuple[int, bytes, int]:
    """(type, data, offset of the next element) of a v5 data element, in its full or small (4 bytes) format."""
    first, count = struct.unpack_from(order + "II", head, offset)
    if first >> 16:
        return first & 0xFFFF, head[offset + 4 : offset + 4 + (first >> 16)], offset + 8
    if offset + 8 + count > len(head):
        raise struct.error("variable header cut short")
    return first, head[offset + 8 : offset + 8 + count], offset + 8 + (count + 7) // 8 * 8


def _mat_matrix_header(head: bytes, order: str, compressed: bool) -> tuple[str, _MatVariable]:
    """The name and header of a miMATRIX element: array flags, dimensions, name (the data that follow unread)."""
    kind, nbytes = struct.unpack_from(order + "II", head, 0)
    if kind != _MI_MATRIX:
        raise struct.error(f"expected a matrix, got data type {kind}")
    _, flags, offset = _mat_element(head, 8, order)
    _, dims, offset = _mat_element(head, offset, order)
    _, name, _ = _mat_element(head, offset, order)
    flags_class = struct.unpack_from(order + "I", flags)[0]
    shape = tuple(int(d) for d in struct.unpack(order + f"{len(dims) // 4}i", dims[: len(dims) // 4 * 4]))
    if any(d < 0 for d in shape):
        raise struct.error(f"negative dimension in {shape}")
    kind_name = "logical" if flags_class >> 9 & 1 else MAT_CLASSES.get(flags_class & 0xFF, "unknown")
    if kind_name == "char":  # scipy reads a char array as strings: one axis fewer
        shape = shape[:-1]
    return name.decode("latin1"), _MatVariable(shape, kind_name, 8 + nbytes, compressed)


def mat_variables(path: Path) -> dict[str, _MatVariable]:
    """The variables of a .mat file (v4 or v5) from their headers alone, without reading or decompressing data."""
    import scipy.io  # on first use (here and below): a third of `siamrdm --help`'s start-up otherwise

    try:
        major, _ = scipy.io.matlab.matfile_version(path)
        if major == 0:  # v4: never compressed, so scipy reads headers only
            return {name: _MatVariable(tuple(shape), kind, 8 * math.prod(shape), False)
                    for name, shape, kind in scipy.io.whosmat(path)}
        if major != 1:
            raise ValueError(f"MATLAB file version {major}, expected 5 (or 7.3, an HDF5 file)")
        variables: dict[str, _MatVariable] = {}
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = f.read(128)
            order = "<" if header[126:128] == b"IM" else ">"
            position = 128
            while position + 8 <= size:
                f.seek(position)
                kind, nbytes = struct.unpack(order + "II", f.read(8))
                position += 8 + nbytes
                if kind == _MI_COMPRESSED:
                    head = zlib.decompressobj().decompress(f.read(min(nbytes, 16 * _MAT_HEADER_BYTES)),
                                                           _MAT_HEADER_BYTES)
                elif kind == _MI_MATRIX:
                    head = struct.pack(order + "II", kind, nbytes) + f.read(min(nbytes, _MAT_HEADER_BYTES))
                else:
                    continue
                name, variable = _mat_matrix_header(head, order, kind == _MI_COMPRESSED)
                variables[name or "__function_workspace__"] = variable
        return variables
    except Exception as exc:  # scipy's MatReadError, struct.error, zlib.error, OSError, ...
        raise DataError(f"{path}: unreadable .mat file ({one_line(exc)})") from None


def read_mat_v5(path: Path, names: Sequence[str] | None = None, matlab_classes: bool = False) -> dict:
    """A .mat file's variables (all, or `names`); the caller has checked their size (`mat_variables`). With
    `matlab_classes`, each array has its MATLAB class's dtype (scipy's mat_dtype: a logical array as bool, not
    the uint8 it is stored as; a double array MATLAB stored as uint8 as float64, 8 times the bytes stored)."""
    import scipy.io

    try:
        return scipy.io.loadmat(path, variable_names=None if names is None else list(names), mat_dtype=matlab_classes)
    except Exception as exc:
        raise DataError(f"{path}: unreadable .mat file ({one_line(exc)})") from None


def npy_shape(f) -> tuple[int, ...]:
    """The shape in a .npy header (the stream is left after it)."""
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not read (1.0 and 2.0 are)")
    shape = tuple(int(d) for d in readers[version](f)[0])
    if any(d < 0 for d in shape):
        raise ValueError(f"its header declares the shape {shape}, with a negative dimension")
    return shape


def read_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """A .npy file's array, never unpickled: read whole, or memory-mapped read-only (`mmap`: pages are read as
    they are used)."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The members of a .npz file (keys as numpy names them) and their shapes, from their .npy headers."""
    shapes = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            with z.open(info) as member:
                shapes[key] = npy_shape(member)
    return shapes


def chosen_shapes(shapes: dict[str, tuple[int, ...]], keys: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """The shapes of the `keys` asked for that the file holds (every one for None)."""
    return dict(shapes) if keys is None else {k: shapes[k] for k in keys if k in shapes}
