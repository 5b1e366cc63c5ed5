"""Reading images and brain RDMs.

Two entry points matter: `load_image_set` (a folder of images or an official stimulus .mat) and
`load_rdms` (.mat v5, .mat v7.3, .npy, .npz, and rsatoolbox's RDMs HDF5 files). Both validate what they
read and raise `DataError` with a one-line message that names the file and the problem; the CLI turns that
into exit code 2. `load_dataset` joins the two for your own data and checks that they agree.

Image order is RDM order. A folder is sorted naturally (img2 before img10), unless an explicit order
(a text file of image names, one per line) says otherwise; a stimulus .mat keeps its own order. An
rsatoolbox file that names its patterns (an `images`, `stimulus` or `names` descriptor) must list them in
the order of the images it is used with (by file name or stem: 'obj1' names obj1.png). Its RDMs are grouped
by a `subject` descriptor into (subjects, K, N, N) when every subject has K > 1 of them (sessions).

On top of them, `load_algonauts_set` knows the official Algonauts 2019 layout (see the data README).

Every reader is bounded: it reads only regular files (a FIFO or a device would block or never end), reads nothing
an HDF5 file keeps in other files (external links, external storage, virtual datasets), refuses images of more
than MAX_IMAGE_PIXELS pixels before decoding them, and checks from a file's headers, before reading its arrays,
that they fit in memory (`check_read_size`: MAX_READ_BYTES, the memory available, MAX_SQUARE_IMAGES) and, for
HDF5, that the file stores the values it declares (`check_hdf5_stored`). So a small crafted file can neither hang
a command nor make it allocate blindly. Images are reduced as they are read to the size the network needs
(`load_image_set`'s `size`), so a set of huge images never sits in memory at full size.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..errors import DataError as DataError  # re-exported: most callers know it from here
from ..rdm.core import square_rdm, upper_tri

DATA_ENV_VAR = "SIAMRDM_DATA"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# |d_ij - d_ji| and |d_ii| allowed, relative to an RDM's largest |d| (at least 8 ulps of its stored float type):
# rounding scales with the values, so an absolute tolerance refuses large RDMs and passes tiny asymmetric ones.
SYMMETRY_RTOL = 1e-5
MIN_IMAGES = 3  # an RDM of 2 images has one dissimilarity: nothing to rank
IMAGE_ORDER_FILE = "images.txt"  # the image order a run used, one name per line: an order file itself
RDM_SUFFIXES = (".mat", ".npy", ".npz", ".hdf5", ".h5")
RSATOOLBOX_SUFFIXES = (".hdf5", ".h5")
PICKLE_SUFFIXES = (".pkl", ".pickle")
# rsatoolbox pattern descriptors that name the images, in the order they are looked for.
IMAGE_DESCRIPTORS = ("images", "image", "stimulus", "stimuli", "names", "name", "filenames", "filename")
# rsatoolbox RDM descriptors that split a file's RDMs into keys (targets); without one, the file is one stack.
KEY_DESCRIPTORS = ("target", "roi")
# rsatoolbox RDM descriptors that group a key's RDMs by subject: (subjects, K, N, N) when each has K > 1 of them.
SUBJECT_DESCRIPTORS = ("subject", "subj")

# Target name -> (candidate files, newest first, and the key inside them). The official MEG file
# (subjects x 2 x N x N) is preferred when present; the data README explains the window-averaged one.
TARGETS: dict[str, tuple[tuple[str, ...], str]] = {
    "EVC": (("target_fmri.mat",), "EVC_RDMs"),
    "IT": (("target_fmri.mat",), "IT_RDMs"),
    "MEG_early": (("target_meg.mat", "target_meg_windowavg.mat"), "MEG_RDMs_early"),
    "MEG_late": (("target_meg.mat", "target_meg_windowavg.mat"), "MEG_RDMs_late"),
}
TARGET_NAMES = tuple(TARGETS)
# Official image sets: name -> (folder under the data root, image subfolder).
IMAGE_SETS: dict[str, tuple[str, str]] = {
    "92": ("Training_Data/92_Image_Set", "92images"),
    "118": ("Training_Data/118_Image_Set", "118images"),
    "78": ("Test_Data", "78images"),
}
TRAINING_SETS = ("92", "118")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --------------------------------------------------------------------------- bounded reading

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
        raise DataError(f"{path}: unreadable {what} ({_one_line(exc)})") from None
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
                            f"({_one_line(exc)})") from None
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


# --------------------------------------------------------------------------- data root


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else $SIAMRDM_DATA, else a DataError saying how to set either."""
    if root is None:
        root = os.environ.get(DATA_ENV_VAR)
    if not root:
        raise ConfigError("data", f"no data root: give the Algonauts 2019 folder (the one holding Training_Data/ "
                                  f"and Test_Data/), or set {DATA_ENV_VAR} to it")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: data root is not a directory")
    return path


