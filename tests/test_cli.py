"""The `siamrdm` command: in-process via `main([...])`, and as a real process for exit codes and stderr."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from helpers import assert_one_line_error, run_process_limited
from helpers import run_cli as run_main
from scipy import stats

from siamrdm import cli
from siamrdm.io import tables
from siamrdm.io.datasets import DATA_ENV_VAR
from siamrdm.io.rdmfiles import save_rdms
from siamrdm.rdm import upper_tri
from siamrdm.rdm.compare import score_rdm
from siamrdm.rdm.core import group_average
from siamrdm.rdm.inference import permutation_p
from siamrdm.rdm.noise_ceiling import noise_ceilings

ROW_FIELDS = {*tables.SCORE_FIELDS, "method"}  # the score record and the comparison method


def run_process(*args: str, env_data: str | None = None) -> subprocess.CompletedProcess:
    """`python -m siamrdm ARGS` with $SIAMRDM_DATA set to `env_data` (removed when None)."""
    env = {k: v for k, v in os.environ.items() if k not in (DATA_ENV_VAR, "SIAMRDM_DEBUG")}
    if env_data is not None:
        env[DATA_ENV_VAR] = env_data
    return subprocess.run(
        [sys.executable, "-m", "siamrdm", *args], capture_output=True, text=True, env=env, timeout=120
    )



def strict_loads(text: str):
    """json.loads that refuses NaN and Infinity, which strict JSON parsers (and other languages) reject."""
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)



@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.delenv("SIAMRDM_DEBUG", raising=False)


@pytest.fixture
def group_mean_submission(tmp_path: Path, fmri92: dict[str, np.ndarray]) -> Path:
    """A submission whose RDMs are the 92-set group means of EVC and IT, as a v5 .mat file."""
    return save_rdms(tmp_path / "group_mean.mat", {k: group_average(v) for k, v in fmri92.items()})


# --------------------------------------------------------------------------- data-info


def _check_info(info: dict, root: Path) -> None:
    assert Path(info["root"]).resolve() == root
    assert {name: entry["images"] for name, entry in info["sets"].items()} == {"92": 92, "118": 118, "78": 78}
    assert info["sets"]["92"]["rdm_files"]["target_fmri.mat"] == {
        "EVC_RDMs": [15, 92, 92],
        "IT_RDMs": [15, 92, 92],
    }
    assert info["sets"]["118"]["rdm_files"]["target_meg_windowavg.mat"] == {
        "MEG_RDMs_early": [15, 118, 118],
        "MEG_RDMs_late": [15, 118, 118],
    }
    assert info["sets"]["78"]["rdm_files"]["example_submit_meg.mat"] == {
        "MEG_RDMs_early": [78, 78],
        "MEG_RDMs_late": [78, 78],
    }
    assert "92images.mat" not in info["sets"]["92"]["rdm_files"]  # the stimulus file is not an RDM file


def test_data_info_with_data_option(capsys, data_root: Path, no_env) -> None:
    code, out, err = run_main(capsys, "data-info", "--data", str(data_root), "--json")
    assert code == 0 and err == ""
    _check_info(json.loads(out), data_root)
    code, out, err = run_main(capsys, "data-info", "--data", str(data_root))
    assert code == 0 and err == ""
    assert f"data root: {data_root}" in out
    assert "92-image set: 92 images" in out and "118-image set: 118 images" in out
    assert "target_fmri.mat: EVC_RDMs (15, 92, 92), IT_RDMs (15, 92, 92)" in out


def test_data_info_from_env(capsys, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(data_root))
    code, out, err = run_main(capsys, "data-info", "--json")
    assert code == 0 and err == ""
    _check_info(json.loads(out), data_root)


def test_data_info_process_missing_root() -> None:
    done = run_process("data-info")  # neither --data nor $SIAMRDM_DATA
    assert done.returncode == 2 and done.stdout == ""
    assert_one_line_error(done.stderr, "--data", DATA_ENV_VAR)


def test_data_info_missing_root_in_process(capsys, tmp_path: Path, no_env) -> None:
    code, out, err = run_main(capsys, "data-info")
    assert code == 2 and out == ""
    assert_one_line_error(err, "--data: no data root", DATA_ENV_VAR)
    code, _, err = run_main(capsys, "data-info", "--data", str(tmp_path / "nowhere"))
    assert code == 2
    assert_one_line_error(err, "nowhere", "not a directory")
    code, _, err = run_main(capsys, "data-info", "--data", str(tmp_path))
    assert code == 2
    assert_one_line_error(err, str(tmp_path), "no Algonauts image sets")


def _root_with_92_targets(tmp_path: Path, data_root: Path, targets: dict[str, np.ndarray]) -> tuple[Path, Path]:
    """A data root that is the Algonauts one but for the 92 set's target_fmri.mat, which holds `targets`:
    (the root, that file)."""
    root = tmp_path / "root"
    (root / "Training_Data" / "92_Image_Set").mkdir(parents=True)
    (root / "Training_Data" / "118_Image_Set").symlink_to(data_root / "Training_Data" / "118_Image_Set")
    (root / "Test_Data").symlink_to(data_root / "Test_Data")
    for entry in (data_root / "Training_Data" / "92_Image_Set").iterdir():
        if entry.name != "target_fmri.mat":
            (root / "Training_Data" / "92_Image_Set" / entry.name).symlink_to(entry)
    return root, save_rdms(root / "Training_Data" / "92_Image_Set" / "target_fmri.mat", targets)


def test_data_info_shows_the_root_then_fails_on_a_target_file_fit_cannot_use(
        capsys, tmp_path: Path, data_root: Path, fmri92: dict[str, np.ndarray], no_env) -> None:
    """A NaN in one target file: data-info still lists the whole root and every other reliability, then says
    which file is bad in one line and exits 2, as fit does (it exited 0 before)."""
    damaged = {key: rdms.copy() for key, rdms in fmri92.items()}
    damaged["IT_RDMs"][3, 0, 1] = damaged["IT_RDMs"][3, 1, 0] = np.nan
    root, bad = _root_with_92_targets(tmp_path, data_root, damaged)
    before = bad.read_bytes()
    code, out, err = run_main(capsys, "data-info", "--data", str(root))
    assert code == 2
    assert "92-image set: 92 images" in out and "92/EVC:" in out and "118/IT:" in out
    assert "92/IT: reliability not measured" in out
    assert_one_line_error(err, "target_fmri.mat", "NaN")
    code, out, err = run_main(capsys, "data-info", "--data", str(root), "--json")
    assert code == 2
    info = strict_loads(out)
    assert "NaN" in info["reliability"]["92/IT"]["not_measured"] and "split_half" in str(info["reliability"]["92/EVC"])
    assert_one_line_error(err, "target_fmri.mat", "NaN")
    assert bad.read_bytes() == before



def test_data_info_fails_on_target_rdms_of_another_image_count(capsys, tmp_path: Path, data_root: Path,
                                                               fmri92: dict[str, np.ndarray], no_env) -> None:
    """RDMs of 91 images beside the 92 images: fit refuses them, so data-info exits 2 naming the file (it
    measured their reliability and exited 0)."""
    root, _ = _root_with_92_targets(tmp_path, data_root, {key: rdms[:, :91, :91] for key, rdms in fmri92.items()})
    code, out, err = run_main(capsys, "data-info", "--data", str(root))
    assert code == 2
    assert "92/EVC: reliability not measured" in out and "118/IT:" in out
    assert_one_line_error(err, "target_fmri.mat:", "91 x 91 but there are 92 images", "and 1 more")


# --------------------------------------------------------------------------- score


def _check_group_mean_result(result: dict, fmri92: dict[str, np.ndarray]) -> None:
    assert list(result) == ["EVC_RDMs", "IT_RDMs", "score"]  # complete: no "missing"
    for key, official in (("EVC_RDMs", 0.1589), ("IT_RDMs", 0.3075)):
        row = result[key]
        assert set(row) == ROW_FIELDS
        upper = noise_ceilings(fmri92[key]).upper
        assert row["r2"] == pytest.approx(upper, abs=1e-12)  # the group mean is the upper ceiling
        assert row["noise_ceiling"] == official
        assert row["pct_nc"] == pytest.approx(100, abs=0.05)
        assert row["pct_nc"] == pytest.approx(100 * row["r2"] / official)
        group_mean = group_average(fmri92[key])
        r2 = [stats.spearmanr(upper_tri(group_mean), upper_tri(s)).statistic ** 2 for s in fmri92[key]]
        assert row["p"] == pytest.approx(stats.ttest_1samp(r2, 0).pvalue, rel=1e-6)
        assert 0 < row["p"] < 1e-4
        rho = [stats.spearmanr(upper_tri(group_mean), upper_tri(s)).statistic for s in fmri92[key]]
        assert row["p_signed"] == pytest.approx(stats.ttest_1samp(rho, 0).pvalue, rel=1e-6)
        assert row["p_perm"] == pytest.approx(1 / 1001)  # on by default at 92 images: no relabelling beats the mean
        assert row["beats_chance"] is True and row["chance_pct_95"] < 10
    assert set(result["score"]) == {"r2", "pct_nc"}
    mean_r2 = (result["EVC_RDMs"]["r2"] + result["IT_RDMs"]["r2"]) / 2
    assert result["score"]["r2"] == pytest.approx(mean_r2)
    assert result["score"]["pct_nc"] == pytest.approx(100 * mean_r2 / ((0.1589 + 0.3075) / 2))


def test_score_json_in_process(capsys, group_mean_submission: Path, set92: Path, fmri92) -> None:
    code, out, err = run_main(
        capsys, "score", str(group_mean_submission), "--target", str(set92 / "target_fmri.mat"), "--json"
    )
    assert code == 0 and err == ""
    _check_group_mean_result(strict_loads(out), fmri92)  # the whole of stdout is one JSON object


def test_score_to_a_full_stdout_is_one_line(group_mean_submission: Path, set92: Path) -> None:
    """`score > /dev/full`: the output cannot be written; one line naming standard output, exit 2."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    for options in ((), ("--json",)):
        with open("/dev/full", "w") as full:
            done = run_process_limited("score", group_mean_submission, "--target", set92 / "target_fmri.mat",
                                       *options, stdout=full)
        assert done.returncode == 2, done.stderr
        assert_one_line_error(done.stderr, "standard output", "No space left on device")


