"""Run folders and safe writes (siamrdm.io.files): unique atomic temporary files, the run-folder lock, clearing runs."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from siamrdm.errors import DataError
from siamrdm.io import files


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- atomic files


def test_atomic_paths_are_unique_and_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out" / "rdms.mat"  # the folder does not exist yet
    with files.atomic_path(target) as first, files.atomic_path(target) as second:
        assert first != second
        assert first.parent == second.parent == target.parent
        assert first.suffix == second.suffix == ".mat"  # writers that pick a format by suffix still work
        assert first.name.startswith(".") and second.name.startswith(".")  # hidden while being written
        assert not target.exists()
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the outer one finished last
    assert names(target.parent) == ["rdms.mat"]  # no temporary file left


def test_atomic_path_failure_leaves_the_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "log.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="half-way"), files.atomic_path(target) as tmp:
        tmp.write_text("new, but not fin")
        raise RuntimeError("killed half-way")
    assert target.read_text() == "old"
    assert names(tmp_path) == ["log.csv"]
    # Nothing written at all: no target appears, no temporary file stays.
    with pytest.raises(RuntimeError), files.atomic_path(tmp_path / "new.json"):
        raise RuntimeError
    assert names(tmp_path) == ["log.csv"]
    assert files.write_text(target, "fresh") == target and target.read_text() == "fresh"
    assert names(tmp_path) == ["log.csv"]


def test_a_new_output_never_replaces_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    target = tmp_path / "late.json"
    with pytest.raises(DataError, match="appeared while siamrdm was working"), \
            files.atomic_path(target, replace_existing=False) as tmp:
        tmp.write_text("siamrdm's")
        target.write_text("the user's")  # written while siamrdm worked
    assert target.read_text() == "the user's" and names(tmp_path) == ["late.json"]
    files.write_text(tmp_path / "new.json", "siamrdm's", replace_existing=False)  # a free name: written
    assert (tmp_path / "new.json").read_text() == "siamrdm's" and names(tmp_path) == ["late.json", "new.json"]


def test_atomic_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """A file written through a temporary file is as readable as one written with open() (the umask decides),
    not private to its owner as tempfile.mkstemp makes it."""
    old_umask = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        atomic = files.write_text(tmp_path / "atomic.txt", "x")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


# --------------------------------------------------------------------------- checks before any work


def test_check_output_file(tmp_path: Path) -> None:
    assert files.check_output_file(tmp_path / "new" / "deeper" / "x.mat") == tmp_path / "new" / "deeper" / "x.mat"
    assert not (tmp_path / "new").exists()  # checked, not created
    (tmp_path / "folder.mat").mkdir()
    with pytest.raises(DataError, match="is a folder"):
        files.check_output_file(tmp_path / "folder.mat")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=r"cannot be created, .*notes\.txt is a file"):
        files.check_output_file(tmp_path / "notes.txt" / "sub" / "x.mat")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_check_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert files.check_run_folder(run) == run and not run.exists()
    run.mkdir()
    (run / files.LOCK_NAME).touch()  # only the lock of an earlier run: empty
    files.check_run_folder(run)
    (run / "model.pt").write_bytes(b"x")  # a model.pt alone does not make a folder siamrdm's
    for mode in files.RUN_MODES:
        with pytest.raises(DataError, match="not a siamrdm run folder"):
            files.check_run_folder(run, mode)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a folder"):
        files.check_run_folder(tmp_path / "file")
    with pytest.raises(DataError, match="is a file"):
        files.check_run_folder(tmp_path / "file" / "run")
    with pytest.raises(DataError, match="empty"):
        files.check_run_folder("")
    assert names(tmp_path) == ["file", "run"]  # the checks' probe file is gone


def test_check_run_folder_refuses_a_folder_nothing_can_be_made_in(tmp_path: Path) -> None:
    """os.access says yes to root on /proc; the check really tries."""
    with pytest.raises(DataError, match="cannot be written"):
        files.check_run_folder("/proc/siamrdm-run")


def test_marked_run_needs_overwrite_and_clears_only_its_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with files.run_folder(run, "challenge"):
        files.write_text(run / "settings.json", "{}")
        files.write_text(run / "EVC" / "seed0" / "log.csv", "epoch\n")
        with files.run_folder_lock(run / "EVC"):
            pass
    assert files.read_marker(run)["status"] == "finished"
    with pytest.raises(DataError, match="--overwrite"):
        files.check_run_folder(run)
    (run / "notes.txt").write_text("mine")  # the user's files beside the run's
    (run / "EVC" / "mine.csv").write_text("mine too")
    files.check_run_folder(run, "overwrite")
    files.clear_run_folder(run)
    assert names(run) == sorted([files.LOCK_NAME, "EVC", "notes.txt"])
    assert names(run / "EVC") == ["mine.csv"]  # seed0/ emptied and removed; the user's file stays
    assert (run / "notes.txt").read_text() == "mine"


def test_a_user_file_in_a_run_folder_is_not_replaced(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with files.run_folder(run, "fit"):
        files.write_text(run / "model.pt", "mine")
    (run / "report.md").write_text("the user's own report")
    with pytest.raises(DataError, match="not written by siamrdm"):
        files.write_text(run / "report.md", "siamrdm's report")
    assert (run / "report.md").read_text() == "the user's own report"
    files.write_text(run / "model.pt", "again")  # its own file, listed in the manifest, is replaced


def test_a_crafted_manifest_cannot_remove_files_outside_the_run(tmp_path: Path) -> None:
    outside = tmp_path / "thesis.tex"
    outside.write_text("years of work")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.csv").write_text("data")
    run = tmp_path / "run"
    with files.run_folder(run, "fit"):
        pass
    (run / "linked").symlink_to(elsewhere, target_is_directory=True)
    lines = ["../thesis.tex", str(outside), "linked/data.csv", "linked"]
    with open(run / files.MANIFEST_NAME, "a") as manifest:
        manifest.write("".join(f'"{line}"\n' for line in lines))
    files.clear_run_folder(run)
    assert outside.read_text() == "years of work" and (elsewhere / "data.csv").read_text() == "data"
    assert not (run / "linked").exists()  # the link itself was listed: removed, not followed


def test_a_failed_new_run_leaves_the_folder_as_it_found_it(tmp_path: Path) -> None:
    created = tmp_path / "created"
    with pytest.raises(KeyError), files.run_folder(created, "fit"):
        files.write_text(created / "settings.json", "{}")
        raise KeyError("a run that fails")
    assert not created.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeyError), files.run_folder(empty, "fit"):
        files.write_text(empty / "seed0" / "last.pt", "x")
        raise KeyError("a run that fails")
    assert names(empty) == []
    run = tmp_path / "run"  # a failed resume keeps the run it continued
    with files.run_folder(run, "fit"):
        files.write_text(run / "seed0" / "last.pt", "x")
    with pytest.raises(KeyError), files.run_folder(run, "fit", "resume"):
        raise KeyError("a resume that fails")
    assert (run / "seed0" / "last.pt").read_text() == "x" and files.read_marker(run) is not None


def test_resume_refuses_another_command_and_other_settings(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with files.run_folder(run, "challenge"):
        files.write_text(run / "settings.json", '{"config": {"lr": 0.001, "device": "cpu"}, "seeds": [0]}')
    with pytest.raises(files.ConfigError, match="challenge run"), files.run_folder(run, "fit", "resume"):
        pass
    files.check_same_settings(run, {"config": {"lr": 0.001, "device": "cuda"}, "seeds": [0]})  # device may change
    with pytest.raises(files.ConfigError, match="lr"):
        files.check_same_settings(run, {"config": {"lr": 0.005, "device": "cpu"}, "seeds": [0]})
    # a setting an earlier version did not record cannot be checked: said so, not "other settings (inputs)"
    with pytest.raises(files.ConfigError, match="earlier siamrdm that did not record its inputs, so they cannot"):
        files.check_same_settings(run, {"config": {"lr": 0.001, "device": "cpu"}, "seeds": [0],
                                        "inputs": {"sets": ["92"]}})


def test_long_output_names_get_a_temporary_name_that_fits(tmp_path: Path) -> None:
    target = tmp_path / ("r" * 246 + ".json")  # 251 characters: valid, but not with the temporary tag added
    files.write_text(target, "{}")
    assert target.read_text() == "{}" and names(tmp_path) == [target.name]


DEEP = "[" * 50_000 + "]" * 50_000  # valid JSON that overflows a recursive parser


def test_damaged_json_of_a_run_is_one_line(tmp_path: Path) -> None:
    """A run's damaged settings, manifest or marker (nested too deep to parse) is a DataError naming the file, or
    (the marker) marks nothing; parse_json itself: tests/io/test_jsonfiles.py."""
    run = tmp_path / "run"
    with files.run_folder(run, "fit"):
        files.write_text(run / "settings.json", DEEP)
    with pytest.raises(DataError, match="settings.json: malformed settings of the run to resume, nested"):
        files.check_same_settings(run, {})
    with open(run / files.MANIFEST_NAME, "a") as manifest:
        manifest.write(DEEP + "\n")
    for check in (lambda: files.check_run_folder(run, "overwrite"), lambda: files.read_manifest(run),
                  lambda: files.write_text(run / "settings.json", "{}")):
        with pytest.raises(DataError, match=r"\.siamrdm-manifest: line 2: malformed manifest line, nested"):
            check()
    (run / files.MARKER_NAME).write_text(DEEP)  # a damaged marker marks nothing
    assert files.read_marker(run) is None and files.folder_state(run) == "foreign"


HOLD_RUN = """
import sys
from siamrdm.io.files import run_folder
with run_folder(sys.argv[1], "fit"):
    print("running", flush=True)
    sys.stdin.read()
