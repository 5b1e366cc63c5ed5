"""How the `siamrdm` command prints: strict JSON on stdout, the input files' notes and bad input's one line on
stderr (names from files shown escaped, errors.printable), and stdout whose write failures are the output's."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable

from .errors import printable
from .io.files import json_safe
from .io.rsafiles import take_notes


def print_json(obj) -> None:
    """Strict JSON on stdout: NaN/inf become null, and allow_nan=False makes sure none slips through."""
    print(json.dumps(json_safe(obj), indent=2, allow_nan=False))


def print_notes() -> None:
    """How the input files were read (rsafiles.take_notes), on stderr: once the input is read and checked."""
    for note in take_notes():
        print(f"siamrdm: {printable(note)}", file=sys.stderr, flush=True)


def error_line(message: str) -> None:
    """Bad input's one line on stderr. Names from files and paths may hold line breaks or terminal escapes:
    they are shown escaped (errors.printable), so the line stays one line and the terminal is left alone."""
    print(f"siamrdm: error: {printable(message)}", file=sys.stderr)


def silence_stdout() -> None:
    """Point stdout's file at /dev/null, so that the flush at exit raises no second error."""
    with contextlib.suppress(OSError, AttributeError, ValueError):  # stdout may not be a file
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def stdout_failure(exc: Exception) -> str | None:
    """Why stdout could not take the output, when `exc` is that failure (CheckedStdout marked it); else None."""
    if not getattr(exc, "siamrdm_stdout", False):
        return None
    silence_stdout()  # what it still holds would fail again at exit
    return os.strerror(exc.errno) if exc.errno else " ".join(str(exc).split())


class CheckedStdout:
    """sys.stdout while a command runs: an OSError writing to it (`> /dev/full`, a full disk; a closed pipe
    excepted) is marked as stdout's, so that main reports the output, not a defect. All else is the stream's."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def _checked(self, call: Callable, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            exc.siamrdm_stdout = True
            raise

    def write(self, text: str) -> int:
        return self._checked(self._stream.write, text)

    def flush(self) -> None:
        self._checked(self._stream.flush)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