def test_score_json_process(group_mean_submission: Path, set92: Path, fmri92) -> None:
    done = run_process(
        "score", str(group_mean_submission), "--target", str(set92 / "target_fmri.mat"), "--json"
    )
    assert done.returncode == 0 and done.stderr == ""
    _check_group_mean_result(json.loads(done.stdout), fmri92)


def test_score_table(capsys, group_mean_submission: Path, set92: Path, fmri92) -> None:
    code, out, err = run_main(
        capsys, "score", str(group_mean_submission), "--target", str(set92 / "target_fmri.mat")
    )
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0].split() == ["key", "r2", "p", "p_signed", "p_perm", "ceiling", "%", "NC", "chance%", "chance95",
                                "rho_mean+-se", "pair_rho+-se", "lower_rho", "lower", "source"]
    evc = lines[1].split()
    assert float(evc[10].split("+-")[0]) > 0.2  # the group mean's pair structure against the subjects' own
    assert evc[0] == "EVC_RDMs" and evc[4] == f"{1 / 1001:.2e}" and evc[5] == "0.1589" and evc[-1] == "official"
    assert float(evc[-2]) == pytest.approx(noise_ceilings(fmri92["EVC_RDMs"]).lower, abs=1e-4)
    assert float(evc[1]) == pytest.approx(noise_ceilings(fmri92["EVC_RDMs"]).upper, abs=1e-4)
    assert lines[2].split()[0] == "IT_RDMs"
    assert lines[3].split()[0] == "score" and float(lines[3].split()[-1]) == pytest.approx(100, abs=0.05)


