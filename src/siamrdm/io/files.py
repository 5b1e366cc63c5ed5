"""Run folders and safe writes: a folder is siamrdm's only if siamrdm marked it, one run per folder (a lock),
atomic files with unique temporary names.

A run folder is where `fit`, `challenge`, `evaluate`, `lr-find` and `baseline --out` write. `run_folder` owns
its life:
- before anything is written, the folder must be new or empty, or (for `--overwrite` and `--resume`) one that
  siamrdm marked: `.siamrdm-run.json` names the tool, the command and a run id. A user's folder is never
  taken for a run because it happens to hold a `settings.json` or a `model.pt`;
- every file siamrdm writes under a marked folder is listed in its manifest (`.siamrdm-manifest`, one JSON
  string a line, appended by any process of the run), and `--overwrite` removes only what that list names;
  a file of the user's beside them is neither removed nor replaced;
- a new run that fails (an exception, not Ctrl-C or a kill, which stay resumable) removes what it wrote, so
  the folder is left as it was found;
- an exclusive lock on `.siamrdm.lock` for the run's whole life refuses a second run at once.
- a run folder inside another run's folder (running or finished) is refused, unless it is a part of a run this
  process holds (a fit's seed folders, a challenge's final fits, also from its worker processes);
Every file is written atomically (`atomic.replacing`: a uniquely named temporary file beside its target, renamed
into place), so a reader (or a killed run) never sees half a file; siamrdm's JSON is read one way (`jsonfiles`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import ConfigError, DataError
from .atomic import TEMPORARY, create_unique, name_max, os_reason, replacing
from .jsonfiles import json_safe, parse_json, read_json, strict_json_text

LOCK_NAME = ".siamrdm.lock"
MARKER_NAME = ".siamrdm-run.json"
MANIFEST_NAME = ".siamrdm-manifest"
OWN_NAMES = (LOCK_NAME, MARKER_NAME, MANIFEST_NAME)
RUN_MODES = ("new", "overwrite", "resume")


# --------------------------------------------------------------------------- atomic files


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replace_existing: bool = True) -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; on success rename it onto `path`, else remove it.

    The temporary name keeps the suffix, so writers that choose a format by suffix (scipy, numpy) still work.
    Under a marked run folder the file is listed in its manifest, and a file there that siamrdm did not write
    is refused rather than replaced. Without `replace_existing` (a command's one output file, checked as new
    before the work) a file that appeared at `path` meanwhile is left alone and the write refused. A write
    that fails for want of room (full disk, quota, file size limit) is a DataError naming `path`; either way
    no temporary file stays.
    """
    path = Path(path)
    run = _check_replaceable(path)
    with replacing(path, replace_existing) as tmp:
        yield tmp
    if run is not None:
        try:
            _record(run, path)
        except OSError as exc:  # unlisted, it would pass for the user's file: not left there
            path.unlink(missing_ok=True)
            raise DataError(f"{run / MANIFEST_NAME}: cannot be written ({os_reason(exc)}); {path} not kept") from None


def _check_replaceable(path: Path) -> Path | None:
    """The marked run folder `path` lies in (None if none), after refusing a file there that siamrdm did not
    write: checked by every atomic write, and before any work by `check_output_file`."""
    run = _marked_ancestor(path.parent)
    if run is not None and os.path.lexists(path) and _relative(path, run) not in read_manifest(run):
        raise DataError(f"{path}: exists and was not written by siamrdm; refusing to replace it")
    return run


def write_text(path: str | os.PathLike, text: str, replace_existing: bool = True) -> Path:
    """Write a text file atomically (`replace_existing`: see atomic_path)."""
    with atomic_path(path, replace_existing) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, value, replace_existing: bool = True, **formatting) -> Path:
    """Write strict JSON (`strict_json_text`: NaN and inf as null) atomically, listed in its run folder's
    manifest like any other write; `formatting` (indent, default, ...) is json.dumps's, kept per file."""
    return write_text(path, strict_json_text(value, **formatting), replace_existing)


# --------------------------------------------------------------------------- checks before any work


def check_output_file(path: str | os.PathLike) -> Path:
    """An output file path that can be written: not a folder, its nearest existing ancestor a writable folder,
    and not a file siamrdm did not write inside one of its run folders. Checked before any work, so a bad path
    fails fast and nothing is created."""
    if str(path) == "":
        raise DataError("output file name is empty")
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file name")
    if len(path.name.encode()) > name_max(_nearest_existing(path.parent)):
        raise DataError(f"{path}: file name longer than the file system allows")
    _check_creatable(path.parent, path)
    _check_replaceable(path)
    return path


