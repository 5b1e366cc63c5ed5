"""Shared fixtures: the real Algonauts 2019 data root and small, valid RDM stacks made on the fly.

The data root comes from $SIAMRDM_DATA (a relative path is taken relative to the repository root, as CI sets
it); without it, ../shared/algonauts2019 next to the repository. CI always has the data, so a missing data
root fails the tests that need it instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from siamrdm.io.datasets import DATA_ENV_VAR, BrainDataset, load_algonauts_set
from siamrdm.io.images import load_image_set
from siamrdm.io.rdmfiles import load_rdms
from siamrdm.rdm import rdm_from_features

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = "../shared/algonauts2019"


def _data_root() -> Path:
    raw = os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_ROOT
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path.resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The Algonauts 2019 folder (absolute); fails, never skips, when it is not there."""
    root = _data_root()
    missing = [sub for sub in ("Training_Data", "Test_Data") if not (root / sub).is_dir()]
    if missing:
        pytest.fail(
            f"Algonauts 2019 data not found at {root} (missing {', '.join(m + '/' for m in missing)}): "
            f"set {DATA_ENV_VAR} to the data folder "
            f"(CI uses {DATA_ENV_VAR}={DEFAULT_DATA_ROOT}, relative to the repository root)",
            pytrace=False,
        )
    return root


@pytest.fixture(scope="session")
def set92(data_root: Path) -> Path:
    return data_root / "Training_Data" / "92_Image_Set"


@pytest.fixture(scope="session")
def set118(data_root: Path) -> Path:
    return data_root / "Training_Data" / "118_Image_Set"


@pytest.fixture(scope="session")
def test_dir(data_root: Path) -> Path:
    return data_root / "Test_Data"


@pytest.fixture(scope="session")
def kriegeskorte_it(data_root: Path) -> Path:
    """Another study's human IT RDMs of the 92 images (Kriegeskorte et al. 2008), beside the Algonauts folder in
    ../shared; fails, never skips, when it is not there (CI has it)."""
    path = data_root.parent / "kriegeskorte2008" / "target_fmri_hIT.mat"
    if not path.is_file():
        pytest.fail(f"the other study's RDMs are not at {path} (../shared/kriegeskorte2008)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def dataset92(data_root: Path) -> BrainDataset:
    """The real 92-image set with its EVC and IT RDMs, loaded once per test module."""
    return load_algonauts_set(data_root, "92", ("EVC", "IT"))


@pytest.fixture(scope="module")
def dataset118(data_root: Path) -> BrainDataset:
    """The real 118-image set with its EVC and IT RDMs, loaded once per test module."""
    return load_algonauts_set(data_root, "118", ("EVC", "IT"))


@pytest.fixture(scope="session")
def fmri92(set92: Path) -> dict[str, np.ndarray]:
    """The real 92-image fMRI targets, (15, 92, 92) per key. Do not modify in place."""
    path = set92 / "target_fmri.mat"
    return {key: load_rdms(path, key) for key in ("EVC_RDMs", "IT_RDMs")}


@pytest.fixture(scope="session")
def fmri118(set118: Path) -> dict[str, np.ndarray]:
    """The real 118-image fMRI targets, (15, 118, 118) per key. Do not modify in place."""
    path = set118 / "target_fmri.mat"
    return {key: load_rdms(path, key) for key in ("EVC_RDMs", "IT_RDMs")}


def make_rdm_stack(
    n: int, subjects: int | None = None, k: int | None = None, seed: int = 0, dims: int = 8
) -> np.ndarray:
    """Valid correlation-distance RDMs (symmetric, zero diagonal, finite, float64).

    Shape (n, n) when `subjects` is None, (subjects, n, n) when `k` is None, else (subjects, k, n, n).
    The subjects share a common structure plus noise, so their RDMs correlate like real ones.
    """
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, dims))
    shape = () if subjects is None else (subjects,) if k is None else (subjects, k)
    rdms = np.empty((*shape, n, n))
    for index in np.ndindex(*shape):
        rdms[index] = rdm_from_features(shared + rng.normal(scale=1.0, size=(n, dims)))
    return rdms


@pytest.fixture
def make_rdms() -> Callable[..., np.ndarray]:
    """The factory `make_rdm_stack(n, subjects=None, k=None, seed=0)`."""
    return make_rdm_stack


@pytest.fixture(scope="module")
def own_data(tmp_path_factory: pytest.TempPathFactory, set92: Path, fmri92: dict[str, np.ndarray]) -> tuple[str, ...]:
    """Your own data as `fit` takes it: --images, --rdms and --key for 12 real images of the 92 set with 15
    subjects' IT RDMs under the key V4 (so no official ceiling applies)."""
    folder = tmp_path_factory.mktemp("own")
    images = folder / "images"
    images.mkdir()
    index = np.arange(0, 92, 8)
    names = load_image_set(set92 / "92images").names
    for rank, k in enumerate(index):
        shutil.copy(set92 / "92images" / names[k], images / f"stim_{rank:02d}.jpg")
    rdms = folder / "rdms.npy"
    np.save(rdms, fmri92["IT_RDMs"][:, index[:, None], index[None, :]])
    return "--images", str(images), "--rdms", str(rdms), "--key", "V4"
