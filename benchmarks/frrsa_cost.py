"""FR-RSA's cost (model.frrsa): time and peak memory of one fit (inner folds, penalties, stage sets) on synthetic
features, for N images and p features per stage.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/frrsa_cost.py [--sizes 210,1000,3000] [--features 1280]

Prints one line per size: the normal equations alone, one ridge path, the whole fit (two stages of p/2 features and
both together, 3 inner folds, 6 penalties) and its peak traced memory (tracemalloc: numpy's arrays), beside what
the pairs x features matrix would take in float64.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from siamrdm.model import frrsa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="210,1000,3000", help="numbers of images (comma-separated)")
    parser.add_argument("--features", type=int, default=1280, help="features in all (two stages of half each)")
    args = parser.parse_args()
    p = args.features
    rng = np.random.default_rng(0)
    print(f"{'images':>7} {'features':>8} {'equations_s':>11} {'path_s':>7} {'fit_s':>7} {'peak_MiB':>9} "
          f"{'pairs_matrix_MiB':>16}")
    for n in (int(v) for v in args.sizes.split(",")):
        x = rng.normal(size=(n, p))
        w = np.where(rng.random(p) < 0.05, rng.random(p), 0.0)
        u = (x * x) @ w
        clean = u[:, None] + u[None, :] - 2 * (x * w) @ x.T
        target = clean + rng.normal(scale=clean.std(), size=clean.shape)
        target = (target + target.T) / 2
        np.fill_diagonal(target, 0.0)
        start = time.perf_counter()
        eq = frrsa.normal_equations(x, target)
        equations = time.perf_counter() - start
        start = time.perf_counter()
        frrsa.ridge_path(eq)
        path = time.perf_counter() - start
        features = {"a": x[:, : p // 2], "b": x[:, p // 2 :]}
        del eq, clean, u
        tracemalloc.start()
        start = time.perf_counter()
        fit = frrsa.fit_frrsa(features, target)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        pairs = n * (n - 1) // 2 * p * 8 / 2**20
        print(f"{n:>7} {p:>8} {equations:>11.2f} {path:>7.2f} {seconds:>7.2f} {peak:>9.0f} {pairs:>16.0f}"
              f"   (chose {fit.label}, penalty {fit.penalty:g})")


if __name__ == "__main__":
    main()
