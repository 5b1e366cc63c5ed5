"""Checkpoints and model files: written atomically, read with `weights_only=True` (never unpickling code).

A file read that way holds plain data, but not necessarily what siamrdm wrote: `load_run_state` checks a run
checkpoint's parts, and `reading` turns what still goes wrong while restoring from one into one line naming
the file.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import DataError
from ..io.files import atomic_path
from ..model.registry import check_tensors as check_tensors
from ..model.registry import load_plain
from .config import ConfigError, config_from_dict


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically (a uniquely named temporary file beside it, then a rename). The payload holds only
    tensors and plain data, so `load_checkpoint` can read it without unpickling code."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
    """Read a checkpoint or model file with `weights_only=True`: a crafted file cannot run code on load. With
    `mmap`, its tensors are mapped rather than read (`load_plain`)."""
    payload = load_plain(path, "checkpoint", DataError, ", or one holding more than tensors and plain data", mmap)
    if not isinstance(payload, dict):
        raise DataError(f"{path}: not a siamrdm checkpoint")
    return payload


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str = "checkpoint") -> Iterator[None]:
    """Restoring from a plain-data file that is not what siamrdm writes (a wrong key, type or shape): one line
    naming the file, instead of the error of whichever step tripped over it. A DataError passes unchanged;
    a ConfigError is a setting inside the file, so it is named with the file; one naming 'resume' says the file
    is another run's (trainer.load_state), not that it is damaged."""
    try:
        yield
    except ConfigError as exc:
        if exc.option == "resume":
            raise DataError(f"{path}: {exc.problem}") from None
        raise DataError(f"{path}: malformed siamrdm {what}: its setting {exc.option}: {exc.problem}") from None
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: malformed siamrdm {what} ({_short(exc)})") from None


def _count(value, name: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise DataError(f"{name} must be a count (0 or more), got {value!r:.60}")


def load_run_state(path: str | os.PathLike) -> dict:
    """A run checkpoint (`last.pt`) for --resume: read as plain data, then its parts checked (kinds, finite
    weights, the generator's state), so that a malformed one is refused in one line naming it before training
    goes on from it. Restore it under `reading(path)` for what only restoring can find (a shape)."""
    state = load_checkpoint(path)
    with reading(path):
        try:
            config_from_dict(state["config"])
            _count(state["epoch"], "epoch")
            _count(state["best_epoch"], "best_epoch")
            score = state["best_score"]
            if score is not None and (not isinstance(score, numbers.Real) or isinstance(score, bool)):
                raise DataError(f"best_score must be a number, got {score!r:.60}")
            history = state["history"]
            if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
                raise DataError("history must be a list of rows (dicts)")
            check_tensors(state["model"], "model")
            check_tensors(state["best_state"], "best_state")
            for name in ("optimizer", "scheduler", "normalisation", "priors", "batch"):
                if state.get(name) is not None and not isinstance(state[name], dict):
                    raise DataError(f"{name} must be a dict, got {type(state[name]).__name__}")
            if not isinstance(state["optimizer"], dict):
                raise DataError("optimizer must be a dict")
            if "generator" in state:  # the full-batch trainer's CPU generator: refused as a whole, not half-set
                torch.Generator().set_state(state["generator"])
        except DataError as exc:
            raise DataError(f"{path}: malformed siamrdm checkpoint: {exc}") from None
    return state


def finite(value, name: str) -> float:
    """A plain number from a file, refused unless finite."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise DataError(f"{name} must be a finite number, got {value!r:.60}")
    return float(value)
