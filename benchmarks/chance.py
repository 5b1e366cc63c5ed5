"""How much of each target is per-image structure, how reliable it is, and what the official score gives by chance.

Per set and target, from the subjects' RDMs alone (no model is trained):

- chance: the official score (percent of the ceiling) of random RDMs, unstructured (random pair values) and
  made of per-image effects (d(i, j) = a_i + a_j, a ~ N(0, 1)), mean and 95th percentile over `--draws` draws,
  and the mean of their signed mean rho (chance level 0).
- per-image share: Spearman rho between the group-mean RDM and its least-squares fit by per-image effects
  a_i + a_j, and the official percent of the ceiling that this fit scores against the subjects.
- reliability: split-half correlation (Spearman, over images) of the per-image effects of two random halves
  of the subjects (mean of 20 splits), and the lower bound of the noise ceiling (each subject against the
  mean of the others, r^2), beside the upper bound.

    python benchmarks/chance.py                   # 5 min on the 2-core CPU (with other work beside it)
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from scipy.stats import spearmanr

from siamrdm.io.datasets import TARGET_NAMES, load_algonauts_set, target_key
from siamrdm.rdm import upper_tri
from siamrdm.rdm.compare import spearman_rhos
from siamrdm.rdm.core import subject_rdms
from siamrdm.rdm.noise_ceiling import noise_ceilings, reference_ceiling


def per_image_design(n: int) -> np.ndarray:
    """(pairs, n + 1): pair (i, j) loads on images i and j, plus an intercept; pairs in upper-triangle order."""
    rows, cols = np.triu_indices(n, 1)
    design = np.zeros((len(rows), n + 1))
    design[np.arange(len(rows)), rows] = 1
    design[np.arange(len(rows)), cols] = 1
    design[:, n] = 1
    return design


def per_image_effects(rdm: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Least-squares a_i of d(i, j) ~ a_i + a_j + c over the upper triangle."""
    return np.linalg.lstsq(design, upper_tri(rdm), rcond=None)[0][:-1]


def square(vector: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, n))
    out[np.triu_indices(n, 1)] = vector
    return out + out.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("SIAMRDM_DATA", "../shared/algonauts2019"))
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| set | target | random pairs % | random per-image % (95th) | their mean rho | per-image fit rho | "
          "per-image fit % | split-half of a_i | ceiling lower / upper |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("92", "118"):
        dataset = load_algonauts_set(args.data, name, TARGET_NAMES)
        n = len(dataset)
        design = per_image_design(n)
        for target in TARGET_NAMES:
            subjects = subject_rdms(dataset.targets[target])
            flat = subjects.reshape(-1, n, n) if subjects.ndim == 4 else subjects
            ceiling = reference_ceiling(target_key(target, official=True), subjects)
            pct = {"pairs": [], "image": []}
            image_rho = []
            for _ in range(args.draws):
                pairs = square(rng.random(n * (n - 1) // 2), n)
                effects = rng.standard_normal(n)
                image = effects[:, None] + effects[None, :]
                np.fill_diagonal(image, 0)
                pct["pairs"].append(100 * np.mean(spearman_rhos(pairs, subjects) ** 2) / ceiling)
                rho = spearman_rhos(image, subjects)
                pct["image"].append(100 * np.mean(rho**2) / ceiling)
                image_rho.append(np.mean(rho))
            group = flat.mean(axis=0)
            fit = square(design[:, :-1] @ per_image_effects(group, design), n)
            fit_rho = spearmanr(upper_tri(fit), upper_tri(group))[0]
            fit_pct = 100 * np.mean(spearman_rhos(fit, subjects) ** 2) / ceiling
            halves = []
            for _ in range(20):
                order = rng.permutation(len(flat))
                a, b = order[: len(flat) // 2], order[len(flat) // 2 :]
                halves.append(spearmanr(per_image_effects(flat[a].mean(0), design),
                                        per_image_effects(flat[b].mean(0), design))[0])
            ceiling = noise_ceilings(subjects)
            upper, lower = ceiling.upper, ceiling.lower
            print(f"| {name} | {target} | {np.mean(pct['pairs']):.1f} | {np.mean(pct['image']):.1f} "
                  f"({np.percentile(pct['image'], 95):.1f}) | {np.mean(image_rho):+.3f} | {fit_rho:.2f} | "
                  f"{fit_pct:.1f} | {np.mean(halves):.2f} | {lower:.4f} / {upper:.4f} |", flush=True)


if __name__ == "__main__":
    main()
