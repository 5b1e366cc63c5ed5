"""Image sets of 10,000+ images and their target RDMs, never held whole in memory.

Images stay uint8 on disk, in an HDF5 file (a dataset of shape (N, H, W, 3) uint8, as NSD ships its stimuli)
or a folder; a DataLoader's workers decode, resize and augment the images of each mini-batch. Target RDMs are
condensed upper triangles, one row per subject, read by `io.condensed.CondensedRDMs`: one pass over the file,
a block of rows of the RDM at a time, gives the group-mean target of the training pairs and the subjects'
values of the held-out pairs, so no subject's N x N matrix is ever built. Here: the mini-batch's pairs, their
rescaling in place, and the official metric on pair vectors (`HeldOutTarget`).

`make_large_set` builds a realistic large set offline (benchmarks/make_large_set.py): crops and flips of a
folder of images, and subject RDMs made from a fixed pretrained stage plus noise, so that the answer is known.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import DataError
from ..io.arrayfiles import read_npy
from ..io.condensed import BLOCK_VALUES, HDF5_SUFFIXES, CondensedRDMs, condensed_index, row_start
from ..io.images import IMAGE_SUFFIXES, MIN_IMAGES, check_pixels, image_files, match_names, read_image, resolve_order
from ..io.limits import check_hdf5_stored, check_regular_file, hdf5_get, hdf5_members
from ..io.rsafiles import check_rdm_names
from ..model.backbones import images_to_tensor
from ..rdm.core import rank_unit
from ..rdm.noise_ceiling import NO_CEILING, NoiseCeiling, vector_ceilings
from ..rdm.records import score_record
from ..rdm.reliability import SAMPLE_IMAGES, target_reliability
from ..rdm.transform import dot_vectors
from .augment import augment_batch, image_generator
from .config import TrainConfig

# --------------------------------------------------------------------------- pair indices


def pair_index(images: np.ndarray, n: int) -> np.ndarray:
    """Condensed indices (in the RDM of n images) of the pairs u < v of `images`, in their upper-triangle order:
    the targets of a mini-batch of those images."""
    images = np.asarray(images, dtype=np.int64)
    u, v = np.triu_indices(len(images), k=1)
    a, b = images[u], images[v]
    return condensed_index(np.minimum(a, b), np.maximum(a, b), n)


# --------------------------------------------------------------------------- images


class ImageStore:
    """Images read one at a time, in RDM order: `read(k)` is an (H, W, 3) uint8 array."""

    names: list[str]
    source: Path

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int) -> np.ndarray:
        raise NotImplementedError


class FolderImages(ImageStore):
    """A folder of image files, sorted naturally (img2 before img10) or in the order of an order file."""

    def __init__(self, path: Path, order: str | os.PathLike | None = None):
        files = image_files(path)
        if order is not None:
            listed, where = resolve_order(order)
            files = [files[k] for k in match_names(listed, [p.name for p in files], where, str(path))]
        self.files, self.names, self.source = files, [p.name for p in files], path

    def read(self, index: int) -> np.ndarray:
        return read_image(self.files[index])


class HDF5Images(ImageStore):
    """An HDF5 dataset of shape (N, H, W, 3), uint8 (NSD's stimuli file), stored inside the file (no external or
    virtual dataset: its missing sources would read as black images) with images of at most MAX_IMAGE_PIXELS.
    Each process opens its own handle, so DataLoader workers never share the parent's."""

    def __init__(self, path: Path, key: str | None = None):
        self.source, self._handle, self._pid, self._images = path, None, None, None
        try:
            with h5py.File(path, "r") as f:
                members = hdf5_members(f, path)
                candidates = {k: v for k, v in members.items() if isinstance(v, h5py.Dataset) and v.ndim == 4}
                if key is None and len(candidates) != 1:
                    found = ", ".join(f"{k} {v.shape}" for k, v in candidates.items()) or "none"
                    raise DataError(f"{path}: expected one dataset of images (N, H, W, 3) uint8, found {found}")
                self.key = key or next(iter(candidates))
                ds = hdf5_get(f, self.key, path)
                if not isinstance(ds, h5py.Dataset):
                    raise DataError(f"{path}: no dataset '{self.key}'")
                if ds.ndim != 4 or ds.shape[3] != 3 or ds.dtype != np.uint8:
                    raise DataError(f"{path}:{self.key}: images must be (N, H, W, 3) uint8, got {ds.shape} {ds.dtype}")
                check_pixels(Path(f"{path}:{self.key}"), ds.shape[2], ds.shape[1])
                check_hdf5_stored(ds, path)  # before anything is sized by its N (the names)
                n = ds.shape[0]
        except (OSError, KeyError) as exc:
            raise DataError(f"{path}: unreadable HDF5 file ({' '.join(str(exc).split())})") from None
        self.names = [str(k) for k in range(n)]

    def _dataset(self) -> h5py.Dataset:
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = h5py.File(self.source, "r"), os.getpid()
            self._images = hdf5_get(self._handle, self.key, self.source)
        return self._images

    def read(self, index: int) -> np.ndarray:
        try:
            return np.asarray(self._dataset()[index])
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.source}:{self.key}: image {index} unreadable ({' '.join(str(exc).split())})") \
                from None

    def __getstate__(self) -> dict:  # a worker started by spawn opens its own handle
        return {**self.__dict__, "_handle": None, "_pid": None, "_images": None}


