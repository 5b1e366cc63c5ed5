"""What the one trainer (trainer.Trainer) is built from: the `Step` protocol, the optimiser and its schedule,
how the kept epoch is chosen, and what a run records (its log, each seed's summary).

What differs between ways of training lives in a *step* object (`Step`): how an epoch's optimiser steps are made
(fullbatch.FullBatchStep: all pairs of cached or re-computed features in one step; distributed.MiniBatchStep:
mini-batches, with collectives across ranks), how the held-out images are scored, and what a checkpoint must
hold besides the trainer's own state. The trainer calls `optimizer_step` once per optimiser step it is handed
back, so the one-cycle schedule advances per step whatever the number of steps in an epoch.
"""

from __future__ import annotations

import csv
import math
import resource
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..io.files import atomic_path
from ..model.network import SiameseRDMNet
from ..model.prior import PriorFit
from .config import TrainConfig


class KeptChoice(Protocol):
    """What a fit keeps (the trainer's): the chosen epoch, its score and the validation history."""

    best_epoch: int
    best_score: float
    history: list[dict]


class Step(Protocol):
    """What one way of training does; the trainer (trainer.Trainer) does the rest."""

    config: TrainConfig
    model: SiameseRDMNet
    device: torch.device
    priors: dict[str, PriorFit]  # per target; empty without a prior (then the loop's epoch 0 is the untrained head)
    normalisation: dict[str, dict]  # per training set, per target: the rescaling of its targets
    steps_per_epoch: int
    has_validation: bool  # held-out images are scored (on the main process)
    main: bool  # this process validates, logs and writes files (rank 0, or the only process)
    checkpoint_every_s: float  # how often the trainer writes last.pt between phase ends (0: every epoch)
    label: str  # added to the progress bar's name (the number of ranks)

    def train_epoch(self, epoch: int, frozen: bool, optimizer_step) -> tuple[torch.Tensor | float, dict]:
        """The epoch's optimiser steps (calling `optimizer_step()` after each backward): (mean loss, extra log
        columns). The loss may stay a tensor on the device; the loop copies it to the host when it needs it."""

    def validate(self, frozen: bool) -> dict[str, dict]:
        """Scored rows of the held-out images, 'set/target' -> row (records.score_row)."""

    def agree(self, flag: bool) -> bool:
        """The main process's flag, on every process (one process: the flag)."""

    def share_choice(self, loop: KeptChoice) -> None:
        """After the fit, make every process hold the main process's kept model and history."""

    def predicts_finite(self, body_trained: bool) -> bool:
        """Whether the model predicts finite dissimilarities of its training images (on the main process; with
        `body_trained`, through the body as it now is, else the pretrained body's features)."""

    def extra_state(self) -> dict:
        """What a checkpoint holds besides the loop's state (a generator's state, the priors, the batch settings)."""

    def load_extra_state(self, state: dict) -> None:
        """Check that a checkpoint continues this run (ConfigError 'resume' otherwise) and restore `extra_state`."""


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB. VmHWM where Linux has it: ru_maxrss of a child
    process starts from its parent's peak, which would hide the child's own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class FitResult:
    model: SiameseRDMNet
    config: TrainConfig
    normalisation: dict  # per training set, per target: the rescaling parameters
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float | None = None  # validation score of the best epoch (see `selection_score`)
    priors: dict[str, PriorFit] = field(default_factory=dict)  # per target, when config.prior is not "none"


def seed_summary(result: FitResult) -> dict:
    """What a model file records of each seed's fit: the kept epoch, its validation score, the epochs run, and
    whether the prior alone was kept (no trained epoch showed a validated gain)."""
    best = result.best_score
    return {"best_epoch": result.best_epoch,
            "best_val_score": best if best is not None and math.isfinite(best) else None,
            "epochs_run": sum(row["epoch"] > 0 for row in result.history),
            "prior_alone": bool(result.priors) and result.best_epoch == 0}


def write_log(path: Path, history: list[dict]) -> None:
    """log.csv of a run: one row per epoch, the columns of every row (validation columns appear with validation).
    A value that is not a finite number (a score of a constant prediction) is left empty, as a missing one is:
    the log never holds a NaN, and `siamrdm report` refuses one that does."""
    columns = list(dict.fromkeys(k for row in history for k in row))
    rows = [{k: "" if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()} for row in history]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------- choosing the kept epoch


def selection_score(scores: dict[str, dict]) -> float:
    """The number the best epoch is chosen on: the mean over validation targets of the signed mean rho. Unlike
    the official mean of rho^2 its chance level is 0 whatever the predicted RDM's structure (rdm/records.py), and it
    needs no noise ceiling (one-subject or ceiling-less data); NaN counts as the worst."""
    value = float(np.mean([s["rho_mean"] for s in scores.values()]))
    return value if math.isfinite(value) else -math.inf


# A trained epoch replaces the starting network (the prior) only if its signed mean rho on the validation images
# is above zero by this many standard errors (over subjects): held-out data must show that training predicts
# them, or the model keeps what the pretrained network predicted instead of learning a study's noise.
TRAINING_MUST_BEAT_ZERO_BY_SE = 2.0


def validated_gain(rho_mean: float | None, rho_se: float | None) -> bool:
    """Whether a validated signed mean rho is above zero by TRAINING_MUST_BEAT_ZERO_BY_SE standard errors (with
    no error known, e.g. one subject, above zero)."""
    if rho_mean is None or not math.isfinite(rho_mean):
        return False
    se = rho_se if rho_se is not None and math.isfinite(rho_se) else 0.0
    return rho_mean - TRAINING_MUST_BEAT_ZERO_BY_SE * se > 0


# --------------------------------------------------------------------------- the optimiser


def make_optimizer(config: TrainConfig, head: Iterable[torch.nn.Parameter],
                   body: Iterable[torch.nn.Parameter] | None = None, lr: float | None = None) -> torch.optim.AdamW:
    """The one optimiser set-up (a fit, the LR range test, the benchmarks), so that they all step alike: AdamW
    with the config's weight decay, the head's parameters at `lr` (the config's by default) and, given, the
    body's at `lr * body_lr_factor` (a fit gives them all: frozen ones have no gradient and do not move)."""
    lr = config.lr if lr is None else lr
    groups = [{"params": list(head), "lr": lr}]
    if body is not None:
        groups.append({"params": list(body), "lr": lr * config.body_lr_factor})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.OneCycleLR | None:
    """A one-cycle schedule over the unfrozen epochs' steps (None without unfrozen epochs). OneCycleLR sets its
    first step's rates at once; the frozen epochs before the cycle run at the base rates, so they are put back."""
    if not config.unfrozen_epochs:
        return None
    base_lrs = (config.lr, config.lr * config.body_lr_factor)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=list(base_lrs),
                                                   total_steps=config.unfrozen_epochs * steps_per_epoch)
    for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = lr
    return schedule