# --------------------------------------------------------------------------- images


@dataclass
class ImageSet:
    """Images in RDM order: `images[i]` is an (H, W, 3) uint8 array; sizes may differ between images."""

    names: list[str]
    images: list[np.ndarray]
    source: Path

    def __len__(self) -> int:
        return len(self.images)


def _scale_to_uint8(values: np.ndarray, top: float) -> np.ndarray:
    """Map [0, top] linearly onto 0..255 (clipping outside it), rounding to the nearest level."""
    scaled = np.clip(values.astype(np.float64), 0.0, top) * (255.0 / top)
    return np.rint(scaled).astype(np.uint8)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 from any PIL mode, scaled by the image's real range.

    PIL's convert("RGB") clips 16-bit and 32-bit greyscale to 0..255, so a 16-bit PNG comes out almost all
    white. Those modes are scaled here: I;16* (uint16) by 65535 / 255 = 257; I (int32: 32-bit TIFFs, and
    16-bit PNGs in older PIL) by 257 when its values fit 16 bits, else by the non-negative int32 range; F
    (float32) from [0, 1], the usual range of float images. Every other mode (L, P, RGBA, LA, CMYK, 1, ...)
    is 8 bits per channel and goes through convert("RGB"): alpha is dropped, palettes are looked up.
    """
    if img.mode.startswith("I;16"):
        grey = _scale_to_uint8(np.asarray(img), 65535.0)
    elif img.mode == "I":
        values = np.asarray(img)
        fits_16_bits = values.size == 0 or (values.min() >= 0 and values.max() <= 65535)
        grey = _scale_to_uint8(values, 65535.0 if fits_16_bits else float(np.iinfo(np.int32).max))
    elif img.mode == "F":
        grey = _scale_to_uint8(np.nan_to_num(np.asarray(img), nan=0.0), 1.0)
    else:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    return np.repeat(grey[:, :, None], 3, axis=2)


def _check_pixels(path: Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"{path}: image of {width} x {height} pixels, more than the limit of {MAX_IMAGE_PIXELS:,} "
                        "pixels; make it smaller")


# Modes PIL's reduce() cannot average: converted first (a palette's indices are not intensities).
_UNREDUCIBLE_MODES = {"P": "RGB", "PA": "RGBA", "1": "L", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I"}


def _reduced(img: Image.Image, size: int) -> Image.Image:
    """`img` shrunk by whole factors (box averages, each axis on its own) while both sides stay at least
    2 * `size`: the network resizes every image to `size` x `size` with an antialiased filter, so this changes
    its input little, and nothing for images below 4 * `size` a side."""
    factors = (max(1, img.width // (2 * size)), max(1, img.height // (2 * size)))
    if factors == (1, 1):
        return img
    if img.mode in _UNREDUCIBLE_MODES:
        img = img.convert(_UNREDUCIBLE_MODES[img.mode])
    return img.reduce(factors)


def _read_image(path: Path, size: int | None = None) -> np.ndarray:
    """An image as (H, W, 3) uint8; its size is checked (MAX_IMAGE_PIXELS) from its header, before decoding.
    With `size` (the side the network resizes images to), a large image is reduced as it is read (`_reduced`;
    a JPEG decoded at a fraction of its size by PIL's draft), so only this one image is ever held at full size.
    PIL's own decompression-bomb check sits above that limit, so its warning is not shown."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # lazy: only the header is read
                _check_pixels(path, *img.size)
                if size is None:
                    img.load()
                    return _to_rgb(img)
                img.draft(None, (2 * size, 2 * size))  # JPEG only: decodes at 1/2 to 1/8 scale, sides >= these
                img.load()
                return _to_rgb(_reduced(img, size))
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image larger than the limit of {MAX_IMAGE_PIXELS:,} pixels "
                        f"({_one_line(exc)})") from None
    except Exception as exc:  # PIL raises many types for corrupt or truncated files
        raise DataError(f"{path}: unreadable image ({_one_line(exc)})") from None


