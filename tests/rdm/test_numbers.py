"""Numbers (issue #19): RDMs are real numbers, symmetry is judged at each RDM's own scale, scores neither overflow
nor underflow at extreme but finite scales, prediction keys are ones the output file can hold, and errors blame
the input (file or option) that caused them.

Every RDM here is tiny or a slice of the real 92-image fMRI targets; the one model is untrained and predicts 3
images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from helpers import assert_one_line_error, fast_config, run_cli

from siamrdm.errors import ConfigError, DataError
from siamrdm.io.condensed import CondensedRDMs
from siamrdm.io.rdmfiles import load_rdm_dict, load_rdms, save_rdms
from siamrdm.rdm import upper_tri
from siamrdm.rdm.compare import TargetError, compare_rdms
from siamrdm.rdm.inference import permutation_p, permutation_scores
from siamrdm.rdm.records import score_condensed
from siamrdm.rdm.submission import score_submission


@pytest.fixture(scope="module")
def real(fmri92: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(model, target): the 92-image EVC group mean as a model RDM, and 6 subjects' IT RDMs as its target."""
    return fmri92["EVC_RDMs"].mean(axis=0), fmri92["IT_RDMs"][:6].copy()


def score_json(capsys, submission: Path, target: Path, *options: str) -> dict:
    code, out, err = run_cli(capsys, "score", submission, "--target", target, "--json", *options)
    assert code == 0, err
    return json.loads(out)


def ceiling_json(capsys, target: Path, *options: str) -> dict:
    code, out, err = run_cli(capsys, "noise-ceiling", target, "--json", *options)
    assert code == 0, err
    return json.loads(out)


def assert_error(capsys, *args, parts: tuple[str, ...], absent: tuple[str, ...] = ()) -> str:
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (out, err)
    assert_one_line_error(err, *parts)
    for part in absent:
        assert part not in err, err
    return err


# --------------------------------------------------------------------------- 1. real numbers only


@pytest.mark.parametrize(("dtype", "problem"), [(np.complex128, "complex values"), (np.str_, "not a numeric array")])
def test_complex_and_text_rdms_are_refused_where_rdms_enter(tmp_path: Path, capsys, make_rdms, dtype,
                                                            problem: str) -> None:
    """Complex values were cast with only a warning (the imaginary part dropped) and numbers as text parsed."""
    good_target, good_model = tmp_path / "target.npz", tmp_path / "model.npz"
    np.savez(good_target, EVC_RDMs=make_rdms(8, subjects=4))
    np.savez(good_model, EVC_RDMs=make_rdms(8, seed=5))
    bad_target, bad_model = tmp_path / "bad_target.npz", tmp_path / "bad_model.npz"
    np.savez(bad_target, EVC_RDMs=make_rdms(8, subjects=4).astype(dtype))
    np.savez(bad_model, EVC_RDMs=make_rdms(8, seed=5).astype(dtype))
    assert_error(capsys, "score", bad_model, "--target", good_target, parts=("bad_model.npz:EVC_RDMs", problem))
    assert_error(capsys, "score", good_model, "--target", bad_target, parts=("bad_target.npz:EVC_RDMs", problem))
    assert_error(capsys, "noise-ceiling", bad_target, parts=("bad_target.npz:EVC_RDMs", problem))
    with pytest.raises(DataError, match=f"bad_target.npz:EVC_RDMs: {problem}"):
        load_rdms(bad_target, "EVC_RDMs")  # fit's and evaluate's targets (load_dataset, load_algonauts_set)


