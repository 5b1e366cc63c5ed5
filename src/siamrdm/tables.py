"""Numbers as text: one formatter, strict JSON values, one CSV writer and the percent-of-ceiling summary.

Light on purpose (no torch): `siamrdm score` and the report use it without loading a network.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

from .files import atomic_path


def number(value) -> float | None:
    """A finite float from a number or its text (a CSV cell), else None."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def fmt(value, spec: str = ".4f") -> str:
    """A number formatted with `spec`, or '-' when it is missing or not finite."""
    value = number(value)
    return "-" if value is None else format(value, spec)


def json_safe(value):
    """`value` as strict JSON can hold it: NaN and inf become None, numpy scalars and arrays Python values."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_csv(rows: list[dict], path: str | os.PathLike, columns: Sequence[str]) -> Path:
    """Rows as a CSV file with these columns (others ignored), written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in body]
    return "\n".join(lines)


def summary(rows: list[dict], measure: str = "pct_nc", spec: str = ".1f") -> tuple[list[str], list[list[str]]]:
    """Methods down, target and direction across, with the mean: the claim at a glance. Works on score rows
    as dicts of numbers or as CSV text."""
    columns = list(dict.fromkeys((r["target"], r.get("direction", "")) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lookup = {(r["method"], r["target"], r.get("direction", "")): number(r.get(measure)) for r in rows}
    body = []
    for method in methods:
        values = [lookup.get((method, t, d)) for t, d in columns]
        finite = [v for v in values if v is not None]
        mean = sum(finite) / len(finite) if finite else None
        body.append([method] + [fmt(v, spec) for v in values] + [fmt(mean, spec)])
    return ["method"] + [f"{t} {d}".strip() for t, d in columns] + ["mean"], body
