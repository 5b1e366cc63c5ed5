"""Numbers as text: one formatter, strict JSON values, one CSV writer, the score tables' columns and views.

Light on purpose (no torch): `siamrdm score` and the report use it without loading a network.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from .files import atomic_path
from .jsonfiles import parse_json, strict_json_text

# The fields of one score record (records.ScoreRecord), in its order: what every score table holds.
SCORE_FIELDS = ("r2", "pct_nc", "rho_mean", "rho_se", "p", "p_signed", "noise_ceiling", "ceiling_source",
                "noise_ceiling_lower", "nc_lower_pct", "rho_lower_ceiling", "chance_r2_mean", "chance_r2_95",
                "chance_pct_mean", "chance_pct_95", "p_perm", "beats_chance", "permutations", "rho_ci_low",
                "rho_ci_high", "r2_ci_low", "r2_ci_high", "rhos", "pair_rho_mean", "pair_rho_se", "pair_rho_ci_low",
                "pair_rho_ci_high", "pair_p_perm", "pair_rhos")
# The one column list of score tables (challenge's validation.csv, evaluate's evaluation.csv, the report's).
SCORE_COLUMNS = ["method", "target", "direction", *SCORE_FIELDS, "epochs", "detail"]


# One paired test of a method against a baseline (paired.paired_rows, inference.PairedTest's fields after these):
# the differences of the signed rho, paired over the subjects (or over the folds, for image folds). p_t, the
# two-sided paired t-test, is the tables' p; p_wilcoxon the Wilcoxon signed-rank test beside it.
PAIRED_COLUMNS = ["target", "direction", "method", "baseline", "over", "n", "mean_diff", "diff_se", "diff_ci_low",
                  "diff_ci_high", "t", "p_t", "p_wilcoxon"]


def to_frame(rows: list[dict], columns: Sequence[str]):
    """Rows as a pandas DataFrame with these columns (in this order; missing values as None): what a notebook
    reads. pandas is imported here only, so the rest of siamrdm does not need it."""
    try:
        import pandas
    except ImportError:
        raise ImportError("to_frame() needs pandas (pip install pandas)") from None
    return pandas.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=list(columns))


class Record:
    """What every result record of the library (a dataclass) gives a notebook: `to_dict()`, the plain values a
    JSON file or a table row holds, and `to_frame()`, that row as a pandas DataFrame (its columns the fields, in
    order). One pattern for all, so a notebook reads any result the same way."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_frame(self):
        """One row (pandas DataFrame), for a notebook."""
        return to_frame([self.to_dict()], [f.name for f in dataclasses.fields(self)])


def number_list(cell) -> list[float] | None:
    """Per-subject values (a row's `rhos`) from a list or from its JSON text (a CSV cell); None when absent,
    unreadable or not all finite."""
    if isinstance(cell, str):
        try:
            cell = parse_json(cell, "table cell", "rhos") if cell.strip() else None
        except DataError:
            return None
    if cell is None or isinstance(cell, str | bytes) or not hasattr(cell, "__len__") or not len(cell):
        return None
    values = [number(v) for v in cell]
    return None if None in values else values


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
    """Rows as a CSV file with these columns (others ignored), written atomically; a list (a row's `rhos`) as
    its JSON text, which `number_list` reads back."""
    path = Path(path)
    cells = [{k: strict_json_text(v) if isinstance(v, list | tuple) else v for k, v in row.items()}
             for row in rows]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(cells)
    return path


# What could make a value more than text in Markdown: '&' and '<' (a Markdown viewer renders HTML: an entity, a
# tag, a script or an event handler; none can begin without them, so '>' and quotes stay as they are and a
# direction reads 92->118), a backslash (it would escape what follows), a pipe (a new table cell), brackets (a
# link or an image) and backticks (a code span).
_MARKDOWN_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", "\\": "\\\\", "|": "\\|", "[": "\\[",
                                   "]": "\\]", "`": "\\`"})


