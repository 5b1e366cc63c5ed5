"""Run folders and safe writes: one run per folder (a lock), atomic files with unique temporary names.

A run folder is where `fit`, `challenge`, `evaluate` and `lr-find` write. Two runs given the same folder
would interleave their checkpoints, so each run holds an exclusive lock on `<folder>/.siamrdm.lock` for its
whole life and a second run is refused at once. Every file is written to a uniquely named temporary file
beside its target and renamed into place, so a reader (or a killed run) never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .data import DataError

LOCK_NAME = ".siamrdm.lock"
# Every finished run folder holds one of these: settings.json (challenge, evaluate) or model.pt (fit).
# `--overwrite` clears only such folders.
RUN_MARKERS = ("settings.json", "model.pt")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; on success rename it onto `path`, else remove it.

    The temporary name keeps the suffix, so writers that choose a format by suffix (scipy, numpy) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _create_unique(path: Path) -> Path:
    """Create an empty, uniquely named file beside `path`. Unlike tempfile.mkstemp (mode 0600) its mode is
    what open() would give (0666 less the umask), so the renamed file is as readable as any other output."""
    for _ in range(100):
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path}: no free temporary name beside it")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def check_output_file(path: str | os.PathLike) -> Path:
    """An output file path that can be written: not a folder, and its nearest existing ancestor a writable
    folder. Checked before any work, so a bad path fails fast and nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file name")
    _check_creatable(path.parent, path)
    return path


def check_run_folder(path: str | os.PathLike, allow_existing: bool = True, overwrite: bool = False) -> Path:
    """A run folder that can be created or written, checked before any work.

    With `allow_existing` False, an existing non-empty folder is refused (a re-run would mix old and new
    outputs); `clear_run_folder` clears an old run instead. With `overwrite`, a non-empty folder must be one
    that `clear_run_folder` will clear, so a refusal comes before the lock file is made in it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: exists and is not a folder")
    _check_creatable(path, path)
    if not allow_existing and _has_outputs(path):
        raise DataError(f"{path}: folder is not empty (it holds an earlier run); choose a new folder or overwrite it")
    if overwrite:
        _check_clearable(path)
    return path


def _check_creatable(folder: Path, named: Path) -> None:
    """The nearest existing ancestor of `folder` (itself included) is a writable folder."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"{named}: cannot be created, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{named}: cannot be written ({existing} is not writable)")


def _has_outputs(folder: Path) -> bool:
    """Any file but lock files, at any depth: a run that failed before writing anything left only locks."""
    return folder.is_dir() and any(p.is_file() and p.name != LOCK_NAME for p in folder.rglob("*"))


def _is_run_folder(path: Path) -> bool:
    """A siamrdm run wrote here: a finished run's settings or model, or a fit's checkpoint (also a failed one)."""
    return any((path / marker).is_file() for marker in RUN_MARKERS) or any(path.glob("*/last.pt")) or (
        path / "last.pt").is_file()


def _check_clearable(path: Path) -> None:
    if _has_outputs(path) and not _is_run_folder(path):
        raise DataError(f"{path}: not empty and not a siamrdm run folder (no {' or '.join(RUN_MARKERS)}); "
                        "refusing to clear it")


def clear_run_folder(path: Path) -> None:
    """Remove an earlier run's outputs. Only a folder that a siamrdm run finished in (it holds settings.json
    or model.pt) is cleared, so a mistyped path never empties someone's folder."""
    _check_clearable(path)
    if not _has_outputs(path):
        return
    for entry in path.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextlib.contextmanager
def run_folder_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the run folder's lock for the duration (created if needed); a second holder is refused at once."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        message = f"{path}: another siamrdm run is using this folder (locked); wait for it or choose another"
        raise DataError(message) from None
    try:
        yield path
    finally:
        lock.release()
