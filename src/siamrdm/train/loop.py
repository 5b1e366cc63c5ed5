"""The one training loop: optimiser, schedule, epochs, validation, the kept epoch, early stopping, checkpoints,
resume and divergence, for every way of training a Siamese RDM network.

What differs between ways of training lives in a *step* object (`Step`): how an epoch's optimiser steps are made
(train.FullBatchStep: all pairs of cached or re-computed features in one step; distributed.MiniBatchStep:
mini-batches, with collectives across ranks), how the held-out images are scored, and what a checkpoint must
hold besides the loop's own state. The loop calls `optimizer_step` once per optimiser step it is handed back, so
the one-cycle schedule advances per step whatever the number of steps in an epoch.
"""

from __future__ import annotations

import copy
import csv
import math
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import TrainingDiverged
from ..io.files import atomic_path
from ..io.tables import number
from ..model.network import SiameseRDMNet
from ..model.prior import PriorFit
from .checkpoint import save_checkpoint
from .config import ConfigError, TrainConfig, config_from_dict


class Step(Protocol):
    """What one way of training does; the loop (`TrainingLoop`) does the rest."""

    config: TrainConfig
    model: SiameseRDMNet
    device: torch.device
    priors: dict[str, PriorFit]  # per target; empty without a prior (then the loop's epoch 0 is the untrained head)
    normalisation: dict[str, dict]  # per training set, per target: the rescaling of its targets
    steps_per_epoch: int
    has_validation: bool  # held-out images are scored (on the main process)
    main: bool  # this process validates, logs and writes files (rank 0, or the only process)

    def train_epoch(self, epoch: int, frozen: bool, optimizer_step) -> tuple[torch.Tensor | float, dict]:
        """The epoch's optimiser steps (calling `optimizer_step()` after each backward): (mean loss, extra log
        columns). The loss may stay a tensor on the device; the loop copies it to the host when it needs it."""

    def validate(self, frozen: bool) -> dict[str, dict]:
        """Scored rows of the held-out images, 'set/target' -> row (records.score_row)."""

    def agree(self, flag: bool) -> bool:
        """The main process's flag, on every process (one process: the flag)."""

    def share_choice(self, loop: TrainingLoop) -> None:
        """After the fit, make every process hold the main process's kept model and history."""

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


def _mean_pct(scores: dict[str, dict]) -> float | None:
    values = [s["pct_nc"] for s in scores.values()]
    return None if not values or any(v is None for v in values) else float(np.mean(values))


# --------------------------------------------------------------------------- the loop


