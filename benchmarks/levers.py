"""Which levers make the Siamese network generalise to new images: chosen on image folds, reported across sets.

For every lever (a set of TrainConfig overrides, or a seed ensemble) and target, as `siamrdm challenge` runs it:

- selection (the numbers used to choose the defaults): image-level folds within each training set. Each of
  the 92 and 118 sets is split into `--folds` folds of images; the model trains on pairs among the other
  folds' images and is scored, after every epoch, on pairs among the held-out fold's images. The lever's
  selection score is the signed mean rho over subjects (`rho_mean`, chance level 0) of all folds of both sets
  at the epoch count the one-standard-error rule picks on them (`selection.choose_epochs`). No pair between
  the two training sets is ever scored.
- report (held out from the choice): cross-set validation, fit on 92 and score 118 after every epoch, and
  back; each direction is reported at the epoch count its own training set's folds chose.

Every lever runs with the `quick` preset unless overridden. Results go to OUT/levers.jsonl, one line per lever
and target as it finishes; `--summarize` turns that file into the README's markdown table.

    python benchmarks/levers.py --targets IT --levers base,prior_layer --out runs/levers
    python benchmarks/levers.py --summarize runs/levers/levers.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from siamrdm.io.data import TARGET_NAMES, load_algonauts_set
from siamrdm.rdm.splits import cross_set_splits, fold_splits
from siamrdm.train import config_from_preset
from siamrdm.train.selection import choose_epochs, fold_curve, validation_curves

# name -> (TrainConfig overrides, seeds). "base" is the quick preset as it was before these levers (no prior).
LEVERS: dict[str, tuple[dict, tuple[int, ...]]] = {
    "base": ({"prior": "none"}, (0,)),
    "seeds3": ({"prior": "none"}, (0, 1, 2)),
    "tta": ({"prior": "none", "tta": True}, (0,)),
    "head_pairwise": ({"prior": "none", "head": "pairwise"}, (0,)),
    "rescale_rank": ({"prior": "none", "rescale": "rank"}, (0,)),
    "weight_decay_0.3": ({"prior": "none", "weight_decay": 0.3}, (0,)),
    "prior_layer": ({"prior": "layer"}, (0,)),
    "prior_nnls": ({"prior": "nnls"}, (0,)),
    "prior_layer_lr3e-4": ({"prior": "layer", "lr": 3e-4}, (0,)),
    "prior_layer_seeds3": ({"prior": "layer"}, (0, 1, 2)),
    "prior_layer_tta": ({"prior": "layer", "tta": True}, (0,)),
    "prior_layer_tta_seeds3": ({"prior": "layer", "tta": True}, (0, 1, 2)),
    "prior_nnls_seeds3": ({"prior": "nnls"}, (0, 1, 2)),
    "prior_nnls_bound0.02": ({"prior": "nnls", "correction_bound": 0.02}, (0,)),
    "prior_nnls_bound0.05": ({"prior": "nnls", "correction_bound": 0.05}, (0,)),
    "prior_nnls_bound0.1": ({"prior": "nnls", "correction_bound": 0.1}, (0,)),
    "prior_layer_bound0.05": ({"prior": "layer", "correction_bound": 0.05}, (0,)),
    "prior_nnls_bound0.05_seeds3": ({"prior": "nnls", "correction_bound": 0.05}, (0, 1, 2)),
    "prior_nnls_blocks5": ({"prior": "nnls", "stage": "blocks5"}, (0,)),
    # Multi-target: the scored target trained beside an auxiliary one (one body and head, two outputs).
    "prior_nnls_aux_meg_late": ({"prior": "nnls", "aux_targets": ("MEG_late",)}, (0,)),
    "prior_nnls_aux_it": ({"prior": "nnls", "aux_targets": ("IT",)}, (0,)),
    # A loss that, like the metric, ignores scale and offset: 1 - Pearson r of the pair vector.
    "corr": ({"loss": "correlation"}, (0,)),
    "prior_nnls_corr": ({"prior": "nnls", "loss": "correlation"}, (0,)),
    "prior_layer_corr": ({"prior": "layer", "loss": "correlation"}, (0,)),
    # Larger bodies (the `bodies` extra): Lite2 at its native 260 px, for the head's features and the prior.
    "prior_nnls_lite2": ({"prior": "nnls", "backbone": "efficientnet_lite2", "image_size": 260}, (0,)),
    "prior_layer_lite2": ({"prior": "layer", "backbone": "efficientnet_lite2", "image_size": 260}, (0,)),
}


def run_lever(name: str, target: str, sets: dict, folds: int, epochs: int | None, device: str) -> dict:
    overrides, seeds = LEVERS[name]
    overrides = dict(overrides)
    aux = tuple(t for t in overrides.pop("aux_targets", ()) if t != target)
    config = config_from_preset("quick", targets=(target, *aux), device=device, **overrides)
    if epochs:
        config = replace(config, frozen_epochs=epochs)
    start = time.perf_counter()
    splits = {}
    for dataset in sets.values():
        splits.update(fold_splits(dataset, folds, seed=0))
    fold = validation_curves(config, splits, seeds, progress=False)
    by_set = {s: [c for label, c in fold.items() if label.startswith(f"{s} fold")] for s in sets}
    final, per_set = choose_epochs(by_set)
    pooled = fold_curve(list(fold.values()))
    chosen = next(row for row in pooled if row["epoch"] == final)
    cross = validation_curves(config, cross_set_splits(sets), seeds, progress=False)
    reported = {d: next(r for r in c if r["epoch"] == per_set[d.split("->")[0]]) for d, c in cross.items()}
    return {
        "lever": name, "target": target, "overrides": overrides, "seeds": list(seeds), "folds": folds,
        "epochs": config.epochs, "fold_epochs": {"final": final, **per_set},
        "fold_rho": chosen["rho_mean"], "fold_rho_se": chosen["rho_se"],
        "fold_rho_by_set": {s: [round(r["rho_mean"], 4) for r in fold_curve(c)] for s, c in by_set.items()},
        "cross_pct": {d: r["pct_nc"] for d, r in reported.items()},
        "cross_rho": {d: r["rho_mean"] for d, r in reported.items()},
        "cross_mean": float(np.mean([r["pct_nc"] for r in reported.values()])),
        "cross_curves": {d: [round(r["pct_nc"], 2) for r in c] for d, c in cross.items()},
        "cross_rho_curves": {d: [round(r["rho_mean"], 4) for r in c] for d, c in cross.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }


def _pct(value: float | None) -> str:
    """A percent to one decimal; 'collapsed' where a model's RDM went constant (NaN before scoring gave it 0)."""
    return "collapsed" if value is None or not np.isfinite(value) else f"{value:.1f}"


