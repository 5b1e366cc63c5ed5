"""Scoring at scale: time and peak memory of the score (with its computed noise ceilings) and of the noise ceiling.

Synthetic, seeded data: a known signal (the upper triangle of a random RDM); each subject is the signal plus
Gaussian noise, from close to it to far from it; the model is the signal plus its own noise. Cases:

- `1000x15`, `3000x8`: square float64 RDMs in .npz files, as `siamrdm score` and `siamrdm noise-ceiling` read
  them: load + validate (`data.load_rdm_dict`), `siamrdm.score_rdm` (score only), `siamrdm.score_submission`
  (what `score` prints: score, p-values and the computed upper and lower ceilings, these sizes having no
  official ceiling) and `siamrdm.noise_ceiling` (what `noise-ceiling` prints).
- `10000x8` (with `--large`): 49,995,000 pairs per subject, as condensed upper triangles: the subjects in a
  float32 .npy of shape (8, 49995000) opened with np.load(mmap_mode='r'), the model a float64 .npy;
  `siamrdm.score_condensed` with ceiling=False (score only), then with both ceilings in the same pass, and
  `siamrdm.noise_ceilings(condensed=True)`.
  Older code has no condensed entry point, and square float64 RDMs of this size take 6.4 GB before any work.

The data are written once to --workdir (reused on later runs) by this process; each case is then timed in a
fresh process, so its peak memory is its own. Wall and CPU seconds are both printed: on shared cores the
wall time includes waiting for them. Memory: peak RSS (getrusage, which counts the memory-mapped file's
pages once touched) and the peak of anonymous memory (RssAnon sampled every 10 ms: the arrays the code makes).
The printed r2 and ceilings let two checkouts be compared: run it with PYTHONPATH pointing at each.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_scoring.py [--large]
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_scoring.py --cases 10000x8 --threads 2
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_scoring.py --ranker 49995000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

CASES = {"1000x15": (1000, 15), "3000x8": (3000, 8), "10000x8": (10000, 8)}
LARGE = ("10000x8",)


def _paths(workdir: Path, case: str) -> dict[str, Path]:
    if case in LARGE:
        return {"model": workdir / f"{case}_model.npy", "subjects": workdir / f"{case}_subjects.npy"}
    return {"model": workdir / f"{case}_model.npz", "subjects": workdir / f"{case}_subjects.npz"}


def make_data(workdir: Path, case: str, seed: int = 0) -> dict[str, Path]:
    """Write the case's model and subjects (skipped when the files are there), one subject at a time."""
    n, n_subjects = CASES[case]
    paths = _paths(workdir, case)
    if all(p.is_file() for p in paths.values()):
        return paths
    from siamrdm.rdm import square_rdm

    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    length = n * (n - 1) // 2
    signal = rng.random(length)
    model = signal + rng.normal(scale=0.5, size=length)
    noise = [0.3 * (s + 1) for s in range(n_subjects)]  # subjects from close to the signal to far from it
    if case in LARGE:
        subjects = np.lib.format.open_memmap(paths["subjects"], mode="w+", dtype=np.float32,
                                             shape=(n_subjects, length))
        for s, sd in enumerate(noise):
            subjects[s] = signal + rng.normal(scale=sd, size=length)
        subjects.flush()
        del subjects
        np.save(paths["model"], model)
        return paths
    stack = np.empty((n_subjects, n, n))
    for s, sd in enumerate(noise):
        stack[s] = square_rdm(signal + rng.normal(scale=sd, size=length), n)
    np.savez(paths["subjects"], EVC_RDMs=stack)
    np.savez(paths["model"], EVC_RDMs=square_rdm(model, n))
    return paths


class AnonPeak:
    """The peak of the process's anonymous resident memory (RssAnon), sampled in a thread."""

    def __init__(self, every: float = 0.01):
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))  # kB

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def _condensed_values(scored) -> tuple[float, float, float]:
    """(r2, upper, lower) of what `score_condensed` returned: a ScoreRecord, or in older checkouts the tuple
    (score, (upper, lower))."""
    if isinstance(scored, tuple):
        score, (upper, lower) = scored
        return score.r2, upper, lower
    return scored.r2, scored.noise_ceiling, scored.noise_ceiling_lower


