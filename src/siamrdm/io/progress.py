"""What a long command says while it runs: one line per phase on stderr, and whether to draw progress bars.

A challenge on a busy 2-core machine runs for half an hour; its phase lines ("challenge [3/14] curve EVC
92->118 (seed 0)") say at once what runs and how much is left. Lines are printed when a phase starts, flushed,
without carriage returns, so a log file (stderr not a terminal) stays readable; progress bars (tqdm, with an ETA)
are drawn only on a terminal. A line's text names folders, files and keys of the user's: it is shown escaped
(errors.printable), one line. Torch-free, and picklable, so a worker process of `challenge --jobs` prints its
own phase lines when it starts a fit.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from ..errors import printable


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@dataclass(frozen=True)
class Progress:
    """A command's progress: `lines` prints phase lines to stderr, `bars` asks for tqdm bars (a terminal only)."""

    command: str
    lines: bool = True
    bars: bool = False
    started: float = field(default_factory=time.time)  # wall clock: comparable across worker processes

    @classmethod
    def of(cls, progress: bool | Progress, command: str) -> Progress:
        """`progress` as the functions take it: a Progress as it is; True: lines, and bars on a terminal;
        False: silent."""
        if isinstance(progress, Progress):
            return progress
        return cls(command, lines=bool(progress), bars=bool(progress) and _stderr_is_terminal())

    def quiet_lines(self) -> Progress:
        """The same bars without lines: for a step that prints its own phase line around a nested one."""
        return Progress(self.command, lines=False, bars=self.bars, started=self.started)

    def elapsed(self) -> str:
        seconds = int(time.time() - self.started)
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    def line(self, text: str) -> None:
        """'command: text (elapsed)' on stderr, at once."""
        if self.lines:
            print(f"{self.command}: {printable(text)} ({self.elapsed()})", file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        """'command: done in (elapsed): text' on stderr: the closing line, `text` (the files written) last."""
        if self.lines:
            print(f"{self.command}: done in {self.elapsed()}: {printable(text)}", file=sys.stderr, flush=True)

    def phase(self, k: int, n: int, text: str) -> None:
        """'command [k/n] text (elapsed)' on stderr, at once: the k-th of n phases starts."""
        if self.lines:
            print(f"{self.command} [{k}/{n}] {printable(text)} ({self.elapsed()})", file=sys.stderr, flush=True)


class Phases:
    """Counts a run's phases for its lines: 'command [k/n] text' as the k-th of `total` starts."""

    def __init__(self, progress: Progress, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def start(self, text: str) -> None:
        self.done += 1
        self.progress.phase(self.done, self.total, text)
