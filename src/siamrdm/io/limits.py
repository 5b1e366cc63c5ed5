"""Bounded reading: what every reader of a user's file checks before it reads, and the one-line messages they share.

Every reader is bounded: it reads only regular files (a FIFO or a device would block or never end), reads nothing
an HDF5 file keeps in other files (external links, external storage, virtual datasets), refuses images of more
than MAX_IMAGE_PIXELS pixels before decoding them, and checks from a file's headers, before reading its arrays,
that they fit in memory (`check_read_size`: MAX_READ_BYTES, the memory available, MAX_SQUARE_IMAGES) and, for
HDF5, that the file stores the values it declares (`check_hdf5_stored`). So a small crafted file can neither hang
a command nor make it allocate blindly. RDMs are real numbers (`check_real_dtype`), refused before any cast.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def key_name(path: Path, key: str) -> str:
    """A file's key as messages name it: 'file:KEY', or the file alone for its one unkeyed array."""
    return f"{path}:{key}" if key else str(path)


MAX_READ_BYTES = 16 * 2**30  # the most the arrays read from one file may take as float64, whatever the machine has
MAX_SQUARE_IMAGES = 16_384  # square RDMs of more images (2 GiB each): give upper triangles (S, N(N-1)/2) instead
MAX_IMAGE_PIXELS = 64_000_000  # an image of more pixels is refused before it is decoded
MAX_LINK_DEPTH = 16  # HDF5 soft links followed in a row (a cycle of them would never end)
# The most an HDF5 dataset's values may outgrow the bytes its file stores for them: DEFLATE's own limit (1032:1).
# Values never written (chunks not stored) read as the fill value, so without this bound a file of 2 kB could
# declare gigabytes that fit the memory limit and make a reader fill them.
MAX_HDF5_EXPANSION = 1032
SMALL_DATASET_BYTES = 2**20  # datasets up to this size are read whatever they store: the bound needs no care there


def check_regular_file(path: Path, what: str = "file") -> Path:
    """`path`, when it is a regular file (or a link to one): a FIFO would block the read forever, a device such as
    /dev/zero never ends, so they are refused before anything opens them."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable {what} ({one_line(exc)})") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: no such {what} (it is a folder)")
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a FIFO, device or socket); expected a {what}")
    return path


def available_memory() -> int | None:
    """Bytes the machine can still give without swapping: MemAvailable in /proc/meminfo (Linux), else the free
    physical pages; None when neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def read_limit() -> tuple[int, str]:
    """(the most bytes one file's arrays may take, the words that say why): MAX_READ_BYTES, or less when the
    machine has less memory available."""
    available = available_memory()
    if available is not None and available < MAX_READ_BYTES:
        return available, f"the {available / 2**30:.1f} GiB of memory available"
    return MAX_READ_BYTES, f"the limit of {MAX_READ_BYTES / 2**30:.0f} GiB per file"


def check_read_size(where: str | os.PathLike, shapes: dict[str, tuple[int, ...]], extra_bytes: int = 0) -> None:
    """Before reading: refuse arrays of these shapes (key -> shape, as read) when they would not fit as float64
    (with `extra_bytes` more the reader needs on the way), or when they are square RDMs of more than
    MAX_SQUARE_IMAGES images. The message names the file, the shape and the bytes."""
    for key, shape in shapes.items():
        if len(shape) >= 2 and shape[-1] == shape[-2] and shape[-1] > MAX_SQUARE_IMAGES:
            size = 8 * math.prod(shape)
            raise DataError(f"{where}{':' + key if key else ''}: square RDMs of shape {shape}, {size:,} bytes as "
                            f"float64: {shape[-1]} images, more than the {MAX_SQUARE_IMAGES:,} square RDMs "
                            "may have; give large sets as upper triangles, (subjects, N(N-1)/2), in a .npy file")
    needed = 8 * sum(math.prod(shape) for shape in shapes.values()) + extra_bytes
    limit, why = read_limit()
    if needed > limit:
        key, shape = max(shapes.items(), key=lambda item: math.prod(item[1]), default=(None, ()))
        named = "its contents" if key is None else f"'{key}' {shape}" if key else f"shape {shape}"
        raise DataError(f"{where}: reading {named} needs {needed:,} bytes ({needed / 2**30:.1f} GiB) as float64, "
                        f"more than {why}")