def test_score_npz_submission_and_partial_keys(capsys, tmp_path: Path, make_rdms) -> None:
    targets = {"EVC_RDMs": make_rdms(12, subjects=4, seed=50), "IT_RDMs": make_rdms(12, subjects=4, seed=51)}
    save_rdms(tmp_path / "target.npz", targets)
    save_rdms(tmp_path / "sub.npz", {"IT_RDMs": make_rdms(12, seed=52)})
    args = ("score", str(tmp_path / "sub.npz"), "--target", str(tmp_path / "target.npz"))
    code, out, err = run_main(capsys, *args, "--json")
    assert code == 0  # a valid partial result
    warning = err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("siamrdm: warning: ")
    assert "sub.npz" in warning[0] and "EVC_RDMs" in warning[0] and "withheld" in warning[0]
    result = strict_loads(out)
    assert list(result) == ["IT_RDMs", "score", "missing"]
    expected = score_rdm(make_rdms(12, seed=52), targets["IT_RDMs"])
    assert result["IT_RDMs"]["r2"] == pytest.approx(expected.r2)
    assert result["IT_RDMs"]["noise_ceiling"] == pytest.approx(noise_ceilings(targets["IT_RDMs"]).upper)
    assert result["score"] is None and result["missing"] == ["EVC_RDMs"]
    code, out, err = run_main(capsys, *args)
    assert code == 0 and len(err.strip().splitlines()) == 1
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines[1:] if not line.startswith("note:")] == ["IT_RDMs", "score"]
    assert "withheld" in lines[2] and "EVC_RDMs" in lines[2]


def test_score_permutations(capsys, tmp_path: Path, set118: Path, fmri118) -> None:
    submission = save_rdms(tmp_path / "sub.npz", {k: group_average(v) for k, v in fmri118.items()})
    target = str(set118 / "target_fmri.mat")
    code, out, err = run_main(capsys, "score", str(submission), "--target", target, "--permutations", "200",
                              "--seed", "5", "--json")
    assert code == 0 and err == ""
    result = strict_loads(out)
    for key, rdms in fmri118.items():
        assert result[key]["p_perm"] == permutation_p(group_average(rdms), rdms, 200, seed=5)
        assert result[key]["p_perm"] == pytest.approx(1 / 201)  # no relabelling beats the subjects' mean
    code, out, err = run_main(capsys, "score", str(submission), "--target", target, "--permutations", "200")
    assert code == 0 and err == ""
    assert out.strip().splitlines()[1].split()[4] == f"{1 / 201:.2e}"


