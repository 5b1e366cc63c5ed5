"""Cross-set design sweep: fit on one training set, score on the other after every epoch.

Used to choose the presets' settings and epoch counts by cross-set validation only (never the 78 test
images). Writes one JSON line per run with the whole validation curve to $OUT/sweep.jsonl (or runs/sweep).

    python benchmarks/cross_set_sweep.py --targets EVC,IT --lrs 1e-3 --epochs 60 [--unfrozen 0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from siamrdm.data import load_algonauts_set
from siamrdm.train import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=os.environ.get("SIAMRDM_DATA", "../shared/algonauts2019"))
    parser.add_argument("--targets", default="EVC,IT,MEG_early,MEG_late")
    parser.add_argument("--lrs", default="1e-3")
    parser.add_argument("--rescales", default="minmax")
    parser.add_argument("--stages", default="blocks5")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--unfrozen", type=int, default=0)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/sweep"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = args.targets.split(",")
    sets = {name: load_algonauts_set(args.data, name, targets) for name in ("92", "118")}
    grid = itertools.product(targets, args.lrs.split(","), args.rescales.split(","), args.stages.split(","),
                             [int(s) for s in args.seeds.split(",")])
    for target, lr, rescale, stage, seed in grid:
        for train_name, val_name in (("92", "118"), ("118", "92")):
            config = TrainConfig(backbone=args.backbone, stage=stage, targets=(target,), lr=float(lr),
                                 rescale=rescale, frozen_epochs=args.epochs, unfrozen_epochs=args.unfrozen,
                                 seed=seed)
            start = time.perf_counter()
            trainer = Trainer(config, [sets[train_name]], [sets[val_name]], progress=False)
            curve = [trainer.run_epoch()["val_pct_nc"] for _ in range(config.epochs)]
            record = {"config": asdict(config), "direction": f"{train_name}->{val_name}", "curve": curve,
                      "seconds": time.perf_counter() - start}
            with open(out / "sweep.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            best = max(range(len(curve)), key=curve.__getitem__)
            print(f"{target} lr={lr} {rescale} {stage} seed={seed} {train_name}->{val_name}: "
                  f"best {curve[best]:.1f} @ {best + 1}, last {curve[-1]:.1f} ({record['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
