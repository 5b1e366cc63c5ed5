"""Does the best epoch count grow with the training images, as protocol rule 4 assumes? A check inside each set.

Rule 4 (RESULTS.md) scales an epoch count chosen on fits of n_c images by n / n_c for a fit on n images. This
script tests that on the training sets alone, never on a cross-set pair: each set's images are cut into 3
folds and its subjects into two halves (as `selection.selection_splits` cuts them). For every held-out fold,
models learn the first half's mean RDM on one of the two other folds (a third of the images: two fits) and on
both (two thirds: one fit); all are scored after every epoch on the held-out fold's images against the second
half's subjects (new images in new people). The one-standard-error rule (with the validated gain) picks an
epoch count on the 6 small fits' pooled curve and on the 3 large fits'; rule 4 predicts the second is twice
the first. Also recorded: each pooled curve's highest-rho epoch (validated or not), and the large fits' rho
at their own choice, at the small fits' choice unscaled and scaled by 2.

    OMP_NUM_THREADS=2 python benchmarks/epoch_scaling.py --out runs/epoch-scaling
    python benchmarks/epoch_scaling.py --summarize runs/epoch-scaling/epoch_scaling.jsonl
"""

from __future__ import annotations

import json
import time

import numpy as np
from cells import run_cells  # benchmarks/, beside this script
from levers import at_epoch, one_target

from siamrdm.io.datasets import BrainDataset
from siamrdm.io.tables import fmt
from siamrdm.rdm.splits import fold_indices, subject_split, subset
from siamrdm.train import config_from_preset
from siamrdm.train.selection import SELECTION_FOLDS, ensemble_curves, fold_curve, one_se_epoch, scaled_epochs


def nested_curves(config, dataset: BrainDataset, seed: int = 0) -> tuple[list[list[dict]], list[list[dict]]]:
    """The curves of fits on one other fold (small) and on both other folds (large), per held-out fold."""
    trained, unseen = subject_split(dataset, seed)
    folds = fold_indices(len(dataset), SELECTION_FOLDS, seed)
    small, large = [], []
    for k, held in enumerate(folds):
        scored = subset(unseen, held, f"{dataset.name} fold {k + 1} new people")
        others = [folds[j] for j in range(len(folds)) if j != k]
        for j, part in enumerate(others):
            small += ensemble_curves(config, [subset(trained, part, f"{dataset.name} part {j}")], [scored], (0,))
        both = np.sort(np.concatenate(others))
        large += ensemble_curves(config, [subset(trained, both, f"{dataset.name} both")], [scored], (0,))
    return small, large


def run_check(target: str, dataset: BrainDataset, device: str, **settings) -> dict:
    config = config_from_preset("quick", targets=(target,), device=device, **settings)
    start = time.perf_counter()
    small, large = nested_curves(config, one_target(dataset, target))
    pooled_small, pooled_large = fold_curve(small), fold_curve(large)
    chosen_small, chosen_large = one_se_epoch(pooled_small), one_se_epoch(pooled_large)
    # the large fits have both other folds' images, the small ones one fold's
    predicted = scaled_epochs(chosen_small, 1, 2, config.last_epoch, config.validate_every)

    def rho(epoch: int) -> dict:
        row = at_epoch(pooled_large, epoch)
        return {"epoch": epoch, "rho": row["rho_mean"], "se": row["rho_se"]}

    return {"target": target, "set": dataset.name, "small_chosen": chosen_small, "large_chosen": chosen_large,
            "small_best": max(pooled_small, key=lambda r: r["rho_mean"])["epoch"],
            "large_best": max(pooled_large, key=lambda r: r["rho_mean"])["epoch"],
            "large_at_own": rho(chosen_large), "large_at_small": rho(chosen_small), "large_at_scaled": rho(predicted),
            "seconds": round(time.perf_counter() - start, 1)}


def summarize(path: str) -> str:
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    lines = ["| target | set | chosen: 1/3 -> 2/3 of the images | ratio | highest-rho epoch: 1/3 -> 2/3 | "
             "2/3 fits' rho at own choice | at the 1/3 choice | at 2x the 1/3 choice |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        ratio = f"{r['large_chosen'] / r['small_chosen']:.1f}" if r["small_chosen"] else "-"
        cells = [f"{fmt(r[k]['rho'], '.3f')} ({r[k]['epoch']})"  # a null (a NaN measured) as '-'
                 for k in ("large_at_own", "large_at_small", "large_at_scaled")]
        lines.append(f"| {r['target']} | {r['set']} | {r['small_chosen']} -> {r['large_chosen']} | {ratio} | "
                     f"{r['small_best']} -> {r['large_best']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(record: dict) -> str:
    return (f"chosen {record['small_chosen']} -> {record['large_chosen']}, highest-rho epoch "
            f"{record['small_best']} -> {record['large_best']}")


if __name__ == "__main__":
    run_cells(__doc__, "epoch_scaling", run_check, summarize, describe)
