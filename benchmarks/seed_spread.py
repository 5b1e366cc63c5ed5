"""Run-to-run spread of the challenge's validation table: several runs (one seed each), mean ± SE per cell.

A single run's table moves by several points with the seed (the heads' initialisation and the crops drawn), so
the figures RESULTS.md and the README read are the mean over separate runs with its standard error, not one run.

    for s in 0 1 2; do siamrdm challenge --data ../shared/algonauts2019 --seeds $s --out runs/challenge-s$s; done
    python benchmarks/seed_spread.py runs/challenge-s0 runs/challenge-s1 runs/challenge-s2
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

DIRECTIONS = ("92->118", "118->92")


def read_rows(run: Path) -> list[dict]:
    with open(run / "validation.csv", newline="") as f:
        return list(csv.DictReader(f))


def mean_se(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    se = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else float("nan")
    return float(array.mean()), se


def cell(values: list[float], spec: str = ".1f") -> str:
    mean, se = mean_se(values)
    return f"{mean:{spec}}" if not math.isfinite(se) else f"{mean:{spec}} ± {se:{spec}}"


def spread_table(runs: list[Path], method: str = "siamese") -> str:
    """Per target: each direction's % of the ceiling and signed rho, the cross-set mean, the chance level's 95th
    percentile, the epochs each run chose and whether every run's row beats chance, as mean ± SE over runs."""
    tables = [read_rows(run) for run in runs]
    seeds = [json.loads((run / "settings.json").read_text())["seeds"] for run in runs]
    fits = [json.loads((run / "settings.json").read_text())["fits"] for run in runs]
    targets = list(dict.fromkeys(r["target"] for r in tables[0] if r["method"] == method))
    lines = [f"{len(runs)} runs, seeds {', '.join('+'.join(map(str, s)) for s in seeds)}; mean ± SE over the runs",
             "", "| target | 92 -> 118 | 118 -> 92 | mean | rho 92 -> 118 | rho 118 -> 92 | chance 95th | "
             "epochs (92 / 118 / final), per run | every row beats chance |", "|---|---|---|---|---|---|---|---|---|"]
    for target in targets:
        rows = {d: [next(r for r in t if r["method"] == method and r["target"] == target and r["direction"] == d)
                    for t in tables] for d in DIRECTIONS}
        pct = {d: [float(r["pct_nc"]) for r in rows[d]] for d in DIRECTIONS}
        means = [np.mean([pct[d][k] for d in DIRECTIONS]) for k in range(len(runs))]
        rho = {d: [float(r["rho_mean"]) for r in rows[d]] for d in DIRECTIONS}
        chance = " / ".join(f"{np.mean([float(r['chance_pct_95']) for r in rows[d]]):.1f}" for d in DIRECTIONS)
        epochs = ", ".join(f"{rows['92->118'][k]['epochs']} / {rows['118->92'][k]['epochs']} / "
                           f"{fits[k][target]['epochs']}" for k in range(len(runs)))
        beats = all(r["beats_chance"] == "True" for d in DIRECTIONS for r in rows[d])
        lines.append(f"| {target} | {cell(pct['92->118'])} | {cell(pct['118->92'])} | {cell(means)} | "
                     f"{cell(rho['92->118'], '.3f')} | {cell(rho['118->92'], '.3f')} | {chance} | {epochs} | "
                     f"{'yes' if beats else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="challenge output folders, one seed each")
    parser.add_argument("--method", default="siamese")
    args = parser.parse_args()
    missing = [str(r) for r in args.runs if not (r / "validation.csv").is_file() or not (r / "settings.json").is_file()]
    if missing:
        print(f"seed_spread: error: no validation.csv and settings.json in {', '.join(missing)}", file=sys.stderr)
        sys.exit(2)
    print(spread_table(args.runs, args.method))


if __name__ == "__main__":
    main()
