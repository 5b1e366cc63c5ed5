"""Issue 19, bounded reading: every reader reads only regular files, nothing from outside an HDF5 file, and checks
sizes from headers before it reads (so a tiny crafted file neither hangs a command nor makes it allocate blindly);
`data-info` lists from headers; `report` embeds only small regular files.

The crafted files declare huge shapes but store (almost) nothing: a reader that trusts them would try to allocate
tens of GiB. Each refusal is checked to allocate little (tracemalloc sees numpy's allocations)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from helpers import assert_one_line_error, mark_run, run_cli
from PIL import Image

from siamrdm import cli  # noqa: F401  (imported before tracing, so imports are not counted)
from siamrdm.errors import DataError
from siamrdm.io import limits
from siamrdm.io.arrayfiles import mat_variables
from siamrdm.io.condensed import CondensedRDMs
from siamrdm.io.images import load_image_set, read_image_order
from siamrdm.io.limits import MAX_IMAGE_PIXELS, MAX_READ_BYTES, available_memory, check_read_size, read_limit
from siamrdm.io.rdmfiles import list_rdm_keys, load_rdm_dict, load_rdms
from siamrdm.io.rsafiles import read_rdm_names
from siamrdm.pipelines import report  # noqa: F401
from siamrdm.rdm import upper_tri
from siamrdm.train.largeset import open_image_store

ALLOWED_PEAK = 64 * 2**20  # what a refusal may allocate: the files declare GiBs
OUTSIDE = ("external link", "external storage", "virtual dataset")
OUTSIDE_WORDS = {"external link": "external link", "external storage": "external files",
                 "virtual dataset": "virtual dataset"}
HUGE = (15, 16_000, 16_000)  # 30.7 GB as float64: more than MAX_READ_BYTES, though its N is allowed


@pytest.fixture(autouse=True)
def never_hang() -> Iterator[None]:
    """A reader that blocks (on a FIFO, say) fails its test after two minutes instead of hanging the run."""
    def blocked(signum, frame):
        raise TimeoutError("a reader blocked for 120 s")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def allocating_little() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < ALLOWED_PEAK, f"allocated {peak:,} bytes"


def _store_outside(group: h5py.Group, name: str, values: np.ndarray, kind: str, folder: Path) -> None:
    """`group[name]` holding `values`, the values kept in another file in one of the three ways HDF5 has."""
    values = np.ascontiguousarray(values)
    if kind == "external storage":
        raw = folder / f"{name}.bin"
        raw.write_bytes(values.tobytes())
        group.create_dataset(name, values.shape, values.dtype, external=[(str(raw), 0, values.nbytes)])
        return
    source = folder / f"{name}_source.h5"
    with h5py.File(source, "w") as f:
        f["values"] = values
    if kind == "external link":
        group[name] = h5py.ExternalLink(str(source), "/values")
    else:
        layout = h5py.VirtualLayout(values.shape, values.dtype)
        layout[...] = h5py.VirtualSource(str(source), "values", values.shape)
        group.create_virtual_dataset(name, layout)


def _submission(tmp_path: Path, make_rdms, n: int = 6) -> Path:
    path = tmp_path / "submission.mat"
    scipy.io.savemat(path, {"EVC_RDMs": make_rdms(n, seed=7)})
    return path


# --------------------------------------------------------------------------- 1. nothing from outside an HDF5 file


@pytest.mark.parametrize("kind", OUTSIDE)
def test_v73_target_kept_outside_its_file_is_refused(capsys, tmp_path: Path, make_rdms, kind: str) -> None:
    target = tmp_path / "target.mat"
    with h5py.File(target, "w") as f:  # MATLAB v7.3: axes reversed
        _store_outside(f, "EVC_RDMs", make_rdms(6, subjects=3, seed=1).transpose(), kind, tmp_path)
    code, out, err = run_cli(capsys, "score", _submission(tmp_path, make_rdms), "--target", target)
    assert (code, out) == (2, "")
    assert_one_line_error(err, str(target), "EVC_RDMs", OUTSIDE_WORDS[kind])


def test_a_soft_link_through_an_external_link_is_refused(capsys, tmp_path: Path, make_rdms) -> None:
    target = tmp_path / "target.mat"
    with h5py.File(target, "w") as f:
        outside = f.create_group("outside")
        _store_outside(outside, "values", make_rdms(6, subjects=3, seed=1).transpose(), "external link", tmp_path)
        f["EVC_RDMs"] = h5py.SoftLink("/outside/values")
    code, _, err = run_cli(capsys, "score", _submission(tmp_path, make_rdms), "--target", target)
    assert code == 2
    assert_one_line_error(err, str(target), "/outside/values", "external link")


@pytest.mark.parametrize("kind", OUTSIDE)
def test_rsatoolbox_values_kept_outside_the_file_are_refused(tmp_path: Path, make_rdms, kind: str) -> None:
    rdms = make_rdms(5, subjects=2, seed=2)
    vectors = tmp_path / "vectors.hdf5"
    with h5py.File(vectors, "w") as f:
        _store_outside(f, "dissimilarities", upper_tri(rdms), kind, tmp_path)
        f.create_group("pattern_descriptors")
    with pytest.raises(DataError) as info:
        load_rdms(vectors)
    assert_one_line_error(f"siamrdm: error: {info.value}", str(vectors), "dissimilarities", OUTSIDE_WORDS[kind])
    names = tmp_path / "names.hdf5"
    with h5py.File(names, "w") as f:
        f["dissimilarities"] = upper_tri(rdms)
        _store_outside(f.create_group("pattern_descriptors"), "images", np.array([b"a", b"b", b"c", b"d", b"e"]),
                       kind, tmp_path)
    with pytest.raises(DataError) as info:
        read_rdm_names(names)
    assert_one_line_error(f"siamrdm: error: {info.value}", str(names), "images", OUTSIDE_WORDS[kind])


@pytest.mark.parametrize("kind", OUTSIDE)
def test_large_set_hdf5_kept_outside_the_file_is_refused(tmp_path: Path, kind: str) -> None:
    rdms = tmp_path / "rdms.h5"
    with h5py.File(rdms, "w") as f:
        _store_outside(f, "EVC", np.random.default_rng(0).random((2, 10)), kind, tmp_path)
    with pytest.raises(DataError) as info:
        CondensedRDMs(rdms, 5)
    assert_one_line_error(f"siamrdm: error: {info.value}", str(rdms), "EVC", OUTSIDE_WORDS[kind])
    images = tmp_path / "images.h5"
    with h5py.File(images, "w") as f:
        _store_outside(f, "images", np.full((3, 8, 8, 3), 200, np.uint8), kind, tmp_path)
    with pytest.raises(DataError) as info:
        open_image_store(images)
    assert_one_line_error(f"siamrdm: error: {info.value}", str(images), "images", OUTSIDE_WORDS[kind])


def test_virtual_image_store_over_a_missing_file_is_refused(tmp_path: Path) -> None:
    """Its missing source reads as zeros: the run would train on black images."""
    images = tmp_path / "images.h5"
    with h5py.File(images, "w") as f:
        layout = h5py.VirtualLayout((3, 8, 8, 3), np.uint8)
        layout[...] = h5py.VirtualSource(str(tmp_path / "gone.h5"), "images", (3, 8, 8, 3))
        f.create_virtual_dataset("images", layout, fillvalue=0)
    with pytest.raises(DataError, match=r"images\.h5: dataset '/images' is a virtual dataset"):
        open_image_store(images)


@pytest.mark.parametrize("command", ["score", "data-info"])
def test_an_external_link_to_a_fifo_does_not_hang(tmp_path: Path, make_rdms, command: str) -> None:
    """A real process with a timeout: the reader must refuse the link, never open the FIFO."""
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    set_dir = tmp_path / "root" / "Training_Data" / "92_Image_Set"
    (set_dir / "92images").mkdir(parents=True)
    target = set_dir / "target_fmri.mat"
    with h5py.File(target, "w") as f:
        f["EVC_RDMs"] = h5py.ExternalLink(str(fifo), "/EVC_RDMs")
    args = (["score", str(_submission(tmp_path, make_rdms)), "--target", str(target)] if command == "score"
            else ["data-info", "--data", str(tmp_path / "root")])
    env = {k: v for k, v in os.environ.items() if k != "SIAMRDM_DEBUG"}
    try:
        done = subprocess.run([sys.executable, "-m", "siamrdm", *args], capture_output=True, text=True, env=env,
                              timeout=100)
    except subprocess.TimeoutExpired:
        pytest.fail(f"siamrdm {command} hung on an external link to a FIFO")
    assert done.returncode == 2
    assert_one_line_error(done.stderr, str(target), "EVC_RDMs", "external link")


def test_inputs_that_are_not_regular_files_are_refused_unopened(capsys, tmp_path: Path, make_rdms) -> None:
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    device = tmp_path / "zero.npy"
    device.symlink_to("/dev/zero")
    good = tmp_path / "good.npy"
    np.save(good, make_rdms(5, subjects=2))
    for args, named in ((["score", device, "--target", good], device), (["score", good, "--target", fifo], fifo)):
        code, _, err = run_cli(capsys, *args)
        assert code == 2
        assert_one_line_error(err, str(named), "not a regular file")
    with pytest.raises(DataError, match=r"pipe\.npy: not a regular file"):
        load_image_set(fifo)
    with pytest.raises(DataError, match=r"pipe\.npy: not a regular file"):
        read_image_order(fifo)
    images = tmp_path / "images.h5"
    os.mkfifo(images)
    with pytest.raises(DataError, match=r"images\.h5: not a regular file"):
        open_image_store(images)


# --------------------------------------------------------------------------- 2. sizes from headers


def _npy_header(path: Path, shape: tuple[int, ...]) -> Path:
    """A .npy file of `shape` float64 that stores nothing: its header, then a hole (a sparse file)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": shape})
        f.truncate(f.tell() + 8 * math.prod(shape))
    return path


