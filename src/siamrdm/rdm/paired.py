"""Methods compared across a score table's rows: each method paired with each baseline (`paired_rows`), and every
method against the best one per target (`method_comparison`, the report's leading figure).

Rows are score records (`records.ScoreRecord`) with their table's `target`, `method` and `direction` columns, as
dicts of numbers or as CSV text. Which methods are baselines is the caller's to say (the method registry,
`pipelines.methods.baseline_names`): this layer knows no method by name.
"""

from __future__ import annotations

import math

import numpy as np

from ..io.tables import number, number_list
from .inference import holm, mean_summary, paired_test


def _is_fold(direction: str) -> bool:
    return str(direction).startswith("fold ")


def _by_target(rows: list[dict]) -> dict[str, list[dict]]:
    """target -> its rows, in one pass (a table of many targets: linear, not quadratic)."""
    by_target: dict[str, list[dict]] = {}
    for r in rows:
        by_target.setdefault(r["target"], []).append(r)
    return by_target


def _directions(group: list[dict]) -> tuple[list[str], bool]:
    """A target's directions in order of appearance, and whether they are image folds ('fold 1', ...)."""
    directions = list(dict.fromkeys(str(r.get("direction") or "") for r in group))
    return directions, len(directions) > 1 and all(_is_fold(d) for d in directions)


def paired_rows(rows: list[dict], baselines: tuple[str, ...]) -> list[dict]:
    """Each method against each of the `baselines` present (`paired_test` of the signed rho,
    `tables.PAIRED_COLUMNS`):
    across sets or in a challenge, per target and direction, paired over the test set's subjects (each row's
    `rhos`); for image folds (directions 'fold 1', ...) per target, paired over the folds (each fold's rho_mean)
    and over the subjects (each subject's rho averaged over the folds: the same subjects are held out in every
    fold). Rows as dicts of numbers or as CSV text; pairs whose rows lack rhos (older tables) are left out."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    pairs = [(m, b) for b in baselines if b in methods for m in methods if m not in baselines]
    out = []

    def add(target, direction, over, method, baseline, a, b):
        if a is not None and b is not None and len(a) == len(b) and len(a):
            out.append({"target": target, "direction": direction, "method": method, "baseline": baseline,
                        "over": over, **paired_test(a, b).to_dict()})

    for target, group in _by_target(rows).items():
        directions, folds = _directions(group)
        by = {(r["method"], str(r.get("direction") or "")): r for r in group}
        for method, baseline in pairs:
            if folds:
                _add_folds(add, target, directions, by, method, baseline)
            else:
                for d in directions:
                    if (method, d) in by and (baseline, d) in by:
                        add(target, d, "subjects", method, baseline, number_list(by[method, d].get("rhos")),
                            number_list(by[baseline, d].get("rhos")))
    return out


def _add_folds(add, target: str, directions: list[str], by: dict, method: str, baseline: str) -> None:
    """One pair of methods over image folds: paired over the folds, and over the subjects (fold-averaged)."""
    both = [d for d in directions if (method, d) in by and (baseline, d) in by]
    a = [number(by[method, d].get("rho_mean")) for d in both]
    b = [number(by[baseline, d].get("rho_mean")) for d in both]
    if None not in a and None not in b:
        add(target, "all folds", "folds", method, baseline, a, b)
    a_s = [number_list(by[method, d].get("rhos")) for d in both]
    b_s = [number_list(by[baseline, d].get("rhos")) for d in both]
    if both and all(v is not None for v in a_s + b_s) and len({len(v) for v in a_s + b_s}) == 1:
        add(target, "all folds", "subjects", method, baseline, np.mean(a_s, axis=0), np.mean(b_s, axis=0))


def method_comparison(rows: list[dict], alpha: float = 0.05, targets: int | None = None) -> list[dict]:
    """What the report's leading figure shows: per target (and direction, across sets; over all folds for image
    folds), every method's signed mean rho over subjects with its 95% bootstrap interval, the lower noise ceiling
    in rho units (`rho_lower_ceiling`; and `rho_upper_ceiling` where a record has one), the chance level in rho
    units (sqrt of the 95th percentile of r2 with the image labels permuted: the rho every subject would need to
    reach it), and each method's paired t-test against the best one (highest mean rho) over the subjects,
    Holm-corrected for the number of comparisons in its group (`differs`: adjusted p < alpha). For image folds
    each subject's rho is averaged over the folds first, as `paired_rows` does. Rows as dicts or CSV text. With
    `targets`, only the first that many targets (a figure shows no more): the rows are grouped in one pass."""
    out = []
    by_target = _by_target(rows)
    for target in list(by_target)[:targets]:
        group = by_target[target]
        directions, folds = _directions(group)
        cells = [("all folds", group)] if folds else [(d, [r for r in group if str(r.get("direction") or "") == d])
                                                       for d in directions]
        for direction, members in cells:
            bars = [_bar(target, direction, method, [r for r in members if r["method"] == method])
                    for method in dict.fromkeys(r["method"] for r in members)]
            _against_the_best(bars, alpha)
            for b in bars:
                b.pop("subjects")
            out += bars
    return out


def _bar(target: str, direction: str, method: str, mine: list[dict]) -> dict:
    """One method's bar in one cell: its rows' signed mean rho and interval (over the subjects, fold-averaged,
    where there are several rows), ceilings and chance in rho units; `subjects` for the paired tests."""
    rhos = [number_list(r.get("rhos")) for r in mine]
    usable = all(v is not None for v in rhos) and len({len(v) for v in rhos}) == 1
    subjects = np.mean(rhos, axis=0) if usable else None

    def mean_of(name: str, rows_: list[dict] = mine) -> float | None:
        values = [number(r.get(name)) for r in rows_]
        return None if None in values or not values else float(np.mean(values))

    if subjects is not None and len(mine) > 1:
        summary = mean_summary(subjects)
        rho, low, high = summary["mean"], summary["ci_low"], summary["ci_high"]
    else:
        rho, low, high = mean_of("rho_mean"), mean_of("rho_ci_low"), mean_of("rho_ci_high")
    chance = mean_of("chance_r2_95")
    return {"target": target, "direction": direction, "method": method, "rho_mean": rho,
            "rho_ci_low": low, "rho_ci_high": high, "rho_lower_ceiling": mean_of("rho_lower_ceiling"),
            "rho_upper_ceiling": mean_of("rho_upper_ceiling"),
            "chance_rho_95": None if chance is None else math.sqrt(max(chance, 0.0)),
            "subjects": subjects, "best": False, "p_vs_best": None, "p_holm": None,
            "differs": None}


def _against_the_best(bars: list[dict], alpha: float) -> None:
    """Marks the best bar (highest mean rho) and tests every other against it over the subjects, Holm-corrected."""
    scored = [b for b in bars if b["rho_mean"] is not None]
    if not scored:
        return
    best = max(scored, key=lambda b: b["rho_mean"])
    best["best"] = True
    others = [b for b in bars if b is not best]
    for b in others:
        if b["subjects"] is not None and best["subjects"] is not None and len(b["subjects"]) == len(
                best["subjects"]):
            b["p_vs_best"] = paired_test(b["subjects"], best["subjects"]).p_t
    for b, adjusted in zip(others, holm([b["p_vs_best"] for b in others]), strict=True):
        b["p_holm"] = adjusted
        b["differs"] = None if adjusted is None else adjusted < alpha