def markdown_text(value) -> str:
    """A value that comes from a file or a name (a CSV cell, a folder or file name, a setting) as Markdown shows
    it, literally, on one line: HTML's special characters as entities, Markdown's own punctuation escaped and
    every line break flattened to a space (`_MARKDOWN_ESCAPES`). The one escaping of every Markdown siamrdm
    writes (`markdown`, the report's pages)."""
    return " ".join(str(value).splitlines()).translate(_MARKDOWN_ESCAPES)


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A markdown table, every header and cell escaped (`markdown_text`)."""
    lines = ["| " + " | ".join(markdown_text(title) for title in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(markdown_text(cell) for cell in row) + " |" for row in body]
    return "\n".join(lines)


# A summary shows at most this many target (and direction) columns, the first ones; its mean covers them all. A
# table of thousands of targets would otherwise be a pivot of methods x targets cells, mostly empty.
MAX_SUMMARY_COLUMNS = 12


def summary_columns(rows: list[dict]) -> list[tuple[str, str]]:
    """Every (target, direction) of the rows, in their order: the columns a summary would have without its
    limit (MAX_SUMMARY_COLUMNS)."""
    return list(dict.fromkeys((r["target"], r.get("direction", "")) for r in rows))


def summary(rows: list[dict], measure: str = "pct_nc", spec: str = ".1f") -> tuple[list[str], list[list[str]]]:
    """Methods down, target and direction across (the first MAX_SUMMARY_COLUMNS), with the mean over all of a
    method's rows: the claim at a glance. Works on score rows as dicts of numbers or as CSV text."""
    columns = summary_columns(rows)[:MAX_SUMMARY_COLUMNS]
    values_of: dict = {}  # method -> {(target, direction): value}, in one pass
    for r in rows:
        values_of.setdefault(r["method"], {})[r["target"], r.get("direction", "")] = number(r.get(measure))
    body = []
    for method, values in values_of.items():
        finite = [v for v in values.values() if v is not None]
        mean = sum(finite) / len(finite) if finite else None
        body.append([method] + [fmt(values.get(column), spec) for column in columns] + [fmt(mean, spec)])
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


def _pair_cell(row: dict) -> str:
    """The pair structure's signed mean rho (records.pair_fields) with its SE and p_perm, '-' where not measured."""
    if number(row.get("pair_rho_mean")) is None:
        return "-"
    return (f"{fmt(row.get('pair_rho_mean'), '.3f')} +- {fmt(row.get('pair_rho_se'), '.3f')} "
            f"({fmt(row.get('pair_p_perm'), '.2g')})")


def _interval(low, high, spec: str = ".3f") -> str:
    return "-" if number(low) is None or number(high) is None else f"[{fmt(low, spec)}, {fmt(high, spec)}]"


def _epochs_cell(value) -> str:
    """The epochs trained; 0 flagged: the model kept is the prior alone (with a prior the curves start at
    epoch 0, the prior before any step, so no trained epoch showed a validated gain)."""
    epochs = number(value)
    if epochs is None:  # missing, or not a finite number (1e999): shown as missing
        return "-"
    return "0 (prior alone)" if epochs == 0 else format(epochs, ".15g")


def _yes_no(value) -> str:
    return {True: "yes", False: "no"}.get(flag(value), "-")


