"""Run folders and safe writes (siamrdm.files): unique atomic temporary files, the run-folder lock, clearing a run."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from siamrdm import files
from siamrdm.data import DataError


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
    assert files.check_run_folder(run, allow_existing=False) == run and not run.exists()
    run.mkdir()
    (run / files.LOCK_NAME).touch()  # only the lock of an earlier, finished run: empty
    files.check_run_folder(run, allow_existing=False)
    (run / "model.pt").write_bytes(b"x")
    with pytest.raises(DataError, match="not empty"):
        files.check_run_folder(run, allow_existing=False)
    assert files.check_run_folder(run) == run
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a folder"):
        files.check_run_folder(tmp_path / "file")
    with pytest.raises(DataError, match="is a file"):
        files.check_run_folder(tmp_path / "file" / "run")


def test_clear_run_folder(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError, match="not a siamrdm run folder"):
        files.clear_run_folder(mine)
    with pytest.raises(DataError, match="not a siamrdm run folder"):  # found before any work, lock file included
        files.check_run_folder(mine, overwrite=True)
    assert names(mine) == ["thesis.tex"] and (mine / "thesis.tex").read_text() == "years of work"
    assert files.check_run_folder(tmp_path / "new", overwrite=True) == tmp_path / "new"

    run = tmp_path / "run"
    (run / "EVC" / "seed0").mkdir(parents=True)
    (run / "EVC" / "seed0" / "last.pt").write_bytes(b"x")
    (run / "settings.json").write_text("{}")
    (run / "submit_meg.mat").write_bytes(b"x")
    (run / files.LOCK_NAME).touch()
    (run / "linked").symlink_to(mine, target_is_directory=True)
    files.clear_run_folder(run)
    assert names(run) == [files.LOCK_NAME]  # the lock stays: the clearing run holds it
    assert (mine / "thesis.tex").read_text() == "years of work"  # a link is removed, not followed

    fitted = tmp_path / "fitted"  # what `siamrdm fit` leaves: model.pt, no settings.json
    (fitted / "seed0").mkdir(parents=True)
    (fitted / "seed0" / "last.pt").write_bytes(b"x")
    (fitted / "model.pt").write_bytes(b"x")
    files.check_run_folder(fitted, overwrite=True)
    files.clear_run_folder(fitted)
    assert names(fitted) == []


# --------------------------------------------------------------------------- the run-folder lock


HOLD_LOCK = """
import sys
from siamrdm.files import run_folder_lock
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