def check_new_output_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """`check_output_file` for a command's one output file (predict --out): an existing file is replaced only
    with `overwrite`, and nothing is written inside a run folder while a run holds it."""
    path = check_output_file(path)
    if os.path.lexists(path) and not overwrite:
        raise DataError(f"{path}: exists; pass --overwrite to replace it")
    run = _marked_ancestor(path.parent)
    if run is not None and _lock_is_held(run):
        raise DataError(f"{path}: inside {run}, where a siamrdm run is in progress; write it elsewhere")
    return path


def run_mode(overwrite: bool = False, resume: bool = False) -> str:
    """The run-folder mode of the --overwrite and --resume flags (one of RUN_MODES)."""
    if overwrite and resume:
        raise ConfigError("resume", "continues the run in --out and --overwrite replaces it: pass one of them")
    return "overwrite" if overwrite else "resume" if resume else "new"


def check_run_folder(path: str | os.PathLike, mode: str = "new", holding_lock: bool = False) -> Path:
    """A run folder that `run_folder(path, ..., mode)` will accept, checked before any work and before anything
    is created: "new" needs a new or empty folder, "overwrite" also takes a folder siamrdm marked, "resume" only
    such a folder, and none that a running run holds (its lock: refused now, not after the second run's work;
    `holding_lock`: this process holds it, checking again under it).
    A folder with anything else in it is never taken."""
    if mode not in RUN_MODES:
        raise ValueError(f"mode must be one of {RUN_MODES}, got {mode!r}")
    if str(path) == "":
        raise DataError("run folder name is empty; give a folder (e.g. runs/NAME)")
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        link = " (a symbolic link to nothing)" if path.is_symlink() and not path.exists() else ""
        raise DataError(f"{path}: exists and is not a folder{link}")
    enclosing = _marked_ancestor(path.parent)
    if enclosing is not None and not _held_here(enclosing):  # its files would land in that run's manifest
        raise DataError(f"{path}: inside {enclosing}, the folder of another siamrdm run; choose a folder outside it")
    _check_creatable(path, path)
    if not holding_lock and _lock_is_held(path):
        raise DataError(locked_message(path))
    state = folder_state(path)
    if state == "run" and mode == "new":
        raise DataError(f"{path}: folder holds an earlier siamrdm run; pass --overwrite to replace it, or choose "
                        "a new folder")
    if state == "foreign":
        raise DataError(f"{path}: folder is not empty and is not a siamrdm run folder (no {MARKER_NAME}); "
                        "choose a new or empty folder")
    if mode == "resume" and state != "run":  # a mistyped path must not start a new run unnoticed
        raise DataError(f"{path}: no siamrdm run to resume there; drop --resume to start one")
    if state == "run":  # a damaged manifest, refused now rather than under the lock (--overwrite clears by it)
        read_manifest(path)
    return path


def folder_state(path: Path) -> str:
    """"absent", "run" (siamrdm's marker), "empty" (nothing but folders and lock files) or "foreign"."""
    if not path.is_dir():
        return "absent"
    if read_marker(path) is not None:
        return "run"
    if all(entry.name == LOCK_NAME or (entry.is_dir() and not entry.is_symlink()) for entry in path.rglob("*")):
        return "empty"  # what a run that failed before writing anything, under an older siamrdm, left
    return "foreign"


def _nearest_existing(folder: Path) -> Path:
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    return existing


def _check_creatable(folder: Path, named: Path) -> None:
    """The nearest existing ancestor of `folder` (itself included) is a folder a file can really be made in:
    tried with a uniquely named empty file, removed at once (os.access says yes to root even on /proc)."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise DataError(f"{named}: cannot be created, {existing} is a file")
    try:
        probe = create_unique(existing / "siamrdm-probe")
    except OSError as exc:
        raise DataError(f"{named}: cannot be written in {existing} ({os.strerror(exc.errno or errno.EACCES)})") \
            from None
    probe.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the marker and the manifest


def read_marker(path: Path) -> dict | None:
    """The marker siamrdm wrote when it created the run in `path`, or None (absent, or not siamrdm's: a
    damaged marker marks nothing)."""
    marker = path / MARKER_NAME
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        record = read_json(marker, "run marker", limit=65536)
    except DataError:
        return None
    if not isinstance(record, dict) or record.get("tool") != "siamrdm" or not isinstance(record.get("run_id"), str):
        return None
    return record


def _write_marker(path: Path, record: dict) -> None:
    with replacing(path / MARKER_NAME) as tmp:
        tmp.write_text(strict_json_text(record, indent=2) + "\n")


def read_manifest(run: Path) -> set[str]:
    """The files (paths relative to the run folder) siamrdm wrote in it. A line that is not a JSON string is
    damage: refused (a DataError naming the manifest), since what --overwrite removes must be what was listed."""
    manifest = run / MANIFEST_NAME
    try:
        lines = manifest.read_bytes().splitlines()
    except OSError:
        return set()
    names = set()
    for number, line in enumerate(lines, start=1):
        name = parse_json(line, f"{manifest}: line {number}", "manifest line")
        if not isinstance(name, str):
            raise DataError(f"{manifest}: line {number}: malformed manifest line, not a file name")
        names.add(name)
    return names


def _record(run: Path, path: Path) -> None:
    """List `path` in the manifest of `run` (an O_APPEND line: runs' worker processes may append at once)."""
    name = _relative(path, run)
    if name in read_manifest(run):
        return
    fd = os.open(run / MANIFEST_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(name) + "\n").encode())
    finally:
        os.close(fd)


