"""An unfrozen epoch's time and peak memory with --train-stages K = 0, 1, 2 and all (issue 36).

What is timed: a fit on both training sets (92 + 118 images, no validation, as the challenge's final fit), the
`quick` preset (EfficientNet-Lite0, stage blocks4, prior layer, 4 cached views) with `unfrozen_epochs` and
`train_stages` set. Each (size, K) runs in a fresh process, so its peak memory (VmHWM: the whole process, setup
included) is its own. Per run: the setup (images, prior, cached views: `Trainer(...)`), one frozen epoch, one
unfrozen warm-up epoch, then `--epochs` timed unfrozen epochs (their median, and each one).

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE SIAMRDM_DATA=../shared/algonauts2019 PYTHONPATH=src \\
        python benchmarks/train_stages.py --sizes 224,128 --out runs/bench/train-stages
    ... python benchmarks/train_stages.py --backbone alexnet --weights random --sizes 224 --stages 1,all ...

Writes OUT/train_stages.jsonl (one line per run, appended as each ends) and prints the markdown table;
`--summarize OUT/train_stages.jsonl` prints the table again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("0", "1", "2", "all")


def one_run(data: str, size: int, stages: str, epochs: int, device: str, backbone: str,
            weights: str | None) -> dict:
    """Time one (size, K) in this process."""
    from siamrdm.io.datasets import TRAINING_SETS, load_algonauts_set
    from siamrdm.train import Trainer, config_from_preset
    from siamrdm.train.loop import peak_rss_mb

    count = stages if stages == "all" else int(stages)
    config = config_from_preset("quick", targets=("EVC",), image_size=size, frozen_epochs=1,
                                unfrozen_epochs=epochs + 1, train_stages=count, device=device, backbone=backbone,
                                weights=weights)
    sets = [load_algonauts_set(data, name, ("EVC",), size) for name in TRAINING_SETS]
    start = time.perf_counter()
    trainer = Trainer(config, sets, progress=False)
    setup_s = time.perf_counter() - start
    rows = [trainer.run_epoch() for _ in range(config.epochs)]
    trainer.settle_losses()
    unfrozen = [row["seconds"] for row in rows if row["phase"] == "unfrozen"][1:]  # after the warm-up epoch
    return {"backbone": backbone, "image_size": size, "train_stages": stages, "images": sum(len(s) for s in sets),
            "setup_s": round(setup_s, 2), "frozen_epoch_s": round(rows[0]["seconds"], 3),
            "unfrozen_epoch_s": round(statistics.median(unfrozen), 3),
            "unfrozen_epochs_s": [round(s, 3) for s in unfrozen], "peak_rss_mb": round(peak_rss_mb()),
            "loss": rows[-1]["loss"], "threads": os.environ.get("OMP_NUM_THREADS"),
            "load_end": round(os.getloadavg()[0], 2)}


def table(rows: list[dict]) -> str:
    """The markdown table of the runs; a value the log holds as null (a NaN when it was measured) is shown as '-'."""
    from siamrdm.io.tables import fmt, number

    lines = ["| body | image size | --train-stages | unfrozen epoch (s) | vs all | frozen epoch (s) | setup (s) | "
             "peak RSS (MB) | load at start / end |", "|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["backbone"], -r["image_size"], STAGES.index(r["train_stages"]))):
        whole = next((r for r in rows if (r["backbone"], r["image_size"], r["train_stages"]) ==
                      (row["backbone"], row["image_size"], "all")), None)
        seconds = number(row["unfrozen_epoch_s"])
        whole_seconds = number(whole["unfrozen_epoch_s"]) if whole else None
        share = fmt(seconds / whole_seconds if seconds is not None and whole_seconds else None, ".2f")
        lines.append(f"| {row['backbone']} | {row['image_size']} | {row['train_stages']} | "
                     f"{fmt(seconds, '.2f')} | {share} | "
                     f"{fmt(row['frozen_epoch_s'], '.2f')} | {fmt(row['setup_s'], '.1f')} | "
                     f"{fmt(row['peak_rss_mb'], '.0f')} | {fmt(row.get('load_start'), 'g')} / "
                     f"{fmt(row['load_end'], 'g')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("SIAMRDM_DATA", "../shared/algonauts2019"))
    p.add_argument("--sizes", default="224,128", help="image sizes, comma-separated")
    p.add_argument("--stages", default=",".join(STAGES), help="--train-stages values, comma-separated")
    p.add_argument("--epochs", type=int, default=2, help="timed unfrozen epochs per run (after one warm-up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", help="the body's weights (default: pretrained; 'random' for AlexNet offline)")
    p.add_argument("--out", default="runs/bench/train-stages")
    p.add_argument("--summarize", help="print the table of a train_stages.jsonl and exit")
    p.add_argument("--one", nargs=2, metavar=("SIZE", "K"), help=argparse.SUPPRESS)  # a child process's run
    args = p.parse_args()
    if args.summarize:
        print(table([json.loads(line) for line in open(args.summarize) if line.strip()]))
        return
    from cells import append_record  # benchmarks/, beside this script

    from siamrdm.io.jsonfiles import strict_json_text

    if args.one:
        print(strict_json_text(one_run(args.data, int(args.one[0]), args.one[1], args.epochs, args.device,
                                       args.backbone, args.weights)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for stages in args.stages.split(","):
            load = round(os.getloadavg()[0], 2)
            weights = ["--weights", args.weights] if args.weights else []
            done = subprocess.run([sys.executable, __file__, "--data", args.data, "--epochs", str(args.epochs),
                                   "--device", args.device, "--backbone", args.backbone, *weights, "--one", str(size),
                                   stages],
                                  capture_output=True, text=True, check=True)
            row = {**json.loads(done.stdout.strip().splitlines()[-1]), "load_start": load}
            rows.append(row)
            append_record(out / "train_stages.jsonl", row)  # a NaN (the loss of a diverged run) as null
            print(f"{args.backbone} {size} px, K={stages}: unfrozen epoch {row['unfrozen_epoch_s']:.2f} s, "
                  f"setup {row['setup_s']:.1f} s, peak {row['peak_rss_mb']} MB", flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