def test_print_json_is_strict(capsys) -> None:
    cli.print_json({"nan": float("nan"), "inf": np.float64(np.inf), "ninf": -math.inf, "n": np.int64(3),
                     "rows": [np.array([1.5, np.nan]), (np.float32(0.25),)], 5: None})
    result = strict_loads(capsys.readouterr().out)
    assert result == {"nan": None, "inf": None, "ninf": None, "n": 3, "rows": [[1.5, None], [0.25]], "5": None}


def test_score_single_subject_target_json(capsys, tmp_path: Path, make_rdms) -> None:
    """One subject: no t-test, so p and p_signed are NaN inside, null in the JSON."""
    save_rdms(tmp_path / "target.npz", {"EVC_RDMs": make_rdms(10, seed=54)})
    save_rdms(tmp_path / "sub.npz", {"EVC_RDMs": make_rdms(10, seed=55)})
    code, out, err = run_main(capsys, "score", str(tmp_path / "sub.npz"), "--target", str(tmp_path / "target.npz"),
                              "--permutations", "20", "--json")
    assert code == 0 and err == ""
    row = strict_loads(out)["EVC_RDMs"]
    assert row["p"] is None and row["p_signed"] is None and row["noise_ceiling"] is None
    assert 1 / 21 <= row["p_perm"] <= 1  # a permutation test needs only one subject


# --------------------------------------------------------------------------- noise-ceiling


def test_noise_ceiling_json(capsys, set92: Path, set118: Path, fmri92, fmri118) -> None:
    for set_dir, targets, official in (
        (set92, fmri92, {"EVC_RDMs": 0.1589, "IT_RDMs": 0.3075}),
        (set118, fmri118, {"EVC_RDMs": 0.1048, "IT_RDMs": 0.0728}),
    ):
        code, out, err = run_main(capsys, "noise-ceiling", str(set_dir / "target_fmri.mat"), "--json")
        assert code == 0 and err == ""
        result = json.loads(out)
        assert list(result) == ["EVC_RDMs", "IT_RDMs"]
        for key, row in result.items():
            assert set(row) == {"upper", "lower", "rho_lower", "rho_upper", "source"}
            assert round(row["upper"], 4) == official[key] and row["source"] == "official"
            ceiling = noise_ceilings(targets[key])
            upper, lower = ceiling.upper, ceiling.lower
            assert row["upper"] == pytest.approx(upper) and row["lower"] == pytest.approx(lower)
            assert 0 < row["lower"] < row["upper"]
            assert 0 < row["rho_lower"] < row["rho_upper"]  # rho units, rsatoolbox's (lower, upper)


def test_noise_ceiling_never_prints_nan(capsys, tmp_path: Path, make_rdms) -> None:
    """These targets printed NaN ceilings before: a constant subject RDM, and subjects with a constant mean."""
    constant_subject = make_rdms(8, subjects=3, seed=56)
    constant_subject[2] = 1 - np.eye(8)
    save_rdms(tmp_path / "constant_subject.mat", {"EVC_RDMs": constant_subject})
    first = np.round(make_rdms(8, seed=57) * 8) / 8
    save_rdms(tmp_path / "constant_mean.npz", {"IT_RDMs": np.stack([first, (2 - first) * (1 - np.eye(8))])})
    for name, parts in (
        ("constant_subject.mat", ("constant_subject.mat:EVC_RDMs", "subject 3 of 3", "constant upper triangle")),
        ("constant_mean.npz", ("constant_mean.npz:IT_RDMs", "mean RDM", "constant upper triangle")),
    ):
        code, out, err = run_main(capsys, "noise-ceiling", str(tmp_path / name), "--json")
        assert code == 2 and out == ""
        assert_one_line_error(err, *parts)


def test_noise_ceiling_table_and_k(capsys, tmp_path: Path, make_rdms) -> None:
    meg = make_rdms(9, subjects=3, k=2, seed=53)
    save_rdms(tmp_path / "meg.mat", {"MEG_RDMs_early": meg})
    code, out, err = run_main(capsys, "noise-ceiling", str(tmp_path / "meg.mat"))
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0].split() == ["key", "upper", "lower", "rho_lower", "rho_upper", "source"]
    name, upper, lower, rho_lower, rho_upper, source = lines[1].split()
    expected = noise_ceilings(meg)
    assert name == "MEG_RDMs_early" and source == "computed"  # an official key on other data: its own ceiling
    assert float(upper) == pytest.approx(expected.upper, abs=1e-4)
    assert float(lower) == pytest.approx(expected.lower, abs=1e-4)
    assert (float(rho_lower), float(rho_upper)) == pytest.approx(expected.rho, abs=1e-4)


