"""Numbers as text: one formatter, strict JSON values, one CSV writer, the score tables' columns and views.

Light on purpose (no torch): `siamrdm score` and the report use it without loading a network.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

from .files import atomic_path

# The fields of one score record (scoring.ScoreRecord), in its order: what every score table holds.
SCORE_FIELDS = ("r2", "pct_nc", "rho_mean", "rho_se", "p", "p_signed", "noise_ceiling", "ceiling_source",
                "noise_ceiling_lower", "nc_lower_pct", "rho_lower_ceiling", "chance_r2_mean", "chance_r2_95",
                "chance_pct_mean", "chance_pct_95", "p_perm", "beats_chance", "permutations")
# The one column list of score tables (challenge's validation.csv, evaluate's evaluation.csv, the report's).
SCORE_COLUMNS = ["method", "target", "direction", *SCORE_FIELDS, "epochs", "detail"]


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


def flag(value) -> bool | None:
    """A yes/no cell (True, False or their CSV text 'True', 'False'), else None."""
    if isinstance(value, bool):
        return value
    return {"true": True, "false": False}.get(str(value).strip().lower())


def _chance_cell(row: dict) -> str:
    """This model's chance level: mean (95th percentile) of its permuted score, in % of the ceiling where the row
    has one, else in r2."""
    if number(row.get("chance_pct_95")) is not None:
        return f"{fmt(row.get('chance_pct_mean'), '.1f')} ({fmt(row.get('chance_pct_95'), '.1f')})"
    if number(row.get("chance_r2_95")) is not None:
        return f"{fmt(row.get('chance_r2_mean'), '.4f')} ({fmt(row.get('chance_r2_95'), '.4f')}) r2"
    return "-"


def _rho_cell(row: dict) -> str:
    return f"{fmt(row.get('rho_mean'), '.3f')} +- {fmt(row.get('rho_se'), '.3f')}"


def _yes_no(value) -> str:
    return {True: "yes", False: "no"}.get(flag(value), "-")


# The markdown view of a score table: (title, cell of a row), the same for every table; rows as dicts of numbers
# or as CSV text.
SCORE_VIEW = [
    ("method", lambda r: str(r.get("method", ""))),
    ("target", lambda r: str(r.get("target", ""))),
    ("direction", lambda r: str(r.get("direction") or "")),
    ("epochs", lambda r: "-" if r.get("epochs") in (None, "") else str(r["epochs"])),
    ("r2", lambda r: fmt(r.get("r2"), ".4f")),
    ("% of noise ceiling", lambda r: fmt(r.get("pct_nc"), ".1f")),
    ("chance % (95th)", _chance_cell),
    ("p_perm", lambda r: fmt(r.get("p_perm"), ".2g")),
    ("beats chance", lambda r: _yes_no(r.get("beats_chance"))),
    ("mean rho +- se", _rho_cell),
    ("lower ceiling rho", lambda r: fmt(r.get("rho_lower_ceiling"), ".3f")),
    ("noise ceiling", lambda r: "-" if number(r.get("noise_ceiling")) is None
     else f"{fmt(r.get('noise_ceiling'))} {r.get('ceiling_source') or ''}".strip()),
    ("p", lambda r: fmt(r.get("p"), ".2g")),
    ("detail", lambda r: str(r.get("detail") or "")),
]


def score_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Every row with its score, chance level, p_perm and signed rho (the columns of SCORE_VIEW; epochs only when
    some row has them)."""
    view = [(title, cell) for title, cell in SCORE_VIEW
            if title != "epochs" or any(r.get("epochs") not in (None, "") for r in rows)]
    return [title for title, _ in view], [[cell(r) for _, cell in view] for r in rows]


def chance_ranking(rows: list[dict]) -> list[str]:
    """The methods ranked by what beats chance: first by the share of their rows whose p_perm is below 0.05
    (beats_chance), then by their mean signed rho; never by the raw percent of the ceiling, which chance
    inflates for RDMs with strong per-image structure."""
    methods = list(dict.fromkeys(r["method"] for r in rows))

    def key(method: str) -> tuple[float, float]:
        group = [r for r in rows if r["method"] == method]
        beats = [flag(r.get("beats_chance")) for r in group]
        rhos = [v for v in (number(r.get("rho_mean")) for r in group) if v is not None]
        return (-sum(b is True for b in beats) / len(group), -(sum(rhos) / len(rhos)) if rhos else math.inf)

    return sorted(methods, key=key)  # stable: ties keep the table's order


def ranking_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Per method, in `chance_ranking`'s order: how many rows beat chance, the mean signed rho, and the mean
    percent of the ceiling beside the mean of its chance level's 95th percentile."""
    body = []
    for rank, method in enumerate(chance_ranking(rows), 1):
        group = [r for r in rows if r["method"] == method]
        known = [flag(r.get("beats_chance")) for r in group]
        beats = "-" if all(b is None for b in known) else f"{sum(b is True for b in known)} of {len(group)}"

        def mean(column: str, group=group) -> float | None:
            values = [v for v in (number(r.get(column)) for r in group) if v is not None]
            return sum(values) / len(values) if values else None

        body.append([str(rank), method, beats, fmt(mean("rho_mean"), ".3f"), fmt(mean("pct_nc"), ".1f"),
                     fmt(mean("chance_pct_95"), ".1f")])
    header = ["rank", "method", "rows beating chance", "mean rho", "mean % of noise ceiling", "mean chance % (95th)"]
    return header, body
