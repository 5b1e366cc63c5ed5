"""Datasets: an image set with its brain RDMs (`BrainDataset`), from your own files (`load_dataset`, which checks
that they agree) or from the official Algonauts 2019 layout (`load_algonauts_set`; see the data README)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .images import ImageSet, image_files, is_image, load_image_set
from .rdmfiles import list_rdm_keys, read_rdms
from .rsafiles import check_rdm_names

DATA_ENV_VAR = "SIAMRDM_DATA"
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


@dataclass
class BrainDataset:
    """One image set with its brain RDMs: `targets[name]` is (S, N, N) or (S, K, N, N)."""

    name: str
    images: ImageSet
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    official: bool = False  # read from the Algonauts layout (load_algonauts_set): the official ceilings apply
    notes: tuple[str, ...] = ()  # how its RDM files were read (rdmfiles.read_rdms), for the CLI to show

    def __len__(self) -> int:
        return len(self.images)

    def check_targets(self, targets: Sequence[str]) -> None:
        """Refuse targets this set has no RDMs for (one line naming the set and each missing target), before a
        fit or an evaluation starts work on them."""
        missing = [t for t in targets if t not in self.targets]
        if missing:
            raise DataError(f"image set {self.name}: no RDMs for target(s) {', '.join(missing)}")


def load_dataset(images: str | os.PathLike, rdms: str | os.PathLike, key: str | None = None,
                 order: str | os.PathLike | Sequence[str] | None = None, name: str | None = None,
                 size: int | None = None) -> BrainDataset:
    """Your own data as one image set with its brain RDMs: `images` (a folder or stimulus .mat, in `order`
    when given, reduced as read for a network of input `size`: `load_image_set`), the RDM array `key` of the
    file `rdms` (which must cover those images; an rsatoolbox file that names its images must list them in
    the same order). The target is called `key`, or, for a single-array file, by the file's own key or name."""
    image_set = load_image_set(images, order, size)
    array, notes = read_rdms(rdms, key, n_images=len(image_set))
    check_rdm_names(rdms, image_set.names, among=str(images))
    if key is None:
        key = next(iter(list_rdm_keys(rdms))) or Path(rdms).stem
    return BrainDataset(name or Path(images).stem, image_set, {key: array}, notes=notes)


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
            dataset.targets[target], notes = read_rdms(path, TARGETS[target][1], n_images=len(images))
            dataset.notes += notes
    return dataset


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
        not_images = [p.name for p in listed if not is_image(p)]
        files = {p.name: list_rdm_keys(p) for p in sorted(set_dir.glob("*.mat")) if p.name != f"{images}.mat"}
        info["sets"][set_name] = {"images": len(listed) - len(not_images), "folder": str(set_dir / images),
                                  "rdm_files": files}
        if not_images:
            info["sets"][set_name]["not_images"] = not_images
    if not info["sets"]:
        raise DataError(f"{root}: no Algonauts image sets found (expected Training_Data/ and Test_Data/)")
    return info