# --------------------------------------------------------------------------- bad input and usage


def _bad_cases(tmp_path: Path, data_root: Path, make_rdms) -> list[tuple[list[str], tuple[str, ...]]]:
    target92 = str(data_root / "Training_Data" / "92_Image_Set" / "target_fmri.mat")
    example = str(data_root / "Test_Data" / "example_submit_fmri.mat")
    meg92 = str(data_root / "Training_Data" / "92_Image_Set" / "target_meg_windowavg.mat")
    asymmetric = make_rdms(92)
    asymmetric[0, 1] += 1
    scipy.io.savemat(tmp_path / "asymmetric.mat", {"EVC_RDMs": asymmetric})
    scipy.io.savemat(tmp_path / "constant.mat", {"EVC_RDMs": 1 - np.eye(92)})
    scipy.io.savemat(tmp_path / "nan.mat", {"IT_RDMs": np.full((92, 92), np.nan)})
    (tmp_path / "garbage.mat").write_bytes(b"not a mat file" * 50)
    missing = str(tmp_path / "missing.mat")
    return [
        (["score", missing, "--target", target92], ("missing.mat", "no such file")),
        (["score", str(tmp_path / "garbage.mat"), "--target", target92], ("garbage.mat", "unreadable")),
        (["score", example, "--target", target92], ("example_submit_fmri.mat:", "78 x 78", "92 images")),
        (["score", meg92, "--target", target92], ("target_meg_windowavg.mat", "no key in common")),
        (
            ["score", str(tmp_path / "asymmetric.mat"), "--target", target92],
            ("asymmetric.mat:EVC_RDMs", "symmetric"),
        ),
        (["score", str(tmp_path / "nan.mat"), "--target", target92], ("nan.mat:IT_RDMs", "NaN")),
        (
            ["score", str(tmp_path / "constant.mat"), "--target", target92],
            ("constant.mat", "EVC_RDMs", "constant"),
        ),
        (["score", target92, "--target", target92], ("EVC_RDMs", "shape (15, 92, 92)", "one 92 x 92 RDM")),
        (["score", example, "--target", missing], ("missing.mat", "no such file")),
        (["score", target92, "--target", target92, "--permutations", "-1"], ("--permutations", "-1")),
        (["noise-ceiling", example], ("example_submit_fmri.mat:EVC_RDMs", "at least 2 subjects")),
        (["noise-ceiling", str(tmp_path / "garbage.mat")], ("garbage.mat", "unreadable")),
    ]


def test_bad_input_exits_2(capsys, tmp_path: Path, data_root: Path, make_rdms, no_env) -> None:
    for args, parts in _bad_cases(tmp_path, data_root, make_rdms):
        code, out, err = run_main(capsys, *args)
        assert code == 2, (args, err)
        assert out == "", args
        assert_one_line_error(err, *parts)


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        ([], ("required: COMMAND",)),
        (["bogus"], ("invalid choice: 'bogus'",)),
        (["score"], ("score: ", "required: submission, --target")),
        (["score", "sub.mat"], ("score: ", "required: --target")),
        (["noise-ceiling"], ("noise-ceiling: ", "required: target")),
        (["predict", "model.pt", "--out", "x.mat"], ("predict: ", "required: --images")),
        (["baseline"], ("baseline: ", "required: KIND")),
        (["data-info", "--bogus"], ("data-info: unrecognized arguments: --bogus", "'siamrdm data-info --help'")),
        (["score", "a.mat", "--target", "b.mat", "--no-such-option"],
         ("score: unrecognized arguments: --no-such-option", "'siamrdm score --help'")),
        (["baseline", "layers", "--bogus"], ("baseline layers: unrecognized", "'siamrdm baseline layers --help'")),
        (["fit", "--out", "run", "--lr", "abc"], ("fit: ", "argument --lr", "invalid float value: 'abc'")),
        (["evaluate", "--epochs", "1.5"], ("evaluate: ", "--epochs", "invalid int value: '1.5'")),
        (["score", "a.mat", "--target", "b.mat", "--permutations", "many"], ("score: ", "--permutations", "'many'")),
        (["baseline", "layers", "--batch-size", "x"], ("baseline layers: ", "--batch-size", "invalid int")),
        (["fit", "--out", "run", "--preset", "huge"], ("fit: ", "--preset", "invalid choice: 'huge'")),
        (["fit", "--out", "run", "--loss", "huber"], ("fit: ", "--loss", "invalid choice: 'huber'")),
    ],
)
def test_usage_errors_exit_2(capsys, args: list[str], parts: tuple[str, ...]) -> None:
    """argparse errors are one line, like bad input: no usage block (that is what --help is for)."""
    with pytest.raises(SystemExit) as exc_info:
        cli.main(args)
    assert exc_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage:" not in err
    assert_one_line_error(err, *parts, "--help")