def _relative(path: Path, run: Path) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(run))


def _marked_ancestor(folder: Path) -> Path | None:
    """The nearest folder from `folder` up that siamrdm marked as a run, if any."""
    current = Path(os.path.abspath(folder))
    while True:
        if (current / MARKER_NAME).is_file() and read_marker(current) is not None:
            return current
        if current.parent == current:
            return None
        current = current.parent


HELD_RUNS_ENV = "SIAMRDM_HELD_RUNS"  # run ids this process holds, inherited by the workers it starts


def _held_here(run: Path) -> bool:
    """Whether this process (or the process that started it, as challenge --jobs starts its workers) holds the
    run in `run`: then a folder inside it is a part of that run (a seed's, a target's final fit)."""
    marker = read_marker(run)
    held = os.environ.get(HELD_RUNS_ENV, "").split(",")
    return marker is not None and marker["run_id"] in held and _lock_is_held(run)


@contextlib.contextmanager
def _holding(run_id: str) -> Iterator[None]:
    """List `run_id` in HELD_RUNS_ENV for the duration (os.environ, so worker processes see it too)."""
    before = os.environ.get(HELD_RUNS_ENV)
    os.environ[HELD_RUNS_ENV] = ",".join(filter(None, (before, run_id)))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(HELD_RUNS_ENV, None)
        else:
            os.environ[HELD_RUNS_ENV] = before


def _lock_is_held(folder: Path) -> bool:
    """Whether a run (of this process or another) holds `folder`'s lock now."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- clearing and the run's life


def clear_run_folder(path: Path) -> None:
    """Remove what siamrdm wrote in an earlier run in `path`: the files its manifest lists (and temporary
    files a killed write left), then the folders that leaves empty. Anything else stays. A folder siamrdm did
    not mark is refused, so a mistyped path never loses anyone's files."""
    path = Path(path)
    state = folder_state(path)
    if state in ("absent", "empty"):
        return
    if state == "foreign":
        raise DataError(f"{path}: not a siamrdm run folder (no {MARKER_NAME}); refusing to clear it")
    _remove_listed(path, read_manifest(path) | {MARKER_NAME, MANIFEST_NAME})


