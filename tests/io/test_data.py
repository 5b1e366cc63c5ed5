"""Reading images and RDM files: every format in the data folder, the files tests make, and bad inputs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from siamrdm.errors import DataError
from siamrdm.io.datasets import (
    DATA_ENV_VAR,
    BrainDataset,
    describe_data_root,
    load_algonauts_set,
    resolve_data_root,
    target_file,
    target_key,
)
from siamrdm.io.images import load_image_set
from siamrdm.io.rdmfiles import list_rdm_keys, load_rdm_dict, load_rdms, save_rdms, validate_rdms
from siamrdm.rdm.core import group_average, subject_rdms


def _assert_error(exc_info: pytest.ExceptionInfo, *parts: str) -> str:
    """The DataError message is one line and names each of `parts` (file, key, problem)."""
    message = str(exc_info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------- official files


def test_fmri_v73_matches_h5py_transposed(set92: Path, set118: Path) -> None:
    for set_dir, n in ((set92, 92), (set118, 118)):
        path = set_dir / "target_fmri.mat"
        assert h5py.is_hdf5(path)
        with h5py.File(path, "r") as f:
            raw = {key: f[key][()] for key in ("EVC_RDMs", "IT_RDMs")}
        for key, value in raw.items():
            assert value.shape == (n, n, 15)  # h5py: MATLAB's axes reversed
            rdms = load_rdms(path, key, n_images=n)
            assert rdms.shape == (15, n, n)
            assert rdms.dtype == np.float64
            np.testing.assert_array_equal(rdms, value.transpose())
            # The subject axis is first: every subject RDM is symmetric (to rounding) with a zero diagonal.
            np.testing.assert_allclose(rdms, np.swapaxes(rdms, 1, 2), rtol=0, atol=1e-12)
            assert np.all(np.diagonal(rdms, axis1=1, axis2=2) == 0)
            assert not np.allclose(rdms[0], rdms[1])


def test_meg_windowavg_v5(set92: Path, set118: Path) -> None:
    for set_dir, n in ((set92, 92), (set118, 118)):
        path = set_dir / "target_meg_windowavg.mat"
        assert not h5py.is_hdf5(path)
        raw = scipy.io.loadmat(path)
        rdms = load_rdm_dict(path, n_images=n)
        assert set(rdms) == {"MEG_RDMs_early", "MEG_RDMs_late"}
        for key, value in rdms.items():
            assert value.shape == (15, n, n)
            np.testing.assert_array_equal(value, raw[key])


def test_example_submissions_v73(test_dir: Path) -> None:
    for name, keys in (
        ("example_submit_fmri.mat", {"EVC_RDMs", "IT_RDMs"}),
        ("example_submit_meg.mat", {"MEG_RDMs_early", "MEG_RDMs_late"}),
    ):
        path = test_dir / name
        assert h5py.is_hdf5(path)
        rdms = load_rdm_dict(path, n_images=78)
        assert set(rdms) == keys
        assert list_rdm_keys(path) == {key: (78, 78) for key in keys}
        with h5py.File(path, "r") as f:
            for key in keys:
                np.testing.assert_array_equal(rdms[key], f[key][()].transpose())


def test_stimulus_mat_pixels_equal_jpgs(set92: Path) -> None:
    from_mat = load_image_set(set92 / "92images.mat")
    from_jpgs = load_image_set(set92 / "92images")
    assert len(from_mat) == len(from_jpgs) == 92
    assert from_mat.names == from_jpgs.names == [f"image_{i:02d}.jpg" for i in range(1, 93)]
    for a, b in zip(from_mat.images, from_jpgs.images, strict=True):
        assert a.dtype == b.dtype == np.uint8
        assert a.shape == b.shape == (175, 175, 3)
        # The jpgs decode to exactly the stimulus file's pixels (max abs difference 0).
        np.testing.assert_array_equal(a, b)


def test_image_folders_sorted_by_name(data_root: Path, set118: Path) -> None:
    images = load_image_set(set118 / "118images")
    assert images.names == [f"image_{i:03d}.jpg" for i in range(1, 119)]
    assert {img.shape for img in images.images} == {(300, 300, 3)}
    test_images = load_image_set(data_root / "Test_Data" / "78images")
    assert test_images.names == sorted(test_images.names) and len(test_images) == 78
    assert all(img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 for img in test_images.images)


def test_image_folder_order_and_formats(tmp_path: Path) -> None:
    colours = {"c.png": 30, "a.JPG": 10, "b.bmp": 20}
    for name, value in colours.items():
        Image.new("RGB", (6, 4), (value, value, value)).save(tmp_path / name)
    Image.new("L", (6, 4), 40).save(tmp_path / "d.png")  # greyscale comes out as RGB
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.jpg").mkdir()  # a folder named like an image is not one
    images = load_image_set(tmp_path)
    assert images.names == ["a.JPG", "b.bmp", "c.png", "d.png"]
    assert all(img.shape == (4, 6, 3) for img in images.images)
    assert [int(img[0, 0, 0]) for img in images.images[1:]] == [20, 30, 40]  # lossless formats
    assert abs(int(images.images[0][0, 0, 0]) - 10) <= 2  # jpeg


def _gradient16() -> np.ndarray:
    """A 16-bit greyscale image whose pixels span the whole range, 0 and 65535 included."""
    return np.linspace(0, 65535, 24 * 32).round().astype(np.uint16).reshape(24, 32)


def test_16_bit_png_scaled_by_its_range(tmp_path: Path) -> None:
    grey16 = _gradient16()
    Image.fromarray(grey16).save(tmp_path / "a_16bit.png")
    with Image.open(tmp_path / "a_16bit.png") as img:
        assert img.mode == "I;16"  # what PIL reads a 16-bit greyscale PNG as
    grey8 = (grey16 >> 8).astype(np.uint8)  # the same picture at 8 bits
    Image.fromarray(grey8).save(tmp_path / "b_8bit.png")
    Image.fromarray(np.stack([grey8] * 3, axis=2)).save(tmp_path / "c_rgb.png")
    images = load_image_set(tmp_path).images
    assert all(img.shape == (24, 32, 3) and img.dtype == np.uint8 for img in images)
    loaded16, loaded8, rgb = (img.astype(int) for img in images)
    np.testing.assert_array_equal(loaded8, rgb)
    assert np.max(np.abs(loaded16 - loaded8)) <= 1  # not clipped to white by convert("RGB")
    assert loaded16.min() == 0 and loaded16.max() == 255


def test_other_image_modes_become_rgb(tmp_path: Path) -> None:
    grey16 = _gradient16()
    expected = np.rint(grey16 / 257).astype(int)
    Image.fromarray(grey16.astype(np.int32)).save(tmp_path / "a_int32.tif")  # PIL mode I
    Image.fromarray((grey16 / 65535).astype(np.float32)).save(tmp_path / "b_float.tif")  # mode F, [0, 1]
    wide = (grey16.astype(np.int64) * 32768).astype(np.int32)  # mode I beyond 16 bits: the int32 range
    Image.fromarray(wide).save(tmp_path / "c_int32_wide.tif")
    grey8 = expected.astype(np.uint8)
    Image.fromarray(np.stack([grey8, 255 - grey8], axis=2), "LA").save(tmp_path / "d_la.png")
    rgba = np.stack([grey8, 255 - grey8, np.full_like(grey8, 7), np.full_like(grey8, 0)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "e_rgba.png")
    Image.fromarray(rgba[:, :, :3], "RGB").quantize(colors=256).save(tmp_path / "f_palette.png")
    names = ["a_int32.tif", "b_float.tif", "c_int32_wide.tif", "d_la.png", "e_rgba.png", "f_palette.png"]
    with Image.open(tmp_path / names[0]) as a, Image.open(tmp_path / names[1]) as b:
        assert (a.mode, b.mode) == ("I", "F")
    images = load_image_set(tmp_path)
    assert images.names == names
    assert all(img.shape == (24, 32, 3) and img.dtype == np.uint8 for img in images.images)
    as_int = [img.astype(int) for img in images.images]
    for grey in as_int[:4]:  # greyscale modes: three equal channels
        assert np.max(np.abs(grey - expected[:, :, None])) <= 1
    np.testing.assert_array_equal(as_int[4], rgba[:, :, :3])  # alpha dropped
    assert np.max(np.abs(as_int[5] - rgba[:, :, :3])) <= 8  # palette looked up (quantised colours)


def test_fewer_than_3_images(tmp_path: Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (5, 5), (10, 20, 30)).save(folder / name)
    with pytest.raises(DataError) as exc_info:
        load_image_set(folder)
    _assert_error(exc_info, str(folder), "2 images", "at least 3")
    Image.new("RGB", (5, 5)).save(folder / "c.png")
    assert len(load_image_set(folder)) == 3
    stimuli = np.empty((1, 2), dtype=[("names", object), ("pixels", object)])
    for i in range(2):
        stimuli[0, i] = (f"image_{i + 1}.jpg", np.full((4, 4, 3), 10 * i, np.uint8))
    scipy.io.savemat(tmp_path / "stimuli.mat", {"visual_stimuli": stimuli})
    with pytest.raises(DataError) as exc_info:
        load_image_set(tmp_path / "stimuli.mat")
    _assert_error(exc_info, "stimuli.mat", "2 images", "at least 3")


def _stimuli_mat(path: Path, pixels: list[np.ndarray]) -> Path:
    stimuli = np.empty((1, len(pixels)), dtype=[("names", object), ("pixels", object)])
    for i, p in enumerate(pixels):
        stimuli[0, i] = (f"image_{i + 1}.jpg", p)
    scipy.io.savemat(path, {"visual_stimuli": stimuli})
    return path


@pytest.mark.parametrize(("bad", "words"), [
    (np.full((4, 4, 3), np.nan), "not finite"),
    (np.full((4, 4, 3), 1e300), "outside 0-255"),
    (np.full((4, 4, 3), -5.0), "outside 0-255"),
    (np.full((4, 4, 3), 0.5), "float values in 0-1"),
    (np.zeros((0, 4, 3), np.uint8), "expected (H, W, 3)"),
])
def test_stimulus_pixels_must_be_0_to_255(tmp_path: Path, bad: np.ndarray, words: str) -> None:
    """A cast to uint8 would wrap negative values, turn NaN into noise and 0-1 floats into black images."""
    good = [np.full((4, 4, 3), 10 * i, np.uint8) for i in range(3)]
    path = _stimuli_mat(tmp_path / "stimuli.mat", [*good[:2], bad])
    with pytest.raises(DataError) as exc_info:
        load_image_set(path)
    _assert_error(exc_info, "stimuli.mat", "visual_stimuli(3).pixels", words)
    floats = _stimuli_mat(tmp_path / "floats.mat", [g.astype(float) for g in good])  # 0-255 as doubles: read
    assert [int(im[0, 0, 0]) for im in load_image_set(floats).images] == [0, 10, 20]


def test_binary_stimulus_pixels_are_black_and_white(tmp_path: Path) -> None:
    """A MATLAB logical image (saved from a bool array) is stored as 0 and 1 in uint8: read as such it was a
    nearly black image. False is black and True white (0 and 255), beside uint8 images read as they are."""
    rng = np.random.default_rng(0)
    binary = [rng.random((6, 5, 3)) > 0.5 for _ in range(2)]
    path = _stimuli_mat(tmp_path / "binary.mat", [*binary, np.full((6, 5, 3), 1, np.uint8)])
    images = load_image_set(path).images
    for image, bits in zip(images, binary, strict=False):
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, np.where(bits, 255, 0))
    np.testing.assert_array_equal(images[2], 1)  # a uint8 image of ones stays ones


def test_numeric_stimulus_names_are_the_numbers_they_name(tmp_path: Path) -> None:
    """Names stored as numbers (a double, which MATLAB may store as uint8 and the reader returns as a double)
    read as '7', not '7.0'; text names are kept as they are."""
    stimuli = np.empty((1, 3), dtype=[("names", object), ("pixels", object)])
    for i, name in enumerate((7.0, np.uint8(8), "nine.png")):
        stimuli[0, i] = (name, np.full((4, 4, 3), 10 * i, np.uint8))
    scipy.io.savemat(tmp_path / "numbers.mat", {"visual_stimuli": stimuli})
    assert load_image_set(tmp_path / "numbers.mat").names == ["7", "8", "nine.png"]


def test_load_algonauts_set(data_root: Path) -> None:
    dataset = load_algonauts_set(data_root, "92", targets=["EVC", "MEG_late"])
    assert len(dataset) == 92
    assert dataset.targets["EVC"].shape == dataset.targets["MEG_late"].shape == (15, 92, 92)
    test_set = load_algonauts_set(data_root, "78")
    assert len(test_set) == 78 and test_set.targets == {}


# --------------------------------------------------------------------------- files tests make


def test_npy_and_npz_files(tmp_path: Path, make_rdms) -> None:
    one, stack = make_rdms(7, seed=1), make_rdms(7, subjects=3, seed=2)
    np.save(tmp_path / "one.npy", one)
    np.savez(tmp_path / "two.npz", EVC_RDMs=stack, IT_RDMs=stack[::-1])
    np.testing.assert_array_equal(load_rdms(tmp_path / "one.npy"), one)
    np.testing.assert_array_equal(load_rdms(tmp_path / "one.npy", n_images=7), one)
    assert list_rdm_keys(tmp_path / "one.npy") == {"": (7, 7)}
    np.testing.assert_array_equal(load_rdms(tmp_path / "two.npz", "IT_RDMs"), stack[::-1])
    loaded = load_rdm_dict(tmp_path / "two.npz", n_images=7)
    assert set(loaded) == {"EVC_RDMs", "IT_RDMs"}
    np.testing.assert_array_equal(loaded["EVC_RDMs"], stack)
    # float32 input comes back as float64
    np.save(tmp_path / "f32.npy", one.astype(np.float32))
    assert load_rdms(tmp_path / "f32.npy").dtype == np.float64


def test_several_arrays_need_a_key(tmp_path: Path, make_rdms) -> None:
    np.savez(tmp_path / "two.npz", a=make_rdms(5), b=make_rdms(5))
    with pytest.raises(DataError) as exc_info:
        load_rdms(tmp_path / "two.npz")
    _assert_error(exc_info, "two.npz", "several arrays", "a, b")


def test_subject_by_k_arrays_accepted(tmp_path: Path, make_rdms) -> None:
    rdms = make_rdms(6, subjects=4, k=2, seed=3)
    assert validate_rdms(rdms, "x").shape == (4, 2, 6, 6)
    np.save(tmp_path / "meg.npy", rdms)
    np.testing.assert_array_equal(load_rdms(tmp_path / "meg.npy", n_images=6), rdms)
    scipy.io.savemat(tmp_path / "meg_v5.mat", {"MEG_RDMs_early": rdms})
    np.testing.assert_array_equal(load_rdms(tmp_path / "meg_v5.mat", "MEG_RDMs_early"), rdms)
    # An HDF5 (v7.3-style) file stores MATLAB's column-major axes reversed.
    with h5py.File(tmp_path / "meg_v73.mat", "w") as f:
        f["MEG_RDMs_early"] = rdms.transpose()
    np.testing.assert_array_equal(load_rdms(tmp_path / "meg_v73.mat", "MEG_RDMs_early"), rdms)
    assert subject_rdms(rdms) is rdms
    assert subject_rdms(rdms[0, 0]).shape == (1, 6, 6)


@pytest.mark.parametrize("suffix", [".mat", ".npz"])
def test_constant_subject_rdm_rejected(tmp_path: Path, make_rdms, suffix: str) -> None:
    """A subject RDM with a constant upper triangle would make Spearman's rho and the noise ceiling NaN."""
    stack = make_rdms(6, subjects=3, seed=5)
    stack[1] = 0.5 * (1 - np.eye(6))
    meg = make_rdms(6, subjects=4, k=2, seed=6)
    meg[2, 1] = 1 - np.eye(6)
    for key, rdms, which in (
        ("IT_RDMs", stack, "subject 2 of 3"),
        ("MEG_RDMs_late", meg, "subject 3 of 4 (RDM 2 of its 2)"),
        ("EVC_RDMs", 1 - np.eye(6), "the RDM"),
    ):
        path = tmp_path / f"{key}{suffix}"
        save_rdms(path, {key: rdms})
        with pytest.raises(DataError) as exc_info:
            load_rdms(path, key)
        _assert_error(exc_info, f"{path}:{key}", which, "constant upper triangle", "undefined")
        with pytest.raises(DataError) as exc_info:
            load_rdm_dict(path)
        _assert_error(exc_info, f"{path}:{key}", which, "constant upper triangle", "undefined")
    # Nearly constant is fine: the ranks are defined.
    stack[1, 0, 1] = stack[1, 1, 0] = 0.5 + 1e-9
    assert validate_rdms(stack, "x").shape == (3, 6, 6)