def open_image_store(path: str | os.PathLike, order: str | os.PathLike | None = None) -> ImageStore:
    """A folder of images or an HDF5 file of uint8 images, checked (at least 3 images) but not read."""
    path = Path(path)
    if path.is_dir():
        store: ImageStore = FolderImages(path, order)
        if not store.names:
            raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in folder")
    elif path.exists() and check_regular_file(path, "image file") and (
            path.suffix.lower() in HDF5_SUFFIXES or h5py.is_hdf5(path)):
        if order is not None:
            raise DataError(f"{path}: an HDF5 file of images keeps its own order; an order file is for a folder")
        store = HDF5Images(path)
    elif path.exists():
        raise DataError(f"{path}: expected a folder of images or an HDF5 file of (N, H, W, 3) uint8 images")
    else:
        raise DataError(f"{path}: no such image folder or file")
    if len(store) < MIN_IMAGES:
        raise DataError(f"{path}: {len(store)} images, an RDM needs at least {MIN_IMAGES}")
    return store


def open_large_set(images: str | os.PathLike, rdms: str | os.PathLike, key: str,
                   order: str | os.PathLike | None = None) -> tuple[ImageStore, dict[str, CondensedRDMs]]:
    """A mini-batch fit's inputs: the image store and its condensed target RDMs by `key` (a .npy holds one
    array, which `key` names), checked against each other (an rsatoolbox file that names its images must name
    a folder's images, in their order)."""
    store = open_image_store(images, order)
    keyed = Path(rdms).suffix.lower() != ".npy"
    targets = {key: CondensedRDMs(rdms, len(store), key if keyed else None)}
    if isinstance(store, FolderImages):
        check_rdm_names(rdms, store.names, among=str(images))
    return store, targets


def sample_reliability(targets: CondensedRDMs, images: int) -> tuple[int, dict]:
    """The targets' reliability measured on a fixed sample of the images (rdm.reliability.SAMPLE_IMAGES):
    ranking every pair of a large set would cost more than it tells. (sample size, target_reliability)."""
    sample = np.random.default_rng(0).permutation(images)[:SAMPLE_IMAGES]
    return len(sample), target_reliability(targets.sample(sample))


def is_large_set_input(images: str | os.PathLike | None, rdms: str | os.PathLike | None) -> bool:
    """Inputs only the mini-batch path reads: an HDF5 file of images, or a .npy of condensed RDMs (1-D, or 2-D
    and not square)."""
    if images is not None and Path(images).is_file() and Path(images).suffix.lower() in HDF5_SUFFIXES:
        return True
    if rdms is None or Path(rdms).suffix.lower() != ".npy" or not Path(rdms).is_file():
        return False
    try:
        shape = read_npy(rdms, mmap=True).shape
    except Exception:  # the plain path reads it and says what is wrong
        return False
    return len(shape) == 1 or (len(shape) == 2 and shape[0] != shape[1])


