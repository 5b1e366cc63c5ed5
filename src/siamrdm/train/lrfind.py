"""Smith's LR range test: a full-batch step whose rate grows each step, to suggest a learning rate."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from tqdm.auto import tqdm

from ..io.datasets import BrainDataset
from .config import TrainConfig
from .fullbatch import FullBatchStep
from .loop import make_optimizer


def lr_range_test(config: TrainConfig, train: list[BrainDataset], start_lr: float = 1e-6, end_lr: float = 1.0,
                  steps: int = 80, progress: bool = True, train_stages: int | str = 0) -> dict:
    """Smith's LR range test on the head (body frozen): the rate grows exponentially each step. With
    `train_stages` K, the body's top K stages ('all': the whole body) train too, at the rate times
    `body_lr_factor`, as a fit's unfrozen epochs train them (on the plain images: no augmentation here).

    Returns the rates (the head's), the smoothed losses and a suggested rate: the steepest descent of the
    smoothed loss, found before the loss diverges (4x its minimum).
    """
    step_data = FullBatchStep(replace(config, augment=False, train_stages=train_stages), train)
    step_data.model.freeze_body(train_stages == 0, train_stages)
    body = step_data.model.body.trained_parameters(train_stages) if train_stages != 0 else None
    optimizer = make_optimizer(config, step_data.model.head_parameters(), body, lr=start_lr)
    rates = (1.0, config.body_lr_factor)  # each group's share of the step's rate
    factor = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    lrs, losses, smoothed, avg = [], [], [], 0.0
    for step in tqdm(range(steps), disable=not progress, desc="lr-find", leave=False):
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
    log_lr = np.log10(lrs)
    slopes = np.gradient(np.asarray(smoothed), log_lr) if len(lrs) > 2 else np.zeros(len(lrs))
    lowest = int(np.argmin(smoothed))
    steepest = int(np.argmin(slopes[: lowest + 1])) if lowest > 0 else 0
    return {"lr": lrs, "loss": losses, "smoothed_loss": smoothed, "suggested_lr": float(lrs[steepest])}
