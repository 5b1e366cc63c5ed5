"""Training speed: the naive per-pair Siamese step against the pair-factorised one, and the head at scale.

    PYTHONPATH=src python benchmarks/bench_training.py [--json] [--out FILE] ...   (--help lists the options)

Everything timed here is the training code itself: `naive_step` (body on both images of every pair, as
published Siamese RDM models train; kept here, for comparison, with its own `naive_forward`) against
`Trainer.step` (train.FullBatchStep: body once per image, head split), on the same model, the same pairs and the
same real images, alternating round by round after a warm-up. The head-scaling part times `model.all_pairs_loss`
(what `FullBatchStep.pair_loss` calls) on synthetic features for thousands of images, each size in a fresh
process (`bench_training.py head-epoch`) so that its peak memory is its own. Bad options are one line on stderr
and exit 2, as a siamrdm command's are (`siamrdm.cli.run_command` runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from siamrdm.cli import run_command
from siamrdm.cli_options import backbone_argument, check_range, list_option, max_parallel
from siamrdm.errors import ConfigError, UsageError
from siamrdm.io.datasets import DATA_ENV_VAR, TRAINING_SETS, BrainDataset, load_algonauts_set
from siamrdm.io.files import check_new_output_file, write_text
from siamrdm.io.jsonfiles import strict_json_text
from siamrdm.model.network import SiameseHead, SiameseRDMNet, all_pairs, all_pairs_loss
from siamrdm.train.augment import augment_batch
from siamrdm.train.config import TrainConfig, check_config, config_from_preset, pick_device
from siamrdm.train.fullbatch import body_features, split_holdout, subset
from siamrdm.train.loop import make_optimizer, peak_rss_mb
from siamrdm.train.trainer import Trainer

HEAD_SIZES = (100, 1000, 3000, 10000)
# The head-scaling epoch holds every pair's target and every image's features: 20,000 images take about 2.5 GB.
MAX_HEAD_IMAGES = 20_000
ALL_IMAGES = 92 + 118


def reset_peak_rss() -> bool:
    """Start VmHWM afresh (Linux: writing 5 to clear_refs), so that one phase's peak can be read on its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; CPU time shows how much of the wall time was ours."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


class Clock:
    """Wall seconds since the last call (or creation), synchronising the GPU first."""

    def __init__(self, device: torch.device):
        self.device = device
        _sync(device)
        self.last = time.perf_counter()

    def __call__(self) -> float:
        _sync(self.device)
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    for name in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS"):  # spinning OpenMP threads stall badly on busy cores
        if name in os.environ:
            info[name] = os.environ[name]
    try:
        info["load_average_1min"] = os.getloadavg()[0]  # other work on the machine makes timings noisy
    except OSError:
        pass
    return info