LR_FIND_IGNORED = (("--lr", "1e-3"), ("--seeds", "0,1"), ("--early-stopping", "5"), ("--validate-every", "2"),
                   ("--tta",), ("--frozen-epochs", "3"), ("--epochs", "3"), ("--unfrozen-epochs", "2"),
                   ("--head-average", "0.9"), ("--set-weights", "reliability"), ("--no-augment",))


@pytest.mark.parametrize("option", LR_FIND_IGNORED, ids=lambda option: option[0])
def test_lr_find_offers_no_option_it_would_ignore(capsys, tmp_path: Path, option: tuple[str, ...]) -> None:
    """lr-find runs its own rising rates on the plain images, one set a step, with one seed and no validation: a
    fit's schedule options (it took them and ignored them) are not its, so argparse refuses them in one line
    naming the option, before any work, and its --help does not list them (fit's still does)."""
    out = tmp_path / "run"
    code, printed, err = run_main(capsys, "lr-find", *option, "--out", out)
    assert (code, printed) == (2, "")
    assert_one_line_error(err, "lr-find: unrecognized arguments: " + " ".join(option), "'siamrdm lr-find --help'")
    assert not out.exists()
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert f" {option[0]} " not in commands["lr-find"].format_help().replace("\n", " ")
    assert f" {option[0]} " in commands["fit"].format_help().replace("\n", " ").replace(",", " ")


def test_lr_find_help_says_what_it_does_with_held_out_images() -> None:
    """--val-fraction and --val-set: lr-find tests on the images a fit given the same option trains on."""
    lr_find = cli.build_parser()._subparsers._group_actions[0].choices["lr-find"]
    helps = {a.option_strings[0]: a.help for a in lr_find._actions if a.option_strings}
    for flag in ("--val-fraction", "--val-set"):
        assert "lr-find tests on the other images only" in helps[flag], flag


def test_usage_errors_process() -> None:
    for args, parts in (
        (["bogus"], ("invalid choice: 'bogus'",)),
        (["fit", "--out", "run", "--lr", "abc"], ("argument --lr", "invalid float value: 'abc'")),
        (["score", "a.mat", "--target", "b.mat", "--bogus"], ("unrecognized arguments: --bogus",)),
    ):
        done = run_process(*args)
        assert done.returncode == 2 and done.stdout == ""
        assert_one_line_error(done.stderr, *parts)


def test_help_exits_0(capsys) -> None:
    with pytest.raises(SystemExit) as exc_info:
        cli.main(["--help"])
    assert exc_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("score", "noise-ceiling", "data-info"):
        assert command in out
    with pytest.raises(SystemExit) as exc_info:
        cli.main(["score", "--help"])
    assert exc_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: siamrdm score") and "--permutations" in out and "--seed" in out


def test_preset_flags_name_what_they_set_and_switch_options_off() -> None:
    """--frozen-epochs (old name --epochs) sets the frozen epochs; --early-stopping off switches the paper
    preset's early stopping off; a bad value is refused by the parser."""
    parser = cli.build_parser()
    args = parser.parse_args(["fit", "--out", "x", "--preset", "paper", "--frozen-epochs", "3", "--early-stopping",
                              "off", "--weights", "random", "--device", "cpu"])
    config = cli.config_from_args(args, ("EVC",))
    assert config.frozen_epochs == 3 and config.early_stopping is None and config.unfrozen_epochs == 1000
    assert config.loss == "mse"
    chosen = parser.parse_args(["fit", "--out", "x", "--loss", "correlation", "--weights", "random", "--device", "cpu"])
    assert cli.config_from_args(chosen, ("EVC",)).loss == "correlation"
    old = parser.parse_args(["fit", "--out", "x", "--epochs", "4", "--early-stopping", "7"])
    assert old.epochs == 4 and old.early_stopping == 7
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "--out", "x", "--early-stopping", "0"])