def test_subjects_whose_orders_cancel_are_rejected(tmp_path: Path, make_rdms) -> None:
    """Each subject valid, but their mean RDM constant (of all, or of all but one: the lower ceiling's): data-info
    and evaluate crashed on the ceiling (exit 1), fit trained on a constant target. Refused as the file is read."""
    first = np.round(make_rdms(7, seed=28) * 8) / 8  # multiples of 1/8: the means are exact
    second = (2 - first) * (1 - np.eye(7))
    third = np.round(make_rdms(7, seed=29) * 8) / 8
    for rdms, which in ((np.stack([first, second]), "of its 2 subjects"),
                        (np.stack([third, first, second]), "of its subjects other than subject 1 of 3")):
        path = tmp_path / "cancel.npy"
        np.save(path, rdms)
        with pytest.raises(DataError, match=rf"^{path}: the mean RDM {which} has a constant upper triangle"):
            load_rdms(path)
    np.save(path, np.stack([first, third, 2 * second]))  # no mean constant: fine
    assert load_rdms(path).shape == (3, 7, 7)


def test_group_average(make_rdms) -> None:
    stack = make_rdms(5, subjects=3, seed=4)
    np.testing.assert_allclose(group_average(stack), (stack[0] + stack[1] + stack[2]) / 3)
    meg = make_rdms(5, subjects=3, k=2, seed=5)
    np.testing.assert_allclose(group_average(meg), meg.sum(axis=(0, 1)) / 6)
    np.testing.assert_allclose(group_average(meg), meg.mean(axis=1).mean(axis=0))
    np.testing.assert_array_equal(group_average(stack[0]), stack[0])
    assert group_average(meg).shape == (5, 5)


