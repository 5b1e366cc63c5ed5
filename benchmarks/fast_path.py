"""The `paper` preset at the GPU's speed (issue 13): the body's floor, one unfrozen epoch with each lever and all
of them together, and the fast path's cross-set scores against float32 with the same seeds.

Parts (each writes OUT/<part>[-<label>].json; every figure carries the card's name):

- floor: the body alone on the 92 + 118 images, as an unfrozen epoch runs it (a forward without a graph, then
  forward + backward, in chunks), pixels already on the device: float32, and bf16 autocast + channels-last;
  beside it the FLOP floor (the body's training FLOPs over the measured float32 matmul rate).
- epochs: per lever, the seconds of one unfrozen epoch of `Trainer.run_epoch`: a curve's epoch (train 92,
  validate on 118, as `challenge` runs its cross-set curves) and a final fit's epoch (train 92 + 118, no
  validation), after warm-up, timed over many epochs with one synchronisation at the end; plus the named
  sections of one step (`bench_training.factorised_breakdown`). With `--label before` and an older checkout on
  PYTHONPATH it times that code's only path (CPU augmentation, numpy validation every epoch).
- accuracy: the cross-set curves of all four targets (both directions, run as `challenge --jobs` runs them)
  with float32 and with the fast settings, a shortened unfrozen schedule, same seed: each curve's best score
  side by side (the record of issue 13's run, in BENCHMARKS.md, used the earlier crossed epoch choice).

    python benchmarks/fast_path.py --device cuda --out runs/fast                 # every part
    python benchmarks/fast_path.py --dry --out runs/fast-dry                     # tiny sizes on the CPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch
from bench_training import Clock, body_gflop, factorised_breakdown, machine, matmul_gflops

from siamrdm.io.datasets import TARGET_NAMES, load_algonauts_set
from siamrdm.io.files import write_json
from siamrdm.train import TrainConfig, Trainer, config_from_preset, subset

SETTINGS = {f.name for f in fields(TrainConfig)}
# The levers of issue 13, each on top of the new default path (pixels, augmentation and scoring on the device).
LEVERS: dict[str, dict] = {
    "fp32": {},
    "validate_every_10": {"validate_every": 10},
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": True},
    "bf16_channels_last": {"precision": "bf16", "channels_last": True},
    "all": {"precision": "bf16", "channels_last": True, "validate_every": 10},
    # Measured on the H100 after the above: the body at 32 images a pass is launch-bound (120 ms for 210 images
    # against a FLOP floor of 8 ms), so fewer, larger passes are the next lever.
    "chunk_256": {"body_chunk": 256},
    "all_chunk_256": {"precision": "bf16", "channels_last": True, "validate_every": 10, "body_chunk": 256},
}
FAST = LEVERS["all"]


def card(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({machine(device)['cpu']})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list]:
    """Seconds of each run over `repeats` rounds after a warm-up round, the order reversed every other round, so
    that old and new code timed in one process meet the same machine state (shared cores drift)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(repeats + 1):
        for name, fn in runs.items() if r % 2 == 0 else reversed(runs.items()):
            clock = Clock(device)
            fn()
            if r:  # the first round warms up
                times[name].append(clock())
    return times


def base_config(args, targets: tuple[str, ...] = ("EVC",), **overrides) -> TrainConfig:
    """The preset (or, --dry, a tiny AlexNet one), with only the settings this checkout knows. The paper preset
    starts unfrozen (its epochs are timed), the quick one keeps its frozen epochs (the CPU path)."""
    values = dict(targets=targets, device=args.device, **overrides)
    if args.preset == "paper":
        values.setdefault("frozen_epochs", 0)
    if args.dry:
        values.update(backbone="alexnet", weights="random", image_size=128, body_chunk=8)
    unknown = sorted(set(values) - SETTINGS)
    if unknown:
        raise SystemExit(f"this checkout has no setting(s) {', '.join(unknown)}: an older siamrdm on PYTHONPATH?")
    return config_from_preset(args.preset, **values)


def load_sets(args) -> dict[str, object]:
    sets = {name: load_algonauts_set(args.data, name, TARGET_NAMES) for name in ("92", "118")}
    sizes = (12, 14) if args.dry else (args.images, args.images) if args.images else None
    if sizes:
        sets = {name: subset(s, np.arange(n), name) for (name, s), n in zip(sets.items(), sizes, strict=True)}
    return sets


