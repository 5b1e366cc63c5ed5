"""Your own data, first class: image order (natural, explicit, recorded), ceilings for own data, image-fold
cross-validation, the Python API and the README example, end to end through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamrdm import data

N_IMAGES = 12
NATURAL = [f"img{k}.png" for k in range(1, N_IMAGES + 1)]  # as plain strings img1, img10, img11, img12, img2, ...


def write_images(folder: Path, n: int = N_IMAGES, size: int = 32, seed: int = 0) -> Path:
    """img1.png .. imgN.png: smooth random colour fields, a different one per image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(1, n + 1):
        small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(folder / f"img{k}.png")
    return folder


# --------------------------------------------------------------------------- image order


def test_folders_sort_naturally(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "images")
    assert sorted(NATURAL) != NATURAL  # the plain string order would put img10 second
    assert data.load_image_set(folder).names == NATURAL
    names = ["b2.png", "B10.png", "a.png", "b02.png", "b1.png"]
    assert sorted(names, key=data.natural_key) == ["a.png", "b1.png", "b02.png", "b2.png", "B10.png"]


def test_explicit_order(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "images")
    plain = data.load_image_set(folder)
    order = tmp_path / "order.txt"
    listed = sorted(NATURAL)  # img1, img10, img11, img12, img2, ...
    order.write_text("# my RDM's row order\n" + "\n".join(n.removesuffix(".png") if k % 2 else n
                                                          for k, n in enumerate(listed)) + "\n\n")
    images = data.load_image_set(folder, order)
    assert images.names == listed  # stems name the files too
    np.testing.assert_array_equal(images.images[1], plain.images[9])  # img10
    assert data.load_image_set(folder, listed[::-1]).names == listed[::-1]  # a list works in code


@pytest.mark.parametrize("lines, expected", [
    (NATURAL[:-1], r"does not list 'img12\.png' of the 12 images in"),
    (NATURAL + ["cat.png"], r"lists 'cat\.png', not among the 12 images in"),
    (NATURAL + ["img3"], r"lists 'img3\.png' twice"),
    ([], r"order file lists no image names"),
])
def test_bad_order_file(tmp_path: Path, lines: list[str], expected: str) -> None:
    folder = write_images(tmp_path / "images")
    order = tmp_path / "order.txt"
    order.write_text("\n".join(lines))
    with pytest.raises(data.DataError, match=f"^{order}: {expected}") as info:
        data.load_image_set(folder, order)
    assert "\n" not in str(info.value)
    with pytest.raises(data.DataError, match=r"nowhere\.txt: no such order file"):
        data.load_image_set(folder, tmp_path / "nowhere.txt")


def test_stimulus_mat_keeps_its_own_order(set92: Path) -> None:
    from_mat = data.load_image_set(set92 / "92images.mat")
    assert len(from_mat) == 92
    reversed_order = data.load_image_set(set92 / "92images.mat", from_mat.names[::-1])
    np.testing.assert_array_equal(reversed_order.images[0], from_mat.images[-1])


def test_load_dataset_checks_names_and_names_the_target(tmp_path: Path, make_rdms) -> None:
    folder = write_images(tmp_path / "images")
    rdms = make_rdms(N_IMAGES, subjects=3, seed=1)
    np.save(tmp_path / "it.npy", rdms)
    dataset = data.load_dataset(folder, tmp_path / "it.npy")
    assert dataset.name == "images" and list(dataset.targets) == ["it"]  # a .npy has no key: its name
    assert list(data.load_dataset(folder, tmp_path / "it.npy", "IT").targets) == ["IT"]
    hdf5 = data.save_rdms(tmp_path / "it.hdf5", {"IT": rdms}, names=NATURAL)
    assert list(data.load_dataset(folder, hdf5).targets) == ["IT"]
    order = tmp_path / "order.txt"
    order.write_text("\n".join(sorted(NATURAL)))
    with pytest.raises(data.DataError, match=rf"{hdf5}: pattern descriptor 'images' orders the images "
                                             rf"differently from {folder} \(row 2: 'img2\.png' in the file"):
        data.load_dataset(folder, hdf5, order=order)
    (folder / "img12.png").unlink()
    with pytest.raises(data.DataError, match=r"it\.npy: RDMs are 12 x 12 but there are 11 images"):
        data.load_dataset(folder, tmp_path / "it.npy")