def check_image_name(name: str, where: str | os.PathLike) -> None:
    """Refuse an image name that an order file cannot list: `fit` writes the names of a run's images, one per line,
    to its images.txt, which --order reads back, skipping lines that start with '#' and trimming spaces. A name
    holding a line break (a newline, U+2028, ...), starting with '#' or with spaces around it would come back
    as another name, or none, so it is refused as the images are listed, before any run folder exists: renaming
    the file is easy, an order file that quoted names would be a second format to read."""
    if name.splitlines() != [name] or name.strip() != name or name.startswith("#"):
        raise DataError(f"{where}: image name {name!r} cannot be listed in an order file (one name a line, '#' "
                        "starts a comment, spaces around a name are trimmed); rename it")


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder (regular files with an image suffix), sorted naturally (img2 before img10).
    A name that is not valid UTF-8 is refused here: it could not be written to an order file or a report; nor
    can one that `check_image_name` refuses."""
    files = []
    for p in folder.iterdir():
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{folder}: image file name {os.fsencode(p.name)!r} is not valid UTF-8; rename it") \
                from None
        check_image_name(p.name, folder)
        files.append(p)
    return sorted(files, key=lambda p: natural_key(p.name))


def _check_image_count(images: ImageSet) -> ImageSet:
    if len(images) < MIN_IMAGES:
        raise DataError(
            f"{images.source}: {len(images)} image{'s' if len(images) != 1 else ''}, "
            f"an RDM needs at least {MIN_IMAGES}"
        )
    seen: set[str] = set()
    repeated = next((name for name in images.names if name in seen or seen.add(name)), None)
    if repeated is not None:  # names identify images (order files, caches, rsatoolbox descriptors)
        raise DataError(f"{images.source}: image name '{repeated}' appears more than once; names must be unique")
    return images


def _uint8_pixels(pixels: np.ndarray, where: str) -> np.ndarray:
    """Stimulus pixels as uint8. Other numbers must be finite and within 0-255: a cast would wrap negative values
    around, and floats in 0-1 (another convention) would become a black image and a constant RDM."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind not in "uif":
        raise DataError(f"{where}: {pixels.dtype} values, expected 0-255 pixel numbers (uint8)")
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{where}: values outside 0-255 (or not finite), expected uint8 pixels")
    if pixels.dtype.kind == "f" and 0 < pixels.max() <= 1:
        raise DataError(f"{where}: float values in 0-1; give 0-255 pixels (uint8), as the official files do")
    return np.rint(pixels).astype(np.uint8)


def _image_set_from_stimulus_mat(path: Path) -> ImageSet:
    check_read_size(path, {}, extra_bytes=sum(v.stored_bytes for v in _mat_variables(path).values()))
    mat = _read_mat_v5(path)
    if "visual_stimuli" not in mat:
        raise DataError(f"{path}: missing key 'visual_stimuli' (keys: {', '.join(_public_keys(mat)) or 'none'})")
    stimuli = np.asarray(mat["visual_stimuli"]).ravel()
    if stimuli.dtype.names is None or "pixels" not in stimuli.dtype.names:
        raise DataError(f"{path}: 'visual_stimuli' has no field 'pixels'")
    names, images = [], []
    for i, entry in enumerate(stimuli):
        pixels = np.asarray(entry["pixels"])
        if pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
            raise DataError(f"{path}: visual_stimuli({i + 1}).pixels has shape {pixels.shape}, expected (H, W, 3)")
        images.append(_uint8_pixels(pixels, f"{path}: visual_stimuli({i + 1}).pixels"))
        name = entry["names"] if "names" in stimuli.dtype.names else f"image_{i + 1}"
        names.append(str(np.asarray(name).ravel()[0]) if np.asarray(name).size else f"image_{i + 1}")
        check_image_name(names[-1], f"{path}: visual_stimuli({i + 1}).names")
    return _check_image_count(ImageSet(names, images, path))


