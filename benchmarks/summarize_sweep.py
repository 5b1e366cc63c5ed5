"""Summarise cross_set_sweep.py output: per setting, the mean cross-set curve over both directions and seeds.

    python benchmarks/summarize_sweep.py runs/sweep-h200/*/sweep.jsonl

'best' is the peak of the mean curve (the epoch count a challenge run would pick); 'honest' scores each
direction at the epoch where the other direction peaked, so no number saw its own test set.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np


def main(paths: list[str]) -> None:
    runs: dict[tuple, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            c = r["config"]
            key = (c["targets"][0], c["stage"], c["lr"], c["rescale"], c["frozen_epochs"], c["unfrozen_epochs"])
            runs[key][r["direction"]].append(np.array(r["curve"]))
    print("| target | stage | lr | rescale | frozen + unfrozen epochs | seeds | best % NC (epoch) | honest % NC |")
    print("|---|---|---|---|---|---|---|---|")
    for key in sorted(runs):
        curves = runs[key]
        if set(curves) != {"92->118", "118->92"}:
            continue
        a, b = (np.mean(curves[d], axis=0) for d in ("92->118", "118->92"))
        mean = (a + b) / 2
        honest = (a[np.argmax(b)] + b[np.argmax(a)]) / 2
        target, stage, lr, rescale, frozen, unfrozen = key
        print(f"| {target} | {stage} | {lr:g} | {rescale} | {frozen} + {unfrozen} | {len(curves['92->118'])} "
              f"| {mean.max():.1f} ({mean.argmax() + 1}) | {honest:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