def _npz_header(path: Path, key: str, shape: tuple[int, ...]) -> Path:
    """A .npz whose member declares `shape` (its header alone: the data are missing)."""
    with zipfile.ZipFile(path, "w") as z, z.open(f"{key}.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return path


def _mat_v5_header(path: Path, key: str, shape: tuple[int, ...]) -> Path:
    """A MATLAB v5 file with one compressed double variable of `shape`, of which only the header is stored."""
    def element(kind: int, body: bytes) -> bytes:
        return struct.pack("<II", kind, len(body)) + body + b"\0" * (-len(body) % 8)

    name = key.encode()
    header = (element(6, struct.pack("<II", 6, 0)) + element(5, struct.pack(f"<{len(shape)}i", *shape))
              + element(1, name) + struct.pack("<II", 9, 8 * math.prod(shape)))
    matrix = struct.pack("<II", 14, len(header) + 8 * math.prod(shape)) + header
    compressor = zlib.compressobj()
    stream = compressor.compress(matrix) + compressor.flush(zlib.Z_SYNC_FLUSH)
    text = b"MATLAB 5.0 MAT-file, crafted".ljust(116, b" ")
    path.write_bytes(text + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM" + struct.pack("<II", 15, len(stream))
                     + stream)
    return path


def _v73_header(path: Path, key: str, shape: tuple[int, ...]) -> Path:
    """A MATLAB v7.3 (HDF5) file whose dataset declares `shape` and stores no chunk: 1 or 2 kB."""
    with h5py.File(path, "w") as f:
        f.create_dataset(key, tuple(reversed(shape)), "f8", chunks=(100, 100, 1)[: len(shape)])
    return path


def _rsatoolbox_header(path: Path, rdms: int, n: int) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("dissimilarities", (rdms, n * (n - 1) // 2), "f8", chunks=(1, 10_000))
        f.create_group("pattern_descriptors")
    return path


@pytest.mark.parametrize(("kind", "shape", "words"), [
    (".npy", HUGE, ("(15, 16000, 16000)", "30,720,000,000 bytes")),
    (".npy", (20_000, 20_000), ("(20000, 20000)", "3,200,000,000 bytes", "20000 images", "16,384")),
    (".npz", HUGE, ("EVC_RDMs", "(15, 16000, 16000)", "30,720,000,000 bytes")),
    ("v5 .mat", (20_000, 20_000), ("EVC_RDMs", "(20000, 20000)", "3,200,000,000 bytes", "20000 images")),
    ("v7.3 .mat", HUGE, ("EVC_RDMs", "(15, 16000, 16000)", "30,720,000,000 bytes")),
    ("rsatoolbox", (15, 20_000, 20_000), ("(15, 20000, 20000)", "bytes", "20000 images")),
])
def test_huge_shapes_are_refused_from_headers(capsys, tmp_path: Path, make_rdms, kind: str,
                                              shape: tuple[int, ...], words: tuple[str, ...]) -> None:
    make = {".npy": lambda p: _npy_header(p.with_suffix(".npy"), shape),
            ".npz": lambda p: _npz_header(p.with_suffix(".npz"), "EVC_RDMs", shape),
            "v5 .mat": lambda p: _mat_v5_header(p.with_suffix(".mat"), "EVC_RDMs", shape),
            "v7.3 .mat": lambda p: _v73_header(p.with_suffix(".mat"), "EVC_RDMs", shape),
            "rsatoolbox": lambda p: _rsatoolbox_header(p.with_suffix(".hdf5"), shape[0], shape[-1])}[kind]
    target = make(tmp_path / "target")
    assert target.stat().st_blocks * 512 < 2**20  # the file stores almost nothing
    submission = _submission(tmp_path, make_rdms)
    with allocating_little():
        code, out, err = run_cli(capsys, "score", submission, "--target", target)
    assert (code, out) == (2, "")
    assert_one_line_error(err, str(target), *words)


def test_the_limit_is_the_memory_available_when_that_is_less(monkeypatch) -> None:
    monkeypatch.setattr(limits, "available_memory", lambda: 2**30)
    with pytest.raises(DataError, match=r"x\.npy: reading shape \(200, 1000, 1000\) needs 1,600,000,000 bytes "
                                             r"\(1\.5 GiB\) as float64, more than the 1\.0 GiB of memory available"):
        check_read_size("x.npy", {"": (200, 1000, 1000)})
    assert read_limit()[0] == 2**30
    monkeypatch.setattr(limits, "available_memory", lambda: None)
    assert read_limit()[0] == MAX_READ_BYTES
    monkeypatch.undo()
    if sys.platform == "linux":  # read from /proc/meminfo
        assert available_memory() > 0


def test_a_huge_lazily_stored_descriptor_is_refused_unread(tmp_path: Path, make_rdms) -> None:
    rdms = make_rdms(5, subjects=2, seed=3)
    path = tmp_path / "rdms.hdf5"
    with h5py.File(path, "w") as f:
        f["dissimilarities"] = upper_tri(rdms)
        f.create_group("rdm_descriptors").create_dataset("subject", (10**8,), "i8", chunks=(10**5,))
        f.create_group("pattern_descriptors").create_dataset("images", (10**8,), "S8", chunks=(10**5,))
    with allocating_little(), pytest.raises(DataError) as info:
        load_rdms(path)
    assert_one_line_error(f"siamrdm: error: {info.value}", str(path), "subject", "(100000000,)", "2 RDMs")
    with h5py.File(path, "a") as f:
        del f["rdm_descriptors"]
    with allocating_little(), pytest.raises(DataError) as info:
        read_rdm_names(path)
    assert_one_line_error(f"siamrdm: error: {info.value}", str(path), "images", "(100000000,)", "5 patterns")


def test_only_the_key_asked_for_is_read(tmp_path: Path, make_rdms) -> None:
    """A huge array beside the one asked for costs nothing (each reader reads one key)."""
    rdms = make_rdms(6, subjects=2, seed=4)
    mat = tmp_path / "both.mat"
    with h5py.File(mat, "w") as f:
        f["IT_RDMs"] = rdms.transpose()
        f.create_dataset("EVC_RDMs", tuple(reversed(HUGE)), "f8", chunks=(100, 100, 1))
    npz = tmp_path / "both.npz"
    with zipfile.ZipFile(npz, "w") as z:
        with z.open("EVC_RDMs.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": HUGE})
        with z.open("IT_RDMs.npy", "w") as member:
            np.lib.format.write_array(member, rdms)
    for path in (mat, npz):
        with allocating_little():
            np.testing.assert_array_equal(load_rdms(path, "IT_RDMs"), rdms)
            assert list_rdm_keys(path) == {"EVC_RDMs": HUGE, "IT_RDMs": (2, 6, 6)}
        with pytest.raises(DataError, match=r"'EVC_RDMs' \(15, 16000, 16000\) needs 30,720,000,576 bytes"):
            load_rdm_dict(path)


def test_v5_headers_are_read_without_decompressing(tmp_path: Path, make_rdms) -> None:
    """The shapes scipy reports, for every kind of variable, compressed or not."""
    values = {"EVC_RDMs": make_rdms(5, subjects=2), "flags": np.ones((2, 3), bool), "label": "EVC",
              "cells": np.array([1, "x"], dtype=object), "info": {"subject": 1}, "i8": np.arange(6, dtype=np.int8)}
    for compressed in (False, True):
        path = tmp_path / f"v5_{compressed}.mat"
        scipy.io.savemat(path, values, do_compression=compressed)
        assert {name: (shape, kind) for name, shape, kind in scipy.io.whosmat(path)} == {
            name: (v.shape, v.kind) for name, v in mat_variables(path).items()}
        assert list(list_rdm_keys(path)) == list(values)
        np.testing.assert_array_equal(load_rdms(path, "EVC_RDMs"), values["EVC_RDMs"])
        with pytest.raises(DataError, match=r"v5_\w+\.mat:info: a MATLAB struct array, not a numeric array"):
            load_rdms(path, "info")


# --------------------------------------------------------------------------- 3. data-info


def test_data_info_lists_shapes_from_headers_and_counts_only_images(capsys, tmp_path: Path) -> None:
    set_dir = tmp_path / "root" / "Training_Data" / "92_Image_Set"
    folder = set_dir / "92images"
    folder.mkdir(parents=True)
    for k in range(3):
        Image.new("RGB", (4, 4)).save(folder / f"image_{k}.png")
    (folder / "more.png").mkdir()  # a folder, not an image
    (folder / "notes.jpg").write_text("a text file")
    _v73_header(set_dir / "target_fmri.mat", "EVC_RDMs", HUGE)
    with allocating_little():
        code, out, err = run_cli(capsys, "data-info", "--data", tmp_path / "root", "--json")
    assert (code, err) == (0, "")
    entry = json.loads(out)["sets"]["92"]
    assert entry["images"] == 3 and entry["not_images"] == ["notes.jpg"]
    assert entry["rdm_files"] == {"target_fmri.mat": {"EVC_RDMs": list(HUGE)}}
    code, out, _ = run_cli(capsys, "data-info", "--data", tmp_path / "root")
    assert code == 0 and "3 images" in out and "not images (PIL cannot read them): notes.jpg" in out


def test_image_names_that_are_not_utf8_are_refused(capsys, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3):
        Image.new("RGB", (4, 4)).save(folder / f"image_{k}.png")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), "wb") as f:
        Image.new("RGB", (4, 4)).save(f, format="PNG")
    for read in (load_image_set, open_image_store):
        with pytest.raises(DataError) as info:
            read(folder)
        assert_one_line_error(f"siamrdm: error: {info.value}", str(folder), "caf\\xe9.png", "not valid UTF-8")
    root = tmp_path / "root" / "Test_Data"
    root.mkdir(parents=True)
    os.symlink(folder, root / "78images")
    code, _, err = run_cli(capsys, "data-info", "--data", tmp_path / "root")
    assert code == 2
    assert_one_line_error(err, "78images", "not valid UTF-8")


