"""Which levers make the Siamese network predict new images in new people and another study: the lever table.

For every lever (TrainConfig overrides of the `quick` preset, or a seed ensemble) and target, three checks:

- folds (tuned: the rule below chooses on them): each of the 92 and 118 sets is cut into 3 image folds and
  its subjects into two halves. One model per fold is trained on the other folds' images, on the first
  half's mean RDM, and scored after every epoch on the held-out fold's images twice: against the first half's
  subjects ("same people") and against the second half's ("new people"). The statistic is the signed mean rho
  over subjects of the 6 folds at the epoch count the one-standard-error rule (with the validated gain) picks
  on that column: the statistic the lever rule was stated with, and less optimistic than reading the best
  epoch of the very curve it is chosen on.
- joint folds (only for levers that change a fit on both sets, `set_weights`): both sets' fold-k training
  images in one fit, as the final fit trains, scored on each held-out fold.
- across sets (held out: never used to choose): fit on all of 92 (all subjects), score 118 after every epoch,
  and back; each direction at the epoch count its training set's new-people folds chose (and, for
  comparison, the count its same-people folds chose). The best epoch of each cross-set
  curve is recorded too, to show whether fits on a whole set want more epochs than fits on two thirds of one.
- another study (held out; IT only, where `../shared/kriegeskorte2008` lies beside the data): the same fits'
  predictions of the 92 set's images scored against that study's subjects, on the 92 set's held-out folds and
  in the 118 -> 92 direction, each at the epoch count its within-study column reads, beside the prior alone
  (epoch 0) on the same images.

Results go to OUT/levers.jsonl, one line per lever and target as it finishes; `--summarize` prints the table.

    OMP_NUM_THREADS=1 python benchmarks/levers.py --targets EVC,IT --out runs/levers
    python benchmarks/levers.py --summarize runs/levers/levers.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from cells import append_record  # benchmarks/, beside this script

from siamrdm.io.datasets import TARGET_NAMES, BrainDataset, load_algonauts_set
from siamrdm.io.tables import fmt, number
from siamrdm.pipelines.external import ExternalRDMs, bind_default, bind_to_sets
from siamrdm.rdm.splits import cross_set_splits, fold_splits, subject_fold_splits
from siamrdm.train import config_from_preset
from siamrdm.train.selection import SELECTION_FOLDS, choose_epochs, ensemble_curves, fold_curve, one_se_epoch

# name -> (overrides of the quick preset, seeds, whether a fit on both sets shows the lever: joint folds)
LEVERS: dict[str, tuple[dict, tuple[int, ...], bool]] = {
    "default": ({}, (0,), True),
    "per_image_removed": ({"per_image": "remove"}, (0,), False),
    "shrinkage_0.5": ({"shrinkage": 0.5}, (0,), False),
    "head_average_0.9": ({"head_average": 0.9}, (0,), False),
    "reliability_weights": ({"set_weights": "reliability"}, (0,), True),
    "seeds3": ({}, (0, 1, 2), False),
    "crop_0.35": ({"crop_scale": (0.35, 1.0)}, (0,), False),
    "views_8": ({"augment_views": 8}, (0,), False),
    "ranks_target": ({"group_target": "ranks"}, (0,), True),
    "tta": ({"tta": True}, (0,), False),
    # The body's top stages trained after the quick preset's 60 frozen epochs (issue 36): 20 unfrozen epochs of the
    # top K stages on the cached output of the stage below (one-cycle schedule over those 20, the body at 1/10 the
    # head's rate), so a curve has 80 epochs and the rule may pick any of them.
    "train_stages_1": ({"train_stages": 1, "unfrozen_epochs": 20}, (0,), False),
    "train_stages_2": ({"train_stages": 2, "unfrozen_epochs": 20}, (0,), False),
    # the whole body trained for those 20 epochs, from each epoch's augmented pixels (on the 2-core CPU only at a
    # reduced image size: --image-size 128)
    "train_stages_all": ({"train_stages": "all", "unfrozen_epochs": 20}, (0,), False),
}


def one_target(dataset: BrainDataset, target: str) -> BrainDataset:
    return BrainDataset(dataset.name, dataset.images, {target: dataset.targets[target]}, dataset.official)


def at_epoch(curve: list[dict], epoch: int) -> dict:
    return next(row for row in curve if row["epoch"] == epoch)


def other_studies(data: str, sets: dict[str, BrainDataset]) -> dict[str, ExternalRDMs]:
    """target -> another study's RDMs bound to the set whose images it holds (Kriegeskorte et al. 2008 for IT,
    when it lies beside the data root)."""
    found = bind_default([], Path(data), TARGET_NAMES)
    return {e.target: e for e in bind_to_sets(found, {s: d.images.names for s, d in sets.items()})}


def as_other_study(held: BrainDataset, other: ExternalRDMs | None) -> list[BrainDataset]:
    """The held-out images with the other study's subjects as their target ([] where it lacks one of them)."""
    subjects = other.covering(held.images.names) if other is not None else None
    if subjects is None:
        return []
    return [BrainDataset(f"{held.name} @ {other.label}", held.images, {other.target: subjects})]


