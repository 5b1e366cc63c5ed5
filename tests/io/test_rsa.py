"""rsatoolbox interop: its RDMs HDF5 files read and written without it, pickles refused, its comparison methods
computed with numpy/scipy. Tests that need rsatoolbox itself skip when it is not installed (`pip install
siamrdm[rsa]`)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from siamrdm.errors import DataError
from siamrdm.io.condensed import CondensedRDMs
from siamrdm.io.rdmfiles import list_rdm_keys, load_rdm_dict, load_rdms, read_rdm_dict, read_rdms, save_rdms
from siamrdm.io.rsafiles import check_rdm_names, grouping_notes, rdm_grouping, read_rdm_names
from siamrdm.pipelines.external import load_external
from siamrdm.pipelines.scorefiles import score_files
from siamrdm.rdm import upper_tri
from siamrdm.rdm.compare import compare_rdms
from siamrdm.rdm.core import group_average
from siamrdm.rdm.noise_ceiling import ceiling_source, noise_ceilings
from siamrdm.rdm.records import score_with_ceiling
from siamrdm.rdm.submission import score_submission
from siamrdm.rdm.transform import COMPARISON_METHODS

NAMES = [f"img{k}.png" for k in range(1, 13)]


def write_rsatoolbox_layout(path: Path, rdms: np.ndarray, patterns: dict | None = None,
                            rdm_descriptors: dict | None = None) -> Path:
    """What rsatoolbox's RDMs.save(path, file_type='hdf5') writes, made with h5py (so no rsatoolbox is needed):
    vectors, strings as bytes, the measure as an attribute, descriptor groups and their 'index'."""
    stack = rdms[None] if rdms.ndim == 2 else rdms
    with h5py.File(path, "w") as f:
        f.attrs["rsatoolbox_version"] = "0.3.2"
        f.attrs["dissimilarity_measure"] = "correlation"
        f["dissimilarities"] = upper_tri(stack)
        f.create_group("descriptors").attrs["roi_name"] = "V1"
        group = f.create_group("rdm_descriptors")
        for name, values in {**(rdm_descriptors or {}), "index": list(range(len(stack)))}.items():
            values = np.array(values)
            group[name] = values.astype("S") if values.dtype.kind == "U" else values
        group = f.create_group("pattern_descriptors")
        for name, values in {**(patterns or {}), "index": list(range(stack.shape[-1]))}.items():
            values = np.array(values)
            group[name] = values.astype("S") if values.dtype.kind == "U" else values
    return path


# --------------------------------------------------------------------------- reading, without rsatoolbox


def test_rsatoolbox_file_read_by_content(tmp_path: Path, make_rdms) -> None:
    rdms = make_rdms(12, subjects=3, seed=1)
    path = write_rsatoolbox_layout(tmp_path / "it.hdf5", rdms, {"images": NAMES}, {"subject": [1, 2, 3]})
    np.testing.assert_allclose(load_rdms(path), rdms)
    np.testing.assert_allclose(load_rdms(path, "ignored: one stack"), rdms)
    assert list_rdm_keys(path) == {"": (3, 12, 12)}
    assert read_rdm_names(path) == ("images", NAMES)
    # Detected by content: the same layout in a .mat or .h5 file reads the same.
    for name in ("same.mat", "same.h5"):
        np.testing.assert_allclose(load_rdms(write_rsatoolbox_layout(tmp_path / name, rdms)), rdms)
    # One RDM is a single group RDM (N, N): one subject.
    single = write_rsatoolbox_layout(tmp_path / "group.hdf5", rdms[0])
    assert load_rdms(single).shape == (12, 12)


def test_rsatoolbox_file_split_into_keys_by_target_or_roi(tmp_path: Path, make_rdms) -> None:
    evc, it = make_rdms(12, subjects=2, seed=2), make_rdms(12, subjects=2, seed=3)
    path = write_rsatoolbox_layout(tmp_path / "rois.hdf5", np.concatenate([evc, it]),
                                   rdm_descriptors={"roi": ["EVC", "EVC", "IT", "IT"], "subject": [1, 2, 1, 2]})
    loaded = load_rdm_dict(path)
    assert list(loaded) == ["EVC", "IT"]
    np.testing.assert_allclose(loaded["IT"], it)
    np.testing.assert_allclose(load_rdms(path, "EVC"), evc)
    with pytest.raises(DataError, match=r"rois\.hdf5: missing key 'V4' \(keys: EVC, IT\)"):
        load_rdms(path, "V4")


def test_readers_return_the_grouping_notes_as_values(tmp_path: Path, make_rdms) -> None:
    """Subjects grouped by their descriptor (K > 1 RDMs each) are said in a note the reader returns with the
    RDMs, every time it reads them: nothing is kept between reads (a second read in one process gets its note
    too), and `load_rdms`/`load_rdm_dict` return the RDMs alone, as before."""
    rdms = make_rdms(12, subjects=3, k=2, seed=11)
    path = write_rsatoolbox_layout(tmp_path / "own.hdf5", rdms.reshape(-1, 12, 12), {"images": NAMES},
                                   {"subject": [1, 1, 2, 2, 3, 3]})
    note = "own.hdf5: 3 subjects x 2 RDMs each (grouped by 'subject')"
    assert grouping_notes(path, [""]) == (note,) and grouping_notes(path, ["other"]) == ()
    for _ in range(2):
        array, notes = read_rdms(path, names=NAMES)
        np.testing.assert_allclose(array, rdms)
        assert notes == (note,)
        stacks, notes = read_rdm_dict(path)
        assert list(stacks) == [""] and notes == (note,)
        assert external_notes(path) == (note,)
    np.testing.assert_allclose(load_rdms(path), rdms)
    np.testing.assert_allclose(load_rdm_dict(path)[""], rdms)

    keyed = write_rsatoolbox_layout(tmp_path / "keyed.hdf5", np.concatenate([rdms[:2], rdms[1:]]).reshape(-1, 12, 12),
                                    rdm_descriptors={"roi": ["EVC"] * 4 + ["IT"] * 4, "subject": [1, 1, 2, 2] * 2})
    assert read_rdm_dict(keyed)[1] == tuple(rdm_grouping(keyed).values()) == (
        "keyed.hdf5:EVC: 2 subjects x 2 RDMs each (grouped by 'subject')",
        "keyed.hdf5:IT: 2 subjects x 2 RDMs each (grouped by 'subject')")
    assert read_rdms(keyed, "IT")[1] == ("keyed.hdf5:IT: 2 subjects x 2 RDMs each (grouped by 'subject')",)

    # one RDM per subject, or a file of another kind: nothing to note
    single = write_rsatoolbox_layout(tmp_path / "one.hdf5", rdms[:, 0], rdm_descriptors={"subject": [1, 2, 3]})
    np.save(tmp_path / "own.npy", rdms)
    for other in (single, tmp_path / "own.npy"):
        assert read_rdms(other)[1] == read_rdm_dict(other)[1] == grouping_notes(other, [""]) == ()
    assert CondensedRDMs(single, 12).notes == ()


def external_notes(path: Path) -> tuple[str, ...]:
    """The notes another study's RDMs (--external) carry from the file they were read from."""
    return load_external(str(path), ["mine"]).notes  # your own data's one target


