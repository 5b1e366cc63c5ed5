"""Smith's LR range test: a full-batch step whose rate grows each step, to suggest a learning rate."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError, TrainingDiverged
from ..io.datasets import BrainDataset
from ..io.progress import Progress
from .config import MAX_LR, TrainConfig
from .fullbatch import FullBatchStep
from .loop import make_optimizer


def lr_range_test(config: TrainConfig, train: list[BrainDataset], start_lr: float = 1e-6, end_lr: float = 1.0,
                  steps: int = 80, progress: bool = True, train_stages: int | str = 0) -> dict:
    """Smith's LR range test on the head (body frozen): the rate grows exponentially each step. With
    `train_stages` K, the body's top K stages ('all': the whole body) train too, at the rate times
    `body_lr_factor`, as a fit's unfrozen epochs train them (on the plain images: no augmentation here).

    Returns the rates (the head's), the smoothed losses and a suggested rate (`suggest_lr`). The rates and
    `steps` are checked first (`check_range`), so a rate no float32 step can take is a ConfigError naming it.
    """
    check_range(config, start_lr, end_lr, steps, train_stages)
    step_data = FullBatchStep(replace(config, augment=False, train_stages=train_stages), train)
    step_data.model.freeze_body(train_stages == 0, train_stages)
    body = step_data.model.body.trained_parameters(train_stages) if train_stages != 0 else None
    optimizer = make_optimizer(config, step_data.model.head_parameters(), body, lr=start_lr)
    rates = (1.0, config.body_lr_factor)  # each group's share of the step's rate
    factor = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    lrs, losses, smoothed, avg = [], [], [], 0.0
    for step in tqdm(range(steps), disable=not Progress.of(progress, "lr-find").bars, desc="lr-find", leave=False):
        lr = start_lr * factor**step
        for group, share in zip(optimizer.param_groups, rates, strict=False):
            group["lr"] = lr * share
        index = step % len(step_data.train_sets)
        optimizer.zero_grad(set_to_none=True)
        if train_stages == 0:
            loss = step_data.pair_loss(step_data.plain_features(index), step_data.train_sets[index])
            loss.backward()
        else:
            loss = step_data.set_gradients(index, frozen=False)
        optimizer.step()
        value = loss.item()
        avg = 0.9 * avg + 0.1 * value
        lrs.append(lr)
        losses.append(value)
        smoothed.append(avg / (1 - 0.9 ** (step + 1)))
        if not math.isfinite(value) or smoothed[-1] > 4 * min(smoothed):
            break
    return {"lr": lrs, "loss": losses, "smoothed_loss": smoothed, "suggested_lr": suggest_lr(lrs, smoothed)}


def suggest_lr(lrs: list[float], smoothed: list[float]) -> float:
    """The rate of the steepest descent of the smoothed loss, at or before its lowest point. Only the curve
    before the first NaN or infinite loss counts: that loss is divergence, and np.argmin would take a NaN for
    the minimum and suggest the very rate that diverged."""
    curve = np.asarray(smoothed, dtype=float)
    finite = np.isfinite(curve)
    kept = len(curve) if finite.all() else int(np.argmin(finite))  # up to the first non-finite loss
    if kept == 0:
        raise TrainingDiverged("lr-find: the loss was NaN or infinite at the first step, before any rate acted "
                               "on it; check the training data", option="start_lr")
    curve = curve[:kept]
    slopes = np.gradient(curve, np.log10(lrs[:kept])) if kept > 2 else np.zeros(kept)
    lowest = int(np.argmin(curve))
    steepest = int(np.argmin(slopes[: lowest + 1])) if lowest > 0 else 0
    return float(lrs[steepest])


FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


def check_range(config: TrainConfig, start_lr: float, end_lr: float, steps: int, train_stages: int | str) -> None:
    """Refuse, before any work, rates the test cannot take: each finite and positive, start below end, and
    within the range a fit's rate is held to (config.MAX_LR, for the head and the body's share): a larger one
    would end in torch's 'cannot be converted to type float without overflow'."""
    share = max(1.0, config.body_lr_factor) if train_stages != 0 else 1.0
    largest = MAX_LR / share
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ConfigError(name, f"must be a positive finite rate, got {value}")
        if not FLOAT32_TINY <= value <= largest:
            raise ConfigError(name, f"must be between {FLOAT32_TINY:.3g} and {largest:.3g} (float32's range as "
                                    f"AdamW steps with it, as --lr), got {value:g}")
    if start_lr >= end_lr:
        raise ConfigError("end_lr", f"must be greater than start_lr ({start_lr:g}), got {end_lr:g}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("steps", f"must be a whole number of at least 1, got {steps}")