# --------------------------------------------------------------------------- 4. images too large to decode


def _black_png(path: Path, width: int, height: int) -> Path:
    """A valid, black 1-bit PNG: a few kB on disk for any size."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    pixels = zlib.compress(b"\0" * ((1 + (width + 7) // 8) * height), 1)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [8_500, 13_000])  # 72 and 169 megapixels: below and above PIL's own warning
def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path: Path, side: int) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3):
        Image.new("RGB", (4, 4)).save(folder / f"image_{k}.png")
    big = _black_png(folder / "big.png", side, side)
    assert big.stat().st_size < 2**20
    with warnings.catch_warnings(), allocating_little(), pytest.raises(DataError) as info:
        warnings.simplefilter("error")  # no DecompressionBombWarning besides the error
        load_image_set(folder)
    assert_one_line_error(f"siamrdm: error: {info.value}", str(big), f"{side} x {side} pixels", "64,000,000")
    assert MAX_IMAGE_PIXELS == 64_000_000


def test_hdf5_images_over_the_pixel_limit_are_refused(tmp_path: Path) -> None:
    images = tmp_path / "images.h5"
    with h5py.File(images, "w") as f:
        f.create_dataset("images", (3, 9_000, 9_000, 3), np.uint8, chunks=(1, 100, 100, 3))
    with pytest.raises(DataError, match=r"images\.h5:images: image of 9000 x 9000 pixels, more than the limit"):
        open_image_store(images)


# --------------------------------------------------------------------------- 5. report


def _run_folder(tmp_path: Path) -> Path:
    run = mark_run(tmp_path / "run")
    (run / "settings.json").write_text(json.dumps({"seed": 0}))
    Image.new("RGB", (4, 4)).save(run / "fine.png")
    return run


@pytest.mark.parametrize(("kind", "words"), [
    ("link to a device", "a symbolic link"),
    ("dangling link", "a symbolic link"),
    ("link to a file elsewhere", "a symbolic link"),
    ("sparse 3 GB", "3,221,225,472 bytes"),
])
def test_report_embeds_only_small_regular_files(capsys, tmp_path: Path, kind: str, words: str) -> None:
    run = _run_folder(tmp_path)
    figure = run / "figure.png"
    if kind == "link to a device":
        figure.symlink_to("/dev/zero")
    elif kind == "dangling link":
        figure.symlink_to(run / "gone.png")
    elif kind == "link to a file elsewhere":
        Image.new("RGB", (4, 4)).save(tmp_path / "private.png")
        figure.symlink_to(tmp_path / "private.png")
    else:
        Image.new("RGB", (4, 4)).save(figure)
        with open(figure, "r+b") as f:
            f.truncate(3 * 2**30)
    with allocating_little():
        code, out, err = run_cli(capsys, "report", run)
    assert (code, out) == (2, "")
    assert_one_line_error(err, "figure.png", words)
    assert not (run / "report.md").exists() and not (run / "report.html").exists()


@pytest.mark.parametrize("content", ['{"lr": [0.001, 0.01], "loss": "low"}', '{"lr": "fast"}', "[1, 2]",
                                     '{"lr": [0.001, 0.01', '{"lr": [0.001, -1]}', '{"lr": [1], "suggested_lr": "x"}'])
def test_report_refuses_a_malformed_lr_find(capsys, tmp_path: Path, content: str) -> None:
    run = _run_folder(tmp_path)
    (run / "lr_find.json").write_text(content)
    code, _, err = run_cli(capsys, "report", run)
    assert code == 2
    assert_one_line_error(err, "lr_find.json", "malformed LR range test")
    assert not (run / "report.md").exists()


def test_report_over_a_folder_named_report_md(capsys, tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    (run / "report.md").mkdir()
    code, _, err = run_cli(capsys, "report", run)
    assert code == 2
    assert_one_line_error(err, "report.md", "is a folder")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_report_in_a_read_only_folder(capsys, tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    run.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "report", run)
    finally:
        run.chmod(0o755)
    assert code == 2
    assert_one_line_error(err, str(run), "cannot be written")


def test_a_huge_square_model_beside_upper_triangles_is_refused_from_its_header(tmp_path: Path, capsys) -> None:
    """score's upper-triangle path maps the model .npy; a square one declaring 20000 x 20000 is refused from its
    header before anything is read."""
    subjects = np.random.default_rng(0).random((3, 10))  # (subjects, pairs) of 5 images
    np.save(tmp_path / "subjects.npy", subjects)
    model = np.lib.format.open_memmap(tmp_path / "model.npy", mode="w+", dtype=np.float64, shape=(20000, 20000))
    del model  # a sparse file: nothing but its header is written
    code, _, err = run_cli(capsys, "score", tmp_path / "model.npy", "--target", tmp_path / "subjects.npy")
    assert code == 2
    assert_one_line_error(err, "model.npy", "20000")


def test_a_constant_upper_triangle_model_is_refused_as_a_square_one_is(tmp_path: Path, capsys) -> None:
    """A constant model orders no pair: as a square RDM it is refused, and so is its upper triangle (it scored
    r2 = 0 with exit 0 before)."""
    np.save(tmp_path / "subjects.npy", np.random.default_rng(0).random((3, 10)))  # 5 images
    np.save(tmp_path / "flat.npy", np.full(10, 0.5))
    code, out, err = run_cli(capsys, "score", tmp_path / "flat.npy", "--target", tmp_path / "subjects.npy")
    assert code == 2 and out == ""
    assert_one_line_error(err, "flat.npy", "constant")
    square = np.full((5, 5), 0.5)
    np.fill_diagonal(square, 0)
    np.save(tmp_path / "flat_square.npy", square)
    code, _, err = run_cli(capsys, "score", tmp_path / "flat_square.npy", "--target", tmp_path / "subjects.npy")
    assert code == 2
    assert_one_line_error(err, "flat_square.npy", "constant")


# --------------------------------------------------------------------------- issue 33: values an HDF5 file lacks


def test_rsatoolbox_rdms_the_file_does_not_store_are_refused_unread(capsys, tmp_path: Path) -> None:
    """(20, 18,000,000) dissimilarities (2.9 GB) declared in 2 kB: within the memory limit of a large machine, so
    only the bytes stored can tell; it was read (and filled with zeros) before being refused as constant."""
    target = _rsatoolbox_header(tmp_path / "huge.hdf5", 20, 6_001)
    assert target.stat().st_size < 4096
    with allocating_little():
        code, out, err = run_cli(capsys, "noise-ceiling", target)
    assert (code, out) == (2, "")
    assert_one_line_error(err, str(target), "'/dissimilarities'", "(20, 18003000)", "2,880,480,000 bytes",
                          "stores only 0 of its")


def test_a_v73_target_the_file_does_not_store_is_refused_unread(capsys, tmp_path: Path, make_rdms) -> None:
    target = _v73_header(tmp_path / "target.mat", "EVC_RDMs", (4, 6_000, 6_000))
    with allocating_little():
        code, out, err = run_cli(capsys, "score", _submission(tmp_path, make_rdms), "--target", target)
    assert (code, out) == (2, "")
    assert_one_line_error(err, str(target), "'/EVC_RDMs'", "1,152,000,000 bytes", "stores only 0 of its")


def test_compressed_values_partly_never_written_are_refused_and_real_files_pass(tmp_path: Path,
                                                                              make_rdms) -> None:
    """A compressed dataset stores less than it declares; each of its chunks must be there all the same."""
    rdms = make_rdms(500, subjects=3, seed=1)  # 2.9 MB, gzip-compressed as a user might save it
    path = tmp_path / "rdms.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("dissimilarities", data=upper_tri(rdms), compression="gzip", chunks=(1, 124_750))
        f.create_group("pattern_descriptors")
    np.testing.assert_allclose(load_rdms(path), rdms)
    with h5py.File(path, "w") as f:  # the first RDM written, the 19 others never
        f.create_dataset("dissimilarities", (20, 124_750), "f8", compression="gzip", chunks=(1, 124_750))
        f["dissimilarities"][0] = upper_tri(rdms[0])
        f.create_group("pattern_descriptors")
    with pytest.raises(DataError) as info:
        load_rdm_dict(path)
    assert_one_line_error(f"siamrdm: error: {info.value}", str(path), "stores only 1 of its 20 chunks")


def test_an_image_store_declaring_ten_million_images_is_refused_unread(tmp_path: Path) -> None:
    """It was refused only after a name per image was made (1.5 GB in `fit`)."""
    images = tmp_path / "images.h5"
    with h5py.File(images, "w") as f:
        f.create_dataset("images", (10_000_000, 8, 8, 3), np.uint8, chunks=(1_000, 8, 8, 3))
    with allocating_little(), pytest.raises(DataError) as info:
        open_image_store(images)
    assert_one_line_error(f"siamrdm: error: {info.value}", str(images), "(10000000, 8, 8, 3)",
                          "stores only 0 of its 10,000 chunks")


# --------------------------------------------------------------------------- issue 33: huge images reduced as read

_PEAK_SCRIPT = """
import sys
from siamrdm import cli