@pytest.mark.parametrize("suffix", [".mat", ".npz", ".npy"])
def test_save_rdms_round_trip_and_atomic(tmp_path: Path, make_rdms, suffix: str) -> None:
    out_dir = tmp_path / "out"
    rdms = {"EVC_RDMs": make_rdms(8, seed=6)}
    if suffix != ".npy":
        rdms["IT_RDMs"] = make_rdms(8, subjects=2, seed=7)
        rdms["MEG_RDMs_early"] = make_rdms(8, subjects=2, k=2, seed=8)
    path = save_rdms(out_dir / f"sub{suffix}", rdms)  # creates the folder
    assert path == out_dir / f"sub{suffix}"
    assert sorted(p.name for p in out_dir.iterdir()) == [f"sub{suffix}"]  # no temp file left
    if suffix == ".npy":
        np.testing.assert_array_equal(load_rdms(path, n_images=8), rdms["EVC_RDMs"])
    else:
        loaded = load_rdm_dict(path, n_images=8)
        assert set(loaded) == set(rdms)
        for key, value in rdms.items():
            assert loaded[key].shape == value.shape
            np.testing.assert_array_equal(loaded[key], value)
    if suffix == ".mat":
        assert not h5py.is_hdf5(path)
        assert scipy.io.loadmat(path)["EVC_RDMs"].shape == (8, 8)
    # Overwriting replaces the file; a write that fails leaves the old file and no temp file behind.
    new = {key: value * 2 for key, value in rdms.items()}
    save_rdms(path, new)
    before = path.read_bytes()
    with pytest.raises((TypeError, ValueError)):
        save_rdms(path, {"EVC_RDMs": np.array(["not", "numbers"])})
    assert path.read_bytes() == before
    assert sorted(p.name for p in out_dir.iterdir()) == [f"sub{suffix}"]


