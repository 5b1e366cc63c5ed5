"""Which epoch rule predicts new people best? Four rules compared nested inside each training set.

Data apart from every cross-set figure: per set and target, the subjects are halved and the images cut into 3
folds (as `selection.selection_splits` cuts them). For each outer fold k, two inner fits learn the first half's
mean RDM on one of the other two folds and are scored on the other one against the second half; their pooled
curve is what each rule chooses on. The outer fit learns on both other folds (twice the inner fits' images)
and is read on fold k against the second half at each rule's count. The second half both chooses (inner) and
judges (outer): against the choice the outer read is new images, not new people; against the outer fit's
training it is both. The rules:

- `one_se`: the one-standard-error rule with the validated gain (`selection.one_se_epoch`), unscaled;
- `rule4`: one_se scaled to the outer fit's images (x2, `selection.scaled_epochs`): the protocol before this
  comparison;
- `best`: the best validated epoch (`selection.best_epoch`), unscaled;
- `best_scaled`: best x 2.

RESULTS.md states the adoption rule; `--summarize` prints the table and applies it.

    OMP_NUM_THREADS=2 python benchmarks/epoch_rules.py --device cpu --out runs/epoch-rules
    python benchmarks/epoch_rules.py --summarize runs/epoch-rules/epoch_rules.jsonl
"""

from __future__ import annotations

import json
import time

import numpy as np
from cells import run_cells  # benchmarks/, beside this script
from levers import at_epoch, one_target

from siamrdm.io.datasets import BrainDataset
from siamrdm.io.tables import fmt, number
from siamrdm.rdm.splits import fold_indices, subject_split, subset
from siamrdm.train import config_from_preset
from siamrdm.train.selection import (
    SELECTION_FOLDS,
    best_epoch,
    ensemble_curves,
    fold_curve,
    one_se_epoch,
    scaled_epochs,
)

RULES = ("one_se", "rule4", "best", "best_scaled")


def rule_epochs(config, inner: list[dict], scale: float) -> dict[str, int]:
    """Each rule's count on the pooled inner curve, for a fit on `scale` times the inner fits' images."""
    one_se, best = one_se_epoch(inner), best_epoch(inner)
    every, last = config.validate_every, config.last_epoch
    return {"one_se": one_se, "rule4": scaled_epochs(one_se, 1, scale, last, every),
            "best": best, "best_scaled": scaled_epochs(best, 1, scale, last, every)}


def run_check(target: str, dataset: BrainDataset, device: str, seed: int = 0, **settings) -> dict:
    config = config_from_preset("quick", targets=(target,), device=device, **settings)
    dataset = one_target(dataset, target)
    start = time.perf_counter()
    trained, unseen = subject_split(dataset, seed)
    folds = fold_indices(len(dataset), SELECTION_FOLDS, seed)
    outer_rows: dict[str, list[dict]] = {rule: [] for rule in RULES}
    chosen: dict[str, list[int]] = {rule: [] for rule in RULES}
    for k, held in enumerate(folds):
        a, b = (folds[j] for j in range(len(folds)) if j != k)
        inner = []
        for fit_on, score_on in ((a, b), (b, a)):
            inner += ensemble_curves(config, [subset(trained, fit_on, f"{dataset.name} inner")],
                                     [subset(unseen, score_on, f"{dataset.name} inner held out")], (0,))
        epochs = rule_epochs(config, fold_curve(inner), scale=2)  # both other folds against one
        outer = ensemble_curves(config, [subset(trained, np.sort(np.concatenate([a, b])), f"{dataset.name} outer")],
                                [subset(unseen, held, f"{dataset.name} fold {k + 1} new people")], (0,))[0]
        for rule, epoch in epochs.items():
            chosen[rule].append(epoch)
            outer_rows[rule].append(at_epoch(outer, epoch))
    result = {"target": target, "set": dataset.name}
    for rule in RULES:
        rhos = [row["rho_mean"] for row in outer_rows[rule]]
        ses = [row["rho_se"] for row in outer_rows[rule]]
        result[rule] = {"rho": float(np.mean(rhos)), "se": float(np.sqrt(np.sum(np.square(ses)))) / len(ses),
                        "epochs": chosen[rule]}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def verdict(records: list[dict]) -> str:
    """The adoption rule stated in RESULTS.md, applied: against `rule4`, higher in more cells than lower, higher
    on average, lower by more than the cell's SE in none; of several, the highest average."""
    qualified = {}
    for rule in RULES:
        if rule == "rule4":
            continue
        gains = [r[rule]["rho"] - r["rule4"]["rho"] for r in records]
        worse_than_se = any(r[rule]["rho"] < r["rule4"]["rho"] - r["rule4"]["se"] for r in records)
        higher, lower = sum(g > 1e-12 for g in gains), sum(g < -1e-12 for g in gains)
        if higher > lower and np.mean(gains) > 0 and not worse_than_se:
            qualified[rule] = float(np.mean(gains))
    if not qualified:
        return "verdict: no rule qualifies; rule4 stays"
    winner = max(qualified, key=qualified.get)
    return f"verdict: {winner} qualifies (mean gain {qualified[winner]:+.4f} rho over rule4); qualified: {qualified}"


def summarize(path: str) -> str:
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    lines = ["| target | set | " + " | ".join(f"{rule}: rho ± se (epochs per fold)" for rule in RULES) + " |",
             "|---|---|" + "---|" * len(RULES)]
    for r in records:
        cells = [f"{fmt(r[rule]['rho'], '.3f')} ± {fmt(r[rule]['se'], '.3f')} "  # a null (a NaN measured) as '-'
                 f"({', '.join(map(str, r[rule]['epochs']))})" for rule in RULES]
        lines.append(f"| {r['target']} | {r['set']} | " + " | ".join(cells) + " |")
    # the means and the verdict over the cells whose every value was measured
    complete = [r for r in records if all(number(r[rule][k]) is not None for rule in RULES for k in ("rho", "se"))]
    means = " ".join(f"{rule} {fmt(np.mean([r[rule]['rho'] for r in complete]) if complete else None)}"
                     for rule in RULES)
    missing = len(records) - len(complete)
    left_out = f" ({missing} cell{'s' * (missing > 1)} with a missing value left out)" if missing else ""
    return "\n".join(lines) + f"\n\nmean over the cells{left_out}: {means}\n{verdict(complete)}"


def describe(record: dict) -> str:
    return "  ".join(f"{rule} {record[rule]['rho']:.3f} {record[rule]['epochs']}" for rule in RULES)


if __name__ == "__main__":
    run_cells(__doc__, "epoch_rules", run_check, summarize, describe)