"""


def test_a_run_folder_inside_another_runs_folder_is_refused(tmp_path: Path) -> None:
    """Only a run's own parts (this process holds it) go inside its folder; a run started there by anyone else,
    while the outer run runs or after it finished, is refused before anything is made."""
    outer = tmp_path / "runs" / "a"
    process = subprocess.Popen([sys.executable, "-c", HOLD_RUN, str(outer)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "running", process.stderr.read()
        for mode in files.RUN_MODES[:2]:
            with pytest.raises(DataError, match=r"inside .*runs/a, the folder of another siamrdm run"):
                files.check_run_folder(outer / "sub", mode)
            with pytest.raises(DataError, match="another siamrdm run"), files.run_folder(outer / "sub", "lr-find"):
                pass
    finally:
        process.communicate(input="", timeout=30)
    assert process.returncode == 0 and files.read_marker(outer)["status"] == "finished"
    with pytest.raises(DataError, match="another siamrdm run"), files.run_folder(outer / "deep" / "sub", "fit"):
        pass
    assert names(outer) == sorted([files.LOCK_NAME, files.MARKER_NAME])  # nothing made, nothing listed
    with files.run_folder(outer, "fit", "overwrite"):  # the run's own parts: a seed folder, inside it
        with files.run_folder(outer / "seed0", "fit"):
            files.write_text(outer / "seed0" / "last.pt", "x")
    assert "seed0/last.pt" in files.read_manifest(outer)


# --------------------------------------------------------------------------- the run-folder lock


HOLD_LOCK = """
import sys
from siamrdm.io.files import run_folder_lock
with run_folder_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_run_folder_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with files.run_folder_lock(run) as held:
        assert held == run and names(run) == [files.LOCK_NAME]
        with pytest.raises(DataError, match="another siamrdm run.*locked") as info, files.run_folder_lock(run):
            pass
        assert "\n" not in str(info.value) and str(run) in str(info.value)
    with files.run_folder_lock(run):  # released on exit
        pass
    with pytest.raises(KeyError), files.run_folder_lock(run):
        raise KeyError("a run that fails")
    with files.run_folder_lock(run):  # released after an exception too
        pass


def test_run_folder_lock_across_processes(tmp_path: Path) -> None:
    """Another process's run holds the folder; once that process is killed, the folder is free again."""
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked", process.stderr.read()
        with pytest.raises(DataError, match="locked"), files.run_folder_lock(run):
            pass
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    with files.run_folder_lock(run):  # a killed run leaves no stale lock behind
        pass


def test_settings_are_written_by_one_writer_as_strict_json(tmp_path: Path) -> None:
    """fit, evaluate and challenge write settings.json through files.write_settings: no NaN reaches the file
    (JSON has none), a path is written as its text, and a resume reads back exactly what was written."""
    from siamrdm.io.files import SETTINGS_FILE, check_same_settings, write_settings

    settings = {"lr": float("nan"), "data": tmp_path / "data", "seeds": (0, 1)}
    write_settings(tmp_path, settings)
    text = (tmp_path / SETTINGS_FILE).read_text()
    assert json.loads(text) == {"lr": None, "data": str(tmp_path / "data"), "seeds": [0, 1]}
    assert "NaN" not in text
    check_same_settings(tmp_path, {"lr": None, "data": str(tmp_path / "data"), "seeds": [0, 1]})