def make_optimizer(model: SiameseRDMNet, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW in two groups: the head at `lr`, the body at `lr * body_lr_factor` (it only moves once unfrozen)."""
    return torch.optim.AdamW(
        [{"params": model.head_parameters(), "lr": config.lr},
         {"params": model.body_parameters(), "lr": config.lr * config.body_lr_factor}],
        weight_decay=config.weight_decay)


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


class TrainingLoop:
    """One run: the step's model trained epoch by epoch, validated, the best epoch kept, checkpointed."""

    def __init__(self, step: Step, out_dir: str | Path | None = None, progress: bool = True,
                 checkpoint_every_s: float = 30.0, label: str = ""):
        self.stepper = step
        self.config, self.model, self.device = step.config, step.model, step.device
        self.priors = step.priors
        self.out_dir = Path(out_dir) if out_dir else None
        self.progress = progress and step.main
        self.checkpoint_every_s = checkpoint_every_s
        self.label = label
        self.optimizer = make_optimizer(self.model, self.config)
        self.scheduler = make_schedule(self.optimizer, self.config, step.steps_per_epoch)
        self.last_scores: dict[str, dict] = {}  # the latest validation's scores, 'set/target' -> row
        self.epoch = 0
        self.history: list[dict] = []
        self._unsettled: list[dict] = []  # rows whose loss is still a tensor on the device
        self._unsettled_weights: list[torch.Tensor | None] = []  # per such row: its steps left finite weights
        self._epoch_weights: torch.Tensor | None = None  # this epoch's steps so far left finite weights (device)
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.best_epoch, self.best_score = 0, None

    @property
    def last_epoch(self) -> int:
        return self.config.last_epoch

    # ---- epochs

    def optimizer_step(self, frozen: bool) -> None:
        """One optimiser step, and the schedule's once the body is unfrozen. Whether the weights it moved are all
        finite joins the epoch's flag, on the device (read with the losses, `settle_losses`): a step can leave
        NaN or infinite weights behind a finite loss (the loss is the one before the step), and the last step's
        weights are the ones a model file would hold."""
        self.optimizer.step()
        if not frozen and self.scheduler is not None:
            self.scheduler.step()
        moved = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if moved:
            finite = torch.stack([torch.isfinite(p).all() for p in moved]).all()
            self._epoch_weights = finite if self._epoch_weights is None else self._epoch_weights & finite

    def run_epoch(self) -> dict:
        self.epoch += 1
        frozen = self.epoch <= self.config.frozen_epochs
        if not frozen and self.scheduler is not None and self.scheduler.last_epoch == 0:  # the cycle starts here
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
                group["lr"] = lr
        self.model.freeze_body(frozen, self.config.train_stages)
        start = time.perf_counter()
        self._epoch_weights = None
        loss, extra = self.stepper.train_epoch(self.epoch, frozen, lambda: self.optimizer_step(frozen))
        row = {"epoch": self.epoch, "phase": "frozen" if frozen else "unfrozen", "loss": loss,
               "lr": self.optimizer.param_groups[0]["lr"], **extra}
        self._unsettled.append(row)
        self._unsettled_weights.append(self._epoch_weights)
        if self.epoch % self.config.validate_every == 0 or self.epoch >= self.last_epoch:
            self.settle_losses()
        if self.validates(self.epoch):
            if self.stepper.main:
                self._record_validation(row, frozen)
        elif not self.stepper.has_validation:
            self.best_epoch, self.best_state = self.epoch, self.model.state_dict()
        row["seconds"] = time.perf_counter() - start
        row["peak_rss_mb"] = peak_rss_mb()
        self.history.append(row)
        return row

    def validate_start(self) -> dict:
        """Epoch 0: the untrained model scored before any step. With a prior it is the prior alone, so the
        best epoch can be 0 when training does not improve on the starting network."""
        row = {"epoch": 0, "phase": "start", "loss": None, "lr": self.optimizer.param_groups[0]["lr"]}
        self._record_validation(row, frozen=True)
        row["seconds"] = 0.0
        self.history.append(row)
        return row

    def _record_validation(self, row: dict, frozen: bool) -> None:
        start = time.perf_counter()
        self.last_scores = self.stepper.validate(frozen)
        row["val_seconds"] = time.perf_counter() - start
        self.record_validation(row, self.last_scores)

    def record_validation(self, row: dict, scores: dict[str, dict]) -> None:
        """Add an epoch's validation scores to its log row and keep the weights if the epoch is the best so far.
        With a prior (epoch 0 is the prior alone), a trained epoch is kept only if it shows a validated gain
        (`validated_gain`, on every validation target)."""
        row["val_pct_nc"] = _mean_pct(scores)
        row["val_r2"] = float(np.mean([v["r2"] for v in scores.values()]))
        row["val_rho"] = float(np.mean([v["rho_mean"] for v in scores.values()]))
        row["val_rho_se"] = float(np.mean([number(v.get("rho_se")) or 0.0 for v in scores.values()]))
        row.update({f"val/{k}": v["pct_nc"] for k, v in scores.items()})
        chosen_on = selection_score(scores)
        if self.epoch > 0 and self.priors and not all(
                validated_gain(v["rho_mean"], v.get("rho_se")) for v in scores.values()):
            return
        if self.best_score is None or chosen_on > self.best_score:
            self.best_score, self.best_epoch = chosen_on, self.epoch
            self.best_state = copy.deepcopy(self.model.state_dict())

    def settle_losses(self) -> None:
        """The losses of the epochs since the last call, and whether their steps left finite weights, copied to
        the host in one go (one synchronisation with the device every `validate_every` epochs, not every epoch);
        a NaN or infinite loss, or a step that made a weight NaN or infinite, stops the run (TrainingDiverged,
        naming the learning rate), before any checkpoint, validation or model file holds such weights."""
        rows, self._unsettled = self._unsettled, []
        flags, self._unsettled_weights = self._unsettled_weights, []
        tensors = [row for row in rows if isinstance(row["loss"], torch.Tensor)]
        stepped = [k for k, flag in enumerate(flags) if flag is not None]
        finite: dict[int, float] = {}  # row index -> 1.0 if its steps left finite weights
        if tensors or stepped:
            values = torch.stack([row["loss"].float() for row in tensors]
                                 + [flags[k].float() for k in stepped]).cpu().tolist()
            for row, value in zip(tensors, values[: len(tensors)], strict=True):
                row["loss"] = value
            finite = dict(zip(stepped, values[len(tensors):], strict=True))
        for k, row in enumerate(rows):
            if not math.isfinite(row["loss"]):
                raise TrainingDiverged(f"training diverged at epoch {row['epoch']} (loss {row['loss']}); try a "
                                       "lower learning rate")
            if not finite.get(k, 1.0):
                raise TrainingDiverged(f"training diverged at epoch {row['epoch']} (its steps left NaN or infinite "
                                       "weights); try a lower learning rate")

    def validates(self, epoch: int) -> bool:
        """Whether `epoch` is scored: with validation, every `validate_every`-th epoch and the last one."""
        return self.stepper.has_validation and (epoch % self.config.validate_every == 0 or epoch == self.last_epoch)

    def should_stop(self) -> bool:
        """Early stopping, decided by the main process just after a validation, and followed by every process:
        `early_stopping` epochs or more since the best one. Between validations nothing new is known, so a
        patience shorter than `validate_every` waits for the next validation instead of stopping before the run
        was ever scored (and keeping the untrained model)."""
        patience = self.config.early_stopping
        stop = bool(self.stepper.main and patience and self.validates(self.epoch)
                    and self.epoch - self.best_epoch >= patience)
        return self.stepper.agree(stop)

    # ---- checkpoints

    def state(self) -> dict:
        return {"config": asdict(self.config), "epoch": self.epoch, "history": self.history,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "best_state": self.best_state, "best_epoch": self.best_epoch, "best_score": self.best_score,
                **self.stepper.extra_state()}

    def load_state(self, state: dict) -> None:
        """Continue a run from its checkpoint (a ConfigError naming 'resume' when it is another run's)."""
        saved = config_from_dict(state["config"])
        if replace(saved, device=self.config.device) != self.config:
            raise ConfigError("resume", "the checkpoint in the run folder has other settings; use the same ones "
                                        "or a new folder")
        self.stepper.load_extra_state(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.best_state, self.best_epoch = state["best_state"], state["best_epoch"]
        self.best_score = state["best_score"]

    def save(self) -> None:
        """last.pt and log.csv in the run folder (by the main process)."""
        if self.out_dir and self.stepper.main:
            self.settle_losses()
            save_checkpoint(self.out_dir / "last.pt", self.state())
            if self.history:
                write_log(self.out_dir / "log.csv", self.history)

    def fit(self, checkpoint_every_s: float | None = None) -> FitResult:
        """Run the remaining epochs; with an out_dir, checkpoint `last.pt` as it goes (at each phase's end and
        every `checkpoint_every_s` seconds, the loop's own by default) and at the end. The model returned holds
        the kept epoch's weights."""
        every_s = self.checkpoint_every_s if checkpoint_every_s is None else checkpoint_every_s
        last_save = time.perf_counter()
        if self.epoch == 0 and self.stepper.has_validation and self.stepper.main and not self.history:
            self.validate_start()
        bar = tqdm(total=self.config.epochs, initial=self.epoch, disable=not self.progress, unit="epoch",
                   desc=f"fit {'+'.join(self.config.targets)}{self.label}", leave=False)
        while self.epoch < self.last_epoch and not self.should_stop():
            row = self.run_epoch()
            bar.update(1)
            val, loss = row.get("val_pct_nc"), row["loss"]
            bar.set_postfix(phase=row["phase"], loss=f"{loss:.4f}" if isinstance(loss, float) else "-",
                            val=("-" if val is None else f"{val:.1f}%"), best=self.best_epoch)
            phase_end = self.epoch in (self.config.frozen_epochs, self.last_epoch)
            if self.out_dir and (phase_end or time.perf_counter() - last_save >= every_s):
                self.save()
                last_save = time.perf_counter()
        bar.close()
        self.settle_losses()
        self.save()
        self.model.load_state_dict(self.best_state)
        self.stepper.share_choice(self)
        return FitResult(self.model, self.config, self.stepper.normalisation, self.history, self.best_epoch,
                         self.best_score, self.priors)
