"""Checkpoints and model files: written atomically, read with `weights_only=True` (never unpickling code)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .data import DataError
from .files import atomic_path


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically (a uniquely named temporary file beside it, then a rename). The payload holds only
    tensors and plain data, so `load_checkpoint` can read it without unpickling code."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint or model file with `weights_only=True`: a crafted file cannot run code on load."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: unreadable checkpoint, or one holding more than tensors and plain data "
                        f"({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(payload, dict):
        raise DataError(f"{path}: not a siamrdm checkpoint")
    return payload
