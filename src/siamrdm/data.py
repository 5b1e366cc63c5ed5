"""Reading images and brain RDMs.

Two entry points matter: `load_image_set` (a folder of images or an official stimulus .mat) and
`load_rdms` (.mat v5, .mat v7.3, .npy, .npz). Both validate what they read and raise `DataError`
with a one-line message that names the file and the problem; the CLI turns that into exit code 2.

On top of them, `load_algonauts_set` knows the official Algonauts 2019 layout (see the data README).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

from .rdm import upper_tri

DATA_ENV_VAR = "SIAMRDM_DATA"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SYMMETRY_TOLERANCE = 1e-5
MIN_IMAGES = 3  # an RDM of 2 images has one dissimilarity: nothing to rank

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


class DataError(ValueError):
    """Bad input. The message is one line naming the file and the problem."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --------------------------------------------------------------------------- data root


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else $SIAMRDM_DATA, else a DataError saying how to set either."""
    if root is None:
        root = os.environ.get(DATA_ENV_VAR)
    if not root:
        raise DataError(
            f"no data root: pass --data ROOT or set {DATA_ENV_VAR} to the Algonauts 2019 folder "
            "(the one holding Training_Data/ and Test_Data/)"
        )
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


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except Exception as exc:  # PIL raises many types for corrupt or truncated files
        raise DataError(f"{path}: unreadable image ({_one_line(exc)})") from None


def _check_image_count(images: ImageSet) -> ImageSet:
    if len(images) < MIN_IMAGES:
        raise DataError(
            f"{images.source}: {len(images)} image{'s' if len(images) != 1 else ''}, "
            f"an RDM needs at least {MIN_IMAGES}"
        )
    return images


def _image_set_from_stimulus_mat(path: Path) -> ImageSet:
    mat = _read_mat_v5(path)
    if "visual_stimuli" not in mat:
        raise DataError(f"{path}: missing key 'visual_stimuli' (keys: {', '.join(_public_keys(mat)) or 'none'})")
    stimuli = np.asarray(mat["visual_stimuli"]).ravel()
    if stimuli.dtype.names is None or "pixels" not in stimuli.dtype.names:
        raise DataError(f"{path}: 'visual_stimuli' has no field 'pixels'")
    names, images = [], []
    for i, entry in enumerate(stimuli):
        pixels = np.asarray(entry["pixels"])
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise DataError(f"{path}: visual_stimuli({i + 1}).pixels has shape {pixels.shape}, expected (H, W, 3)")
        images.append(pixels.astype(np.uint8))
        name = entry["names"] if "names" in stimuli.dtype.names else f"image_{i + 1}"
        names.append(str(np.asarray(name).ravel()[0]) if np.asarray(name).size else f"image_{i + 1}")
    return _check_image_count(ImageSet(names, images, path))


def load_image_set(path: str | os.PathLike) -> ImageSet:
    """Images from a folder (sorted by file name) or from an official stimulus .mat (`visual_stimuli`).

    At least 3 images (an RDM of fewer has nothing to rank); 16-bit and float images are scaled by their
    real range, every mode becomes (H, W, 3) uint8.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such image folder or file")
    if path.is_file():
        if path.suffix.lower() == ".mat":
            return _image_set_from_stimulus_mat(path)
        raise DataError(f"{path}: expected a folder of images or a stimulus .mat file")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in folder")
    return _check_image_count(ImageSet([p.name for p in files], [_read_image(p) for p in files], path))


# --------------------------------------------------------------------------- RDM files


def _public_keys(mat: dict) -> list[str]:
    return [k for k in mat if not k.startswith("__")]


def _read_mat_v5(path: Path) -> dict:
    try:
        return scipy.io.loadmat(path)
    except Exception as exc:
        raise DataError(f"{path}: unreadable .mat file ({_one_line(exc)})") from None


def _read_rdm_file(path: Path) -> dict[str, np.ndarray]:
    """All numeric arrays in a file, keyed by name, axes in the order MATLAB/numpy users expect."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        if suffix != ".mat":
            raise DataError(f"{path}: unsupported RDM file type '{suffix}' (use .mat, .npy or .npz)")
        if h5py.is_hdf5(path):  # MATLAB v7.3: h5py returns the axes reversed
            with h5py.File(path, "r") as f:
                return {
                    k: np.asarray(f[k]).transpose()
                    for k in f.keys()
                    if isinstance(f[k], h5py.Dataset) and not k.startswith("#")
                }
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable file ({_one_line(exc)})") from None
    mat = _read_mat_v5(path)
    return {k: v for k, v in mat.items() if not k.startswith("__") and isinstance(v, np.ndarray)}


def list_rdm_keys(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Keys of a .mat/.npz/.npy file with their array shapes (the key of a .npy is '')."""
    return {k: tuple(v.shape) for k, v in _read_rdm_file(Path(path)).items()}