def _remove_listed(run: Path, names: set[str]) -> None:
    """Unlink each listed file that lies inside `run` without passing through a link, and the temporary files
    a killed write left beside them; then remove the folders that leaves empty. The run's own lock stays (the
    clearing run holds it)."""
    root = Path(os.path.abspath(run))
    folders = {root}
    own = [MANIFEST_NAME, MARKER_NAME]  # last, the marker last of all: a clearing that stops half-way leaves a run
    for name in [*sorted(names - {LOCK_NAME, *own}), *(n for n in own if n in names)]:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            continue
        if any(root.joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts))):
            continue
        target = root.joinpath(*parts)
        if target.is_symlink() or target.is_file():
            try:
                target.unlink(missing_ok=True)
            except OSError as exc:
                raise DataError(f"{target}: cannot be removed ({os_reason(exc)}); the earlier run in {run} stays a "
                                "run (its marker kept): fix this, then --overwrite again") from None
            folders.update(p for p in target.parents if root in p.parents)
    for folder in folders:
        if folder.is_dir() and not folder.is_symlink():
            for entry in folder.iterdir():
                if TEMPORARY.match(entry.name) and entry.is_file() and not entry.is_symlink():
                    entry.unlink(missing_ok=True)
    for folder in sorted(folders - {root}, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def run_folder(path: str | os.PathLike, command: str, mode: str = "new") -> Iterator[Path]:
    """Own `path` as a siamrdm run of `command` for the duration (see the module's docstring).

    Inside a run this process holds (a challenge's final fits, a fit's seed folders) it only takes the lock: the
    enclosing run owns the files. Inside any other run folder, running or finished, it is refused: its files
    would be listed in that run's manifest and removed by that run's --overwrite.
    """
    path = Path(path)
    if str(path) == "":
        raise DataError("run folder name is empty; give a folder (e.g. runs/NAME)")
    enclosing = _marked_ancestor(path.parent)
    if enclosing is not None and _held_here(enclosing):
        with run_folder_lock(path):
            yield path
        return
    check_run_folder(path, mode)
    created = not path.exists()
    with run_folder_lock(path):
        state = folder_state(path)  # again, under the lock
        if state == "foreign" or (state == "run" and mode == "new"):
            check_run_folder(path, mode, holding_lock=True)
        marker = read_marker(path) if state == "run" else None
        if marker is not None and mode == "resume" and marker.get("command") != command:
            raise ConfigError("resume", f"{path} holds a siamrdm {marker.get('command')} run, not a {command} run")
        fresh, previous = marker is None or mode == "overwrite", marker
        if fresh:
            clear_run_folder(path)
            marker = {"tool": "siamrdm", "run_id": secrets.token_hex(8), "command": command,
                      "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        _write_marker(path, {**marker, "status": "running"})
        try:
            with _holding(marker["run_id"]):
                yield path
        except Exception:
            if fresh:
                _undo(path, created)
            else:  # a refused or failed resume: the run is as it was
                _write_marker(path, previous)
            raise
        _write_marker(path, {**marker, "status": "finished"})


def _undo(path: Path, created: bool) -> None:
    """A new run failed: remove what it wrote, its marker and lock, and the folder if the run created it."""
    clear_run_folder(path)
    if created:
        (path / LOCK_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.rmdir()
    elif folder_state(path) == "empty":
        (path / LOCK_NAME).unlink(missing_ok=True)


SETTINGS_FILE = "settings.json"  # what a run was started with: every command's run folder has one


def write_settings(path: Path, settings: dict) -> None:
    """A run folder's settings.json, the one writer for every command (fit, evaluate, challenge, the mini-batch
    fit): strict JSON (no NaN), anything else JSON cannot hold as its text."""
    write_json(Path(path) / SETTINGS_FILE, settings, indent=2, default=str)


def check_same_settings(path: Path, settings: dict, ignore: tuple[str, ...] = ("world_size",)) -> None:
    """`--resume` continues a run only with the settings it was started with: compared with the run's
    settings.json before anything is written (the device and `ignore`d keys may change)."""
    file = Path(path) / SETTINGS_FILE
    if not file.is_file():
        return
    saved = read_json(file, "settings of the run to resume")
    if not isinstance(saved, dict):
        raise DataError(f"{file}: malformed settings of the run to resume, not a JSON object")

    def comparable(record: dict) -> dict:
        record = {k: v for k, v in json_safe(record).items() if k not in ignore}
        if isinstance(record.get("config"), dict):
            record["config"] = {k: v for k, v in record["config"].items() if k != "device"}
        return json.loads(json.dumps(record))

    old, new = comparable(saved), comparable(settings)
    unrecorded = sorted(k for k in new if k not in old)
    if unrecorded:  # recorded only by later versions: what they would check cannot be checked
        raise ConfigError("resume", f"the run in {path} was started by an earlier siamrdm that did not record its "
                                    f"{', '.join(unrecorded)}, so they cannot be checked; start it in a new folder")
    if old != new:
        changed = sorted({k for k in old.get("config", {}) | new.get("config", {})
                          if old.get("config", {}).get(k) != new.get("config", {}).get(k)}
                         | {k for k in old | new if k != "config" and old.get(k) != new.get(k)})
        raise ConfigError("resume", f"the run in {path} was started with other settings ({', '.join(changed)}); "
                                    "use the same ones or a new folder")


def locked_message(path: Path) -> str:
    return f"{path}: another siamrdm run is using this folder (locked); wait for it or choose another"


@contextlib.contextmanager
def run_folder_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the run folder's lock for the duration (created if needed); a second holder is refused at once."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file, or a link to nothing, in its place
        raise DataError(f"{path}: cannot be made a folder ({os_reason(exc)})") from None
    run = _marked_ancestor(path.parent)
    if run is not None:  # a lock of a sub-run (a seed's folder): the enclosing run wrote it
        _record(run, path / LOCK_NAME)
    lock = FileLock(path / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DataError(locked_message(path)) from None
    try:
        yield path
    finally:
        lock.release()
