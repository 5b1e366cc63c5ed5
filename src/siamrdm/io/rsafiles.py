"""rsatoolbox's RDMs files (HDF5), read and written with h5py alone, and `to_rsatoolbox`.

An rsatoolbox file that names its patterns (an `images`, `stimulus` or `names` descriptor) must list them in
the order of the images it is used with (by file name or stem: 'obj1' names obj1.png). Its RDMs are split into
keys by a 'target' (or 'roi') descriptor and grouped by a `subject` descriptor into (subjects, K, N, N) when
every subject has K > 1 of them (sessions); `grouping_notes` says so, and the readers (rdmfiles.read_rdms) return
those notes with the RDMs, for the CLI to print.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import ConfigError, DataError
from ..rdm.core import square_rdm, upper_tri
from .arrayfiles import chosen_shapes
from .images import match_names
from .limits import (
    check_hdf5_stored,
    check_read_size,
    check_real_dtype,
    hdf5_get,
    hdf5_members,
    key_name,
    one_line,
)

# rsatoolbox's RDMs.save(path, file_type='hdf5') writes: a dataset 'dissimilarities' (n_rdm, N(N-1)/2), the
# upper triangles in row-major order (scipy's squareform, as `rdm.upper_tri`); groups 'descriptors',
# 'rdm_descriptors' (one value per RDM) and 'pattern_descriptors' (one value per image), whose values are
# datasets (strings as bytes) or attributes; and 'dissimilarity_measure' (an attribute, or an empty dataset).
# They are read with h5py alone, so rsatoolbox is not needed to read them.

RSATOOLBOX_SUFFIXES = (".hdf5", ".h5")
# rsatoolbox pattern descriptors that name the images, in the order they are looked for.
IMAGE_DESCRIPTORS = ("images", "image", "stimulus", "stimuli", "names", "name", "filenames", "filename")
# rsatoolbox RDM descriptors that split a file's RDMs into keys (targets); without one, the file is one stack.
KEY_DESCRIPTORS = ("target", "roi")
# rsatoolbox RDM descriptors that group a key's RDMs by subject: (subjects, K, N, N) when each has K > 1 of them.
SUBJECT_DESCRIPTORS = ("subject", "subj")


def is_rsatoolbox(f: h5py.File, path: Path) -> bool:
    return isinstance(hdf5_get(f, "dissimilarities", path), h5py.Dataset) and isinstance(
        hdf5_get(f, "pattern_descriptors", path), h5py.Group)


def _decoded(values) -> list:
    values = np.atleast_1d(np.asarray(values))
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v
            for v in values.tolist()]


def _descriptors(group, count: int, what: str, path: Path) -> dict[str, list]:
    """A descriptor group's values as lists (datasets and list-valued attributes). A descriptor holds one value per
    RDM or pattern (`count` of `what`): a dataset of more is refused unread (stored lazily, a small file can
    declare a descriptor of gigabytes)."""
    if not isinstance(group, h5py.Group):
        return {}
    out = {}
    for name, item in hdf5_members(group, path).items():
        if isinstance(item, h5py.Dataset) and item.shape is not None:
            if item.size > count:
                raise DataError(f"{path}: descriptor '{item.name}' has shape {item.shape}, more values than the "
                                f"{count} {what}")
            check_read_size(path, {}, extra_bytes=item.size * item.dtype.itemsize)
            check_hdf5_stored(item, path)
            out[name] = _decoded(item[()])
    for name, value in group.attrs.items():
        out.setdefault(name, _decoded(value))
    return out


@dataclass
class _Layout:
    """Where an rsatoolbox file's RDMs are: `rows[key]` the RDM rows of each key, subject by subject (each
    subject's K rows in file order); `groups[key]` = (subjects, K); `by` the subject descriptor that grouped
    them (None: one RDM per subject, in file order)."""

    vectors: h5py.Dataset
    n: int
    rows: dict[str, list[int]]
    groups: dict[str, tuple[int, int]]
    by: str | None

    def shape(self, key: str) -> tuple[int, ...]:
        subjects, k = self.groups[key]
        n = self.n
        return (subjects, k, n, n) if k > 1 else (n, n) if subjects == 1 else (subjects, n, n)


def _by_subject(path: Path, key: str, rows: list[int], subjects: list, by: str) -> tuple[list[int], int, int]:
    """A key's rows grouped subject by subject (subjects in order of first appearance), (rows, S, K); the
    subjects must have the same number of RDMs each."""
    grouped: dict[str, list[int]] = {}
    for row in rows:
        grouped.setdefault(str(subjects[row]), []).append(row)
    counts = {subject: len(members) for subject, members in grouped.items()}
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"'{subject}': {count}" for subject, count in list(counts.items())[:4])
        more = f" and {len(counts) - 4} more" if len(counts) > 4 else ""
        raise DataError(f"{key_name(path, key)}: RDMs grouped by '{by}' are unequal ({shown}{more} RDMs); every "
                        "subject needs the same number of RDMs (sessions)")
    return [row for members in grouped.values() for row in members], len(grouped), len(rows) // len(grouped)


def _rsatoolbox_layout(f: h5py.File, path: Path) -> _Layout:
    """The file's RDMs by key and subject, from the dataset's shape and the descriptors: split into keys by a
    'target' or 'roi' RDM descriptor when it has one (else one key '', as for a .npy file), and each key's RDMs
    grouped by a 'subject' (or 'subj') descriptor into (subjects, K) when it has one."""
    vectors = hdf5_get(f, "dissimilarities", path)
    check_real_dtype(vectors.dtype, f"{path}: 'dissimilarities'")
    shape = tuple(vectors.shape or ())
    shape = (1, *shape) if len(shape) == 1 else shape
    if len(shape) != 2:
        raise DataError(f"{path}: 'dissimilarities' has shape {shape}, expected (RDMs, pairs)")
    count, pairs = shape
    if count == 0:
        raise DataError(f"{path}: 'dissimilarities' holds no RDMs (shape {shape})")
    n = (1 + math.isqrt(1 + 8 * pairs)) // 2
    if n * (n - 1) // 2 != pairs or n < 2:
        raise DataError(f"{path}: 'dissimilarities' rows of length {pairs} are not the upper "
                        "triangle of a square RDM")
    rdm_descriptors = _descriptors(hdf5_get(f, "rdm_descriptors", path), count, "RDMs", path)
    key_by = next((d for d in KEY_DESCRIPTORS if len(rdm_descriptors.get(d, ())) == count), None)
    keyed = {"": list(range(count))}
    if key_by is not None:
        keyed = {}
        for k, value in enumerate(rdm_descriptors[key_by]):
            keyed.setdefault(str(value), []).append(k)
    by = next((d for d in SUBJECT_DESCRIPTORS if len(rdm_descriptors.get(d, ())) == count), None)
    rows, groups = {}, {}
    for key, members in keyed.items():
        if by is None:
            rows[key], groups[key] = members, (len(members), 1)
        else:
            rows[key], subjects, k = _by_subject(path, key, members, rdm_descriptors[by], by)
            groups[key] = (subjects, k)
    return _Layout(vectors, n, rows, groups, by)


def read_rsatoolbox(f: h5py.File, path: Path, keys: Sequence[str] | None = None, read: bool = True) -> dict:
    """The file's RDMs as (N, N) (a key of one RDM), (subjects, N, N) or, grouped by subject with K > 1 RDMs
    each, (subjects, K, N, N) arrays; every key or those of `keys`; with `read` False only their shapes. Only
    the rows of the keys asked for are read."""
    layout = _rsatoolbox_layout(f, path)
    vectors, n = layout.vectors, layout.n
    shapes = chosen_shapes({key: layout.shape(key) for key in layout.rows}, keys)
    if not read:
        return shapes
    rows = sorted({row for key in shapes for row in layout.rows[key]})
    pairs = n * (n - 1) // 2
    check_read_size(path, shapes, extra_bytes=8 * len(rows) * pairs)
    check_hdf5_stored(vectors, path)
    every = vectors.ndim == 1 or len(rows) == vectors.shape[0]
    values = np.asarray(vectors[()] if every else vectors[rows], dtype=np.float64).reshape(-1, pairs)
    at = {row: k for k, row in enumerate(range(len(values)) if every else rows)}
    return {key: np.stack([square_rdm(values[at[row]], n) for row in layout.rows[key]]).reshape(shapes[key])
            for key in shapes}


def _file_layout(path: Path) -> _Layout | None:
    """The layout of an rsatoolbox RDMs file (descriptors and shapes only), None for any other file."""
    if path.suffix.lower() not in RSATOOLBOX_SUFFIXES or not path.is_file() or not h5py.is_hdf5(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            return _rsatoolbox_layout(f, path) if is_rsatoolbox(f, path) else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable file ({one_line(exc)})") from None


def _grouping_lines(path: Path, layout: _Layout) -> dict[str, str]:
    """One line per key saying how the file's RDMs are grouped (see `rdm_grouping`)."""
    lines = {}
    for key, (subjects, k) in layout.groups.items():
        what = f"{subjects} subject{'s' if subjects != 1 else ''}"
        how = f" x {k} RDM{'s' if k != 1 else ''} each (grouped by '{layout.by}')" if layout.by else \
            " (one RDM each: no 'subject' descriptor)"
        lines[key] = f"{key_name(Path(path.name), key)}: {what}{how}"
    return lines


