"""Your own data, round trip through the CLI: PNG images obj1..obj12 and a (3 subjects, 2 sessions, 12, 12) RDM
array, as a .npy and as an rsatoolbox subjects x sessions file (written by rsatoolbox itself, and by siamrdm):
data-info checks them, fit trains, predict writes names the target's file shares, score pairs keys and names;
and every refusal on the way is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli
from PIL import Image

from siamrdm.cli_output import print_notes
from siamrdm.io.datasets import load_dataset
from siamrdm.io.images import load_image_set
from siamrdm.io.rdmfiles import list_rdm_keys, load_rdm_dict, load_rdms, save_rdms
from siamrdm.io.rsafiles import rdm_grouping, read_rdm_names
from siamrdm.rdm import rdm_from_features, upper_tri
from siamrdm.rdm.noise_ceiling import noise_ceilings
from siamrdm.rdm.splits import subject_split, subset
from siamrdm.rdm.submission import score_submission

N_IMAGES, SUBJECTS, SESSIONS = 12, 3, 2
NOTE = "own.hdf5: 3 subjects x 2 RDMs each (grouped by 'subject')"  # how own.hdf5 is read, said on stderr
STEMS = [f"obj{k}" for k in range(1, N_IMAGES + 1)]
# The smallest fit: a random body's early stage at 32 px, the pairwise head, no prior, two epochs on the CPU.
TINY = ("--weights", "random", "--image-size", "32", "--stage", "blocks2", "--head", "pairwise", "--prior", "none",
        "--epochs", "2", "--unfrozen-epochs", "0", "--device", "cpu", "--quiet")


def write_rsatoolbox(path: Path, rdms: np.ndarray, names: list[str], subjects: list, sessions: list) -> Path:
    """An rsatoolbox RDMs HDF5 file written by rsatoolbox: one RDM per row of `rdms` (R, N, N), with the
    `subject` and `session` RDM descriptors and the `images` pattern descriptor."""
    from rsatoolbox.rdm import RDMs

    RDMs(rdms, rdm_descriptors={"subject": subjects, "session": sessions},
         pattern_descriptors={"images": names}).save(str(path), file_type="hdf5", overwrite=True)
    return path


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory, set92: Path) -> dict[str, Path]:
    """obj1.png..obj12.png (12 of the 92-set images at 32 x 32) and subject x session RDMs with real structure
    (each image's coarse pixels, plus a subject's noise and a session's): own.npy (3, 2, 12, 12) and own.hdf5,
    the same RDMs in rsatoolbox's layout with their rows session by session (so reading must regroup them)."""
    root = tmp_path_factory.mktemp("round-trip")
    folder = root / "images"
    folder.mkdir()
    source = load_image_set(set92 / "92images")
    features = []
    for k in range(N_IMAGES):
        image = Image.fromarray(source.images[7 * k])
        image.resize((32, 32), Image.BILINEAR).save(folder / f"obj{k + 1}.png")
        features.append(np.asarray(image.resize((6, 6), Image.BILINEAR), dtype=np.float64).ravel() / 255)
    features = np.array(features)
    rng = np.random.default_rng(0)
    rdms = np.empty((SUBJECTS, SESSIONS, N_IMAGES, N_IMAGES))
    for s in range(SUBJECTS):
        subject = features + rng.normal(scale=0.15, size=features.shape)
        for k in range(SESSIONS):
            rdms[s, k] = rdm_from_features(subject + rng.normal(scale=0.15, size=features.shape))
    np.save(root / "own.npy", rdms)
    by_session = np.concatenate([rdms[:, k] for k in range(SESSIONS)])  # s1k1, s2k1, s3k1, s1k2, ...
    write_rsatoolbox(root / "own.hdf5", by_session, STEMS, [s + 1 for k in range(SESSIONS) for s in range(SUBJECTS)],
                     [k + 1 for k in range(SESSIONS) for _ in range(SUBJECTS)])
    return {"root": root, "images": folder, "npy": root / "own.npy", "hdf5": root / "own.hdf5"}


# --------------------------------------------------------------------------- reading subjects x sessions


def test_rsatoolbox_sessions_group_by_subject(own: dict[str, Path], capsys) -> None:
    """The rsatoolbox file is read as 3 subjects with 2 RDMs each, as the .npy: the same array, the same
    ceilings through the CLI, the grouping said in one line. Read as 6 subjects, the lower ceiling differs."""
    array = np.load(own["npy"])
    np.testing.assert_allclose(load_rdms(own["hdf5"]), array, atol=1e-12)
    assert rdm_grouping(own["hdf5"]) == {"": "own.hdf5: 3 subjects x 2 RDMs each (grouped by 'subject')"}

    ceilings = {}
    for form in ("npy", "hdf5", "hdf5"):  # each command in one process says how it read the file, once
        code, out, err = run_cli(capsys, "noise-ceiling", own[form], "--json")
        assert code == 0, err
        assert err == ("" if form == "npy" else f"siamrdm: {NOTE}\n")
        ceilings[form] = json.loads(out)
    assert list(ceilings["npy"]) == list(ceilings["hdf5"]) == ["own"]  # a key-less file is named by its stem
    (npy,), (hdf5,) = ceilings["npy"].values(), ceilings["hdf5"].values()
    assert hdf5["lower"] == pytest.approx(npy["lower"], abs=1e-12) and hdf5["upper"] == pytest.approx(npy["upper"])
    ceiling = noise_ceilings(array)
    upper, lower = ceiling.upper, ceiling.lower
    assert npy["lower"] == pytest.approx(lower) and npy["upper"] == pytest.approx(upper)
    flat_lower = noise_ceilings(array.reshape(-1, N_IMAGES, N_IMAGES)).lower  # the old misreading
    assert abs(flat_lower - lower) > 0.01

    code, out, _ = run_cli(capsys, "noise-ceiling", own["npy"])  # the table names a key-less file by its stem
    assert code == 0 and out.splitlines()[1].split()[0] == "own"


def test_reading_notes_travel_with_the_data(own: dict[str, Path], capsys) -> None:
    """A dataset read from an rsatoolbox subjects x sessions file carries the note on how it was read (its
    splits too), as a value; the CLI prints the notes of what a command read, each once, on stderr."""
    dataset = load_dataset(own["images"], own["hdf5"], "IT")
    assert dataset.notes == (NOTE,)
    assert subset(dataset, np.arange(6), "part").notes == subject_split(dataset)[0].notes == (NOTE,)
    assert load_dataset(own["images"], own["npy"], "IT").notes == ()
    print_notes(dataset, (NOTE, "another note"), ())
    assert capsys.readouterr() == ("", f"siamrdm: {NOTE}\nsiamrdm: another note\n")


def test_siamrdm_writes_subjects_x_sessions_back(own: dict[str, Path], tmp_path: Path) -> None:
    """A (subjects, K, N, N) stack siamrdm writes keeps its subjects (subject and session descriptors, which
    rsatoolbox reads), and reads back as it was."""
    from rsatoolbox.rdm import load_rdm

    array = np.load(own["npy"])
    path = save_rdms(tmp_path / "mine.hdf5", {"IT": array, "EVC": array[:, 0]},
                     names=[f"{n}.png" for n in STEMS])
    assert list_rdm_keys(path) == {"IT": (3, 2, 12, 12), "EVC": (3, 12, 12)}
    back = load_rdm_dict(path)
    np.testing.assert_allclose(back["IT"], array, atol=1e-12)
    np.testing.assert_allclose(back["EVC"], array[:, 0], atol=1e-12)
    loaded = load_rdm(str(path), file_type="hdf5")
    assert list(loaded.rdm_descriptors["subject"][:4]) == [1, 1, 2, 2]
    assert list(loaded.rdm_descriptors["session"][:4]) == [1, 2, 1, 2]
    back_ceiling, ceiling = noise_ceilings(back["IT"]), noise_ceilings(array)
    assert (back_ceiling.upper, back_ceiling.lower) == pytest.approx((ceiling.upper, ceiling.lower))


# --------------------------------------------------------------------------- the round trip


def test_round_trip_through_the_cli(own: dict[str, Path], tmp_path: Path, capsys) -> None:
    """data-info, fit, predict to .hdf5, score with names and keys: on the rsatoolbox file, the .npy and the
    file siamrdm writes, every pairing scores the same prediction the same, and no row is named by an empty key."""
    array = np.load(own["npy"])
    ceiling = noise_ceilings(array)
    upper, lower = ceiling.upper, ceiling.lower

    # data-info: counts, names, shape, grouping, ceilings and reliability, before any run
    code, out, err = run_cli(capsys, "data-info", "--images", own["images"], "--rdms", own["hdf5"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"images: 12 in {own['images']} ('obj1.png', 'obj2.png', 'obj3.png' and 9 more")
    assert "pattern descriptor 'images' names the 12 images, in the same order" in lines[1]
    assert "  own.hdf5: 3 subjects x 2 RDMs each (grouped by 'subject')" in lines
    assert f"  own: (3, 2, 12, 12), finite, symmetric, zero diagonal; noise ceiling {upper:.4f} upper, " \
           f"{lower:.4f} lower (computed)" in lines
    assert any(line.startswith("  own: reliability ") for line in lines)
    assert lines[-1].startswith("ok: fit reads these with") and "grouped" not in err  # said once, on stdout
    code, out, err = run_cli(capsys, "data-info", "--images", own["images"], "--rdms", own["npy"], "--key", "IT",
                             "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["images"]["names"] == [f"{n}.png" for n in STEMS] and info["rdms"]["names"] is None
    entry = info["rdms"]["keys"]["IT"]
    assert entry["shape"] == [3, 2, 12, 12] and entry["noise_ceiling_lower"] == pytest.approx(lower)
    assert entry["reliability"]["subjects"] == 3

    # fit on the rsatoolbox file (its obj1 names accepted for obj1.png), then predict to .hdf5: names by stem
    run = tmp_path / "fit"
    code, out, err = run_cli(capsys, "fit", "--images", own["images"], "--rdms", own["hdf5"], "--key", "IT", *TINY,
                             "--out", run)
    assert code == 0, err
    assert err.count(NOTE) == 1
    assert json.loads(out)["reliability"]["images/IT"]["subjects"] == 3
    pred = tmp_path / "pred.hdf5"
    code, out, err = run_cli(capsys, "predict", run / "model.pt", "--images", own["images"], "--out", pred)
    assert code == 0, err
    assert read_rdm_names(pred) == ("images", STEMS)
    predicted = load_rdms(pred, "IT")

    # score against each form of the target: the submission's key IT names the key-less target
    mine = save_rdms(tmp_path / "mine.hdf5", {"IT": array}, names=[f"{n}.png" for n in STEMS])
    expected = score_submission({"IT": predicted}, {"IT": array}, permutations=0).to_dict()["IT"]
    for target, extra in ((own["hdf5"], ()), (own["npy"], ()), (mine, ()), (own["npy"], ("--key", "IT")),
                          (own["hdf5"], ("--key", "IT", "--target-key", "IT")), (mine, ("--target-key", "IT"))):
        code, out, err = run_cli(capsys, "score", pred, "--target", target, "--permutations", "0", "--json", *extra)
        assert code == 0, (target, extra, err)
        result = json.loads(out)
        assert set(result) == {"IT", "score"}, (target, extra)
        assert result["IT"]["r2"] == pytest.approx(expected["r2"])
        assert result["IT"]["noise_ceiling_lower"] == pytest.approx(lower)

    # --target-key names the key-less target's row; a .npy against a .npy is named by the target file's stem
    code, out, err = run_cli(capsys, "score", pred, "--target", own["npy"], "--target-key", "V4",
                             "--permutations", "0")
    assert code == 0, err
    assert out.splitlines()[1].split()[0] == "V4"
    np.save(tmp_path / "pred.npy", predicted)
    code, out, err = run_cli(capsys, "score", tmp_path / "pred.npy", "--target", own["npy"], "--permutations", "0")
    assert code == 0, err
    row = out.splitlines()[1]
    assert row.split()[0] == "own" and float(row.split()[1]) == pytest.approx(expected["r2"], abs=1e-4)

    # evaluate over image folds of the rsatoolbox file: fold means with SE and interval, paired tests
    folds = tmp_path / "folds"
    code, out, err = run_cli(capsys, "evaluate", "--images", own["images"], "--rdms", own["hdf5"], "--key", "IT",
                             "--folds", "2", *TINY, "--out", folds)
    assert code == 0, err
    saved = json.loads((folds / "evaluation.json").read_text())
    siamese = [r for r in saved["rows"] if r["method"] == "siamese"]
    assert [r["direction"] for r in siamese] == ["fold 1", "fold 2"]
    assert all(r["rho_ci_low"] <= r["rho_mean"] <= r["rho_ci_high"] and len(r["rhos"]) == 3 for r in siamese)
    assert all(r["epochs"] in (0, 1, 2) for r in siamese)  # chosen on each fold's training images
    paired = {(p["baseline"], p["over"]) for p in saved["paired"] if p["method"] == "siamese"}
    assert paired == {(b, over) for b in ("layers", "regression", "frrsa") for over in ("folds", "subjects")}
    table = (folds / "evaluation.md").read_text()
    assert "mean +- se" in table and "95% CI (folds)" in table and "Paired tests against the baselines" in table


def test_batch_images_take_square_rdms(own: dict[str, Path], tmp_path: Path, capsys) -> None:
    """fit --batch-images trains on square (subjects, N, N) RDMs, in a .npy, a .mat or an rsatoolbox file, as on
    their condensed upper triangles: the same model to the last bit."""
    import scipy.io

    from siamrdm.io.condensed import CondensedRDMs
    from siamrdm.train.checkpoint import load_checkpoint

    square = np.load(own["npy"]).mean(axis=1)  # one RDM per subject
    np.save(tmp_path / "condensed.npy", upper_tri(square))
    np.save(tmp_path / "square.npy", square)
    scipy.io.savemat(tmp_path / "square.mat", {"IT": square})
    save_rdms(tmp_path / "square.hdf5", {"IT": square}, names=STEMS)
    opened = CondensedRDMs(tmp_path / "square.npy", N_IMAGES)
    np.testing.assert_array_equal(opened.block(0, 66), upper_tri(square))
    assert opened.subjects == SUBJECTS

    weights = {}
    for name in ("condensed.npy", "square.npy", "square.mat", "square.hdf5"):
        out = tmp_path / name.replace(".", "-")
        code, _, err = run_cli(capsys, "fit", "--images", own["images"], "--rdms", tmp_path / name, "--key", "IT",
                               *TINY, "--batch-images", "6", "--loader-workers", "0", "--val-fraction", "0.25",
                               "--out", out)
        assert code == 0, (name, err)
        weights[name] = load_checkpoint(out / "seed0" / "last.pt")["model"]
    for name, model in weights.items():
        for layer, value in model.items():
            assert np.array_equal(value.numpy(), weights["condensed.npy"][layer].numpy()), (name, layer)

    # (subjects, K, N, N) has no place in the mini-batch path: refused, naming the file
    code, out, err = run_cli(capsys, "fit", "--images", own["images"], "--rdms", own["npy"], "--key", "IT", *TINY,
                             "--batch-images", "6", "--loader-workers", "0", "--out", tmp_path / "k")
    assert code == 2 and out == ""
    assert_one_line_error(err, str(own["npy"]), "(subjects, K, N, N)", "average each subject's K RDMs")


# --------------------------------------------------------------------------- refusals: one line, exit 2


def test_refusals(own: dict[str, Path], tmp_path: Path, capsys) -> None:
    array = np.load(own["npy"])
    rows = np.concatenate([array[:, 0], array[:2, 1]])  # subject 3 has one session
    unequal = write_rsatoolbox(tmp_path / "unequal.hdf5", rows, STEMS, [1, 2, 3, 1, 2], [1, 1, 1, 2, 2])
    others = write_rsatoolbox(tmp_path / "others.hdf5", array.reshape(-1, 12, 12), [f"cat{k}" for k in range(12)],
                              [1, 1, 2, 2, 3, 3], [1, 2, 1, 2, 1, 2])
    shuffled = write_rsatoolbox(tmp_path / "shuffled.hdf5", array.reshape(-1, 12, 12), STEMS[::-1],
                                [1, 1, 2, 2, 3, 3], [1, 2, 1, 2, 1, 2])
    keyed = save_rdms(tmp_path / "keyed.hdf5", {"IT": array[0, 0], "EVC": array[1, 0]}, names=STEMS)
    nan = array.copy()
    nan[0, 0, 1, 2] = nan[0, 0, 2, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for k in range(1, N_IMAGES):
        (fewer / f"obj{k}.png").write_bytes((own["images"] / f"obj{k}.png").read_bytes())
    images = ("--images", own["images"])
    cases = [
        (["noise-ceiling", unequal], (str(unequal), "grouped by 'subject' are unequal", "'3': 1")),
        (["data-info", *images, "--rdms", unequal], (str(unequal), "unequal")),
        (["fit", *images, "--rdms", unequal, "--key", "IT", *TINY, "--out", tmp_path / "run"], (str(unequal),)),
        (["data-info", *images, "--rdms", others], (str(others), "pattern descriptor 'images'", "'cat0'",
                                                    "not among the 12 images")),
        (["data-info", *images, "--rdms", shuffled], (str(shuffled), "orders the images differently")),
        (["score", keyed, "--target", others], ("keyed.hdf5: pattern descriptor 'images'", "not among")),
        (["data-info", *images, "--rdms", keyed, "--key", "V4"], (str(keyed), "missing key 'V4'")),
        (["data-info", *images, "--rdms", tmp_path / "nan.npy"], ("nan.npy", "NaN")),
        (["data-info", "--images", fewer, "--rdms", own["npy"]], ("own.npy", "12 x 12", "11 images")),
        (["data-info", "--images", own["images"]], ("data-info", "--rdms")),
        (["score", keyed, "--target", own["npy"], "--key", "V4"], ("--key V4", str(keyed), "keys: IT, EVC")),
        (["score", keyed, "--target", keyed, "--target-key", "V4"], ("--target-key V4", "keys: IT, EVC")),
        (["score", keyed, "--target", own["npy"]], ("no key in common", "(IT, EVC)", "((no key))", "--key")),
        (["score", own["npy"], "--target", keyed], ("no key in common", "((no key))", "(IT, EVC)")),
        (["score", keyed, "--target", own["hdf5"], "--key", "V4"], ("--key V4",)),  # no grouping note beside it
    ]
    for args, parts in cases:
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and out == "", (args, err)
        assert_one_line_error(err, *parts)
    assert not (tmp_path / "run").exists()
    code, out, err = run_cli(capsys, "score", own["npy"], "--target", keyed, "--key", "X")
    assert code == 2 and out == ""
    assert_one_line_error(err, "--target-key", str(keyed), "IT, EVC", "name the one to score")