def other_entry(curve: list[dict], epochs: int) -> dict:
    """The other study's signed rho at the epoch count its within-study column reads, and the prior's (epoch 0)."""
    row, prior = at_epoch(curve, epochs), at_epoch(curve, 0)
    return {"epochs": epochs, "rho": row["rho_mean"], "se": row["rho_se"], "prior_rho": prior["rho_mean"],
            "prior_se": prior["rho_se"]}


def run_lever(name: str, target: str, sets: dict[str, BrainDataset], device: str,
              other: ExternalRDMs | None = None, **settings) -> dict:
    """One lever on one target: the folds, the joint folds where the lever needs them, the cross-set curves, and
    `other` study's check on the images it holds."""
    overrides, seeds, joint = LEVERS[name]
    config = config_from_preset("quick", targets=(target,), device=device, **{**overrides, **settings})
    sets = {s: one_target(d, target) for s, d in sets.items()}
    start = time.perf_counter()
    same, new, other_folds = {}, {}, {}
    for dataset in sets.values():
        for label, (train, held_same, held_new) in subject_fold_splits(dataset, SELECTION_FOLDS).items():
            extra = as_other_study(held_same, other)
            curves = ensemble_curves(config, [train], [held_same, held_new, *extra], seeds)
            same[label], new[label] = curves[:2]
            if extra:
                other_folds.setdefault(dataset.name, []).append(curves[2])
    by_set = {column: {s: [c for label, c in curves.items() if label.startswith(f"{s} fold")] for s in sets}
              for column, curves in (("same", same), ("new", new))}
    folds, per_set = {}, {}
    for column, curves in by_set.items():
        pooled = fold_curve([c for curves_of_set in curves.values() for c in curves_of_set])
        epochs = one_se_epoch(pooled)
        row = at_epoch(pooled, epochs)
        per_set[column] = choose_epochs(curves)  # each whole set's count, as the challenge reads its cross-set rows
        folds[column] = {"rho": row["rho_mean"], "se": row["rho_se"], "epochs": epochs,
                         "epochs_by_set": per_set[column]}
    record = {"lever": name, "target": target, "overrides": overrides, "seeds": list(seeds),
              "folds_same": folds["same"], "folds_new": folds["new"]}
    if joint:
        fits = {s: fold_splits(d, SELECTION_FOLDS) for s, d in sets.items()}
        joint_curves = []
        for k in range(SELECTION_FOLDS):
            pairs = [list(fits[s].values())[k] for s in sets]
            joint_curves += ensemble_curves(config, [p[0] for p in pairs], [p[1] for p in pairs], seeds)
        pooled = fold_curve(joint_curves)
        epoch = one_se_epoch(pooled)
        record["joint_folds"] = {"rho": at_epoch(pooled, epoch)["rho_mean"], "se": at_epoch(pooled, epoch)["rho_se"],
                                 "epochs": epoch}
    cross, other_cross = {}, {}
    for direction, (a, b) in cross_set_splits(sets).items():
        extra = as_other_study(b, other)
        curves = ensemble_curves(config, [a], [b, *extra], seeds)
        cross[direction] = curves[0]
        if extra:
            other_cross[direction] = curves[1]
    if other_folds or other_cross:
        record["other_study"] = {"label": other.label}
        for set_name, curves in other_folds.items():
            record["other_study"][f"{set_name} folds"] = other_entry(fold_curve(curves), per_set["new"][set_name])
        for direction, curve in other_cross.items():
            record["other_study"][direction] = other_entry(curve, per_set["new"][direction.split("->")[0]])
    record["cross"] = {}
    for direction, curve in cross.items():
        source = direction.split("->")[0]
        entry = {}
        for column in ("new", "same"):
            row = at_epoch(curve, per_set[column][source])
            entry[column] = {"epochs": row["epoch"], "pct_nc": row["pct_nc"], "rho": row["rho_mean"],
                             "se": row["rho_se"]}
        best = max(curve, key=lambda r: r["rho_mean"])
        entry["best_epoch"], entry["best_rho"] = best["epoch"], best["rho_mean"]
        entry["rho_curve"] = [round(r["rho_mean"], 4) for r in curve]
        record["cross"][direction] = entry
    record["cross_mean_pct"] = float(np.mean([e["new"]["pct_nc"] for e in record["cross"].values()]))
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def other_cell(other: dict | None) -> str:
    """The other study's signed rho (and the prior's) on the held-out folds and in the 118 -> 92 direction."""
    if not other:
        return "-"
    cells = [f"{fmt(e['rho'], '+.3f')} ({fmt(e['prior_rho'], '+.3f')})" for k, e in other.items() if k != "label"]
    return " / ".join(cells)