def part_floor(args, sets: dict, device: torch.device) -> dict:
    """The body alone, float32 against bf16 + channels-last, alternating round by round after a warm-up."""
    from siamrdm.train import body_pass  # new code only

    epochs = {}
    for name, overrides in (("fp32", {}), ("bf16_channels_last", {"precision": "bf16", "channels_last": True}),
                            ("fp32_chunk_256", {"body_chunk": 256})):
        config = base_config(args, **overrides)
        trainer = Trainer(config, list(sets.values()), progress=False)
        trainer.model.freeze_body(False)
        pixels = torch.cat([s.images for s in trainer.stepper.train_sets])

        def body_epoch(model=trainer.model, pixels=pixels, config=config) -> None:
            chunk = config.body_chunk
            with torch.no_grad():
                for k in range(0, len(pixels), chunk):
                    body_pass(model, pixels[k : k + chunk], config, device)
            for k in range(0, len(pixels), chunk):
                body_pass(model, pixels[k : k + chunk], config, device).float().sum().backward()
            model.zero_grad(set_to_none=True)

        epochs[name] = body_epoch
    times = time_alternating(epochs, args.repeats, device)
    rows = {name: {"body_s_per_epoch": statistics.median(t), "rounds_s": t} for name, t in times.items()}
    config = base_config(args)
    model = Trainer(config, [sets["92"]], progress=False).model
    flops = body_gflop(model, config.image_size)
    rate = matmul_gflops(device)
    images = sum(len(s) for s in sets.values())
    return {"card": card(device), "images": images, "body": rows, "gflop_train_per_image": flops["train"],
            "gflop_forward_per_image": flops["forward"], "matmul_gflops_fp32": rate,
            "flop_floor_s": images * (flops["train"] + flops["forward"]) / rate}


def time_epochs(trainer: Trainer, device: torch.device, warmup: int, epochs: int) -> float:
    for _ in range(warmup):
        trainer.run_epoch()
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        trainer.run_epoch()
    sync(device)
    return (time.perf_counter() - start) / epochs


def part_epochs(args, sets: dict, device: torch.device, levers: list[str]) -> dict:
    rows = {}
    for lever in levers:
        config = base_config(args, **LEVERS[lever])
        curve = Trainer(config, [sets["92"]], [sets["118"]], progress=False)
        curve_s = time_epochs(curve, device, args.warmup, args.epochs)
        final = Trainer(config, list(sets.values()), progress=False)
        final_s = time_epochs(final, device, args.warmup, args.epochs)
        rows[lever] = {"settings": LEVERS[lever], "curve_epoch_s": curve_s, "final_epoch_s": final_s}
        if args.preset == "paper":  # the sections of an unfrozen step
            final.model.freeze_body(False)
            rows[lever]["step_breakdown_s"] = factorised_breakdown(final)
        print(f"[{card(device)}] {args.label} {lever}: curve epoch {curve_s * 1e3:.1f} ms (train 92, validate 118), "
              f"final-fit epoch {final_s * 1e3:.1f} ms (train 92 + 118)", flush=True)
    return {"card": card(device), "label": args.label, "epochs_timed": args.epochs, "levers": rows,
            "machine": machine(device)}


def part_accuracy(args, sets: dict, device: torch.device) -> dict:
    from siamrdm.pipelines.challenge import run_jobs
    from siamrdm.rdm.splits import cross_set_splits
    from siamrdm.train.selection import validation_curves

    splits = cross_set_splits(sets)
    rows, walls = {}, {}
    for name, overrides in (("fp32", {}), ("fast", FAST)):
        config = base_config(args, **overrides)
        if args.preset == "paper":
            config = replace(config, frozen_epochs=1 if args.dry else 15, unfrozen_epochs=args.accuracy_epochs)
        targets = TARGET_NAMES[:1] if args.dry else TARGET_NAMES
        cells = [(t, label) for t in targets for label in splits]
        start = time.perf_counter()
        curves = run_jobs(validation_curves, [(replace(config, targets=(t,)), {label: splits[label]}, (0,), False)
                                              for t, label in cells], args.jobs)
        walls[name] = time.perf_counter() - start
        for target in targets:
            by_target = {}
            for (t, _), curve in zip(cells, curves, strict=True):
                if t == target:
                    by_target.update(curve)
            for direction, curve in by_target.items():  # the two settings compared at each curve's best epoch
                row = max(curve, key=lambda r: r["pct_nc"])
                rows.setdefault(f"{target} {direction}", {})[name] = {"epoch": row["epoch"], "r2": row["r2"],
                                                                     "pct_nc": row["pct_nc"]}
        print(f"[{card(device)}] accuracy {name}: {len(cells)} curves of {config.epochs} epochs in {walls[name]:.1f} s "
              f"({args.jobs} jobs)", flush=True)
    for cell, pair in rows.items():
        print(f"[{card(device)}] {cell}: fp32 {pair['fp32']['pct_nc']:.1f}% (epoch {pair['fp32']['epoch']}), "
              f"fast {pair['fast']['pct_nc']:.1f}% (epoch {pair['fast']['epoch']})", flush=True)
    return {"card": card(device), "unfrozen_epochs": args.accuracy_epochs, "jobs": args.jobs, "seed": 0,
            "fast_settings": FAST, "wall_s": walls, "best": rows}