def matmul_gflops(device: torch.device, size: int | None = None, repeats: int = 5) -> float:
    """The machine's measured float32 matrix-multiply rate (best of `repeats`), the yardstick for the floor."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = min(timed(lambda: a @ b, device)[0] for _ in range(repeats + 1))
    return 2 * size**3 / best / 1e9


def body_gflop(model: SiameseRDMNet, image_size: int) -> dict[str, float]:
    """Body GFLOPs per image (a multiply-add counts 2): forward as FlopCounterMode counts it, and a training pass.

    Training = forward + gradients of the weights (one forward's worth) + gradients of the inputs of every layer
    but the first (the pixels need none). Counted this way because FlopCounterMode ignores `groups` in
    convolution_backward and so overcounts depthwise layers by their channel count.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = model.feature_mean.device
    images = torch.rand(2, 3, image_size, image_size, device=device)
    first = next(m for m in model.body.modules() if isinstance(m, torch.nn.Conv2d))
    shapes: list[torch.Size] = []
    hook = first.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.body(images)
    finally:
        hook.remove()
    forward = counter.get_total_flops() / len(images)
    per_output = first.in_channels // first.groups * first.kernel_size[0] * first.kernel_size[1]
    first_layer = 2 * shapes[0][1:].numel() * per_output
    return {"forward": forward / 1e9, "train": (3 * forward - first_layer) / 1e9}


# --------------------------------------------------------------------------- data


def check_images(images: int | None) -> None:
    """`images`, checked before any set is read: 3 or more from each of the two sets, at most all of them."""
    if images is not None and not 6 <= images <= ALL_IMAGES:
        raise ConfigError("images", f"must be between 6 and {ALL_IMAGES} (the 92 + 118 training images), got {images}")


def bench_sets(root: str | None, images: int | None) -> list[BrainDataset]:
    """The 92 and 118 training sets (EVC targets), or their first images when `images` < 210 (split in proportion)."""
    check_images(images)
    sets = [load_algonauts_set(root, name, ("EVC",)) for name in TRAINING_SETS]
    total = sum(len(s) for s in sets)
    if images is None or images == total:
        return sets
    first = min(len(sets[0]) - 3, max(3, round(images * len(sets[0]) / total)))
    counts = (first, images - first)
    return [subset(s, np.arange(k), f"{s.name}[:{k}]") for s, k in zip(sets, counts, strict=True)]


# --------------------------------------------------------------------------- naive against factorised


def training_config(backbone: str = "efficientnet_lite0", weights: str | None = None, stage: str | None = None,
                    device: str = "auto", body_chunk: int | None = None, image_size: int = 224) -> TrainConfig:
    """The run `bench_training` times, checked as a fit's settings are (`check_config`: the image size within
    its bounds and large enough for the stage, the weights to be had) before anything is timed."""
    config = TrainConfig(backbone=backbone, stage=stage, weights=weights, targets=("EVC",), image_size=image_size,
                         frozen_epochs=0, unfrozen_epochs=1000, augment=True, device=device)
    if body_chunk:
        config = replace(config, body_chunk=body_chunk)
    return check_config(config)


def bench_training(sets: list[BrainDataset], backbone: str = "efficientnet_lite0", weights: str | None = None,
                   stage: str | None = None, device: str = "auto", rounds: int = 3, naive_batches: int | None = 4,
                   pair_batch: int = 32, body_chunk: int | None = None, image_size: int = 224,
                   log: Callable[[str], None] = lambda _: None) -> dict:
    """One training epoch over all within-set pairs, naive against factorised, body unfrozen (end to end).

    Rounds alternate which of the two goes first, after one warm-up of each; figures are medians over rounds.
    With `naive_batches`, each naive epoch runs that many pair batches per set and is scaled to all pairs.
    """
    config = training_config(backbone, weights, stage, device, body_chunk, image_size)
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    wall = time.perf_counter()
    trainer = Trainer(config, sets, progress=False)
    setup_s = time.perf_counter() - wall
    dev = trainer.device
    model = trainer.model
    pairs = [len(s.targets) for s in trainer.stepper.train_sets]
    batches = [-(-p // pair_batch) for p in pairs]
    timed_batches = [b if not naive_batches else min(b, naive_batches) for b in batches]
    timed_pairs = [min(p, b * pair_batch) for p, b in zip(pairs, timed_batches, strict=True)]

    def factorised_epoch() -> None:
        trainer.step(frozen=False)

    def naive_epoch() -> tuple[float, float]:
        """Seconds for all pairs (scaled from the timed sample), wall and CPU."""
        wall_s = cpu_s = 0.0
        for k in range(len(sets)):
            w, c = timed(lambda k=k: naive_step(trainer, k, pair_batch, max_batches=timed_batches[k]), dev)
            wall_s += w * pairs[k] / timed_pairs[k]
            cpu_s += c * pairs[k] / timed_pairs[k]
        return wall_s, cpu_s

    model.freeze_body(False)
    log("warm-up")
    factorised_epoch()
    for k in range(len(sets)):
        naive_step(trainer, k, pair_batch, max_batches=1)
    naive, factorised = [], []
    peaks = {"naive": 0.0, "factorised": 0.0}  # each phase's own peak memory, where it can be reset
    setup_peak = peak_rss_mb()
    separate_peaks = reset_peak_rss()
    for r in range(rounds):
        for which in ("naive", "factorised") if r % 2 == 0 else ("factorised", "naive"):
            reset_peak_rss()
            if which == "naive":
                naive.append(naive_epoch())
            else:
                factorised.append(timed(factorised_epoch, dev))
            peaks[which] = max(peaks[which], peak_rss_mb())
            last = (naive if which == "naive" else factorised)[-1][0]
            log(f"round {r + 1}/{rounds}: {which} {last:.2f} s per epoch")

    log("breakdown")
    breakdown = factorised_breakdown(trainer)
    naive_body = naive_body_seconds(trainer, pair_batch)
    model.freeze_body(True)
    frozen = [timed(lambda: trainer.step(frozen=True), dev)[0] for _ in range(3)]
    model.freeze_body(False)
    flops = body_gflop(model, image_size)
    rate = matmul_gflops(dev)

    naive_s = statistics.median(w for w, _ in naive)
    factorised_s = statistics.median(w for w, _ in factorised)
    n_images = sum(len(s.images) for s in trainer.stepper.train_sets)
    n_pairs = sum(pairs)
    naive_batch_s = naive_s / sum(batches)
    result = {
        "backbone": backbone, "stage": model.body.stage, "weights": model.body.weights, "image_size": image_size,
        "feature_shape": list(model.feature_shape), "images": n_images, "sets": [len(s.images) for s in sets],
        "pairs": n_pairs, "pair_batch": pair_batch, "body_chunk": config.body_chunk,
        "naive_s_per_epoch": naive_s, "factorised_s_per_epoch": factorised_s, "speedup": naive_s / factorised_s,
        "naive_cpu_s_per_epoch": statistics.median(c for _, c in naive),
        "factorised_cpu_s_per_epoch": statistics.median(c for _, c in factorised),
        "naive_rounds_s": [w for w, _ in naive], "factorised_rounds_s": [w for w, _ in factorised],
        "naive_scaled": any(t < b for t, b in zip(timed_batches, batches, strict=True)),
        "naive_timed_batches": sum(timed_batches), "naive_batches_per_epoch": sum(batches),
        "naive_note": (f"naive epoch timed on the first {sum(timed_batches)} of {sum(batches)} pair batches "
                       "(shuffled pairs) and scaled to all pairs" if sum(timed_batches) < sum(batches)
                       else "naive epoch timed on all pair batches"),
        "factorised_frozen_s_per_epoch": statistics.median(frozen),
        "factorised_breakdown_s": breakdown,
        "naive_body_s_per_batch": naive_body, "naive_s_per_batch": naive_batch_s,
        "naive_body_fraction": naive_body / naive_batch_s,
        "body_gflop_forward_per_image": flops["forward"], "body_gflop_train_per_image": flops["train"],
        "matmul_gflops": rate,
        # Floors: the body's FLOPs at the machine's matmul rate. Factorised: one forward + backward per image
        # (the implementation adds a no-grad forward to keep memory bounded); naive: one per image of each pair.
        "floor_factorised_s": n_images * flops["train"] / rate,
        "floor_factorised_two_pass_s": n_images * (flops["train"] + flops["forward"]) / rate,
        "floor_naive_s": 2 * n_pairs * flops["train"] / rate,
        "ideal_speedup": 2 * n_pairs * flops["train"] / (n_images * (flops["train"] + flops["forward"])),
        "setup_s": setup_s, "device": str(dev), "peak_rss_mb": max(setup_peak, peak_rss_mb(), *peaks.values()),
        "naive_peak_rss_mb": peaks["naive"] if separate_peaks else None,
        "factorised_peak_rss_mb": peaks["factorised"] if separate_peaks else None,
        "machine": {**machine(dev), "load_average_1min_at_start": load_at_start},
    }
    if dev.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result


def naive_forward(model: SiameseRDMNet, images_a: torch.Tensor, images_b: torch.Tensor,
                  both_orders: bool = False) -> torch.Tensor:
    """The per-pair form of published Siamese RDM models: the body on both images of every pair, the head on
    (a, b) and (b, a); (P, outputs), or (2, P, outputs) with both orders. `model.forward` equals it factorised."""
    fa, fb = model.features(images_a), model.features(images_b)
    both = torch.stack((model.head(fa, fb), model.head(fb, fa)))
    return both if both_orders else both.mean(dim=0)


def naive_step(trainer: Trainer, index: int, pair_batch: int = 32, max_batches: int | None = None) -> float:
    """The per-pair training of published Siamese RDM models, for comparison: the body runs on both images of
    every pair of training set `index` (each image augmented on its own), one optimiser step per `pair_batch`
    pairs, pairs shuffled. `max_batches` stops early (a timing sample). Returns the mean loss per pair."""
    step, config = trainer.stepper, trainer.config
    data = step.train_sets[index]
    i, j = all_pairs(len(data.images))
    order = torch.randperm(len(i), generator=step.generator)
    batch = pair_batch
    total, seen = 0.0, 0
    for start in range(0, len(order), batch):
        if max_batches is not None and start // batch >= max_batches:
            break
        pairs = order[start : start + batch]
        images_a, images_b = data.images[i[pairs]], data.images[j[pairs]]
        if config.augment:
            images_a = augment_batch(images_a, config, step.generator)
            images_b = augment_batch(images_b, config, step.generator)
        trainer.optimizer.zero_grad(set_to_none=True)
        predictions = naive_forward(trainer.model, images_a.to(step.device), images_b.to(step.device),
                                    both_orders=True)
        loss = F.mse_loss(predictions, data.targets[pairs].to(step.device).expand_as(predictions))
        loss.backward()
        trainer.optimizer.step()
        total, seen = total + loss.item() * len(pairs), seen + len(pairs)
    return total / seen


def factorised_breakdown(trainer: Trainer, repeats: int = 2) -> dict[str, float]:
    """Where a factorised unfrozen step goes: the parts of `FullBatchStep.gradients`, each timed on its own (the
    same calls in the same order, with a device synchronisation around each part)."""
    step = trainer.stepper
    names = ("augment", "body_forward_no_grad", "head_forward_backward", "body_forward_backward", "optimizer")
    runs: list[dict[str, float]] = []
    for _ in range(repeats):
        seconds = dict.fromkeys(names, 0.0)

        @contextlib.contextmanager
        def part(name: str, seconds: dict[str, float] = seconds) -> Iterator[None]:
            _sync(step.device)
            start = time.perf_counter()
            yield
            _sync(step.device)
            seconds[name] += time.perf_counter() - start

        trainer.optimizer.zero_grad(set_to_none=True)
        total_pairs = sum(len(s.targets) for s in step.train_sets)
        for index, data in enumerate(step.train_sets):
            with part("augment"):
                images = step.augmented_images(index)
            with part("body_forward_no_grad"):
                features = body_features(step.model, images, step.config, step.device).requires_grad_()
            with part("head_forward_backward"):
                (step.pair_loss(features, data) * (len(data.targets) / total_pairs)).backward()
            with part("body_forward_backward"):
                step.body_backward(images, features.grad)
        with part("optimizer"):
            trainer.optimizer.step()
        runs.append(seconds)
    return {name: statistics.median(run[name] for run in runs) for name in names}


def naive_body_seconds(trainer: Trainer, pair_batch: int = 32, repeats: int = 3) -> float:
    """The body's share of one naive pair batch: forward and backward on its two sides of pair_batch images each,
    as `naive_forward` runs them."""
    pool = trainer.stepper.train_sets[0].images
    batch = pair_batch
    side_a = pool[torch.arange(batch) % len(pool)].to(trainer.device)
    side_b = pool[(torch.arange(batch) + 1) % len(pool)].to(trainer.device)

    def run() -> None:
        (trainer.model.features(side_a).sum() + trainer.model.features(side_b).sum()).backward()

    run()
    seconds = statistics.median(timed(run, trainer.device)[0] for _ in range(repeats))
    trainer.optimizer.zero_grad(set_to_none=True)
    return seconds


# --------------------------------------------------------------------------- the head at scale


def feature_shape(backbone: str, stage: str | None = None, image_size: int = 224) -> tuple[int, int, int]:
    """(C, H, W) of a backbone's features at a stage (random weights: only the shape is wanted)."""
    from siamrdm.model.backbones import create_body

    return create_body(backbone, "random", stage).output_shape(image_size)


def head_epoch(n: int, shape: tuple[int, int, int] = (256, 6, 6), device: str = "auto", tile: int | None = None,
               workers: int | None = None, repeats: int = 1, seed: int = 0) -> dict:
    """One epoch of the head over all pairs of n images with given (synthetic, standardised) features, as
    `Trainer.step` runs it with a frozen body: `all_pairs_loss` forward and backward, then an AdamW step."""
    dev = pick_device(device)
    torch.manual_seed(seed)
    head = SiameseHead(shape[0]).to(dev)
    head.init_as_distance()
    optimizer = make_optimizer(TrainConfig(lr=1e-3, weight_decay=0.01), head.parameters())
    base_rss = peak_rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    features = torch.randn(n, *shape, device=dev)
    targets = torch.rand(n * (n - 1) // 2, 1, device=dev)

    def epoch(images: int = n) -> None:
        optimizer.zero_grad(set_to_none=True)
        pairs = images * (images - 1) // 2
        all_pairs_loss(head, features[:images], targets[:pairs], tile, workers).backward()
        optimizer.step()

    epoch(min(n, 64))  # warm-up
    runs = [timed(epoch, dev) for _ in range(repeats)]
    wall = statistics.median(w for w, _ in runs)
    pairs = n * (n - 1) // 2
    result = {"images": n, "pairs": pairs, "ordered_pairs": 2 * pairs, "seconds": wall,
              "cpu_seconds": statistics.median(c for _, c in runs), "pairs_per_s": pairs / wall,
              "feature_shape": list(shape), "repeats": repeats, "peak_rss_mb": peak_rss_mb(),
              "rss_before_features_mb": base_rss, "device": str(dev), "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result


def bench_head_scaling(sizes: tuple[int, ...] = HEAD_SIZES, shape: tuple[int, int, int] = (256, 6, 6),
                       device: str = "auto", threads: int | None = None,
                       log: Callable[[str], None] = lambda _: None) -> list[dict]:
    """`head_epoch` for each size, each in a fresh process (its own peak memory); small sizes repeated."""
    rows = []
    for n in sizes:
        args = [sys.executable, __file__, "head-epoch", "--n", str(n), "--shape", ",".join(map(str, shape)),
                "--device", device, "--repeats", str(3 if n <= 1000 else 1)]
        if threads:
            args += ["--threads", str(threads)]
        done = subprocess.run(args, capture_output=True, text=True, env=os.environ.copy())
        if done.returncode != 0:
            tail = " ".join(done.stderr.split())[-300:]
            raise RuntimeError(f"head epoch of {n} images failed: {tail}")
        row = json.loads(done.stdout)
        log(f"head, {n} images: {row['seconds']:.2f} s, {row['pairs_per_s'] / 1e6:.2f} M pairs/s, "
            f"peak {row['peak_rss_mb']:.0f} MB")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the paper's schedule


def bench_paper_schedule(root: str | None, backbone: str = "efficientnet_lite0", weights: str | None = None,
                         device: str = "auto", time_limit: float | None = None, val_fraction: float = 0.1,
                         log: Callable[[str], None] = lambda _: None) -> dict:
    """The `paper` preset end to end (Trainer.run_epoch: steps, validation, early stopping) on the 92 + 118 sets
    with `val_fraction` of each held out; past `time_limit` seconds it stops and extrapolates the full schedule."""
    config = config_from_preset("paper", backbone=backbone, weights=weights, device=device, targets=("EVC",))
    start = time.perf_counter()
    sets = [load_algonauts_set(root, name, ("EVC",)) for name in TRAINING_SETS]
    split = [split_holdout(d, val_fraction, 0) for d in sets]
    trainer = Trainer(config, [t for t, _ in split], [v for _, v in split], progress=False)
    setup_s = time.perf_counter() - start
    stopped_by_limit = False
    for row in trainer.epochs():
        if trainer.epoch % 50 == 0:
            log(f"paper schedule: epoch {trainer.epoch}, {row['seconds']:.3f} s/epoch")
        if time_limit and time.perf_counter() - start > time_limit:
            stopped_by_limit = True
            break
    total_s = time.perf_counter() - start
    skipped = stopped_by_limit and config.unfrozen_epochs > 0 and trainer.epoch < config.frozen_epochs
    if skipped:  # time ran out while frozen: skip to the unfrozen phase and time a few epochs of it
        trainer.epoch = config.frozen_epochs
        for _ in range(3):
            trainer.run_epoch()
    frozen = [r["seconds"] for r in trainer.history if r["phase"] == "frozen"]
    unfrozen = [r["seconds"] for r in trainer.history if r["phase"] == "unfrozen"]
    per_frozen = statistics.median(frozen) if frozen else None
    per_unfrozen = statistics.median(unfrozen) if unfrozen else None
    full = None
    if per_frozen is not None and per_unfrozen is not None:
        full = setup_s + config.frozen_epochs * per_frozen + config.unfrozen_epochs * per_unfrozen
    dev = trainer.device
    result = {
        "preset": "paper", "backbone": backbone, "weights": trainer.model.body.weights, "device": str(dev),
        "train_images": sum(len(s.images) for s in trainer.stepper.train_sets),
        "val_images": sum(len(s.images) for s in trainer.stepper.val_sets),
        "epochs_planned": config.epochs, "epochs_run": trainer.epoch, "early_stopped": trainer.should_stop(),
        "stopped_by_time_limit": stopped_by_limit, "time_limit_s": time_limit,
        "unfrozen_timed_after_skipping_frozen": skipped,
        "total_s": total_s, "setup_s": setup_s, "s_per_frozen_epoch": per_frozen, "s_per_unfrozen_epoch": per_unfrozen,
        "full_schedule_s_without_early_stopping": full, "best_epoch": trainer.best_epoch,
        "best_val_score": trainer.best_score, "peak_rss_mb": peak_rss_mb(), "machine": machine(dev),
    }
    if dev.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result


# --------------------------------------------------------------------------- printing, and the head worker


def format_report(result: dict) -> str:
    """A short human-readable summary of the benchmark's JSON."""
    lines = []
    m = result.get("machine", {})
    lines.append(f"machine: {m.get('cpu', '?')}, {m.get('threads', '?')} threads" +
                 (f", {m['gpu']}" if "gpu" in m else "") + f"; device {result.get('device', '?')}")
    if "naive_s_per_epoch" in result:
        lines += [
            f"{result['backbone']} {result['stage']} ({result['weights']} weights), {result['images']} images, "
            f"{result['pairs']} pairs, {result['pair_batch']} pairs a naive batch",
            f"  naive      {result['naive_s_per_epoch']:10.1f} s/epoch  ({result['naive_note']})",
            f"  factorised {result['factorised_s_per_epoch']:10.2f} s/epoch  (body unfrozen; frozen body: "
            f"{result['factorised_frozen_s_per_epoch']:.2f} s)",
            f"  speedup    {result['speedup']:10.1f} x  (ideal from body FLOPs: {result['ideal_speedup']:.0f} x)",
            f"  floor      {result['floor_factorised_s']:10.2f} s factorised, {result['floor_naive_s']:.1f} s naive "
            f"({result['body_gflop_train_per_image']:.2f} GFLOP per image trained, "
            f"{result['matmul_gflops']:.0f} GFLOP/s matmul)",
            "  factorised epoch: " + ", ".join(f"{k} {v:.2f} s" for k, v in result["factorised_breakdown_s"].items()),
            f"  peak RSS {result['peak_rss_mb']:.0f} MB",
        ]
    for row in result.get("head_scaling", []):
        lines.append(f"head, {row['images']:>6} images: {row['seconds']:8.2f} s/epoch, "
                     f"{row['pairs_per_s'] / 1e6:6.2f} M pairs/s, peak RSS {row['peak_rss_mb']:.0f} MB")
    paper = result.get("paper_schedule")
    if paper:
        lines.append(f"paper schedule: {paper['epochs_run']} epochs in {paper['total_s']:.0f} s "
                     f"(full schedule without early stopping: {paper['full_schedule_s_without_early_stopping']} s)")
    return "\n".join(lines)


def _worker(argv: list[str] | None = None) -> int:
    """`bench_training.py head-epoch --n N ...`: one head epoch in this process, as JSON (for peak memory)."""
    p = argparse.ArgumentParser(prog="bench_training.py head-epoch")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--shape", default="256,6,6", help="C,H,W of the features")
    p.add_argument("--device", default="auto")
    p.add_argument("--tile", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    print(json.dumps(head_epoch(args.n, shape, args.device, args.tile, args.workers, args.repeats)))
    return 0


# --------------------------------------------------------------------------- the command


def parser() -> argparse.ArgumentParser:
    """The benchmark's options."""
    p = argparse.ArgumentParser(prog="bench_training.py", description="Time naive against pair-factorised "
                                "training, and the head at scale.")
    p.add_argument("--data", help=f"Algonauts 2019 data root (default: ${DATA_ENV_VAR})")
    p.add_argument("--images", type=int, help="use this many of the 92 + 118 training images (default: all 210)")
    backbone_argument(p)
    p.add_argument("--stage", help="backbone stage that feeds the head (default: the backbone's)")
    p.add_argument("--weights", help="body weights: a state_dict file, or 'random' (timing does not depend on them)")
    p.add_argument("--image-size", type=int, default=224, help="input size in pixels (default: 224)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of each, alternating (default: 3)")
    p.add_argument("--naive-batches", type=int, default=4,
                   help="pair batches per set timed for a naive epoch, then scaled; 0 times all (default: 4)")
    p.add_argument("--pair-batch", type=int, default=32, help="pairs per naive batch (default: 32)")
    p.add_argument("--body-chunk", type=int, help="images per body pass, factorised (default: the trainer's)")
    p.add_argument("--head-sizes", default="100,1000,3000,10000",
                   help="image counts for the head-scaling epochs, or 'none' (default: 100,1000,3000,10000)")
    backbone_argument(p, "--head-backbone", "alexnet", "whose features (default stage, 224 px) the head-scaling "
                      "epochs use")
    p.add_argument("--no-training", action="store_true", help="skip naive against factorised (head scaling only)")
    p.add_argument("--paper", action="store_true", help="also time the 'paper' preset's schedule end to end")
    p.add_argument("--paper-time-limit", type=float, help="stop the paper schedule after this many seconds and "
                   "extrapolate (default: no limit)")
    p.add_argument("--out", help="also write the JSON result to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=bench)
    return p


def check_options(args: argparse.Namespace) -> tuple[int, ...]:
    """Every option checked before any work (--out by predict --out's rule); the head-scaling sizes."""
    if args.out is not None:
        if not args.out.strip():
            raise UsageError("--out: empty file name; give a file (e.g. bench.json)")
        check_new_output_file(args.out, args.overwrite)
    sizes = ()
    if args.head_sizes.strip().lower() not in ("0", "none"):
        sizes = list_option(args.head_sizes, "--head-sizes", convert=int, what="integers")
        for n in sizes:
            check_range("--head-sizes", n, 2, MAX_HEAD_IMAGES)
    check_range("--threads", args.threads, 1, max_parallel())
    if args.rounds < 1 or args.pair_batch < 1 or (args.body_chunk is not None and args.body_chunk < 1):
        raise UsageError("--rounds, --pair-batch and --body-chunk must be at least 1")
    check_range("--naive-batches", args.naive_batches, 0)
    if args.paper_time_limit is not None and not (math.isfinite(args.paper_time_limit) and args.paper_time_limit > 0):
        raise UsageError(f"--paper-time-limit: must be a positive number of seconds, got {args.paper_time_limit}")
    return sizes


def bench(args: argparse.Namespace) -> int:
    """Naive against factorised training epochs on real images, then the head's epoch at 100 to 10,000 images."""
    sizes = check_options(args)
    device = str(pick_device(args.device))
    if not args.no_training:  # the image size against the stage's minimum, before any image is read
        check_images(args.images)
        training_config(args.backbone, args.weights, args.stage, device, args.body_chunk, args.image_size)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        if not args.quiet:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    result: dict = {}
    if not args.no_training:
        result.update(bench_training(
            bench_sets(args.data, args.images), args.backbone, args.weights, args.stage, device, args.rounds,
            args.naive_batches or None, args.pair_batch, args.body_chunk, args.image_size, log))
    if sizes:
        result["head_scaling"] = bench_head_scaling(sizes, feature_shape(args.head_backbone), device, args.threads,
                                                    log)
    if args.paper:
        result["paper_schedule"] = bench_paper_schedule(args.data, args.backbone, args.weights, device,
                                                        args.paper_time_limit, log=log)
    result.setdefault("device", device)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    result.setdefault("machine", machine(torch.device(device)))
    text = strict_json_text(result, indent=2)
    if args.out is not None:
        write_text(args.out, text, replace_existing=args.overwrite)
    print(text if args.json else format_report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The benchmark (`head-epoch` first: one head epoch, the worker `bench_head_scaling` starts)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["head-epoch"]:
        return _worker(argv[1:])
    return run_command(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