def test_score_and_noise_ceiling_of_upper_triangles(capsys, tmp_path: Path, make_rdms) -> None:
    """Large sets come as .npy files of upper triangles, (subjects, N(N-1)/2), read memory-mapped: `score` and
    `noise-ceiling` give what they give for the same subjects as square RDMs; bad shapes are one line, exit 2."""
    subjects, model = make_rdms(12, subjects=4, seed=60), make_rdms(12, seed=61)
    np.save(tmp_path / "IT.npy", upper_tri(subjects).astype(np.float32))
    np.save(tmp_path / "model_vector.npy", upper_tri(model))
    np.save(tmp_path / "model_square.npy", model)
    square = subjects.astype(np.float32).astype(np.float64)  # the same values the float32 file holds
    expected = score_rdm(model, square)
    ceiling = noise_ceilings(square)
    upper, lower = ceiling.upper, ceiling.lower
    for model_file in ("model_vector.npy", "model_square.npy"):
        code, out, err = run_main(capsys, "score", str(tmp_path / model_file), "--target", str(tmp_path / "IT.npy"),
                                  "--json")
        assert code == 0 and err == ""
        row = strict_loads(out)["IT"]
        assert row["r2"] == pytest.approx(expected.r2, abs=1e-12)
        assert row["noise_ceiling"] == pytest.approx(upper, abs=1e-12) and row["ceiling_source"] == "computed"
        assert row["noise_ceiling_lower"] == pytest.approx(lower, abs=1e-12)
        assert row["pct_nc"] == pytest.approx(100 * expected.r2 / upper)
    code, out, err = run_main(capsys, "noise-ceiling", str(tmp_path / "IT.npy"), "--json")
    ceiling = noise_ceilings(square)
    row = strict_loads(out)["IT"]
    assert code == 0 and row.pop("source") == "computed" and row == pytest.approx(
        {"upper": upper, "lower": lower, "rho_lower": ceiling.rho_lower, "rho_upper": ceiling.rho_upper}, abs=1e-12)

    np.save(tmp_path / "bad.npy", np.ones((4, 65), dtype=np.float32))  # 65 is no N(N-1)/2
    code, out, err = run_main(capsys, "noise-ceiling", str(tmp_path / "bad.npy"))
    assert code == 2 and out == ""
    assert_one_line_error(err, "bad.npy", "upper triangles")
    np.save(tmp_path / "short.npy", upper_tri(model)[:-1])
    code, out, err = run_main(capsys, "score", str(tmp_path / "short.npy"), "--target", str(tmp_path / "IT.npy"))
    assert code == 2 and out == ""
    assert_one_line_error(err, "short.npy", "66 pairs")
    code, out, err = run_main(capsys, "score", str(tmp_path / "absent.npy"), "--target", str(tmp_path / "IT.npy"))
    assert code == 2 and out == ""
    assert_one_line_error(err, "absent.npy", "no such file")
    code, out, err = run_main(capsys, "score", str(tmp_path / "model_vector.npy"), "--target",
                              str(tmp_path / "IT.npy"), "--permutations", "10")
    assert code == 2
    assert_one_line_error(err, "--permutations")