def test_save_rdms_rejects_bad_requests(tmp_path: Path, make_rdms) -> None:
    with pytest.raises(DataError) as exc_info:
        save_rdms(tmp_path / "sub.csv", {"a": make_rdms(4)})
    _assert_error(exc_info, "sub.csv", "unsupported output type")
    with pytest.raises(DataError) as exc_info:
        save_rdms(tmp_path / "sub.npy", {"a": make_rdms(4), "b": make_rdms(4)})
    _assert_error(exc_info, "sub.npy", "one array")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- bad RDMs


def _bad_rdm(kind: str, make_rdms) -> np.ndarray:
    rdms = make_rdms(6, subjects=3, seed=9)
    if kind == "not square":
        return rdms[:, :, :5]
    if kind == "NaN":
        rdms[1, 2, 3] = rdms[1, 3, 2] = np.nan
    elif kind == "inf":
        rdms[2, 0, 4] = rdms[2, 4, 0] = np.inf
    elif kind == "not symmetric":
        rdms[0, 1, 2] += 0.5
    elif kind == "non-zero diagonal":
        rdms[1, 3, 3] = 0.25
    return rdms


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("not square", "not square"),
        ("NaN", "NaN or inf"),
        ("inf", "NaN or inf"),
        ("not symmetric", "not symmetric"),
        ("non-zero diagonal", "non-zero diagonal"),
    ],
)
@pytest.mark.parametrize("suffix", [".mat", ".npz", ".npy"])
def test_bad_rdm_files(tmp_path: Path, make_rdms, kind: str, expected: str, suffix: str) -> None:
    rdms = _bad_rdm(kind, make_rdms)
    path = tmp_path / f"bad{suffix}"
    if suffix == ".mat":
        scipy.io.savemat(path, {"IT_RDMs": rdms})
    elif suffix == ".npz":
        np.savez(path, IT_RDMs=rdms)
    else:
        np.save(path, rdms)
    key_parts = () if suffix == ".npy" else ("IT_RDMs",)
    with pytest.raises(DataError) as exc_info:
        load_rdms(path, None if suffix == ".npy" else "IT_RDMs")
    _assert_error(exc_info, str(path), *key_parts, expected)
    with pytest.raises(DataError) as exc_info:
        load_rdm_dict(path)
    _assert_error(exc_info, str(path), *key_parts, expected)