def summarize(path: Path) -> str:
    """The markdown table: per lever and target, the fold score it was chosen on (mean rho +- its standard error,
    at the fold-chosen epochs) and the held-out cross-set scores (percent of the ceiling), each direction at its
    set's choice."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    targets = [t for t in TARGET_NAMES if any(r["target"] == t for r in rows)]
    levers = list(dict.fromkeys(r["lever"] for r in rows))
    by = {(r["lever"], r["target"]): r for r in rows}
    head = ["lever"] + [f"{t} {col}" for t in targets for col in ("folds rho", "92->118", "118->92", "mean")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lever in levers:
        cells = [lever]
        for t in targets:
            r = by.get((lever, t))
            if r is None:
                cells += ["-"] * 4
                continue
            h = r["cross_pct"]
            cells += [f"{r['fold_rho']:.3f} ± {r['fold_rho_se']:.3f}", _pct(h["92->118"]), _pct(h["118->92"]),
                      _pct(r["cross_mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("SIAMRDM_DATA", "../shared/algonauts2019"))
    parser.add_argument("--targets", default=",".join(TARGET_NAMES))
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="frozen epochs (default: the quick preset's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/levers"))
    parser.add_argument("--summarize", help="print the markdown table of a levers.jsonl and exit")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(Path(args.summarize)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = args.targets.split(",")
    sets = {name: load_algonauts_set(args.data, name, TARGET_NAMES) for name in ("92", "118")}
    for target in targets:
        for lever in args.levers.split(","):
            record = run_lever(lever, target, sets, args.folds, args.epochs, args.device)
            with open(out / "levers.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            h, e = record["cross_pct"], record["fold_epochs"]
            print(f"{target:<10} {lever:<24} folds rho {record['fold_rho']:.3f} "
                  f"(epochs 92: {e['92']}, 118: {e['118']}, both: {e['final']})  "
                  f"cross {h['92->118']:5.1f} / {h['118->92']:5.1f} (mean {record['cross_mean']:5.1f})  "
                  f"{record['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
