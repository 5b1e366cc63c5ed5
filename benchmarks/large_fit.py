"""Mini-batch fit on large image sets (issue 12): epoch time and peak memory at 1,000 / 3,000 / 10,000 images with
the body frozen, and one rank against two (torchrun, gloo) on CPU. The figures in BENCHMARKS.md.

    SIAMRDM_DATA=../shared/algonauts2019 PYTHONPATH=src python benchmarks/large_fit.py

Sets are made once by benchmarks/make_large_set.py (64 px, 2 subjects) into runs/large/N; each fit is the real
command, `siamrdm fit --batch-images 256 --frozen-epochs 1 --val-fraction 0.1`, run under /usr/bin/time -v for the
largest resident set of the process tree; the epoch's seconds and the training process's own peak come from the run's
log.csv. Results: runs/bench/large/results.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from siamrdm.io.files import write_json

ROOT = Path(__file__).resolve().parents[1]


def make_set(n: int, size: int) -> Path:
    out = ROOT / "runs" / "large" / str(n)
    if not (out / "answer.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_large_set.py"), "--images", str(n), "--size",
                        str(size), "--out", str(out)], check=True, env=env(1))
    return out


def env(threads: int) -> dict:
    # Idle OpenMP threads sleep instead of spinning: on shared cores spinning slowed small ops 10x (BENCHMARKS.md)
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads),
            "OMP_WAIT_POLICY": "PASSIVE"}


def fit(data: Path, out: Path, ranks: int, threads: int, workers: int, size: int) -> dict:
    launcher = [sys.executable, "-m", "siamrdm"] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), "-m", "siamrdm"]
    args = ["fit", "--images", str(data / "images.h5"), "--rdms", str(data / "rdms.npy"), "--key", "X",
            "--batch-images", "256", "--val-fraction", "0.1", "--frozen-epochs", "1", "--image-size", str(size),
            "--loader-workers", str(workers), "--device", "cpu", "--quiet", "--overwrite", "--out", str(out)]
    command = ["/usr/bin/time", "-v", *launcher, *args]
    start = time.perf_counter()
    ran = subprocess.run(command, env=env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if ran.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{ran.stderr[-2000:]}")
    with open(out / "seed0" / "log.csv") as f:
        epoch = [row for row in csv.DictReader(f) if row["epoch"] == "1"][0]
    tree_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", ran.stderr).group(1))
    return {"images": json.loads((data / "answer.json").read_text())["images"], "ranks": ranks, "threads": threads,
            "loader_workers": workers, "steps": int(epoch["steps"]), "epoch_s": float(epoch["seconds"]),
            "val_s": float(epoch["val_seconds"]), "wall_s": wall, "val_r2": float(epoch["val_r2"]),
            "rank0_peak_rss_mb": float(epoch["peak_rss_mb"]), "tree_max_rss_mb": tree_kb / 1024,
            "command": " ".join(["OMP_NUM_THREADS=" + str(threads), *launcher[1:], *args]).replace(str(ROOT) + "/", "")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,3000,10000")
    p.add_argument("--scaling-size", type=int, default=3000)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args()
    results = {"machine": subprocess.run(["bash", "-c", "lscpu | grep -E 'Model name|^CPU\\(s\\)'; uptime"],
                                         capture_output=True, text=True).stdout, "frozen": [], "scaling": []}
    runs = ROOT / "runs" / "bench" / "large"
    for n in (int(s) for s in args.sizes.split(",")):
        results["frozen"].append(fit(make_set(n, args.image_size), runs / f"fit-{n}", 1, 1, 1, args.image_size))
        print(json.dumps(results["frozen"][-1]), flush=True)
    data = make_set(args.scaling_size, args.image_size)
    for ranks in (1, 2):
        results["scaling"].append(fit(data, runs / f"ranks-{ranks}", ranks, 1, 0, args.image_size))
        print(json.dumps(results["scaling"][-1]), flush=True)
    runs.mkdir(parents=True, exist_ok=True)
    write_json(runs / "results.json", results, indent=2)
    print("| images | ranks x threads | steps | epoch s | validation s | rank 0 peak RSS MB | "
          "process tree max RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for row in results["frozen"] + results["scaling"]:
        print(f"| {row['images']} | {row['ranks']} x {row['threads']} | {row['steps']} | {row['epoch_s']:.1f} | "
              f"{row['val_s']:.1f} | {row['rank0_peak_rss_mb']:.0f} | {row['tree_max_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