def test_bad_rdm_in_v73_file(tmp_path: Path, make_rdms) -> None:
    rdms = _bad_rdm("not symmetric", make_rdms)
    with h5py.File(tmp_path / "bad73.mat", "w") as f:
        f["EVC_RDMs"] = rdms.transpose()
    with pytest.raises(DataError) as exc_info:
        load_rdms(tmp_path / "bad73.mat", "EVC_RDMs")
    _assert_error(exc_info, "bad73.mat:EVC_RDMs", "not symmetric", "0.5")


def test_wrong_number_of_images(tmp_path: Path, make_rdms, test_dir: Path) -> None:
    np.savez(tmp_path / "sub.npz", EVC_RDMs=make_rdms(6))
    with pytest.raises(DataError) as exc_info:
        load_rdms(tmp_path / "sub.npz", "EVC_RDMs", n_images=7)
    _assert_error(exc_info, "sub.npz:EVC_RDMs", "6 x 6", "7 images")
    # The official 78-image example submission against the 92-image set.
    with pytest.raises(DataError) as exc_info:
        load_rdm_dict(test_dir / "example_submit_fmri.mat", n_images=92)
    _assert_error(exc_info, "example_submit_fmri.mat:", "78 x 78", "92 images")


def test_bad_shapes(tmp_path: Path) -> None:
    for name, value, problem in (
        ("vector.npy", np.zeros(5), "shape (5,)"),
        ("five_d.npy", np.zeros((1, 1, 1, 3, 3)), "shape (1, 1, 1, 3, 3)"),
        ("tiny.npy", np.zeros((2, 2)), "at least 3 images"),
        ("text.npy", np.array([["a", "b"], ["c", "d"]]), "not a numeric array"),
    ):
        np.save(tmp_path / name, value)
        with pytest.raises(DataError) as exc_info:
            load_rdms(tmp_path / name)
        _assert_error(exc_info, name, problem)