class AugmentedImages(torch.utils.data.Dataset):
    """What DataLoader workers load: item (image index, epoch) -> (index, (3, S, S) uint8 pixels).

    The image is resized whole to `image_size` (as `backbones.images_to_tensor`), then, for epochs > 0 with
    augmentation on, cropped and flipped with a generator seeded by the run's seed, the epoch and the image, so
    an image gets the same view in a run on one rank or on many. Epoch 0 means the plain image. Pixels go back
    to uint8, so a batch in flight takes a quarter of the memory of floats."""

    def __init__(self, store: ImageStore, config: TrainConfig):
        self.store, self.config = store, config

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, torch.Tensor | DataError]:
        """A DataError (an unreadable image) comes back as the item rather than raised: raised in a worker, the
        DataLoader would re-raise it with the worker's traceback inside its message."""
        index, epoch = item
        try:
            image = self.store.read(index)
        except DataError as exc:
            return index, exc
        pixels = images_to_tensor([image], self.config.image_size)
        if epoch > 0 and self.config.augment:
            pixels = augment_batch(pixels, self.config, image_generator((self.config.seed, epoch, index)))
        return index, (pixels[0] * 255).round_().clamp_(0, 255).to(torch.uint8)


def collate_pixels(items: list[tuple[int, torch.Tensor | DataError]]) -> torch.Tensor | DataError:
    """A shard's pixels, (B, 3, S, S) uint8, or the first DataError of its images (raised by `load_pixels`, in
    the training process). An empty shard (a batch smaller than the ranks) is (0, 3, 0, 0)."""
    for _, pixels in items:
        if isinstance(pixels, DataError):
            return pixels
    if not items:
        return torch.zeros(0, 3, 0, 0, dtype=torch.uint8)
    return torch.stack([pixels for _, pixels in items])


def load_pixels(loader: torch.utils.data.DataLoader) -> Iterator[torch.Tensor]:
    """The batches of a DataLoader over `AugmentedImages` (with `collate_pixels`), raising an image's
    DataError as its one line."""
    for pixels in loader:
        if isinstance(pixels, DataError):
            raise pixels
        yield pixels