def run_case(workdir: Path, case: str, threads: int = 1) -> dict:
    """Time one case in this process (see the module docstring)."""
    import siamrdm  # its public API: the same names in older checkouts, wherever their modules put them
    from siamrdm.io.rdmfiles import load_rdm_dict

    paths = _paths(workdir, case)
    out: dict = {"case": case, "pairs": CASES[case][0] * (CASES[case][0] - 1) // 2, "subjects": CASES[case][1]}
    with AnonPeak() as anon:
        start = time.perf_counter()
        if case in LARGE:
            if not hasattr(siamrdm, "score_condensed"):
                return {**out, "skipped": "this checkout has no siamrdm.score_condensed"}
            model = np.load(paths["model"], mmap_mode="r", allow_pickle=False)
            subjects = np.load(paths["subjects"], mmap_mode="r", allow_pickle=False)
            out["load_s"] = time.perf_counter() - start
            start, cpu = time.perf_counter(), time.process_time()
            siamrdm.score_condensed(model, subjects, ceiling=False, threads=threads)
            out["score_only_s"], out["score_only_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
            start, cpu = time.perf_counter(), time.process_time()
            scored = siamrdm.score_condensed(model, subjects, threads=threads)
            out["score_s"], out["score_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
            out["r2"], out["upper"], out["lower"] = _condensed_values(scored)
            start, cpu = time.perf_counter(), time.process_time()
            ceiling = siamrdm.noise_ceilings(subjects, condensed=True, threads=threads)
            out["noise_ceiling"] = [ceiling.upper, ceiling.lower]
            out["noise_ceiling_s"], out["noise_ceiling_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
        else:
            targets = load_rdm_dict(paths["subjects"])
            submission = load_rdm_dict(paths["model"], n_images=CASES[case][0])
            out["load_s"] = time.perf_counter() - start
            start, cpu = time.perf_counter(), time.process_time()
            siamrdm.score_rdm(submission["EVC_RDMs"], targets["EVC_RDMs"])
            out["score_only_s"], out["score_only_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
            start, cpu = time.perf_counter(), time.process_time()
            row = siamrdm.score_submission(submission, targets).targets["EVC_RDMs"]
            out["score_s"], out["score_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
            out["r2"], out["upper"], out["lower"] = row.r2, row.noise_ceiling, row.noise_ceiling_lower
            start, cpu = time.perf_counter(), time.process_time()
            ceiling = siamrdm.noise_ceilings(targets["EVC_RDMs"])
            out["noise_ceiling"] = [ceiling.upper, ceiling.lower]
            out["noise_ceiling_s"], out["noise_ceiling_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_anon_mb"] = anon.peak / 1024
    return out


def bench_ranker(n: int) -> None:
    """CPU seconds of one reused `rdm.Ranker` on n uniform values, float64 and float32 (second call of each:
    the first one touches the working arrays), against a plain np.sort of the same number of 64-bit words and
    scipy's rankdata."""
    from siamrdm.rdm import Ranker

    x = np.random.default_rng(0).random(n)
    ranker, out = Ranker(n), np.empty(n)
    for values in (x, x.astype(np.float32)):
        for call in (1, 2):
            cpu = time.process_time()
            ranker(values, out)
            print(f"Ranker {values.dtype} n={n:,} call {call}: {time.process_time() - cpu:.2f} s CPU")
    words = x.view(np.uint64).copy()
    cpu = time.process_time()
    words.sort()
    print(f"np.sort of {n:,} uint64: {time.process_time() - cpu:.2f} s CPU")
    from scipy.stats import rankdata

    cpu = time.process_time()
    rankdata(x)
    print(f"scipy.stats.rankdata float64 (what scoring used before): {time.process_time() - cpu:.2f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also the 10000x8 case (condensed, memory-mapped)")
    parser.add_argument("--cases", help="comma-separated cases (default: 1000x15,3000x8; 10000x8 too with --large)")
    parser.add_argument("--workdir", default="/tmp/siamrdm_bench_scoring", help="where the synthetic data go")
    parser.add_argument("--threads", type=int, default=1, help="threads for the condensed case (default: 1)")
    parser.add_argument("--ranker", type=int, metavar="N", help="only time rdm.Ranker on N values")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: time one case in this process
    args = parser.parse_args()
    if args.ranker:
        bench_ranker(args.ranker)
        return
    workdir = Path(args.workdir)
    if args.case:
        print(json.dumps(run_case(workdir, args.case, args.threads)))
        return
    cases = args.cases.split(",") if args.cases else ["1000x15", "3000x8", *(LARGE if args.large else ())]
    import siamrdm

    print(f"# siamrdm from {Path(siamrdm.__file__).parent}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"threads={args.threads} (condensed case)")
    print("| case | pairs per subject | load s | score only s (CPU s) | score + ceilings s (CPU s) "
          "| noise ceiling s (CPU s) | peak RSS MB | peak anon MB | r2 | upper | lower |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        make_data(workdir, case)
        done = subprocess.run([sys.executable, __file__, "--workdir", str(workdir), "--case", case,
                               "--threads", str(args.threads)],
                              capture_output=True, text=True, env=os.environ)
        if done.returncode != 0:
            print(f"| {case} | failed: {done.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        if "skipped" in r:
            print(f"| {case} | {r['pairs']:,} | skipped: {r['skipped']} |")
            continue
        print(f"| {case} | {r['pairs']:,} | {r['load_s']:.2f} | {r['score_only_s']:.2f} ({r['score_only_cpu_s']:.2f}) "
              f"| {r['score_s']:.2f} ({r['score_cpu_s']:.2f}) "
              f"| {r['noise_ceiling_s']:.2f} ({r['noise_ceiling_cpu_s']:.2f}) "
              f"| {r['peak_rss_mb']:.0f} | {r['peak_anon_mb']:.0f} | {r['r2']:.12f} | {r['upper']:.12f} "
              f"| {r['lower']:.12f} |", flush=True)


if __name__ == "__main__":
    main()
