"""How the `siamrdm` command prints: strict JSON on stdout, the input files' notes and bad input's one line on
stderr (names from files shown escaped, errors.printable), and stdout whose write failures are the output's."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable

from .errors import printable
from .io.jsonfiles import strict_json_text


def print_json(obj) -> None:
    """Strict JSON on stdout (`strict_json_text`: NaN/inf become null)."""
    print(strict_json_text(obj, indent=2))


def print_notes(*read: object) -> None:
    """How a command's input files were read, on stderr, once the input is read and checked (never beside an
    error's one line): the notes (rdmfiles.read_rdms) of what it read, each a tuple of notes or a thing with
    `.notes` (a dataset, another study's RDMs, condensed targets), in order and each once."""
    shown: dict[str, None] = {}
    for item in read:
        notes: Iterable[str] = getattr(item, "notes", item)
        shown.update(dict.fromkeys(notes))
    for note in shown:
        print(f"siamrdm: {printable(note)}", file=sys.stderr, flush=True)


def print_ceilings(result: dict[str, dict[str, float]]) -> None:
    """`siamrdm noise-ceiling`'s table of a scorefiles.file_ceilings result, a row per key."""
    print(f"{'key':<18} {'upper':>8} {'lower':>8} {'rho_lower':>9} {'rho_upper':>9}  source")
    for key, row in result.items():
        print(f"{printable(key):<18} {row['upper']:>8.4f} {row['lower']:>8.4f} {row['rho_lower']:>9.4f} "
              f"{row['rho_upper']:>9.4f}  {row['source']}")
    print("note: upper and lower in r2 (the challenge's unit); rho_lower, rho_upper: the same in rho, "
          "rsatoolbox's (lower, upper); source: official where the file is the challenge's own (its published "
          "upper ceiling, which score uses), else computed from the subjects")


def print_evaluation(evaluation, as_json: bool, paths: dict | None, seconds: float) -> None:
    """baseline-* and evaluate's output (a pipelines.evaluate.Evaluation): one JSON object, or its summary, its
    table and where the files went."""
    from .pipelines.evaluate import markdown_table, summary

    if as_json:
        folds = {"folds": {k: d.images.names for k, d in evaluation.held_out.items()}} if evaluation.held_out else {}
        print_json({"rows": evaluation.rows, "layers": evaluation.layers, "regression": evaluation.regression,
                    "seconds": evaluation.seconds, **folds, "wall_s": seconds})
        return
    # The tables name targets (with own data, --key's: a file's key) and the lines, --out's folder: each line escaped
    for line in (*summary(evaluation).split("\n"), "", *markdown_table(evaluation.rows).split("\n")):
        print(printable(line))
    if paths:
        print(f"\nwrote {', '.join(sorted(p.name for p in paths.values()))} in {printable(paths['md'].parent)}")
    print(f"wall time {seconds:.0f} s" + (f"; the report: {printable(paths['report_html'])}"
                                          if paths and "report_html" in paths else ""))


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