def check_hdf5_stored(dataset: h5py.Dataset, where: str | os.PathLike) -> None:
    """Before reading an HDF5 dataset: refuse it when the file does not hold its values: a chunk never written,
    or declared bytes more than those stored (uncompressed) or than MAX_HDF5_EXPANSION times them (compressed).
    Unwritten values would read as zeros (the fill value): a tiny file could make a reader allocate and fill
    gigabytes, within the memory limit, of values that are not there."""
    declared = dataset.size * dataset.dtype.itemsize
    if declared <= SMALL_DATASET_BYTES:
        return
    if dataset.chunks is not None:  # each chunk never written reads as the fill value, compressed or not
        chunks = math.prod(-(-side // chunk) for side, chunk in zip(dataset.shape, dataset.chunks, strict=True))
        written = dataset.id.get_num_chunks()
        if written < chunks:
            raise DataError(f"{where}: dataset '{dataset.name}' declares {dataset.shape} {dataset.dtype} "
                            f"({declared:,} bytes) but the file stores only {written:,} of its {chunks:,} chunks; "
                            "values never written are refused unread")
    stored = dataset.id.get_storage_size()
    compressed = dataset.id.get_create_plist().get_nfilters() > 0
    if stored < (declared / MAX_HDF5_EXPANSION if compressed else declared):
        bound = f" (compressed, it needs at least 1 byte stored per {MAX_HDF5_EXPANSION})" if compressed else ""
        raise DataError(f"{where}: dataset '{dataset.name}' declares {dataset.shape} {dataset.dtype} "
                        f"({declared:,} bytes) but the file stores only {stored:,} bytes of it{bound}; values never "
                        "written are refused unread")


def hdf5_get(group: h5py.Group, name: str, where: str | os.PathLike, depth: int = 0):
    """`group[name]` (a path inside the file), or None when nothing is there, without ever reading another file:
    an external link, a dataset whose values are stored in external files and a virtual dataset (its values
    come from other files) are refused, naming the file and the dataset. Soft links are followed here, one part
    of their path at a time, so that none of them leads out of the file either."""
    node = group.file if name.startswith("/") else group
    for part in (p for p in name.split("/") if p and p != "."):
        if not isinstance(node, h5py.Group):
            return None
        try:
            link = node.get(part, getlink=True)
        except (KeyError, TypeError, OSError, ValueError) as exc:
            raise DataError(f"{where}: '{part}' in '{node.name}' is a link siamrdm cannot follow "
                            f"({one_line(exc)})") from None
        if link is None:
            return None
        full = f"{node.name.rstrip('/')}/{part}"
        if isinstance(link, h5py.ExternalLink):
            raise DataError(f"{where}: '{full}' is an external link (to {link.path} in {link.filename}); only data "
                            "inside the file is read")
        if isinstance(link, h5py.SoftLink):
            if depth >= MAX_LINK_DEPTH:
                raise DataError(f"{where}: '{full}': more than {MAX_LINK_DEPTH} soft links in a row")
            node = hdf5_get(node, link.path, where, depth + 1)
        elif isinstance(link, h5py.HardLink):
            node = node.get(part)
        else:
            raise DataError(f"{where}: '{full}' is a link of a kind siamrdm does not follow")
        if node is None:
            return None
    if isinstance(node, h5py.Dataset):
        if node.is_virtual:
            raise DataError(f"{where}: dataset '{node.name}' is a virtual dataset (its values come from other "
                            "files); only data inside the file is read")
        if node.external:
            files = ", ".join(str(entry[0]) for entry in node.external)
            raise DataError(f"{where}: dataset '{node.name}' keeps its values in external files ({files}); only "
                            "data inside the file is read")
    return node


def hdf5_members(group: h5py.Group, where: str | os.PathLike) -> dict:
    """A group's members by name (datasets and groups), each checked as by `hdf5_get`; dangling links left out."""
    members = {name: hdf5_get(group, name, where) for name in group.keys()}
    return {name: item for name, item in members.items() if item is not None}


def check_real_dtype(dtype, where: str) -> None:
    """RDMs are real numbers: floats, or integers and booleans (converted to float64). Complex values, text and
    objects are refused, never cast: a cast drops the imaginary part with only a warning, and text that looks
    like numbers would be parsed. `where` names the file (and key) in the one-line DataError."""
    dtype = np.dtype(dtype)
    if dtype.kind in "fiub":
        return
    if dtype.kind == "c" or (dtype.names is not None and set(dtype.names) == {"real", "imag"}):  # v7.3 complex
        raise DataError(f"{where}: complex values (dtype {dtype}); RDMs must be real numbers")
    kind = {"U": "text", "S": "text", "O": "objects, e.g. a MATLAB cell array", "V": "records, e.g. a MATLAB struct",
            "M": "dates", "m": "time spans"}.get(dtype.kind, "not numbers")
    raise DataError(f"{where}: not a numeric array ({kind}, dtype {dtype}); RDMs must be real numbers")
