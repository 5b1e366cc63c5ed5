"""Reading images: a folder of image files or an official stimulus .mat, in RDM order (`load_image_set`).

Image order is RDM order. A folder is sorted naturally (img2 before img10), unless an explicit order
(a text file of image names, one per line) says otherwise; a stimulus .mat keeps its own order. Images of more
than MAX_IMAGE_PIXELS pixels are refused before they are decoded, and images are reduced as they are read to
the size the network needs (`load_image_set`'s `size`), so a set of huge images never sits in memory at full
size. Errors are `DataError`s with a one-line message that names the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .arrayfiles import mat_variables, read_mat_v5
from .limits import MAX_IMAGE_PIXELS, check_read_size, check_regular_file, one_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MIN_IMAGES = 3  # an RDM of 2 images has one dissimilarity: nothing to rank
IMAGE_ORDER_FILE = "images.txt"  # the image order a run used, one name per line: an order file itself


@dataclass
class ImageSet:
    """Images in RDM order: `images[i]` is an (H, W, 3) uint8 array; sizes may differ between images."""

    names: list[str]
    images: list[np.ndarray]
    source: Path

    def __len__(self) -> int:
        return len(self.images)

    def digests(self) -> list[str]:
        """A short hash of each image's pixels and shape: what caches of features computed from the pixels are
        keyed by besides the file's name, since one file can be read whole or reduced (`load_image_set`'s
        `size`), and the two must not share an entry. Computed afresh each call (the lists can be changed)."""
        return [_pixel_digest(image) for image in self.images]


def _pixel_digest(image: np.ndarray) -> str:
    """blake2b (8 bytes) of an image's shape, dtype and pixels."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(repr((image.shape, image.dtype.str)).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


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


def check_pixels(path: Path, width: int, height: int) -> None:
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


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """An image as (H, W, 3) uint8; its size is checked (MAX_IMAGE_PIXELS) from its header, before decoding.
    With `size` (the side the network resizes images to), a large image is reduced as it is read (`_reduced`;
    a JPEG decoded at a fraction of its size by PIL's draft), so only this one image is ever held at full size.
    PIL's own decompression-bomb check sits above that limit, so its warning is not shown."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # lazy: only the header is read
                check_pixels(path, *img.size)
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
                        f"({one_line(exc)})") from None
    except Exception as exc:  # PIL raises many types for corrupt or truncated files
        raise DataError(f"{path}: unreadable image ({one_line(exc)})") from None


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
    """Stimulus pixels as uint8. A binary image (MATLAB logical) spans the whole range, False black and True
    white (0 and 255, as `_to_rgb` scales other depths by their real range): read as the 0 and 1 it is stored as,
    it would be a nearly black image. Other numbers must be finite and within 0-255: a cast would wrap negative
    values around, and floats in 0-1 (another convention) would become a black image and a constant RDM."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * np.uint8(255)
    if pixels.dtype.kind not in "uif":
        raise DataError(f"{where}: {pixels.dtype} values, expected 0-255 pixel numbers (uint8)")
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{where}: values outside 0-255 (or not finite), expected uint8 pixels")
    if pixels.dtype.kind == "f" and 0 < pixels.max() <= 1:
        raise DataError(f"{where}: float values in 0-1; give 0-255 pixels (uint8), as the official files do")
    return np.rint(pixels).astype(np.uint8)


def _public_keys(mat: dict) -> list[str]:
    return [k for k in mat if not k.startswith("__")]


def _image_set_from_stimulus_mat(path: Path) -> ImageSet:
    # Read by MATLAB class (a logical image as bool): an array of doubles MATLAB stored as uint8 becomes float64,
    # 8 times its stored bytes, beside the stored bytes read
    check_read_size(path, {}, extra_bytes=9 * sum(v.stored_bytes for v in mat_variables(path).values()))
    mat = read_mat_v5(path, matlab_classes=True)
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
        name = np.asarray(entry["names"] if "names" in stimuli.dtype.names else f"image_{i + 1}").ravel()
        names.append(_stimulus_name(name[0]) if name.size else f"image_{i + 1}")
        check_image_name(names[-1], f"{path}: visual_stimuli({i + 1}).names")
    return _check_image_count(ImageSet(names, images, path))


def _stimulus_name(value: object) -> str:
    """A stimulus name as text. Read by MATLAB class, a number MATLAB stored compactly comes back as a double:
    a whole one is written as the integer it names (image 3 is '3', not '3.0')."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


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
        raise DataError(f"{path}: unreadable order file ({one_line(exc)})") from None
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


def resolve_order(order: str | os.PathLike | Sequence[str]) -> tuple[list[str], str]:
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
    listed, where = resolve_order(order) if order is not None else (None, "")
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
    return _check_image_count(ImageSet([p.name for p in files], [read_image(p, size) for p in files], path))


def is_image(path: Path) -> bool:
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