def fold_cell(folds: dict) -> str:
    """'rho ± se (epochs)' of a folds column, '-' for a value the log holds as null."""
    return f"{fmt(folds['rho'], '.3f')} ± {fmt(folds['se'], '.3f')} ({folds['epochs']})"


def summarize(path: str) -> str:
    """The lever table: per target and lever, the folds' signed mean rho (new people: the rule's column; same
    people beside it), the joint folds where measured, and the held-out cross-set % of the ceiling and rho. A value
    the log holds as null (a NaN when it was measured) is shown as '-'."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    head = ("| target | lever | folds, new people: rho ± se (epochs) | folds, same people | joint folds | "
            "92->118 % (rho) | 118->92 % (rho) | cross mean % | cross, same-people epochs: mean % | "
            "cross best epochs (92->118 / 118->92) | other study: rho (prior), folds / 118->92 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: (TARGET_NAMES.index(r["target"]), list(LEVERS).index(r["lever"])
                                         if r["lever"] in LEVERS else 99)):
        fn, fs, c = r["folds_new"], r["folds_same"], r["cross"]
        joint = r.get("joint_folds")
        same = [number(e["same"]["pct_nc"]) for e in c.values()]
        same_mean = None if None in same else np.mean(same)
        directions = [f"{fmt(c[d]['new']['pct_nc'], '.1f')} ({fmt(c[d]['new']['rho'], '+.3f')})"
                      for d in ("92->118", "118->92")]
        lines.append(
            f"| {r['target']} | {r['lever']} | {fold_cell(fn)} | {fold_cell(fs)} | "
            + (fold_cell(joint) if joint else "-")
            + " | " + " | ".join(directions) + f" | {fmt(r['cross_mean_pct'], '.1f')} | {fmt(same_mean, '.1f')} | "
            f"{c['92->118']['best_epoch']} / {c['118->92']['best_epoch']} | {other_cell(r.get('other_study'))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("SIAMRDM_DATA", "../shared/algonauts2019"))
    parser.add_argument("--targets", default=",".join(TARGET_NAMES))
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, help="frozen epochs (default: the quick preset's); a smoke test's")
    parser.add_argument("--image-size", type=int, help="image size (default: the preset's); a smoke test's")
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/levers"))
    parser.add_argument("--summarize", help="print the markdown table of a levers.jsonl and exit")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    os.makedirs(args.out, exist_ok=True)
    sets = {name: load_algonauts_set(args.data, name, TARGET_NAMES) for name in ("92", "118")}
    others = other_studies(args.data, sets)
    for target in args.targets.split(","):
        for lever in args.levers.split(","):
            record = run_lever(lever, target, sets, args.device, others.get(target), frozen_epochs=args.epochs,
                               image_size=args.image_size)
            append_record(os.path.join(args.out, "levers.jsonl"), record)
            fn, c = record["folds_new"], record["cross"]
            print(f"{target:<10} {lever:<20} new people {fn['rho']:.3f} ± {fn['se']:.3f} ({fn['epochs']} ep)  "
                  f"same {record['folds_same']['rho']:.3f}  cross {c['92->118']['new']['pct_nc']:5.1f} / "
                  f"{c['118->92']['new']['pct_nc']:5.1f}  {record['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