def test_complex_rdms_are_refused_in_every_file_type(tmp_path: Path, make_rdms) -> None:
    rdms = make_rdms(6, subjects=2) * (1 + 1j)
    scipy.io.savemat(tmp_path / "v5.mat", {"IT_RDMs": rdms})
    with h5py.File(tmp_path / "v73.mat", "w") as f:  # MATLAB v7.3 stores complex numbers as (real, imag) records
        record = np.dtype([("real", np.float64), ("imag", np.float64)])
        stored = np.empty(rdms.shape[::-1], record)
        stored["real"], stored["imag"] = rdms.real.transpose(), rdms.imag.transpose()
        f["IT_RDMs"] = stored
    with h5py.File(tmp_path / "rsa.hdf5", "w") as f:  # rsatoolbox's layout
        f["dissimilarities"] = upper_tri(rdms)
        f.create_group("pattern_descriptors")
    for name, key in (("v5.mat", "IT_RDMs"), ("v73.mat", "IT_RDMs"), ("rsa.hdf5", None)):
        with pytest.raises(DataError, match="complex values") as info:
            load_rdms(tmp_path / name, key)
        assert name in str(info.value)
    scipy.io.savemat(tmp_path / "cells.mat", {"IT_RDMs": np.array([[1.0, "a"], [2.0, "b"]], dtype=object)})
    with pytest.raises(DataError, match=r"cells.mat:IT_RDMs: a MATLAB cell array, not a numeric array"):
        load_rdms(tmp_path / "cells.mat", "IT_RDMs")


def test_integer_and_boolean_upper_triangles_score_as_floats(tmp_path: Path, capsys, make_rdms) -> None:
    """The upper-triangle path refused integers; they (and booleans) are real numbers, read as float64."""
    subjects = np.round(upper_tri(make_rdms(9, subjects=3)) * 1000)
    model = np.round(upper_tri(make_rdms(9, seed=2)) * 1000)
    np.save(tmp_path / "subjects_float.npy", subjects)
    np.save(tmp_path / "model_float.npy", model)
    np.save(tmp_path / "subjects_int.npy", subjects.astype(np.int32))
    np.save(tmp_path / "model_int.npy", model.astype(np.int64))
    expected = score_json(capsys, tmp_path / "model_float.npy", tmp_path / "subjects_float.npy")
    got = score_json(capsys, tmp_path / "model_int.npy", tmp_path / "subjects_int.npy")
    assert got["subjects_int"] == expected["subjects_float"]
    assert ceiling_json(capsys, tmp_path / "subjects_int.npy") == {
        "subjects_int": ceiling_json(capsys, tmp_path / "subjects_float.npy")["subjects_float"]}
    booleans = subjects > np.median(subjects, axis=1, keepdims=True)
    np.save(tmp_path / "subjects_bool.npy", booleans)
    np.save(tmp_path / "subjects_01.npy", booleans.astype(np.float64))
    assert ceiling_json(capsys, tmp_path / "subjects_bool.npy")["subjects_bool"] == \
        ceiling_json(capsys, tmp_path / "subjects_01.npy")["subjects_01"]
    np.save(tmp_path / "subjects_complex.npy", subjects.astype(np.complex64))
    assert_error(capsys, "score", tmp_path / "model_float.npy", "--target", tmp_path / "subjects_complex.npy",
                 parts=("subjects_complex.npy", "complex values"))
    # fit-large's targets: integers read as floats, complex refused.
    np.testing.assert_array_equal(CondensedRDMs(tmp_path / "subjects_int.npy", 9).block(0, 36), subjects)
    with pytest.raises(DataError, match="subjects_complex.npy: complex values"):
        CondensedRDMs(tmp_path / "subjects_complex.npy", 9)
    with pytest.raises(TargetError, match="subject RDMs: complex values"):  # the library's entry point
        score_condensed(model, subjects.astype(np.complex128))


# --------------------------------------------------------------------------- 2. symmetry at each RDM's scale


