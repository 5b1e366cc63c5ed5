"""Atomic files: a file is written to a uniquely named temporary file beside its target and renamed into
place, so a reader (or a killed run) never sees half a file; a write that fails for want of room says so.

This is the part of safe writing that knows nothing of run folders: `files.atomic_path` adds the run folder's
manifest on top of `replacing`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError

TEMPORARY = re.compile(r"^\..*\.[0-9a-f]{12}\.tmp")  # what create_unique names; a killed write leaves one


@contextlib.contextmanager
def replacing(path: Path, replace_existing: bool = True) -> Iterator[Path]:
    """Yield a unique temporary path beside `path`, put in its place when the block succeeds (see `_place`);
    a write that fails for want of room is a DataError naming `path`. No temporary file stays either way."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = create_unique(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot be written ({os_reason(exc)})") from None
    try:
        try:
            yield tmp
        except (OSError, RuntimeError) as exc:  # how numpy, scipy, h5py, torch and matplotlib report a failed write
            reason = _lack_of_room(exc, path.parent)
            if reason is None:
                raise
            raise DataError(f"{path}: cannot be written ({reason}); nothing was written") from None
        _place(tmp, path, replace_existing)
    finally:
        tmp.unlink(missing_ok=True)


def _place(tmp: Path, path: Path, replace_existing: bool) -> None:
    """Put the finished temporary file at `path`: renamed over it, or without `replace_existing` only if no file
    is there now (a hard link, which fails on an existing name), so that a file that appeared while siamrdm
    worked (a second run to the same --out, the user's) is never lost. Where a file system has no hard links,
    the name is claimed with an exclusive create and the file renamed onto the claim."""
    appeared = DataError(f"{path}: appeared while siamrdm was working (another run or program wrote it); left as "
                         "it was, nothing written")
    try:
        if replace_existing:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise appeared from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK):
                raise
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                raise appeared from None
            os.replace(tmp, path)
    except OSError as exc:
        raise DataError(f"{path}: cannot be written ({os_reason(exc)})") from None


NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # a full disk, a file size limit, a quota
PROBE_BYTES = 2**20


def os_reason(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else " ".join(str(exc).split())


def _lack_of_room(exc: BaseException, folder: Path) -> str | None:
    """Why a writer failed when it is want of room, else None (a defect, reported as one). Its errno says so
    (an OSError's, or the 'errno = N' HDF5 writes into its message); numpy and torch report a short write with
    none, so then a probe of PROBE_BYTES written beside the target decides."""
    for error in (exc, exc.__cause__, exc.__context__):
        if isinstance(error, OSError) and error.errno in NO_ROOM:
            return os.strerror(error.errno)
        found = re.search(r"errno = (\d+)", str(error)) if error is not None else None
        if found and int(found.group(1)) in NO_ROOM:
            return os.strerror(int(found.group(1)))
    probe = None
    try:
        probe = create_unique(folder / "siamrdm-probe")
        fd = os.open(probe, os.O_WRONLY)
        try:
            written, block = 0, bytes(64 * 1024)
            while written < PROBE_BYTES:
                written += os.write(fd, block)
        finally:
            os.close(fd)
    except OSError as error:
        return os.strerror(error.errno) if error.errno in NO_ROOM else None
    finally:
        if probe is not None:
            probe.unlink(missing_ok=True)
    return None


def create_unique(path: Path) -> Path:
    """Create an empty, uniquely named file beside `path`. Unlike tempfile.mkstemp (mode 0600) its mode is
    what open() would give (0666 less the umask), so the renamed file is as readable as any other output.
    The stem is shortened where the temporary name would pass the file system's name limit."""
    limit = name_max(path.parent)
    for _ in range(100):
        tag = f".{secrets.token_hex(6)}.tmp{path.suffix}"
        stem = path.stem[: max(1, limit - len(tag) - 1)]
        tmp = path.with_name(f".{stem}{tag}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path}: no free temporary name beside it")


def name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255