def test_image_names_checked_against_the_folder_order(tmp_path: Path, make_rdms) -> None:
    rdms = make_rdms(12, subjects=2, seed=4)
    stems = [Path(n).stem for n in NAMES]
    good = write_rsatoolbox_layout(tmp_path / "good.hdf5", rdms, {"stimulus": stems})
    check_rdm_names(good, NAMES)  # stems name the images too
    shuffled = write_rsatoolbox_layout(tmp_path / "shuffled.hdf5", rdms, {"names": sorted(NAMES)})  # img1, img10, ...
    with pytest.raises(DataError) as info:
        load_rdms(shuffled, names=NAMES)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"order: {shuffled}: pattern descriptor 'names' orders the images")
    assert "row 2: 'img10.png' in the file, 'img2.png' among the images" in message
    unknown = write_rsatoolbox_layout(tmp_path / "unknown.hdf5", rdms, {"images": NAMES[:-1] + ["cat.png"]})
    with pytest.raises(DataError, match=r"unknown\.hdf5: pattern descriptor 'images': lists 'cat\.png'"):
        load_rdm_dict(unknown, names=NAMES)
    # Files without names are not checked; nor are other descriptors.
    check_rdm_names(write_rsatoolbox_layout(tmp_path / "plain.hdf5", rdms, {"category": ["a"] * 12}), NAMES)