def test_symmetry_is_judged_relative_to_the_rdms_scale(tmp_path: Path, make_rdms) -> None:
    tiny = make_rdms(8, subjects=2) * 1e-6
    tiny[1, 2, 5] *= 1.5  # off by half its value, yet below the old absolute tolerance of 1e-5
    np.save(tmp_path / "tiny.npy", tiny)
    with pytest.raises(DataError, match="tiny.npy: RDMs are not symmetric"):
        load_rdms(tmp_path / "tiny.npy")
    diagonal = make_rdms(8) * 1e-6
    diagonal[3, 3] = 1e-7
    np.save(tmp_path / "diagonal.npy", diagonal)
    with pytest.raises(DataError, match="diagonal.npy: RDMs have a non-zero diagonal"):
        load_rdms(tmp_path / "diagonal.npy")
    # A float32 RDM in the millions, symmetric but for a few ulps (0.06 each there): a rounding, not an asymmetry.
    large = (make_rdms(8, subjects=2) * 1e6).astype(np.float32)
    for i, j in ((0, 1), (2, 7), (5, 6)):
        large[1, j, i] = np.nextafter(np.nextafter(large[1, i, j], np.float32(np.inf)), np.float32(np.inf))
    assert np.max(np.abs(large - large.transpose(0, 2, 1))) > 1e-5
    np.save(tmp_path / "large.npy", large)
    np.testing.assert_allclose(load_rdms(tmp_path / "large.npy"), large, rtol=0)


def test_a_square_model_beside_upper_triangles_is_validated(tmp_path: Path, capsys, make_rdms) -> None:
    np.save(tmp_path / "subjects.npy", upper_tri(make_rdms(8, subjects=3)))
    model = make_rdms(8, seed=4)
    np.save(tmp_path / "model.npy", model)
    assert score_json(capsys, tmp_path / "model.npy", tmp_path / "subjects.npy")["score"]["r2"] > 0
    for name, change in (("asymmetric", (0, 1, 0.5)), ("diagonal", (2, 2, 0.5))):
        bad = model.copy()
        bad[change[0], change[1]] += change[2]
        np.save(tmp_path / f"{name}.npy", bad)
        problem = "not symmetric" if name == "asymmetric" else "non-zero diagonal"
        assert_error(capsys, "score", tmp_path / f"{name}.npy", "--target", tmp_path / "subjects.npy",
                     parts=(f"{name}.npy", problem))
    np.save(tmp_path / "complex_model.npy", model.astype(np.complex128))
    assert_error(capsys, "score", tmp_path / "complex_model.npy", "--target", tmp_path / "subjects.npy",
                 parts=("complex_model.npy", "complex values"))


# --------------------------------------------------------------------------- 3. no overflow, no underflow


@pytest.mark.parametrize("method", ["corr", "cosine", "spearman"])
def test_scores_are_scale_free_at_extreme_finite_scales(tmp_path: Path, capsys, real, method: str) -> None:
    """Pearson's r and the cosine summed squares of the raw values: 1e300 overflowed (r2 0 or null, ceilings
    nan), 1e-300 underflowed to zero norms. 1e308 also overflows the sum of the subjects behind the ceilings."""
    model, target = real
    np.savez(tmp_path / "model.npz", V4=model)
    np.savez(tmp_path / "target.npz", V4=target)
    np.save(tmp_path / "model.npy", upper_tri(model))
    np.save(tmp_path / "subjects.npy", upper_tri(target))
    expected = score_json(capsys, tmp_path / "model.npz", tmp_path / "target.npz", "--method", method)["V4"]
    expected_ceiling = ceiling_json(capsys, tmp_path / "target.npz", "--method", method)["V4"]
    assert expected["r2"] > 0.01 and expected_ceiling["upper"] > expected_ceiling["lower"] > 0
    for scale in (1e300, 1e308, 1e-300):
        np.savez(tmp_path / "model_s.npz", V4=model * scale)
        np.savez(tmp_path / "target_s.npz", V4=target * scale)
        np.save(tmp_path / "model_s.npy", upper_tri(model) * scale)
        np.save(tmp_path / "subjects_s.npy", upper_tri(target) * scale)
        got = score_json(capsys, tmp_path / "model_s.npz", tmp_path / "target_s.npz", "--method", method)
        condensed = score_json(capsys, tmp_path / "model_s.npy", tmp_path / "subjects_s.npy", "--method", method)
        for row in (got["V4"], condensed["subjects_s"]):
            for name in ("r2", "noise_ceiling", "noise_ceiling_lower", "rho_mean", "rho_se", "p", "p_signed"):
                assert row[name] == pytest.approx(expected[name], rel=1e-9), (scale, name)
        ceiling = ceiling_json(capsys, tmp_path / "target_s.npz", "--method", method)["V4"]
        assert ceiling == pytest.approx(expected_ceiling, rel=1e-9)
        code, out, err = run_cli(capsys, "noise-ceiling", tmp_path / "subjects_s.npy", "--method", method)
        assert code == 0 and "nan" not in out.lower() and f"{expected_ceiling['upper']:.4f}" in out, (out, err)