def mean_sd(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a float32 vector too large to copy in float64: float64 sums a block at a
    time (the mean, then the squared deviations)."""
    blocks = [slice(k, k + BLOCK_VALUES) for k in range(0, len(values), BLOCK_VALUES)]
    mean = sum(float(values[b].sum(dtype=np.float64)) for b in blocks) / len(values)
    return mean, math.sqrt(sum(float(np.square(values[b] - np.float64(mean)).sum()) for b in blocks) / len(values))


def rescale_in_place(values: np.ndarray, method: str) -> dict[str, float]:
    """`rdm.rescale` for a float32 vector too large to copy in float64: minmax and zscore in place (sums in
    float64), rank through `rdm.rank_unit`."""
    if method == "minmax":
        low, high = float(values.min()), float(values.max())
        values -= low
        values /= max(high - low, 1e-12)
        return {"low": low, "high": high}
    if method == "zscore":
        mean, sd = mean_sd(values)
        values -= mean
        values /= max(sd, 1e-12)
        return {"mean": mean, "sd": sd}
    if method == "rank":
        values[:] = rank_unit(values)
        return {}
    raise DataError(f"unknown rescaling '{method}' (choose from minmax, rank, zscore)")


# --------------------------------------------------------------------------- the official metric on pair vectors


@dataclass
class HeldOutTarget:
    """One target's subjects on the held-out pairs, ready for the official metric: rank-standardised once."""

    subjects: np.ndarray  # (S, P_val) ranks, centred, unit norm (transform.dot_vectors): rho is a dot product
    ceilings: NoiseCeiling  # computed from the subjects' held-out pairs; none with one subject

    @classmethod
    def from_values(cls, values: np.ndarray) -> HeldOutTarget:
        """From the subjects' values of the held-out pairs, (S, P_val). Where a subject's held-out pairs (or
        their mean) are all equal there is no ceiling: the scores are r2 alone."""
        values = np.asarray(values, dtype=np.float64)
        try:
            ceilings = vector_ceilings(values)
        except ValueError:
            ceilings = NO_CEILING
        return cls(dot_vectors(values, "spearman"), ceilings)

    def score(self, predicted: np.ndarray) -> dict:
        """The score record (records.ScoreRecord, without chance fields) of predicted pair values."""
        rho = self.subjects @ dot_vectors(np.asarray(predicted, dtype=np.float64), "spearman")
        return score_record(rho, self.ceilings).to_dict()


# --------------------------------------------------------------------------- a large test set, built offline


def make_large_set(source: str | os.PathLike | list, out_dir: str | os.PathLike, n_images: int,
                   image_size: int = 64, subjects: int = 3, noise: float = 1.0, stage: str = "blocks3", seed: int = 0,
                   batch: int = 64) -> dict:
    """`n_images` crops and flips of the images in folder(s) `source`, as `out_dir/images.h5` ((N, S, S, 3) uint8,
    dataset 'images'), and subject RDMs `out_dir/rdms.npy` ((subjects, P) float32, condensed): the
    correlation distance (1 - Pearson r) of efficientnet_lite0's `stage` features plus Gaussian noise of
    `noise` times the RDM's standard deviation per subject. `out_dir/answer.json` says how it was made and
    what knowing the stage scores on all pairs. Deterministic in `seed`."""
    from ..io.files import atomic_path, write_json
    from ..model.backbones import create_body

    out = Path(out_dir)
    folders = [Path(f) for f in (source if isinstance(source, list | tuple) else [source])]
    source_images = [read_image(p) for folder in folders for p in sorted(folder.iterdir())
                     if p.suffix.lower() in IMAGE_SUFFIXES]
    if not source_images:
        raise DataError(f"{source}: no images")
    rng = np.random.default_rng(seed)
    body = create_body("efficientnet_lite0", None, stage).eval()
    features = []
    with atomic_path(out / "images.h5") as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset("images", (n_images, image_size, image_size, 3), np.uint8,
                              chunks=(1, image_size, image_size, 3))
        for b0 in range(0, n_images, batch):
            pixels = []
            for _ in range(b0, min(n_images, b0 + batch)):
                image = source_images[rng.integers(len(source_images))]
                h, w = image.shape[:2]
                side = int(min(h, w) * rng.uniform(0.5, 1.0))
                y0, x0 = rng.integers(h - side + 1), rng.integers(w - side + 1)
                crop = image[y0 : y0 + side, x0 : x0 + side]
                pixels.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
            tensor = images_to_tensor(pixels, image_size)
            ds[b0 : b0 + len(pixels)] = (tensor * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            with torch.no_grad():
                features.append(body(tensor).flatten(1).double())
    feats = torch.cat(features)
    feats -= feats.mean(dim=1, keepdim=True)
    feats /= feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    pairs = n_images * (n_images - 1) // 2
    truth = np.empty(pairs, np.float32)
    for i0 in range(0, n_images - 1, 256):  # 1 - r, a block of rows of the upper triangle at a time
        block = (1 - feats[i0 : i0 + 256] @ feats.T).float().numpy()
        for i in range(i0, min(i0 + 256, n_images - 1)):
            truth[row_start(i, n_images) : row_start(i + 1, n_images)] = block[i - i0, i + 1 :]
    sd = mean_sd(truth)[1]
    with atomic_path(out / "rdms.npy") as tmp:
        rdms = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(subjects, pairs))
        for s in range(subjects):
            for k0 in range(0, pairs, BLOCK_VALUES):
                k1 = min(pairs, k0 + BLOCK_VALUES)
                rdms[s, k0:k1] = truth[k0:k1] + rng.normal(0, noise * sd, k1 - k0).astype(np.float32)
        rdms.flush()
        del rdms
    sample = rng.choice(pairs, size=min(pairs, 200_000), replace=False)
    sample.sort()
    subject_values = read_npy(out / "rdms.npy", mmap=True)[:, sample]
    target = HeldOutTarget.from_values(np.asarray(subject_values, np.float64))
    answer = {"images": n_images, "image_size": image_size, "subjects": subjects, "noise_sd_ratio": noise,
              "stage": stage, "backbone": "efficientnet_lite0", "seed": seed, "source": [str(f) for f in folders],
              "truth_score_on_sampled_pairs": target.score(truth[sample].astype(np.float64))}
    write_json(out / "answer.json", answer, indent=2)
    return answer