def natural_key(name: str) -> tuple:
    """Sort key that orders the numbers in names by value (img2 < img10), letters case-insensitively; ties
    (img01, img1) fall back to the plain string, so the order is total and the same on every system."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if k % 2 else p.casefold() for k, p in enumerate(parts)), name


def read_image_order(path: str | os.PathLike) -> list[str]:
    """Image names from a text file, one per line (blank lines and lines starting with # are skipped)."""
    path = check_regular_file(Path(path), "order file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable order file ({_one_line(exc)})") from None
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not names:
        raise DataError(f"{path}: order file lists no image names")
    return names


def shown_names(names: Sequence[str], limit: int = 3) -> str:
    """The first names of a list and how many more, for a one-line message."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def image_stem(name: str) -> str:
    """An image's name without its image suffix ('obj1.png' -> 'obj1'); other names unchanged ('a.b' stays)."""
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix and suffix.lower() in IMAGE_SUFFIXES else name


def pattern_names(names: Sequence[str]) -> list[str]:
    """The names an RDM file gives its patterns (images): their stems, as rsatoolbox users name conditions
    ('obj1'), unless two images share a stem (obj1.png, obj1.jpg), when the file names are kept."""
    stems = [image_stem(n) for n in names]
    return stems if len(set(stems)) == len(stems) else list(names)


def match_names(listed: Sequence[str], names: Sequence[str], where: str, among: str) -> list[int]:
    """Where each listed name is among `names` (a listed name is an image's file name, or its stem when that is
    unique; a file name also names the image called by its stem: 'obj1.png' is 'obj1'), checking that the
    list is a complete order: every name known, none twice, no image left out.

    `where` starts the error message (the order file, or an RDM file's descriptor); `among` says where the
    images are (their folder).
    """
    exact = {name: k for k, name in enumerate(names)}
    stems: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        stems.setdefault(Path(name).stem, []).append(k)
    index, unknown, seen = [], [], set()
    for name in listed:
        if name in exact:
            k = exact[name]
        elif len(stems.get(name, ())) == 1:
            k = stems[name][0]
        elif Path(name).stem in exact:  # a file name listed ('obj1.png') for an image named by its stem ('obj1')
            k = exact[Path(name).stem]
        elif name in stems:
            raise DataError(f"{where}: '{name}' matches several images in {among} "
                            f"({', '.join(names[k] for k in stems[name])}); give the file name")
        else:
            unknown.append(name)
            continue
        if k in seen:
            raise DataError(f"{where}: lists '{names[k]}' twice")
        seen.add(k)
        index.append(k)
    if unknown:
        raise DataError(f"{where}: lists {shown_names(unknown)}, not among the {len(names)} images in {among}")
    left_out = [names[k] for k in range(len(names)) if k not in seen]
    if left_out:
        raise DataError(f"{where}: does not list {shown_names(left_out)} of the {len(names)} images in {among}")
    return index


def _resolve_order(order: str | os.PathLike | Sequence[str]) -> tuple[list[str], str]:
    """(names, how to name the order in a message): a file path, or a list of names given in code."""
    if isinstance(order, str | os.PathLike):
        return read_image_order(order), str(order)
    names = [str(n) for n in order]
    return names, f"order ({len(names)} names)"


def load_image_set(path: str | os.PathLike, order: str | os.PathLike | Sequence[str] | None = None,
                   size: int | None = None) -> ImageSet:
    """Images in RDM order: a folder (sorted naturally, img2 before img10) or an official stimulus .mat
    (`visual_stimuli`, in its own order). `order`, an order file or a list of names, overrides either: it
    must name every image once.

    At least 3 images (an RDM of fewer has nothing to rank); 16-bit and float images are scaled by their
    real range, every mode becomes (H, W, 3) uint8. `size`, the side the network resizes images to, has the
    files of a folder reduced as they are read (to at least twice it a side), so a folder of huge images never
    sits in memory at full size; without it, images are kept as they are.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such image folder or file")
    listed, where = _resolve_order(order) if order is not None else (None, "")
    if not path.is_dir():
        check_regular_file(path, "image folder or file")
        if path.suffix.lower() != ".mat":
            raise DataError(f"{path}: expected a folder of images or a stimulus .mat file")
        images = _image_set_from_stimulus_mat(path)
        if listed is not None:
            index = match_names(listed, images.names, where, str(path))
            images = ImageSet([images.names[k] for k in index], [images.images[k] for k in index], path)
        return images
    files = image_files(path)
    if not files:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in folder")
    if listed is not None:
        files = [files[k] for k in match_names(listed, [p.name for p in files], where, str(path))]
    return _check_image_count(ImageSet([p.name for p in files], [_read_image(p, size) for p in files], path))


# --------------------------------------------------------------------------- RDM files


def _public_keys(mat: dict) -> list[str]:
    return [k for k in mat if not k.startswith("__")]


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


def _mat_variables(path: Path) -> dict[str, _MatVariable]:
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
        raise DataError(f"{path}: unreadable .mat file ({_one_line(exc)})") from None


def _read_mat_v5(path: Path, names: Sequence[str] | None = None) -> dict:
    """A .mat file's variables (all, or `names`); the caller has checked their size (`_mat_variables`)."""
    import scipy.io

    try:
        return scipy.io.loadmat(path, variable_names=None if names is None else list(names))
    except Exception as exc:
        raise DataError(f"{path}: unreadable .mat file ({_one_line(exc)})") from None


def _npy_shape(f) -> tuple[int, ...]:
    """The shape in a .npy header (the stream is left after it)."""
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not read (1.0 and 2.0 are)")
    shape = tuple(int(d) for d in readers[version](f)[0])
    if any(d < 0 for d in shape):
        raise ValueError(f"its header declares the shape {shape}, with a negative dimension")
    return shape


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The members of a .npz file (keys as numpy names them) and their shapes, from their .npy headers."""
    shapes = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            with z.open(info) as member:
                shapes[key] = _npy_shape(member)
    return shapes


def _chosen(shapes: dict[str, tuple[int, ...]], keys: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    return dict(shapes) if keys is None else {k: shapes[k] for k in keys if k in shapes}


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
            with open(path, "rb") as f:
                shapes = _chosen({"": _npy_shape(f)}, keys)
            if not read:
                return shapes
            check_read_size(path, shapes)
            return {"": np.load(path, allow_pickle=False)} if shapes else {}
        if suffix == ".npz":
            shapes = _chosen(_npz_shapes(path), keys)
            if not read:
                return shapes
            check_read_size(path, shapes)
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in shapes}
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                if _is_rsatoolbox(f, path):
                    return _read_rsatoolbox(f, path, keys, read)
                if suffix in RSATOOLBOX_SUFFIXES:
                    raise DataError(f"{path}: an HDF5 file, but not rsatoolbox RDMs (no 'dissimilarities' dataset "
                                    "beside a 'pattern_descriptors' group)")
                datasets = {k: v for k, v in hdf5_members(f, path).items()
                            if isinstance(v, h5py.Dataset) and not k.startswith("#")}
                # MATLAB v7.3: h5py gives the axes reversed
                shapes = _chosen({k: tuple(reversed(v.shape or ())) for k, v in datasets.items()}, keys)
                if not read:
                    return shapes
                check_read_size(path, shapes)
                for k in shapes:
                    check_hdf5_stored(datasets[k], path)
                return {k: np.asarray(datasets[k]).transpose() for k in shapes}
        if suffix in RSATOOLBOX_SUFFIXES:
            raise DataError(f"{path}: not an HDF5 file (rsatoolbox RDMs are saved with file_type='hdf5')")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable file ({_one_line(exc)})") from None
    variables = {k: v for k, v in _mat_variables(path).items() if not k.startswith("__") and v.kind != "sparse"}
    shapes = _chosen({k: v.shape for k, v in variables.items()}, keys)
    if not read:
        return shapes
    other = next((k for k in shapes if variables[k].kind not in MAT_ARRAY_KINDS), None)
    if other is not None:
        raise DataError(f"{path}:{other}: a MATLAB {variables[other].kind} array, not a numeric array")
    if not shapes:
        return {}
    # scipy decompresses every compressed variable it passes, even one not asked for
    check_read_size(path, shapes, extra_bytes=sum(v.stored_bytes for v in variables.values() if v.compressed))
    mat = _read_mat_v5(path, list(shapes))
    return {k: v for k, v in mat.items() if k in shapes and isinstance(v, np.ndarray)}


# --------------------------------------------------------------------------- rsatoolbox RDMs files
# rsatoolbox's RDMs.save(path, file_type='hdf5') writes: a dataset 'dissimilarities' (n_rdm, N(N-1)/2), the
# upper triangles in row-major order (scipy's squareform, as `rdm.upper_tri`); groups 'descriptors',
# 'rdm_descriptors' (one value per RDM) and 'pattern_descriptors' (one value per image), whose values are
# datasets (strings as bytes) or attributes; and 'dissimilarity_measure' (an attribute, or an empty dataset).
# They are read with h5py alone, so rsatoolbox is not needed to read them.


def _is_rsatoolbox(f: h5py.File, path: Path) -> bool:
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


def _key_name(path: Path, key: str) -> str:
    """A file's key as messages name it: 'file:KEY', or the file alone for its one unkeyed array."""
    return f"{path}:{key}" if key else str(path)


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
        raise DataError(f"{_key_name(path, key)}: RDMs grouped by '{by}' are unequal ({shown}{more} RDMs); every "
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


def _read_rsatoolbox(f: h5py.File, path: Path, keys: Sequence[str] | None = None, read: bool = True) -> dict:
    """The file's RDMs as (N, N) (a key of one RDM), (subjects, N, N) or, grouped by subject with K > 1 RDMs
    each, (subjects, K, N, N) arrays; every key or those of `keys`; with `read` False only their shapes. Only
    the rows of the keys asked for are read."""
    layout = _rsatoolbox_layout(f, path)
    vectors, n = layout.vectors, layout.n
    shapes = _chosen({key: layout.shape(key) for key in layout.rows}, keys)
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
            return _rsatoolbox_layout(f, path) if _is_rsatoolbox(f, path) else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable file ({_one_line(exc)})") from None


def rdm_grouping(path: str | os.PathLike) -> dict[str, str]:
    """How an rsatoolbox file's RDMs are grouped, per key, one line each ("own.hdf5: 4 subjects x 2 RDMs each
    (grouped by 'subject')"); empty for other files. From the descriptors: no RDM is read."""
    path = Path(path)
    layout = _file_layout(path)
    if layout is None:
        return {}
    lines = {}
    for key, (subjects, k) in layout.groups.items():
        what = f"{subjects} subject{'s' if subjects != 1 else ''}"
        how = f" x {k} RDM{'s' if k != 1 else ''} each (grouped by '{layout.by}')" if layout.by else \
            " (one RDM each: no 'subject' descriptor)"
        lines[key] = f"{_key_name(Path(path.name), key)}: {what}{how}"
    return lines


_ANNOUNCED: set[tuple[str, str]] = set()


def mark_grouping_said(path: str | os.PathLike, keys) -> None:
    """The grouping of these keys of `path` is said by the caller (data-info's description): no note for it."""
    _ANNOUNCED.update((str(Path(path).resolve()), k) for k in keys)
_NOTES: list[str] = []


def _announce_grouping(path: Path, keys: Sequence[str]) -> None:
    """Note once per file and key that an rsatoolbox file's subjects hold K > 1 RDMs each: they are read as
    (subjects, K, N, N), not as K times the subjects. The notes wait in `take_notes` (the CLI prints them on
    stderr once a command's input is read, never beside an error's one line)."""
    layout = _file_layout(path)
    if layout is None:
        return
    lines = rdm_grouping(path)
    for key in keys:
        token = (str(path.resolve()), key)
        if key in layout.groups and layout.groups[key][1] > 1 and token not in _ANNOUNCED:
            _ANNOUNCED.add(token)
            _NOTES.append(lines[key])


def take_notes(reset: bool = False) -> list[str]:
    """The notes on how files were read (rsatoolbox subjects grouped by their descriptor) since the last call;
    `reset` also forgets which files were noted (a new command notes them again)."""
    notes = list(_NOTES)
    _NOTES.clear()
    if reset:
        _ANNOUNCED.clear()
    return notes


def read_rdm_names(path: str | os.PathLike) -> tuple[str, list[str]] | None:
    """(descriptor, image names) of an rsatoolbox RDMs file that names its patterns, else None (other files
    carry no names)."""
    path = Path(path)
    if path.suffix.lower() not in (".mat", *RSATOOLBOX_SUFFIXES) or not path.is_file() or not h5py.is_hdf5(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            if not _is_rsatoolbox(f, path):
                return None
            n = _rsatoolbox_layout(f, path).n
            patterns = _descriptors(hdf5_get(f, "pattern_descriptors", path), n, "patterns (images)", path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable file ({_one_line(exc)})") from None
    for name in IMAGE_DESCRIPTORS:
        if name in patterns:
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


def _rsatoolbox_rows(path: Path, rdms: dict[str, np.ndarray], names: Sequence[str] | None) -> dict[str, np.ndarray]:
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


def _write_rsatoolbox(path: Path, rows: dict[str, np.ndarray], measure: str) -> None:
    """rsatoolbox's RDMs HDF5 layout (see above), the image names as the 'images' pattern descriptor. Built in
    memory and written in one go: HDF5 that fails to write its own file (a full disk) crashes the process as it
    closes it, where a plain write fails with an OSError that atomic_path reports."""
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
    rows = _rsatoolbox_rows(Path("to_rsatoolbox"), stacks, names)
    rdm_descriptors = {"target": [t.decode("utf-8") for t in rows["target"]],
                       "subject": [int(v) for v in rows["subject"]]}
    n = (1 + math.isqrt(1 + 8 * rows["dissimilarities"].shape[1])) // 2
    patterns = {"index": list(range(n))}
    if rows["images"] is not None:
        patterns["images"] = [m.decode("utf-8") for m in rows["images"]]
    return RDMs(rows["dissimilarities"], dissimilarity_measure=measure, rdm_descriptors=rdm_descriptors,
                pattern_descriptors=patterns)


def list_rdm_keys(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Keys of an RDM file with their array shapes (the key of a .npy is ''), from the file's headers: no array
    is read."""
    return _read_rdm_file(Path(path), read=False)


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


def symmetry_tolerance(scale: float, dtype) -> float:
    """The largest |d_ij - d_ji| (and |d_ii|) accepted in an RDM whose largest |d| is `scale`, stored as
    `dtype`: `SYMMETRY_RTOL` of the scale, or 8 ulps of the stored float type where that is more."""
    dtype = np.dtype(dtype)
    rtol = max(SYMMETRY_RTOL, 8 * float(np.finfo(dtype).eps)) if dtype.kind == "f" else SYMMETRY_RTOL
    return scale * rtol


def validate_rdms(rdms: np.ndarray, where: str, n_images: int | None = None) -> np.ndarray:
    """Check an (N, N), (S, N, N) or (S, K, N, N) stack of RDMs; return it as float64.

    `where` names the file and key in the error message. Besides real values (`check_real_dtype`), shape,
    finiteness, symmetry and a zero diagonal (to `symmetry_tolerance`, relative to each RDM's magnitude), no
    RDM in the stack may have a constant upper triangle: its Spearman correlation (and so the score and the
    noise ceiling) would be NaN.
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
    _check_not_constant(rdms, where)
    return rdms


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


def load_rdms(path: str | os.PathLike, key: str | None = None, n_images: int | None = None,
              names: Sequence[str] | None = None) -> np.ndarray:
    """One validated RDM array from a file. `key` may be omitted when the file holds a single array (it is
    ignored for .npy files and for rsatoolbox files without a 'target'/'roi' RDM descriptor). With `names`
    (the images, in order), an rsatoolbox file that names its images must name these, in this order."""
    path = Path(path)
    keys = list_rdm_keys(path)
    if key is None or list(keys) == [""]:
        if len(keys) != 1:
            raise DataError(f"{path}: holds several arrays ({', '.join(keys)}); name one with a key")
        key = next(iter(keys))
    elif key not in keys:
        raise DataError(f"{path}: missing key '{key}' (keys: {', '.join(keys) or 'none'})")
    value = _read_rdm_file(path, [key])[key]  # only the array asked for
    rdms = validate_rdms(value, _key_name(path, key), n_images)
    _announce_grouping(path, [key])
    if names is not None:
        check_rdm_names(path, names)
    return rdms


def load_rdm_dict(path: str | os.PathLike, n_images: int | None = None,
                  names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every array of a file that is a valid RDM stack, keyed by name (a submission or a target file); with
    `names`, checked against the file's own image names as in `load_rdms`."""
    path = Path(path)
    arrays = _read_rdm_file(path)
    if not arrays:
        raise DataError(f"{path}: holds no arrays")
    rdms = {k: validate_rdms(v, _key_name(path, k), n_images) for k, v in arrays.items()}
    _announce_grouping(path, list(rdms))
    if names is not None:
        check_rdm_names(path, names)
    return rdms


def load_dataset(images: str | os.PathLike, rdms: str | os.PathLike, key: str | None = None,
                 order: str | os.PathLike | Sequence[str] | None = None, name: str | None = None,
                 size: int | None = None) -> BrainDataset:
    """Your own data as one image set with its brain RDMs: `images` (a folder or stimulus .mat, in `order`
    when given, reduced as read for a network of input `size`: `load_image_set`), the RDM array `key` of the
    file `rdms` (which must cover those images; an rsatoolbox file that names its images must list them in
    the same order). The target is called `key`, or, for a single-array file, by the file's own key or name."""
    image_set = load_image_set(images, order, size)
    array = load_rdms(rdms, key, n_images=len(image_set))
    check_rdm_names(rdms, image_set.names, among=str(images))
    if key is None:
        key = next(iter(list_rdm_keys(rdms))) or Path(rdms).stem
    return BrainDataset(name or Path(images).stem, image_set, {key: array})


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
    rows = _rsatoolbox_rows(path, rdms, names) if suffix in RSATOOLBOX_SUFFIXES else {}
    import scipy.io

    from .files import atomic_path  # files.py builds on this module's DataError

    with atomic_path(path, replace_existing) as tmp:
        if suffix == ".mat":
            scipy.io.savemat(tmp, {k: np.asarray(v, dtype=np.float64) for k, v in rdms.items()})
        elif suffix == ".npz":
            np.savez(tmp, **{k: np.asarray(v, dtype=np.float64) for k, v in rdms.items()})
        elif suffix == ".npy":
            np.save(tmp, np.asarray(next(iter(rdms.values())), dtype=np.float64))
        else:
            _write_rsatoolbox(tmp, rows, measure)
    return path


# --------------------------------------------------------------------------- Algonauts layout


@dataclass
class BrainDataset:
    """One image set with its brain RDMs: `targets[name]` is (S, N, N) or (S, K, N, N)."""

    name: str
    images: ImageSet
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    official: bool = False  # read from the Algonauts layout (load_algonauts_set): the official ceilings apply

    def __len__(self) -> int:
        return len(self.images)


def target_key(target: str, official: bool) -> str:
    """A target's key in files and ceilings: the challenge's own key ('EVC' -> 'EVC_RDMs') for the official
    sets (the submission format; their ceilings are published), and your key unchanged for your own data, even
    one named like a challenge target (written as you named it; its ceiling computed from its subjects)."""
    return TARGETS[target][1] if official and target in TARGETS else target


def target_file(set_dir: Path, target: str) -> Path:
    """The file that holds `target` in an official set folder (the official MEG file when present)."""
    if target not in TARGETS:
        raise DataError(f"unknown target '{target}' (choose from {', '.join(TARGET_NAMES)})")
    candidates, _ = TARGETS[target]
    for name in candidates:
        if (set_dir / name).is_file():
            return set_dir / name
    raise DataError(f"{set_dir / candidates[-1]}: no such file (needed for target {target})")


def image_set_dir(root: Path, set_name: str) -> Path:
    if set_name not in IMAGE_SETS:
        raise DataError(f"unknown image set '{set_name}' (choose from {', '.join(IMAGE_SETS)})")
    folder, images = IMAGE_SETS[set_name]
    return root / folder / images


def load_algonauts_set(
    root: str | os.PathLike | None, set_name: str, targets: tuple[str, ...] | list[str] = TARGET_NAMES,
    size: int | None = None,
) -> BrainDataset:
    """An official set ('92', '118' or '78') with the requested targets ('78' has none); its images reduced as
    read for a network of input `size` (see `load_image_set`)."""
    root = resolve_data_root(root)
    images = load_image_set(image_set_dir(root, set_name), size=size)
    dataset = BrainDataset(set_name, images, official=True)
    if set_name in TRAINING_SETS:
        set_dir = root / IMAGE_SETS[set_name][0]
        for target in targets:
            path = target_file(set_dir, target)
            dataset.targets[target] = load_rdms(path, TARGETS[target][1], n_images=len(images))
    return dataset


def _is_image(path: Path) -> bool:
    """Whether PIL recognises the file as an image, from its header (nothing is decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path):
                return True
    except Image.DecompressionBombError:  # an image, if one too large to train on
        return True
    except Exception:
        return False


def describe_data_root(root: str | os.PathLike | None) -> dict:
    """What `siamrdm data-info` prints: the image sets found, their image counts (files PIL recognises; others with
    an image suffix are listed as 'not_images'), RDM files, keys and shapes, all from headers: no array is
    read."""
    root = resolve_data_root(root)
    info: dict = {"root": str(root), "sets": {}}
    for set_name, (folder, images) in IMAGE_SETS.items():
        set_dir = root / folder
        if not (set_dir / images).is_dir():
            continue
        listed = image_files(set_dir / images)
        not_images = [p.name for p in listed if not _is_image(p)]
        files = {p.name: list_rdm_keys(p) for p in sorted(set_dir.glob("*.mat")) if p.name != f"{images}.mat"}
        info["sets"][set_name] = {"images": len(listed) - len(not_images), "folder": str(set_dir / images),
                                  "rdm_files": files}
        if not_images:
            info["sets"][set_name]["not_images"] = not_images
    if not info["sets"]:
        raise DataError(f"{root}: no Algonauts image sets found (expected Training_Data/ and Test_Data/)")
    return info