def peak():  # this process's own high-water mark (getrusage's ru_maxrss keeps the parent's across exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

before = peak()
code = cli.main(sys.argv[1:])
print(peak() - before, code)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak from /proc (Linux)")
def test_data_info_reads_huge_images_one_at_a_time(tmp_path: Path, make_rdms) -> None:
    """6 PNGs of 4000 x 4000 (48 MB each as pixels, a few kB as files): the peak the command adds to the process
    stays near one image's, where keeping every image at full size took 6 of them and more."""
    folder = tmp_path / "big"
    folder.mkdir()
    Image.new("RGB", (4_000, 4_000), (200, 30, 90)).save(folder / "img0.png")
    for k in range(1, 6):
        (folder / f"img{k}.png").write_bytes((folder / "img0.png").read_bytes())
    rdms = tmp_path / "rdms.npy"
    np.save(rdms, make_rdms(6, subjects=3, seed=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, "data-info", "--images", str(folder), "--rdms",
                           str(rdms)], capture_output=True, text=True, env=env, timeout=120)
    peak, code = (int(v) for v in done.stdout.split()[-2:])
    assert code == 0, done.stderr
    one_image = 4_000 * 4_000 * 4  # PIL holds RGB at 4 bytes a pixel
    assert peak < 2.5 * one_image, f"the command added {peak:,} bytes at its peak"