def test_a_closed_pipe_ends_the_command_quietly(data_root: Path) -> None:
    """`siamrdm ... | head`: the reader leaves, the command stops with the shell's SIGPIPE status and no error."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "siamrdm", "data-info", "--data", str(data_root)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])})
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_an_npy_header_with_a_negative_dimension_is_one_line(capsys, tmp_path: Path) -> None:
    """A crafted header (shape (92, -92)) is named in one line wherever a .npy is read, not an OverflowError."""
    crafted = tmp_path / "negative.npy"
    with open(crafted, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (92, -92)})
    model = tmp_path / "model.npy"
    np.save(model, np.arange(92 * 91 // 2, dtype=float))
    for args in (("noise-ceiling", crafted), ("score", model, "--target", crafted), ("score", crafted, "--target",
                                                                                       crafted)):
        code, out, err = run_main(capsys, *map(str, args))
        assert (code, out) == (2, ""), err
        assert_one_line_error(err, "negative.npy")


@pytest.mark.parametrize(("args", "words"), [
    (("fit", "--key", "IT"), ("--key", "use it with --images and --rdms")),
    (("lr-find", "--key", "IT"), ("--key", "use it with --images and --rdms")),
    (("fit", "--images", "{images}", "--rdms", "{rdms}", "--key", "IT", "--sets", "92"), ("--sets", "--key")),
    (("fit", "--images", "{images}", "--rdms", "{rdms}", "--key", "IT", "--targets", "EVC"), ("--targets",)),
])
def test_options_of_the_other_kind_of_data_are_refused(capsys, tmp_path: Path, data_root: Path,
                                                       args: tuple[str, ...], words: tuple[str, ...]) -> None:
    """An option that only the Algonauts sets (or only your own data) take is refused, not ignored."""
    images, rdms = data_root / "Training_Data" / "92_Image_Set" / "92images", data_root / "no-such.mat"
    filled = [a.format(images=images, rdms=rdms) for a in args]
    code, out, err = run_main(capsys, *filled, "--out", str(tmp_path / "run"))
    assert (code, out) == (2, "")
    assert_one_line_error(err, *words)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- issue 33: names shown escaped


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("key", ["EV\nC", "EV\u2028C", "\x1b]0;title\x07", "\x1b[2J"])
def test_a_key_with_a_line_break_or_escape_sequence_stays_one_escaped_line(capsys, tmp_path: Path, make_rdms,
                                                                           key: str) -> None:
    submission = _npz(tmp_path / "submission.npz", **{key: make_rdms(6, seed=1)})
    target = _npz(tmp_path / "target.npz", IT=make_rdms(6, subjects=3, seed=2))
    code, out, err = run_main(capsys, "score", submission, "--target", target)
    assert (code, out) == (2, "")
    assert_one_line_error(err, "no key in common", repr(key)[1:-1])
    assert "\x1b" not in err and "\x07" not in err


def test_a_key_from_a_file_is_escaped_in_the_score_table(capsys, tmp_path: Path, make_rdms) -> None:
    key = "\x1b]0;title\x07EVC\x1b[2J"
    submission = _npz(tmp_path / "submission.npz", **{key: make_rdms(6, seed=1)})
    target = _npz(tmp_path / "target.npz", **{key: make_rdms(6, subjects=3, seed=2)})
    code, out, err = run_main(capsys, "score", submission, "--target", target)
    assert code == 0, err
    assert "\\x1b]0;title\\x07EVC\\x1b[2J" in out
    assert "\x1b" not in out + err and "\x07" not in out + err


def test_an_rsatoolbox_target_descriptor_with_a_newline_stays_one_line(capsys, tmp_path: Path, make_rdms) -> None:
    target = save_rdms(tmp_path / "target.hdf5", {"E\nVC": make_rdms(6, subjects=3, seed=2)})
    submission = _npz(tmp_path / "submission.npz", EVC=make_rdms(6, seed=1))
    code, out, err = run_main(capsys, "score", submission, "--target", target, "--target-key", "EVC")
    assert (code, out) == (2, "")
    assert_one_line_error(err, "--target-key EVC", "E\\nVC")


def test_a_data_root_with_a_newline_stays_one_line(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "algonauts\n2019"))
    code, out, err = run_main(capsys, "data-info")
    assert (code, out) == (2, "")
    assert_one_line_error(err, "algonauts\\n2019: data root is not a directory")


def test_score_of_two_rsatoolbox_files_in_different_orders_blames_the_files_not_an_option(
        capsys, tmp_path: Path, make_rdms) -> None:
    """score has no --order: the message names both files and the first row that differs, and no option."""
    names = ["cat", "dog", "car", "cup", "sun", "owl"]
    target = save_rdms(tmp_path / "b.hdf5", {"EVC": make_rdms(6, subjects=3, seed=2)}, names=names)
    swapped = [names[1], names[0], *names[2:]]
    submission = save_rdms(tmp_path / "a.hdf5", {"EVC": make_rdms(6, seed=1)}, names=swapped)
    code, out, err = run_main(capsys, "score", submission, "--target", target)
    assert (code, out) == (2, "")
    assert_one_line_error(err, f"siamrdm: error: {submission}: pattern descriptor 'images' orders the images "
                               f"differently from {target} (row 1: 'dog' in {submission}, 'cat' in {target})")
    assert "--" not in err


HOSTILE = "run\x1b[2J\x1b]0;title\x07\nx"  # an escape sequence, a bell and a line break in a name


@pytest.mark.filterwarnings("error:Glyph:UserWarning")  # a chart's font has no glyph for a raw control character
@pytest.mark.parametrize("command", [
    ("lr-find", "--targets", "EVC", "--sets", "92", "--image-size", "64", "--quiet"),
    ("challenge", "--targets", "EVC", "--epochs", "1", "--backbone", "alexnet", "--weights", "random",
     "--image-size", "128", "--no-augment", "--no-validate", "--device", "cpu"),
    ("evaluate", "--methods", "layers", "--folds", "2", "--weights", "random", "--image-size", "64", "--no-plots"),
])
def test_a_command_shows_its_folder_and_keys_escaped(capsys, tmp_path: Path, data_root: Path, own_data,
                                                     command: tuple[str, ...]) -> None:
    """The folder --out names, an image folder and a key are the user's: what a command prints of them (the lines
    that say what was written, its phase lines, its tables) and its charts draw is escaped, so no name drives the
    terminal or breaks a line."""
    out = tmp_path / HOSTILE
    flags = ("--data", data_root)
    if command[0] == "evaluate":  # your own data, from a folder and under a key of hostile names
        images = tmp_path / f"images{HOSTILE}"
        images.symlink_to(own_data[1], target_is_directory=True)
        flags = ("--images", images, "--rdms", own_data[3], "--key", f"V4{HOSTILE}")
    code, printed, err = run_main(capsys, *command, *flags, "--out", out)
    assert code == 0, err
    assert not any(c in printed + err for c in "\x1b\x07\u2028"), printed + err
    assert "\nx" not in printed + err  # no name broke its line
    assert "run\\x1b[2J\\x1b]0;title\\x07\\nx" in printed  # where the files went, as the user can read it