def validate_rdms(rdms: np.ndarray, where: str, n_images: int | None = None) -> np.ndarray:
    """Check an (N, N), (S, N, N) or (S, K, N, N) stack of RDMs; return it as float64.

    `where` names the file and key in the error message. Besides shape, finiteness, symmetry and a zero
    diagonal, no RDM in the stack may have a constant upper triangle: its Spearman correlation (and so the
    score and the noise ceiling) would be NaN.
    """
    try:
        rdms = np.asarray(rdms, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: not a numeric array") from None
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
    if not np.allclose(rdms, np.swapaxes(rdms, -1, -2), atol=SYMMETRY_TOLERANCE, rtol=0):
        worst = np.max(np.abs(rdms - np.swapaxes(rdms, -1, -2)))
        raise DataError(f"{where}: RDMs are not symmetric (largest |d_ij - d_ji| = {worst:.3g})")
    diagonal = np.diagonal(rdms, axis1=-2, axis2=-1)
    if np.max(np.abs(diagonal)) > SYMMETRY_TOLERANCE:
        raise DataError(f"{where}: RDMs have a non-zero diagonal (largest |d_ii| = {np.max(np.abs(diagonal)):.3g})")
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


def load_rdms(path: str | os.PathLike, key: str | None = None, n_images: int | None = None) -> np.ndarray:
    """One validated RDM array from a file. `key` may be omitted when the file holds a single array."""
    path = Path(path)
    arrays = _read_rdm_file(path)
    if key is None or path.suffix.lower() == ".npy":
        if len(arrays) != 1:
            raise DataError(f"{path}: holds several arrays ({', '.join(arrays)}); name one with a key")
        key, value = next(iter(arrays.items()))
    elif key not in arrays:
        raise DataError(f"{path}: missing key '{key}' (keys: {', '.join(arrays) or 'none'})")
    else:
        value = arrays[key]
    where = f"{path}:{key}" if key else str(path)
    return validate_rdms(value, where, n_images)


def load_rdm_dict(path: str | os.PathLike, n_images: int | None = None) -> dict[str, np.ndarray]:
    """Every array of a file that is a valid RDM stack, keyed by name (a submission or a target file)."""
    path = Path(path)
    arrays = _read_rdm_file(path)
    if not arrays:
        raise DataError(f"{path}: holds no arrays")
    return {k: validate_rdms(v, f"{path}:{k}" if k else str(path), n_images) for k, v in arrays.items()}


def subject_rdms(rdms: np.ndarray) -> np.ndarray:
    """View any accepted RDM array as (S, N, N) or (S, K, N, N): a single (N, N) RDM is one subject."""
    return rdms[None] if rdms.ndim == 2 else rdms


def group_average(rdms: np.ndarray) -> np.ndarray:
    """The (N, N) mean RDM over subjects (and over K, the repeated RDMs within a subject)."""
    rdms = np.asarray(rdms, dtype=np.float64)
    return rdms.reshape(-1, *rdms.shape[-2:]).mean(axis=0)


def save_rdms(path: str | os.PathLike, rdms: dict[str, np.ndarray]) -> Path:
    """Write RDMs to .mat (v5, readable by scipy.io.loadmat and MATLAB), .npz or .npy, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mat", ".npz", ".npy"):
        raise DataError(f"{path}: unsupported output type '{suffix}' (use .mat, .npy or .npz)")
    if suffix == ".npy" and len(rdms) != 1:
        raise DataError(f"{path}: .npy holds one array, got {len(rdms)}; use .mat or .npz")
    from .files import atomic_path  # files.py builds on this module's DataError

    with atomic_path(path) as tmp:
        if suffix == ".mat":
            scipy.io.savemat(tmp, {k: np.asarray(v, dtype=np.float64) for k, v in rdms.items()})
        elif suffix == ".npz":
            np.savez(tmp, **{k: np.asarray(v, dtype=np.float64) for k, v in rdms.items()})
        else:
            np.save(tmp, np.asarray(next(iter(rdms.values())), dtype=np.float64))
    return path


# --------------------------------------------------------------------------- Algonauts layout


@dataclass
class BrainDataset:
    """One image set with its brain RDMs: `targets[name]` is (S, N, N) or (S, K, N, N)."""

    name: str
    images: ImageSet
    targets: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


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
    root: str | os.PathLike | None, set_name: str, targets: tuple[str, ...] | list[str] = TARGET_NAMES
) -> BrainDataset:
    """An official set ('92', '118' or '78') with the requested targets ('78' has none)."""
    root = resolve_data_root(root)
    images = load_image_set(image_set_dir(root, set_name))
    dataset = BrainDataset(set_name, images)
    if set_name in TRAINING_SETS:
        set_dir = root / IMAGE_SETS[set_name][0]
        for target in targets:
            path = target_file(set_dir, target)
            dataset.targets[target] = load_rdms(path, TARGETS[target][1], n_images=len(images))
    return dataset


def describe_data_root(root: str | os.PathLike | None) -> dict:
    """What `siamrdm data-info` prints: the image sets found, their image counts, RDM files, keys, shapes."""
    root = resolve_data_root(root)
    info: dict = {"root": str(root), "sets": {}}
    for set_name, (folder, images) in IMAGE_SETS.items():
        set_dir = root / folder
        if not (set_dir / images).is_dir():
            continue
        n_images = len([p for p in (set_dir / images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES])
        files = {p.name: list_rdm_keys(p) for p in sorted(set_dir.glob("*.mat")) if p.name != f"{images}.mat"}
        info["sets"][set_name] = {"images": n_images, "folder": str(set_dir / images), "rdm_files": files}
    if not info["sets"]:
        raise DataError(f"{root}: no Algonauts image sets found (expected Training_Data/ and Test_Data/)")
    return info