def rdm_grouping(path: str | os.PathLike) -> dict[str, str]:
    """How an rsatoolbox file's RDMs are grouped, per key, one line each ("own.hdf5: 4 subjects x 2 RDMs each
    (grouped by 'subject')"); empty for other files. From the descriptors: no RDM is read."""
    path = Path(path)
    layout = _file_layout(path)
    return {} if layout is None else _grouping_lines(path, layout)


def grouping_notes(path: str | os.PathLike, keys: Sequence[str]) -> tuple[str, ...]:
    """The notes a reader returns with these keys of `path`: for each key whose subjects hold K > 1 RDMs each
    (an rsatoolbox file grouped by its 'subject' descriptor), its `rdm_grouping` line, since they are read as
    (subjects, K, N, N), not as K times the subjects. Empty for other files; from the descriptors alone."""
    path = Path(path)
    layout = _file_layout(path)
    if layout is None:
        return ()
    lines = _grouping_lines(path, layout)
    return tuple(lines[key] for key in keys if key in layout.groups and layout.groups[key][1] > 1)


def read_rdm_names(path: str | os.PathLike) -> tuple[str, list[str]] | None:
    """(descriptor, image names) of an rsatoolbox RDMs file that names its patterns, else None (other files
    carry no names)."""
    path = Path(path)
    if path.suffix.lower() not in (".mat", *RSATOOLBOX_SUFFIXES) or not path.is_file() or not h5py.is_hdf5(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            if not is_rsatoolbox(f, path):
                return None
            n = _rsatoolbox_layout(f, path).n
            patterns = _descriptors(hdf5_get(f, "pattern_descriptors", path), n, "patterns (images)", path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable file ({one_line(exc)})") from None
    for name in IMAGE_DESCRIPTORS:
        if name in patterns:
            if len(patterns[name]) != n:  # more are refused unread (_descriptors); fewer name no image for some rows
                raise DataError(f"{path}: pattern descriptor '{name}' names {len(patterns[name])} images, its RDMs "
                                f"are {n} x {n}")
            return name, [str(v) for v in patterns[name]]
    return None


def check_rdm_names(path: str | os.PathLike, names: Sequence[str], among: str = "the images",
                    order_settable: bool = True) -> None:
    """When an RDM file names its images, they must be `names`, in the same order (an RDM's rows are only
    meaningful with the right images): an error naming the file and the first difference otherwise. The
    `order` setting is blamed only where the caller has one (`order_settable`): not where `names` come from
    another RDM file (score's target), whose order no option sets."""
    found = read_rdm_names(path)
    if found is None:
        return
    descriptor, listed = found
    where = f"{path}: pattern descriptor '{descriptor}'"
    if len(listed) != len(names):
        raise DataError(f"{where} names {len(listed)} images, {among} are {len(names)}")
    index = match_names(listed, names, where, among)
    wrong = next((k for k, i in enumerate(index) if i != k), None)
    if wrong is None:
        return
    if not order_settable:
        raise DataError(f"{where} orders the images differently from {among} (row {wrong + 1}: '{listed[wrong]}' in "
                        f"{path}, '{names[wrong]}' in {among})")
    raise ConfigError("order", f"{where} orders the images differently from {among} (row {wrong + 1}: "
                               f"'{listed[wrong]}' in the file, '{names[wrong]}' among the images); set the "
                               "image order to the file's")


def rsatoolbox_rows(path: Path, rdms: dict[str, np.ndarray], names: Sequence[str] | None) -> dict[str, np.ndarray]:
    """Checked before anything is written: the upper triangles of every key's RDMs (one row per RDM), with
    their 'target' (the key), 'subject' (1.. within a stack) and, for (subjects, K, N, N), 'session' (1..K)
    descriptors."""
    shapes = {k: np.shape(v) for k, v in rdms.items()}
    bad = next((k for k, shape in shapes.items() if len(shape) not in (2, 3, 4)), None)
    if bad is not None:
        raise DataError(f"{path}:{bad}: rsatoolbox files hold (N, N), (subjects, N, N) or (subjects, K, N, N) "
                        f"arrays, got {shapes[bad]}")
    n = next(iter(shapes.values()))[-1]
    if any(shape[-1] != n for shape in shapes.values()):
        raise DataError(f"{path}: every RDM in an rsatoolbox file covers the same images")
    if names is not None and len(names) != n:
        raise DataError(f"{path}: {len(names)} image names for {n} x {n} RDMs")
    stacks = {k: np.asarray(v, dtype=np.float64).reshape(-1, n, n) for k, v in rdms.items()}
    per_subject = {k: shape[1] if len(shape) == 4 else 1 for k, shape in shapes.items()}  # K RDMs each
    return {"dissimilarities": np.concatenate([upper_tri(v) for v in stacks.values()]),
            "target": np.array([k.encode("utf-8") for k, v in stacks.items() for _ in v], dtype=bytes),
            "subject": np.concatenate([np.arange(len(v)) // per_subject[k] + 1 for k, v in stacks.items()]),
            "session": np.concatenate([np.arange(len(v)) % per_subject[k] + 1 for k, v in stacks.items()]),
            "images": None if names is None else np.array([str(m).encode("utf-8") for m in names], dtype=bytes)}


def write_rsatoolbox(path: Path, rows: dict[str, np.ndarray], measure: str) -> None:
    """rsatoolbox's RDMs HDF5 layout (see the top of this module), the image names as the 'images' pattern
    descriptor. Built in memory and written in one go: HDF5 that fails to write its own file (a full disk) crashes
    the process as it closes it, where a plain write fails with an OSError that atomic_path reports."""
    from .. import __version__

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.attrs["dissimilarity_measure"] = measure
        f.attrs["siamrdm_version"] = __version__
        f["dissimilarities"] = rows["dissimilarities"]
        f.create_group("descriptors").attrs["source"] = "siamrdm"
        rdm_descriptors = f.create_group("rdm_descriptors")
        rdm_descriptors["target"] = rows["target"]
        if rows["subject"].max() > 1 or rows["session"].max() > 1:
            rdm_descriptors["subject"] = rows["subject"]
        if rows["session"].max() > 1:
            rdm_descriptors["session"] = rows["session"]
        rdm_descriptors["index"] = np.arange(len(rows["target"]))
        patterns = f.create_group("pattern_descriptors")
        n = (1 + math.isqrt(1 + 8 * rows["dissimilarities"].shape[1])) // 2
        if rows["images"] is not None:
            patterns["images"] = rows["images"]
        patterns["index"] = np.arange(n)
    path.write_bytes(buffer.getbuffer())


def to_rsatoolbox(rdms: dict[str, np.ndarray] | np.ndarray, names: Sequence[str] | None = None,
                 measure: str = "siamrdm prediction"):
    """RDMs as an `rsatoolbox.rdm.RDMs` object (rsatoolbox needed; imported here only): one (N, N) or (S, N, N)
    array, or a dict of them by key, with the layout `save_rdms` writes to .hdf5 (each key a 'target' RDM
    descriptor, 'subject' 1.. within a stack, the image `names` as the 'images' pattern descriptor)."""
    try:
        from rsatoolbox.rdm import RDMs
    except ImportError:
        raise ImportError("to_rsatoolbox() needs rsatoolbox (pip install rsatoolbox)") from None
    stacks = rdms if isinstance(rdms, dict) else {"rdm": rdms}
    if not stacks:
        raise DataError("to_rsatoolbox: no RDMs")
    rows = rsatoolbox_rows(Path("to_rsatoolbox"), stacks, names)
    rdm_descriptors = {"target": [t.decode("utf-8") for t in rows["target"]],
                       "subject": [int(v) for v in rows["subject"]]}
    n = (1 + math.isqrt(1 + 8 * rows["dissimilarities"].shape[1])) // 2
    patterns = {"index": list(range(n))}
    if rows["images"] is not None:
        patterns["images"] = [m.decode("utf-8") for m in rows["images"]]
    return RDMs(rows["dissimilarities"], dissimilarity_measure=measure, rdm_descriptors=rdm_descriptors,
                pattern_descriptors=patterns)