@pytest.mark.parametrize("suffix", [".pkl", ".pickle"])
def test_pickles_refused_unread(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rdms{suffix}"
    path.write_bytes(b"\x80\x04crash\n")  # never opened: refused by name
    with pytest.raises(DataError, match=r"pickle files are refused .*file_type='hdf5'"):
        load_rdms(path)


def test_bad_rsatoolbox_files(tmp_path: Path) -> None:
    not_hdf5 = tmp_path / "x.hdf5"
    not_hdf5.write_text("hello")
    with pytest.raises(DataError, match=r"x\.hdf5: not an HDF5 file"):
        load_rdms(not_hdf5)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["values"] = np.ones(3)
    with pytest.raises(DataError, match=r"other\.h5: an HDF5 file, but not rsatoolbox RDMs"):
        load_rdms(other)
    odd = tmp_path / "odd.hdf5"
    with h5py.File(odd, "w") as f:
        f["dissimilarities"] = np.ones((1, 4))  # 4 is no N(N-1)/2
        f.create_group("pattern_descriptors")
    with pytest.raises(DataError, match=r"odd\.hdf5: 'dissimilarities' rows of length 4"):
        load_rdms(odd)


def test_an_rsatoolbox_file_of_no_rdms_or_of_too_few_names_is_refused(tmp_path: Path, make_rdms) -> None:
    """No RDMs in 'dissimilarities' was read as 'unreadable file ('target')'; a name descriptor listing fewer
    images than the RDMs have passed wherever the other file named no images (score's submission)."""
    empty = write_rsatoolbox_layout(tmp_path / "empty.hdf5", np.zeros((0, 12, 12)))
    with pytest.raises(DataError, match=r"empty\.hdf5: 'dissimilarities' holds no RDMs"):
        list_rdm_keys(empty)
    rdms = make_rdms(12, subjects=2, seed=4)
    short = write_rsatoolbox_layout(tmp_path / "short.hdf5", rdms, {"images": NAMES[:2]})
    with pytest.raises(DataError, match=r"short\.hdf5: pattern descriptor 'images' names 2 images, its RDMs are "
                                        r"12 x 12"):
        read_rdm_names(short)
    np.save(tmp_path / "model.npy", make_rdms(12, seed=5))
    with pytest.raises(DataError, match=r"short\.hdf5: pattern descriptor 'images' names 2 images"):
        score_files(str(tmp_path / "model.npy"), str(short), permutations=0)


def test_siamrdm_hdf5_round_trip(tmp_path: Path, make_rdms) -> None:
    rdms = {"EVC_RDMs": make_rdms(12, seed=5), "IT_RDMs": make_rdms(12, subjects=3, seed=6)}
    path = save_rdms(tmp_path / "out" / "pred.hdf5", rdms, names=NAMES)
    assert sorted(p.name for p in path.parent.iterdir()) == ["pred.hdf5"]  # atomic: no temporary file left
    loaded = load_rdm_dict(path, names=NAMES)
    assert list(loaded) == list(rdms)
    for key, value in rdms.items():
        np.testing.assert_allclose(loaded[key], value)
    assert read_rdm_names(path) == ("images", NAMES)
    with pytest.raises(DataError, match=r"pred\.h5: 3 image names for 12 x 12 RDMs"):
        save_rdms(tmp_path / "pred.h5", rdms, names=NAMES[:3])


# --------------------------------------------------------------------------- comparison methods


def test_methods_agree_on_identity_and_scale() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((10, 10))
    rdm = (x + x.T) * (1 - np.eye(10))
    for method in COMPARISON_METHODS:
        assert compare_rdms(rdm, rdm[None], method)[0] == pytest.approx(1.0)
        if method != "cosine":  # every other method is blind to an affine change of the model
            assert compare_rdms((3 * rdm + 1) * (1 - np.eye(10)), rdm[None], method)[0] == pytest.approx(1.0)
        assert compare_rdms(np.ones((10, 10)) - np.eye(10), rdm[None], method)[0] == (
            pytest.approx(compare_rdms(np.ones((10, 10)) - np.eye(10), rdm[None], "cosine")[0])
            if method == "cosine" else 0.0)
    with pytest.raises(ValueError, match="unknown comparison method 'pearson'"):
        compare_rdms(rdm, rdm[None], "pearson")


def test_noise_ceiling_per_method_and_official_only_for_spearman(fmri92) -> None:
    it = fmri92["IT_RDMs"]
    assert ceiling_source("IT_RDMs", it) == "official"
    assert ceiling_source("IT_RDMs", it, "corr") == "computed"
    row = score_with_ceiling(group_average(it), it, "corr", key="IT_RDMs")
    ceiling = noise_ceilings(it, "corr")
    upper, lower = ceiling.upper, ceiling.lower
    assert row.noise_ceiling == pytest.approx(upper) and row.pct_nc == pytest.approx(100 * row.r2 / upper)
    assert row.pct_nc == pytest.approx(100.0)  # the group mean reaches the upper ceiling, whatever the method
    assert lower < upper
    with pytest.raises(ValueError, match="permutation p-values need one of"):
        score_submission({"IT_RDMs": group_average(it)}, {"IT_RDMs": it}, permutations=10,
                                 method="tau-a")


# --------------------------------------------------------------------------- against rsatoolbox itself


@pytest.fixture(scope="module")
def rsatoolbox():
    return pytest.importorskip("rsatoolbox", reason="rsatoolbox is not installed (pip install siamrdm[rsa])")


@pytest.mark.parametrize("method", COMPARISON_METHODS)
@pytest.mark.parametrize("ties", [False, True])
def test_methods_match_rsatoolbox_compare(rsatoolbox, make_rdms, method: str, ties: bool) -> None:
    targets = make_rdms(14, subjects=4, seed=7)
    model = make_rdms(14, seed=8)
    if ties:  # rounded dissimilarities tie, where the rank methods differ
        model, targets = np.round(model, 1), np.round(targets, 1)
    ours = compare_rdms(model, targets, method)
    theirs = rsatoolbox.rdm.compare(rsatoolbox.rdm.RDMs(model[None]), rsatoolbox.rdm.RDMs(targets), method=method)
    np.testing.assert_allclose(ours, theirs[0], atol=1e-12)
    # K RDMs per subject: each subject's K values are averaged, as the official MEG score does.
    stacked = make_rdms(14, subjects=3, k=2, seed=9)
    theirs = rsatoolbox.rdm.compare(rsatoolbox.rdm.RDMs(model[None]),
                                    rsatoolbox.rdm.RDMs(stacked.reshape(6, 14, 14)), method=method)
    np.testing.assert_allclose(compare_rdms(model, stacked, method), theirs[0].reshape(3, 2).mean(axis=1),
                               atol=1e-12)


def test_file_saved_by_rsatoolbox_is_read(rsatoolbox, tmp_path: Path, make_rdms) -> None:
    rdms = make_rdms(12, subjects=3, seed=10)
    saved = rsatoolbox.rdm.RDMs(rdms, dissimilarity_measure="correlation", descriptors={"roi": "IT"},
                                rdm_descriptors={"subject": [1, 2, 3]}, pattern_descriptors={"images": NAMES})
    path = tmp_path / "it.hdf5"
    saved.save(str(path), file_type="hdf5")
    np.testing.assert_allclose(load_rdms(path, names=NAMES), rdms)
    assert read_rdm_names(path) == ("images", NAMES)
    saved.save(str(tmp_path / "it.pkl"), file_type="pkl")
    with pytest.raises(DataError, match="pickle files are refused"):
        load_rdms(tmp_path / "it.pkl")


def test_round_trip_through_rsatoolbox(rsatoolbox, tmp_path: Path, make_rdms) -> None:
    """Written by siamrdm, loaded by rsatoolbox (names and targets intact), saved again, read back by siamrdm."""
    rdms = {"EVC_RDMs": make_rdms(12, seed=11), "IT_RDMs": make_rdms(12, seed=12)}
    path = save_rdms(tmp_path / "pred.hdf5", rdms, names=NAMES)
    loaded = rsatoolbox.rdm.load_rdm(str(path), file_type="hdf5")
    assert loaded.n_rdm == 2 and loaded.n_cond == 12
    assert list(loaded.pattern_descriptors["images"]) == NAMES
    assert list(loaded.rdm_descriptors["target"]) == ["EVC_RDMs", "IT_RDMs"]
    np.testing.assert_allclose(loaded.get_matrices(), np.stack(list(rdms.values())))
    loaded.save(str(tmp_path / "again.hdf5"), file_type="hdf5")
    again = load_rdm_dict(tmp_path / "again.hdf5", names=NAMES)
    for key, value in rdms.items():
        np.testing.assert_allclose(again[key], value)
