"""Which part of an RDM a method's held-out predictions get right, inside the study and in another one.

    python benchmarks/other_study.py runs/os-keep-f3 runs/os-remove-f3 [--markdown]

Reads `siamrdm evaluate --images ... --folds K --external FILE` run folders (their evaluation.json, settings and
predictions.npz) and scores every held-out prediction again, per method and fold, as a whole and by its pair
structure alone (`siamrdm.rdm.parts.pair_structure`: each RDM less its per-image part a_i + a_j), against the
study's own subjects of the held-out images and against each other study's. Prints, per run and method, the mean
over folds of the signed mean rho over subjects, ± the SE over folds. Nothing is fitted here; the figures are those
of the predictions the runs wrote (RESULTS.md, "Other studies").
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from siamrdm.io.rdmfiles import load_rdms
from siamrdm.rdm.compare import compare_rdms
from siamrdm.rdm.parts import pair_structure


def _mean_se(values: list[float]) -> str:
    mean = float(np.mean(values))
    se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return f"{mean:+.3f} ± {se:.3f}"


def run_parts(run: Path) -> dict[str, dict[str, list[float]]]:
    """method -> column -> per-fold signed mean rho, for the columns 'within', 'within pairs', and '<study>',
    '<study> pairs' for each other study."""
    saved = json.loads((run / "evaluation.json").read_text())
    settings = saved["settings"]
    subjects = load_rdms(settings["rdms"], settings["key"])
    order = (run / "images.txt").read_text().splitlines()
    others = {e["label"]: load_rdms(e["file"], e["key"]) for e in settings.get("external") or []}
    predictions = np.load(run / "predictions.npz")
    results: dict[str, dict[str, list[float]]] = {}
    for name in predictions.files:
        method, rest = name.split("/", 1)
        target, fold = rest.rsplit("/", 1)
        if " @ " in target:  # the row as used for another study (the prior where it was kept): scored below
            continue
        index = np.array([order.index(n) for n in saved["folds"][fold]])
        predicted = predictions[name]
        columns = results.setdefault(method, {})
        for label, rdms in (("within", subjects), *others.items()):
            held = rdms[..., index[:, None], index[None, :]]
            used = predictions.get(f"{method}/{target} @ {label}/{fold}", predicted) if label != "within" else predicted
            columns.setdefault(label, []).append(float(np.mean(compare_rdms(used, held))))
            columns.setdefault(f"{label} pairs", []).append(
                float(np.mean(compare_rdms(pair_structure(used), pair_structure(held)))))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    for run in args.runs:
        results = run_parts(run)
        columns = list(next(iter(results.values())))
        print(f"\n{run} (mean over folds of the signed mean rho ± SE over folds)\n")
        print("| method | " + " | ".join(columns) + " |")
        print("|---" * (len(columns) + 1) + "|")
        for method, values in results.items():
            print(f"| {method} | " + " | ".join(_mean_se(values[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