def test_missing_key(tmp_path: Path, make_rdms, set92: Path) -> None:
    scipy.io.savemat(tmp_path / "sub.mat", {"EVC_RDMs": make_rdms(5)})
    with pytest.raises(DataError) as exc_info:
        load_rdms(tmp_path / "sub.mat", "IT_RDMs")
    _assert_error(exc_info, "sub.mat", "missing key 'IT_RDMs'", "keys: EVC_RDMs")
    with pytest.raises(DataError) as exc_info:
        load_rdms(set92 / "target_fmri.mat", "MEG_RDMs_early")
    _assert_error(exc_info, "target_fmri.mat", "missing key 'MEG_RDMs_early'", "EVC_RDMs, IT_RDMs")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(DataError) as exc_info:
        load_rdm_dict(tmp_path / "empty.npz")
    _assert_error(exc_info, "empty.npz", "no arrays")


# --------------------------------------------------------------------------- unreadable files


@pytest.mark.parametrize("name", ["garbage.mat", "garbage.npy", "garbage.npz", "empty.mat"])
def test_garbage_rdm_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("empty") else b"this is not an RDM file\x00\xff" * 40)
    with pytest.raises(DataError) as exc_info:
        load_rdm_dict(path)
    _assert_error(exc_info, str(path), "unreadable")