def per_image_augment(images: torch.Tensor, crop_scale: tuple[float, float],
                      generator: torch.Generator) -> torch.Tensor:
    """The augmentation before issue 13 (the baseline of the `ops` part): per image, a crop resized with
    F.interpolate and mirrored on a coin flip, in a Python loop on the CPU."""
    import math

    import torch.nn.functional as F

    n, _, size, _ = images.shape
    out = torch.empty_like(images)
    draws = torch.rand(n, 5, generator=generator)
    low, high = crop_scale
    for k in range(n):
        scale, aspect_draw, x_draw, y_draw, flip = draws[k].tolist()
        area = (low + (high - low) * scale) * size * size
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * aspect_draw)
        w = min(size, max(8, round(math.sqrt(area * aspect))))
        h = min(size, max(8, round(math.sqrt(area / aspect))))
        x0, y0 = round(x_draw * (size - w)), round(y_draw * (size - h))
        crop = F.interpolate(images[k : k + 1, :, y0 : y0 + h, x0 : x0 + w], size=(size, size), mode="bilinear",
                             antialias=True, align_corners=False)
        out[k] = crop[0].flip(-1) if flip < 0.5 else crop[0]
    return out


def part_ops(args, sets: dict, device: torch.device) -> dict:
    """The two CPU-side levers on their own, old and new alternating in one process (robust to a busy
    machine): one epoch's augmentation of the 92 + 118 images, and one validation's scoring of a 118-image
    RDM (4 targets) with the numpy metric against the torch one."""
    from siamrdm.rdm import upper_tri
    from siamrdm.rdm.compare_torch import spearman_torch, standardised_ranks_torch
    from siamrdm.rdm.records import score_row, score_with_ceiling
    from siamrdm.train.augment import augment_batch

    config = base_config(args, targets=tuple(TARGET_NAMES))
    trainer = Trainer(config, list(sets.values()), [sets["118"]], progress=False)
    pixels = torch.cat([s.images for s in trainer.stepper.train_sets])
    host = pixels.cpu()
    subjects = trainer.stepper.val_sets[0].subject_rdms
    n = len(trainer.stepper.val_sets[0].images)
    predicted = torch.rand(n * (n - 1) // 2, len(subjects), dtype=torch.float64, device=device)
    ranks = {t: standardised_ranks_torch(torch.from_numpy(upper_tri(r)).to(device)) for t, r in subjects.items()}

    def numpy_scores() -> None:
        from siamrdm.rdm import square_rdm

        values = predicted.cpu().numpy()
        for j, (t, r) in enumerate(subjects.items()):
            score_with_ceiling(square_rdm(values[:, j], n), r, key=t)

    def torch_scores() -> None:
        rhos = torch.stack([spearman_torch(predicted[:, j], ranks[t], ranked=True) for j, t in enumerate(subjects)])
        for rho, (t, r) in zip(rhos.cpu().numpy(), subjects.items(), strict=True):
            score_row(rho, t, r)

    generator = torch.Generator().manual_seed(0)
    runs = {"augment_per_image_cpu": lambda: per_image_augment(host, config.crop_scale, generator),
            "augment_batched_on_device": lambda: augment_batch(pixels, config, generator),
            "validation_numpy": numpy_scores, "validation_torch": torch_scores}
    times = time_alternating(runs, args.repeats, device)
    rows = {name: {"s": statistics.median(t), "rounds_s": t} for name, t in times.items()}
    for name, row in rows.items():
        print(f"[{card(device)}] {name}: {row['s'] * 1e3:.1f} ms", flush=True)
    return {"card": card(device), "images": len(pixels), "image_size": config.image_size,
            "validation_images": n, "ops": rows, "machine": machine(device)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="Algonauts 2019 root (default: $SIAMRDM_DATA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--parts", default="floor,epochs,accuracy")
    p.add_argument("--levers", default=",".join(LEVERS))
    p.add_argument("--label", default="after", help="names this checkout in the output (e.g. before)")
    p.add_argument("--epochs", type=int, default=30, help="unfrozen epochs timed per lever")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--accuracy-epochs", type=int, default=100, help="unfrozen epochs of the accuracy curves")
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--preset", default="paper", choices=("paper", "quick"))
    p.add_argument("--images", type=int, help="the first N images of each set (default: all)")
    p.add_argument("--dry", action="store_true", help="tiny sizes (AlexNet, 12 + 14 images): checks that it runs")
    args = p.parse_args()
    if args.dry:
        args.epochs, args.warmup, args.repeats, args.accuracy_epochs, args.jobs = 2, 1, 1, 2, 2
    from siamrdm.train.config import pick_device

    device = pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = load_sets(args)
    for part in args.parts.split(","):
        start = time.perf_counter()
        if part == "floor":
            result = part_floor(args, sets, device)
            for name, row in result["body"].items():
                print(f"[{result['card']}] body floor {name}: {row['body_s_per_epoch'] * 1e3:.1f} ms per epoch "
                      f"({result['images']} images); FLOP floor {result['flop_floor_s'] * 1e3:.1f} ms", flush=True)
        elif part == "epochs":
            result = part_epochs(args, sets, device, args.levers.split(","))
        elif part == "accuracy":
            result = part_accuracy(args, sets, device)
        elif part == "ops":
            result = part_ops(args, sets, device)
        else:
            raise SystemExit(f"unknown part '{part}' (floor, epochs, accuracy, ops)")
        result["part_wall_s"] = time.perf_counter() - start
        name = part if part != "epochs" else f"epochs-{args.label}"
        write_json(out / f"{name}.json", result, indent=1)


if __name__ == "__main__":
    main()