# The markdown view of a score table: (title, cell of a row), the same for every table; rows as dicts of numbers
# or as CSV text.
SCORE_VIEW = [
    ("method", lambda r: str(r.get("method", ""))),
    ("target", lambda r: str(r.get("target", ""))),
    ("direction", lambda r: str(r.get("direction") or "")),
    ("epochs", lambda r: _epochs_cell(r.get("epochs"))),
    ("r2", lambda r: fmt(r.get("r2"), ".4f")),
    ("% of noise ceiling", lambda r: fmt(r.get("pct_nc"), ".1f")),
    ("chance % (95th)", _chance_cell),
    ("p_perm", lambda r: fmt(r.get("p_perm"), ".2g")),
    ("beats chance", lambda r: _yes_no(r.get("beats_chance"))),
    ("mean rho +- se", _rho_cell),
    ("rho 95% CI", lambda r: _interval(r.get("rho_ci_low"), r.get("rho_ci_high"))),
    ("pair structure rho +- se (p_perm)", lambda r: _pair_cell(r)),
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


def by_method(rows: list[dict]) -> dict[str, list[dict]]:
    """Each method's rows, in the rows' order, gathered in one pass (not one pass per method)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["method"], []).append(r)
    return groups


def chance_ranking(rows: list[dict]) -> list[str]:
    """The methods ranked by what beats chance: first by the share of their rows whose p_perm is below 0.05
    (beats_chance), then by their mean signed rho; never by the raw percent of the ceiling, which chance
    inflates for RDMs with strong per-image structure."""
    groups = by_method(rows)

    def key(method: str) -> tuple[float, float]:
        group = groups[method]
        beats = [flag(r.get("beats_chance")) for r in group]
        rhos = [v for v in (number(r.get("rho_mean")) for r in group) if v is not None]
        return (-sum(b is True for b in beats) / len(group), -(sum(rhos) / len(rhos)) if rhos else math.inf)

    return sorted(groups, key=key)  # stable: ties keep the table's order


def ranking_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Per method, in `chance_ranking`'s order: how many rows beat chance, the mean signed rho, and the mean
    percent of the ceiling beside the mean of its chance level's 95th percentile."""
    body, groups = [], by_method(rows)
    for rank, method in enumerate(chance_ranking(rows), 1):
        group = groups[method]
        known = [flag(r.get("beats_chance")) for r in group]
        beats = "-" if all(b is None for b in known) else f"{sum(b is True for b in known)} of {len(group)}"

        def mean(column: str, group=group) -> float | None:
            values = [v for v in (number(r.get(column)) for r in group) if v is not None]
            return sum(values) / len(values) if values else None

        body.append([str(rank), method, beats, fmt(mean("rho_mean"), ".3f"), fmt(mean("pct_nc"), ".1f"),
                     fmt(mean("chance_pct_95"), ".1f")])
    header = ["rank", "method", "rows beating chance", "mean rho", "mean % of noise ceiling", "mean chance % (95th)"]
    return header, body


# The markdown view of the paired tests (paired.paired_rows), rows as dicts of numbers or as CSV text.
PAIRED_VIEW = [
    ("target", lambda r: str(r.get("target", ""))),
    ("direction", lambda r: str(r.get("direction") or "")),
    ("method", lambda r: str(r.get("method", ""))),
    ("baseline", lambda r: str(r.get("baseline", ""))),
    ("paired over", lambda r: f"{r.get('over', '')} (n = {r.get('n', '-')})"),
    ("rho difference", lambda r: f"{fmt(r.get('mean_diff'), '+.3f')} +- {fmt(r.get('diff_se'), '.3f')}"),
    ("95% CI", lambda r: _interval(r.get("diff_ci_low"), r.get("diff_ci_high"))),
    ("t", lambda r: fmt(r.get("t"), ".2f")),
    ("p (paired t)", lambda r: fmt(r.get("p_t"), ".2g")),
    ("p (Wilcoxon)", lambda r: fmt(r.get("p_wilcoxon"), ".2g")),
]
PAIRED_NOTE = ("Each method against each baseline: the difference of the signed mean rho (method minus baseline), "
               "paired over the same subjects (for image folds also over the folds); p is the two-sided paired "
               "t-test, the Wilcoxon signed-rank test beside it. A difference of means is no evidence until its p "
               "is small: with 5 folds, even the Wilcoxon test cannot go below 0.0625.")


def paired_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The paired tests (paired.paired_rows) as a markdown table's header and body."""
    return [title for title, _ in PAIRED_VIEW], [[cell(r) for _, cell in PAIRED_VIEW] for r in rows]
