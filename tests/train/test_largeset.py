"""Large image sets: uint8 image stores, a mini-batch's pairs, the one pass over condensed targets with the metric on
pair vectors (the reader itself: tests/io/test_condensed.py)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from siamrdm.errors import DataError
from siamrdm.io import condensed as condensed_files
from siamrdm.io.condensed import CondensedRDMs, condensed_index
from siamrdm.rdm import rescale, square_rdm, upper_tri
from siamrdm.rdm.records import score_with_ceiling
from siamrdm.train import largeset
from siamrdm.train.config import TrainConfig
from siamrdm.train.largeset import (
    AugmentedImages,
    HeldOutTarget,
    open_image_store,
    pair_index,
    rescale_in_place,
)


def test_a_batchs_pairs_follow_the_upper_triangle() -> None:
    """Where each pair sits: tests/io/test_condensed.py."""
    n = 9
    images = np.array([5, 1, 7])  # a batch in any order: pairs (5,1), (5,7), (1,7) by position
    assert pair_index(images, n).tolist() == [condensed_index(1, 5, n), condensed_index(5, 7, n),
                                             condensed_index(1, 7, n)]


@pytest.fixture
def rdm_stack(make_rdms) -> np.ndarray:
    return make_rdms(40, subjects=3, seed=2)


@pytest.mark.parametrize("kind", ["npy", "npy-one", "hdf5"])
def test_one_pass_gives_the_training_group_mean_and_the_held_out_subjects(tmp_path, rdm_stack, kind,
                                                                         monkeypatch) -> None:
    monkeypatch.setattr(condensed_files, "BLOCK_VALUES", 100)  # many blocks of rows, cut anywhere
    condensed = upper_tri(rdm_stack).astype(np.float32)
    if kind == "npy":
        path = tmp_path / "rdms.npy"
        np.save(path, condensed)
    elif kind == "npy-one":
        path = tmp_path / "rdms.npy"
        np.save(path, condensed[0])
        rdm_stack, condensed = rdm_stack[:1], condensed[:1]
    else:
        path = tmp_path / "rdms.h5"
        with h5py.File(path, "w") as f:
            f["IT"] = condensed
    rdms = CondensedRDMs(path, 40, "IT" if kind == "hdf5" else None)
    if kind != "hdf5":
        assert isinstance(rdms.array, np.memmap)
    train, val = np.sort(np.r_[0:10, 14:33, 39]), np.array([10, 11, 12, 13, 33, 34, 35, 36, 37, 38])
    train_values, val_values = rdms.split(train, val)
    stack = np.stack([square_rdm(v, 40) for v in condensed.astype(np.float64)])
    expected_train = upper_tri(stack.mean(axis=0)[np.ix_(train, train)])
    np.testing.assert_allclose(train_values, expected_train, rtol=1e-6)
    np.testing.assert_allclose(val_values, upper_tri(stack[:, val][:, :, val]), rtol=1e-6)
    # the official metric on pair vectors equals scoring's on square RDMs
    held = HeldOutTarget.from_values(val_values.astype(np.float64))
    model = upper_tri(stack.mean(axis=0)[np.ix_(val, val)]) + np.random.default_rng(0).normal(0, 0.05, 45)
    got = held.score(model)
    want = score_with_ceiling(square_rdm(model, 10), stack[:, val][:, :, val])
    assert got["r2"] == pytest.approx(want.r2, rel=1e-9)
    if kind == "npy-one":
        assert got["noise_ceiling"] is None and got["pct_nc"] is None
    else:
        assert got["noise_ceiling"] == pytest.approx(want.noise_ceiling, rel=1e-9)
        assert got["pct_nc"] == pytest.approx(want.pct_nc, rel=1e-9)
    assert held.score(np.ones(45))["r2"] == 0.0  # a collapsed model scores 0, not NaN


@pytest.mark.parametrize("method", ["minmax", "zscore", "rank"])
def test_rescale_in_place_matches_rdm_rescale(method: str) -> None:
    values = np.random.default_rng(1).normal(size=1000).astype(np.float32)
    expected, params = rescale(values.astype(np.float64), method)
    got = values.copy()
    assert rescale_in_place(got, method) == pytest.approx(params, rel=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_hdf5_images_are_read_one_at_a_time_and_augmented_reproducibly(tmp_path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 20, 24, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "stimuli.hdf5", "w") as f:
        f["imgBrick"] = pixels  # NSD's name for its stimuli
    store = open_image_store(tmp_path / "stimuli.hdf5")
    assert len(store) == 5 and np.array_equal(store.read(3), pixels[3])
    dataset = AugmentedImages(store, TrainConfig(image_size=16, seed=1))
    index, plain = dataset[(3, 0)]
    assert index == 3 and plain.dtype == torch.uint8 and plain.shape == (3, 16, 16)
    first, again, later = dataset[(3, 1)][1], dataset[(3, 1)][1], dataset[(3, 2)][1]
    assert torch.equal(first, again) and not torch.equal(first, later) and not torch.equal(first, plain)
    with h5py.File(tmp_path / "float.h5", "w") as f:
        f["images"] = pixels.astype(np.float32)
    with pytest.raises(DataError, match=r"float.h5:images: images must be \(N, H, W, 3\) uint8"):
        open_image_store(tmp_path / "float.h5")
    with pytest.raises(DataError, match="an HDF5 file of images keeps its own order"):
        open_image_store(tmp_path / "stimuli.hdf5", order=["0", "1"])


def test_a_folder_store_keeps_the_natural_order(tmp_path: Path) -> None:
    for name, value in (("img10.png", 10), ("img2.png", 2), ("img1.png", 1)):
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / name)
    store = open_image_store(tmp_path)
    assert store.names == ["img1.png", "img2.png", "img10.png"]
    assert store.read(2)[0, 0, 0] == 10


def test_make_large_set_knows_its_answer(tmp_path, data_root: Path) -> None:
    source = data_root / "Training_Data" / "92_Image_Set" / "92images"
    answer = largeset.make_large_set(source, tmp_path, 60, image_size=32, subjects=2, noise=0.5)
    store = open_image_store(tmp_path / "images.h5")
    assert len(store) == 60 and store.read(0).shape == (32, 32, 3)
    rdms = CondensedRDMs(tmp_path / "rdms.npy", 60)
    assert rdms.subjects == 2 and rdms.array.dtype == np.float32
    truth = answer["truth_score_on_sampled_pairs"]
    assert 0.3 < truth["r2"] <= truth["noise_ceiling"] * 1.05  # the stage explains the subjects, up to noise


def test_zscore_in_place_makes_no_float64_copy(monkeypatch) -> None:
    """The training pairs' targets are 4 bytes a pair: rescaling them must not allocate 8 bytes a pair."""
    import tracemalloc

    monkeypatch.setattr(largeset, "BLOCK_VALUES", 2**14)
    values = np.random.default_rng(0).normal(3, 2, 2**20).astype(np.float32)  # 4 MB
    expected, _ = rescale(values.astype(np.float64), "zscore")
    tracemalloc.start()
    rescale_in_place(values, "zscore")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20  # under a quarter of the vector
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)


def test_an_unreadable_image_in_a_loader_worker_is_one_line(tmp_path: Path) -> None:
    """Raised in a DataLoader worker, the DataError would come back with the worker's traceback in its message."""
    for k in range(4):
        Image.fromarray(np.full((8, 8, 3), k, np.uint8)).save(tmp_path / f"img{k}.png")
    (tmp_path / "img2.png").write_bytes(b"not a png")
    dataset = AugmentedImages(open_image_store(tmp_path), TrainConfig(image_size=8))
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[[(0, 0), (1, 0)], [(2, 0), (3, 0)]],
                                         num_workers=1, collate_fn=largeset.collate_pixels)
    batches = largeset.load_pixels(loader)
    assert next(batches).shape == (2, 3, 8, 8)
    with pytest.raises(DataError) as caught:
        next(batches)
    assert str(caught.value).startswith(f"{tmp_path / 'img2.png'}: unreadable image") and "\n" not in str(caught.value)