def test_permutation_null_is_scale_free(real) -> None:
    model, target = real
    model, target = model[:30, :30], target[:3, :30, :30]
    for method in ("corr", "cosine"):
        expected = permutation_scores(model, target, 20, seed=1, method=method)
        for scale in (1e300, 1e-300):
            got = permutation_scores(model * scale, target * scale, 20, seed=1, method=method)
            np.testing.assert_allclose(got, expected, rtol=1e-9)
            assert permutation_p(model * scale, target * scale, 20, 1, method) == \
                permutation_p(model, target, 20, 1, method)


def test_rescaling_is_exact(real) -> None:
    """Ordinary scales give Pearson's r and the cosine as their formulas do; the rescaling of extreme ones is by
    powers of two, so data 2**700 times larger or smaller give the same values to the bit."""
    model, target = real
    for method in ("corr", "cosine"):
        rho = compare_rdms(model, target, method)
        vectors = upper_tri(target)
        centred = vectors - vectors.mean(axis=1, keepdims=True) if method == "corr" else vectors
        unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
        m = upper_tri(model) - (upper_tri(model).mean() if method == "corr" else 0)
        np.testing.assert_allclose(rho, unit @ (m / np.linalg.norm(m)), rtol=1e-12)
        scaled = compare_rdms(model * 2.0**-700, target * 2.0**700, method)
        np.testing.assert_array_equal(scaled, rho)  # exact: the scaling commutes with every rounding


# --------------------------------------------------------------------------- 4. keys the output file can hold


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory: pytest.TempPathFactory, set92: Path) -> Path:
    """3 of the real 92 images."""
    import shutil

    folder = tmp_path_factory.mktemp("images")
    for name in sorted((set92 / "92images").iterdir())[:3]:
        shutil.copy(name, folder / name.name)
    return folder


def _model_with_key(folder: Path, key: str) -> Path:
    """An untrained one-target model whose RDM is written under `key`."""
    from siamrdm.train import build_model
    from siamrdm.train.predict import RDMPredictor

    config = fast_config(targets=("EVC",))
    return RDMPredictor([build_model(config).eval()], config, output_keys={"EVC": key}).save(folder / "model.pt")


@pytest.mark.parametrize("key", ["_hidden", "1st_RDM", "V4 RDMs", "x" * 64])
def test_predict_refuses_keys_a_mat_file_cannot_hold(tmp_path: Path, capsys, tiny_images: Path, key: str) -> None:
    """scipy's savemat drops a key that starts with '_' (with only a warning), so the printed key was not in the
    file; MATLAB itself loads only variable names."""
    model = _model_with_key(tmp_path, key)
    out = tmp_path / "pred.mat"
    assert_error(capsys, "predict", model, "--images", tiny_images, "--out", out, "--device", "cpu",
                 parts=(str(out), f"'{key}'", "MATLAB variable name"))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    # Other formats hold the key as it is.
    code, stdout, err = run_cli(capsys, "predict", model, "--images", tiny_images, "--out", tmp_path / "pred.npz",
                                "--device", "cpu")
    assert code == 0, err
    with np.load(tmp_path / "pred.npz") as npz:
        assert npz.files == [key] and npz[key].shape == (3, 3)


