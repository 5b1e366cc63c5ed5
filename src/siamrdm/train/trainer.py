"""The one trainer: a model trained epoch by epoch, validated, the best epoch kept, checkpointed, resumed and
stopped on divergence, for every way of training a Siamese RDM network, on one process or on every rank.

The way of training (loop.Step) is chosen by the data (`make_step`): image sets held in memory (a list of
BrainDataset) train full-batch (fullbatch.FullBatchStep); a large set read from disk (distributed.LargeSet)
trains in mini-batches, on every rank torchrun starts (distributed.MiniBatchStep). `fit` is one model's run in
its folder; predict.fit_seeds, the run driver, calls it once per seed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import TrainingDiverged, printable
from ..io.datasets import BrainDataset
from ..io.files import run_folder, run_mode
from ..io.progress import Progress
from ..io.tables import number
from .checkpoint import load_run_state, reading, save_checkpoint
from .config import ConfigError, TrainConfig, config_from_dict
from .fullbatch import FullBatchStep
from .loop import (
    FitResult,
    Step,
    make_optimizer,
    make_schedule,
    peak_rss_mb,
    selection_score,
    validated_gain,
    write_log,
)
from .ranks import Ranks, current_ranks, from_main


class StepData(Protocol):
    """Data that trains in its own way (distributed.LargeSet: in mini-batches)."""

    def make_step(self, config: TrainConfig, ranks: Ranks | None = None) -> Step:
        """The step that trains `config` on this data, on this process's rank."""


def make_step(config: TrainConfig, train: Sequence[BrainDataset] | StepData, val: Sequence[BrainDataset] = (),
              ranks: Ranks | None = None) -> Step:
    """The way of training the data asks for: image sets in memory train full-batch, on one process, validated
    on `val`; data with its own way (a large set) trains that way, validated on the images it holds out."""
    if hasattr(train, "make_step"):
        if val:
            raise ValueError("a large set validates on the images it holds out (val_fraction), not on `val`")
        return train.make_step(config, ranks)
    return FullBatchStep(config, list(train), list(val))


def _mean_pct(scores: dict[str, dict]) -> float | None:
    values = [s["pct_nc"] for s in scores.values()]
    return None if not values or any(v is None for v in values) else float(np.mean(values))


class Trainer:
    """One model trained epoch by epoch, validated, the best epoch kept, checkpointed; the data chooses how
    (`make_step`). With a large set and `ranks`, one such trainer runs on every rank."""

    def __init__(self, config: TrainConfig, train: Sequence[BrainDataset] | StepData,
                 val: Sequence[BrainDataset] = (), out_dir: str | os.PathLike | None = None, progress: bool = True,
                 ranks: Ranks | None = None):
        step = make_step(config, train, val, ranks)
        self.stepper = step
        self.config, self.model, self.device = step.config, step.model, step.device
        self.priors = step.priors
        self.out_dir = Path(out_dir) if out_dir else None
        self.progress = Progress.of(progress, "fit").bars and step.main  # bars on a terminal only: no \r in logs
        self.checkpoint_every_s = step.checkpoint_every_s
        self.label = step.label
        self.optimizer = make_optimizer(self.config, self.model.head_parameters(), self.model.body_parameters())
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

    def step(self, frozen: bool) -> float:
        """One epoch's optimiser steps outside any epoch and schedule (tests, benchmarks); its loss on the host."""
        loss, _ = self.stepper.train_epoch(self.epoch, frozen, self.optimizer.step)
        return float(loss)

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

    def check_kept(self) -> None:
        """The kept model must predict finite dissimilarities of its training images, or the fit stops
        (TrainingDiverged, naming the learning rate) before any model file holds it: a far too high rate can leave
        finite weights whose outputs overflow, which neither the losses (each the one before its step) nor the
        weights' check see."""
        body_trained = self.best_epoch > self.config.frozen_epochs
        finite = self.stepper.predicts_finite(body_trained) if self.stepper.main else True
        if not self.stepper.agree(finite):
            raise TrainingDiverged(f"training diverged: the model of epoch {self.best_epoch}, the one kept, predicts "
                                   "NaN or infinite dissimilarities of its training images; try a lower learning "
                                   "rate")

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

    def epochs(self, early_stopping: bool = True) -> Iterator[dict]:
        """The remaining epochs, one at a time (their log rows), up to the schedule's end or, with
        `early_stopping`, an early stop. The fit's loop; selection.ensemble_curves steps several seeds' trainers
        through it side by side."""
        while self.epoch < self.last_epoch and not (early_stopping and self.should_stop()):
            yield self.run_epoch()

    def fit(self, checkpoint_every_s: float | None = None) -> FitResult:
        """Run the remaining epochs; with an out_dir, checkpoint `last.pt` as it goes (at each phase's end and
        every `checkpoint_every_s` seconds, the step's own by default) and at the end. The model returned holds
        the kept epoch's weights."""
        every_s = self.checkpoint_every_s if checkpoint_every_s is None else checkpoint_every_s
        last_save = time.perf_counter()
        if self.epoch == 0 and self.stepper.has_validation and self.stepper.main and not self.history:
            self.validate_start()
        bar = tqdm(total=self.last_epoch, initial=self.epoch, disable=not self.progress, unit="epoch",
                   desc=printable(f"fit {'+'.join(self.config.targets)}{self.label}"), leave=False)
        for row in self.epochs():
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
        self.check_kept()
        return FitResult(self.model, self.config, self.stepper.normalisation, self.history, self.best_epoch,
                         self.best_score, self.priors)


def continue_run(trainer: Trainer, last: Path, ranks: Ranks) -> None:
    """Resume `trainer` from its checkpoint `last` when there is one: read by the main process and sent to every
    rank, so all continue from the same state even where they do not share the run folder's disk."""
    with reading(last):
        state = load_run_state(last) if ranks.main and last.is_file() else None
    state = from_main(state, ranks)
    if state is not None:
        with reading(last):  # a checkpoint that does not fit this run: one line naming it
            trainer.load_state(state)


def fit(config: TrainConfig, train: Sequence[BrainDataset] | StepData, val: Sequence[BrainDataset] = (),
        out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
        ranks: Ranks | None = None) -> FitResult:
    """Train one model; with `resume`, continue from out_dir/last.pt when it exists. The main process owns
    out_dir (files.run_folder; inside a run it holds, a seed's folder, only its lock)."""
    if resume and out_dir is None:
        raise ConfigError("resume", "needs out_dir, the folder of the run to continue")
    ranks = ranks or current_ranks()
    with contextlib.ExitStack() as stack:
        if out_dir is not None and ranks.main:
            stack.enter_context(run_folder(out_dir, "fit", run_mode(resume=resume)))
        trainer = Trainer(config, train, val, out_dir, progress, ranks)
        if resume:
            continue_run(trainer, Path(out_dir) / "last.pt", ranks)
        return trainer.fit()