@pytest.mark.parametrize(
    ("source", "version"),
    [
        ("Training_Data/92_Image_Set/target_meg_windowavg.mat", "v5"),
        ("Training_Data/92_Image_Set/target_fmri.mat", "v7.3"),
        ("Test_Data/example_submit_fmri.mat", "v7.3"),
    ],
)
@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.98])
def test_truncated_real_mat(
    tmp_path: Path, data_root: Path, source: str, version: str, fraction: float
) -> None:
    content = (data_root / source).read_bytes()
    path = tmp_path / f"truncated_{Path(source).name}"
    path.write_bytes(content[: int(len(content) * fraction)])
    assert h5py.is_hdf5(path) == (version == "v7.3")  # each reader gets its own kind of broken file
    with pytest.raises(DataError) as exc_info:
        load_rdm_dict(path)
    _assert_error(exc_info, str(path), "unreadable")


def test_unsupported_rdm_file_type(tmp_path: Path) -> None:
    (tmp_path / "rdms.csv").write_text("0,1\n1,0\n")
    with pytest.raises(DataError) as exc_info:
        load_rdms(tmp_path / "rdms.csv")
    _assert_error(exc_info, "rdms.csv", "unsupported RDM file type '.csv'")


def test_garbage_jpg(tmp_path: Path, set92: Path) -> None:
    Image.new("RGB", (5, 5)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\x00garbage, not a jpeg" * 20)
    with pytest.raises(DataError) as exc_info:
        load_image_set(tmp_path)
    _assert_error(exc_info, str(tmp_path / "b.jpg"), "unreadable image")


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated_jpg(tmp_path: Path, set92: Path, fraction: float) -> None:
    content = (set92 / "92images" / "image_01.jpg").read_bytes()
    (tmp_path / "image_01.jpg").write_bytes(content[: int(len(content) * fraction)])
    with pytest.raises(DataError) as exc_info:
        load_image_set(tmp_path)
    _assert_error(exc_info, str(tmp_path / "image_01.jpg"), "unreadable image", "truncated")


def test_bad_image_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc_info:
        load_image_set(tmp_path / "nowhere")
    _assert_error(exc_info, "nowhere", "no such image folder or file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as exc_info:
        load_image_set(tmp_path / "empty")
    _assert_error(exc_info, "empty", "no images")
    (tmp_path / "list.txt").write_text("image_01.jpg\n")
    with pytest.raises(DataError) as exc_info:
        load_image_set(tmp_path / "list.txt")
    _assert_error(exc_info, "list.txt", "expected a folder of images or a stimulus .mat file")
    scipy.io.savemat(tmp_path / "stimuli.mat", {"pictures": np.zeros((2, 2))})
    with pytest.raises(DataError) as exc_info:
        load_image_set(tmp_path / "stimuli.mat")
    _assert_error(exc_info, "stimuli.mat", "missing key 'visual_stimuli'", "pictures")
    (tmp_path / "broken.mat").write_bytes(b"garbage" * 30)
    with pytest.raises(DataError) as exc_info:
        load_image_set(tmp_path / "broken.mat")
    _assert_error(exc_info, "broken.mat", "unreadable .mat file")


# --------------------------------------------------------------------------- paths and the data root


def test_wrong_rdm_path(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc_info:
        load_rdms(tmp_path / "missing.mat", "EVC_RDMs")
    _assert_error(exc_info, "missing.mat", "no such file")
    (tmp_path / "folder.npy").mkdir()
    with pytest.raises(DataError) as exc_info:
        load_rdm_dict(tmp_path / "folder.npy")
    _assert_error(exc_info, "folder.npy", "no such file")


def test_data_root_from_argument_and_env(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_root(data_root) == data_root
    monkeypatch.setenv(DATA_ENV_VAR, str(data_root))
    assert resolve_data_root(None) == data_root
    assert resolve_data_root(str(data_root)) == data_root


def test_missing_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    with pytest.raises(DataError) as exc_info:
        resolve_data_root(None)
    _assert_error(exc_info, "data: no data root", DATA_ENV_VAR)  # the CLI says --data
    with pytest.raises(DataError) as exc_info:
        load_algonauts_set(None, "92")
    _assert_error(exc_info, "data: ", DATA_ENV_VAR)
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as exc_info:
        resolve_data_root(None)
    _assert_error(exc_info, "nowhere", "not a directory")
    with pytest.raises(DataError) as exc_info:
        describe_data_root(tmp_path)
    _assert_error(exc_info, str(tmp_path), "no Algonauts image sets")


def test_unknown_set_and_target(data_root: Path, set92: Path) -> None:
    with pytest.raises(DataError) as exc_info:
        load_algonauts_set(data_root, "93")
    _assert_error(exc_info, "'93'", "92, 118, 78")
    with pytest.raises(DataError) as exc_info:
        target_file(set92, "V4")
    _assert_error(exc_info, "'V4'", "EVC, IT, MEG_early, MEG_late")
    assert target_file(set92, "MEG_early") == set92 / "target_meg_windowavg.mat"


def test_own_data_named_like_a_challenge_target_gets_its_own_ceiling(data_root: Path) -> None:
    """The 92 official images with their EVC RDMs count as official; the same arrays as your own data keyed 'EVC'
    are scored against the ceiling computed from their subjects, not the published one."""
    from siamrdm.rdm.noise_ceiling import ceiling_source, noise_ceilings, reference_ceiling
    from siamrdm.train import subset

    official = load_algonauts_set(data_root, "92", ("EVC",))
    own = BrainDataset("mine", official.images, {"EVC": official.targets["EVC"]})
    assert official.official and not own.official
    assert subset(official, np.arange(92), "all").official  # folds and held-out splits keep the mark
    subjects = official.targets["EVC"]
    assert ceiling_source(target_key("EVC", official.official), subjects) == "official"
    assert reference_ceiling(target_key("EVC", True), subjects) == 0.1589
    assert ceiling_source(target_key("EVC", own.official), subjects) == "computed"
    assert reference_ceiling(target_key("EVC", False), subjects) == pytest.approx(
        noise_ceilings(subjects).upper)