def test_predict_writes_the_longest_matlab_name(tmp_path: Path, capsys, tiny_images: Path) -> None:
    key = "V" + "4" * 62  # 63 characters: MATLAB's namelengthmax
    model = _model_with_key(tmp_path, key)
    code, stdout, err = run_cli(capsys, "predict", model, "--images", tiny_images, "--out", tmp_path / "p.mat",
                                "--device", "cpu")
    assert code == 0, err
    assert key in stdout and scipy.io.loadmat(tmp_path / "p.mat")[key].shape == (3, 3)


def test_save_rdms_refuses_keys_the_file_would_not_hold(tmp_path: Path, make_rdms) -> None:
    rdm = make_rdms(4)
    with pytest.raises(DataError, match=r"x.mat: cannot write the key '_x'"):
        save_rdms(tmp_path / "x.mat", {"EVC_RDMs": rdm, "_x": rdm})
    with pytest.raises(DataError, match=r"x.npz: cannot write the key 'allow_pickle'"):  # np.savez's own argument
        save_rdms(tmp_path / "x.npz", {"allow_pickle": rdm})
    assert list(tmp_path.iterdir()) == []
    save_rdms(tmp_path / "x.npy", {"_x": rdm})  # one unnamed array: any key
    save_rdms(tmp_path / "x.hdf5", {"_x": rdm})
    assert list(load_rdm_dict(tmp_path / "x.hdf5")) == ["_x"]


# --------------------------------------------------------------------------- 5. the right input blamed


def test_a_negative_seed_is_blamed_on_seed(tmp_path: Path, capsys, make_rdms) -> None:
    np.savez(tmp_path / "target.npz", EVC_RDMs=make_rdms(8, subjects=3))
    np.savez(tmp_path / "sub.npz", EVC_RDMs=make_rdms(8, seed=3))
    assert_error(capsys, "score", tmp_path / "sub.npz", "--target", tmp_path / "target.npz", "--seed", "-1",
                 "--permutations", "5", parts=("--seed", "-1"), absent=("sub.npz",))
    with pytest.raises(ConfigError, match="seed: must be a whole number of 0 or more, got -1"):
        score_submission({"EVC_RDMs": make_rdms(8, seed=3)}, {"EVC_RDMs": make_rdms(8, subjects=3)},
                                 permutations=5, seed=-1)


def test_a_target_whose_mean_is_constant_is_blamed_on_the_target(tmp_path: Path, capsys, make_rdms) -> None:
    """Two subjects whose RDMs add up to a constant: each is valid, their mean has no rank order."""
    first = make_rdms(8, seed=1)
    second = 3.0 - first
    np.fill_diagonal(second, 0.0)
    np.savez(tmp_path / "target.npz", EVC_RDMs=np.stack([first, second]))
    np.savez(tmp_path / "sub.npz", EVC_RDMs=make_rdms(8, seed=3))
    assert_error(capsys, "score", tmp_path / "sub.npz", "--target", tmp_path / "target.npz",
                 parts=("target.npz", "EVC_RDMs", "mean RDM of all subjects", "constant"), absent=("sub.npz",))
    np.save(tmp_path / "subjects.npy", upper_tri(np.stack([first, second])))
    np.save(tmp_path / "model.npy", upper_tri(make_rdms(8, seed=3)))
    assert_error(capsys, "score", tmp_path / "model.npy", "--target", tmp_path / "subjects.npy",
                 parts=("subjects.npy", "mean RDM of all subjects"), absent=("model.npy",))
    # ... and a bad model beside upper triangles is the model's, not the target's.
    bad = upper_tri(make_rdms(8, seed=3))
    bad[4] = math.inf
    np.save(tmp_path / "inf_model.npy", bad)
    assert_error(capsys, "score", tmp_path / "inf_model.npy", "--target", tmp_path / "subjects.npy",
                 parts=("inf_model.npy", "NaN or inf"), absent=("subjects.npy",))
