"""Choosing how many epochs to train: one rule for `challenge`, `evaluate` and `fit --select-epochs`.

A model fitted on one set: the set's images are split into SELECTION_FOLDS folds and its subjects into two
halves; a model is trained on the other folds' images with the first half's mean RDM, and its curve (the
signed mean rho of the held-out fold's pairs against the second half's subjects, per epoch: new images in new
people) is recorded. The folds' curves are averaged, and the count is the best validated epoch (`best_epoch`):
the highest mean rho among the prior alone (epoch 0) and the trained epochs that beat zero by
TRAINING_MUST_BEAT_ZERO_BY_SE standard errors, the rule `fit` keeps its epoch by.

A model fitted on several sets (the challenge's final model): the same rule on the cross-set curves, each set's
whole fit scored on every other set, pooled (`final_epochs`). Those fits are nearest in size to the final one,
and they are the only check across studies: another study's images, subjects and scanner. The model is then
trained for that many epochs on the schedule the curves ran (`with_epochs`).

Why the best epoch and not the one-standard-error rule (`one_se_epoch`, the earlier protocol), nor that rule's
count scaled to the fit's images (`scaled_epochs`, rule 4): compared nested inside the training sets
(benchmarks/epoch_rules.py, RESULTS.md), the one-SE rule stops well short of the best epoch, and the best
epoch predicted new people better than the scaled count on average (higher in 4 of 8 cells, lower in 2 within
one SE), which a rule stated before the comparison required.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, TrainingDiverged, printable
from ..io.datasets import BrainDataset
from ..io.progress import Progress
from ..io.tables import number
from ..rdm.core import subject_rdms
from ..rdm.splits import MIN_SPLIT_IMAGES, cross_set_splits, fold_splits, subject_fold_splits
from .config import TrainConfig
from .loop import validated_gain
from .trainer import Trainer


def validation_curves(config: TrainConfig, splits: dict[str, tuple[BrainDataset, BrainDataset]],
                      seeds: tuple[int, ...], progress: bool | Progress = True, keep_predictions: bool = False,
                      ) -> dict[str, list[dict]]:
    """Per split (e.g. '92->118'), per epoch: the validation score of the first target's seed ensemble (any
    further targets are auxiliary outputs trained beside it), as `ensemble_curves` computes it.

    Epochs are scored without chance fields (permutations every epoch would cost more than the training); with
    `keep_predictions` each row also holds its predicted pairs ('predicted', the upper triangle), from which
    `chosen_row` adds them to the epoch that is reported. With `progress`, a bar per split on a terminal.
    """
    return {label: ensemble_curves(config, [train_set], [val_set], seeds, progress, keep_predictions, label)[0]
            for label, (train_set, val_set) in splits.items()}


def ensemble_curves(config: TrainConfig, train: list[BrainDataset], val: list[BrainDataset], seeds: tuple[int, ...],
                    progress: bool | Progress = False, keep_predictions: bool = False, label: str = "",
                    ) -> list[list[dict]]:
    """One fit on `train`, scored after every epoch on each of `val` (one curve per validation set, in order).

    The seeds' trainers step through their epochs (`Trainer.epochs`, the fit's loop, without early stopping:
    a curve runs to the schedule's end) side by side, and their predicted RDMs are averaged before scoring, as
    the final predictor averages them. With a prior the curves start at epoch 0 (the prior alone, before any
    step), so the chosen epoch count can be 0 when training does not improve on the baseline."""
    bars = Progress.of(progress, "challenge").bars
    target = config.targets[0]
    label = label or "+".join(d.name for d in train)
    with naming_the_fit(f"{target} {label}"):
        trainers = [Trainer(replace(config, seed=seed), train, val, progress=False) for seed in seeds]
        curves: list[list[dict]] = [[] for _ in val]

        def record(epoch: int, losses: list) -> None:
            for k, val_set in enumerate(val):
                curves[k].append(_ensemble_row(trainers, k, val_set, target, epoch, losses, keep_predictions))

        if trainers[0].priors:
            record(0, [t.validate_start()["loss"] for t in trainers])
        last = trainers[0].last_epoch  # the schedule's end, or the config's stop_epoch
        with tqdm(total=last, disable=not bars, unit="epoch", desc=printable(f"{target} {label}"), leave=False) as bar:
            for rows in zip(*(t.epochs(early_stopping=False) for t in trainers), strict=True):
                epoch = rows[0]["epoch"]
                if trainers[0].validates(epoch):  # every `validate_every`-th epoch and the last
                    record(epoch, [row["loss"] for row in rows])
                bar.update()
    return curves


@contextlib.contextmanager
def naming_the_fit(fit: str):
    """A diverged fit's error names the fit (target and direction, or final fit): a challenge runs many, several
    at once with `jobs`, and 'diverged at epoch 37' alone does not say which."""
    try:
        yield
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{fit}: {exc.problem}", exc.option) from None


def _ensemble_row(trainers: list[Trainer], index: int, val_set: BrainDataset, target: str, epoch: int, losses: list,
                  keep_prediction: bool = False) -> dict:
    """One epoch of validation set `index`'s curve: the seeds' predicted RDMs averaged, then scored (on the
    device); the mean loss; with `keep_prediction`, the averaged pairs of the target ('predicted')."""
    mean_pairs = torch.stack([t.stepper.last_pairs[val_set.name] for t in trainers]).mean(dim=0)
    loss = None if None in losses else float(np.mean(losses))
    scores = trainers[0].stepper.score_pairs({index: mean_pairs})
    row = {"epoch": epoch, "loss": loss, **scores[f"{val_set.name}/{target}"]}
    if keep_prediction:
        row["predicted"] = mean_pairs[:, 0].double().cpu().numpy()
    return row


SELECTION_FOLDS = 3  # image folds per training set that choose the epoch counts


def fold_curve(curves: list[list[dict]]) -> list[dict]:
    """Several folds' curves as one: per epoch the mean of their `rho_mean` and the standard error of that mean
    (the folds hold different images, so their errors add in quadrature). A missing or NaN value is the worst."""
    merged = []
    for rows in zip(*curves, strict=True):
        means = [number(r.get("rho_mean")) for r in rows]
        ses = [number(r.get("rho_se")) or 0.0 for r in rows]
        mean = -np.inf if None in means else float(np.mean(means))
        merged.append({"epoch": rows[0]["epoch"], "rho_mean": mean,
                       "rho_se": float(np.sqrt(np.sum(np.square(ses)))) / len(rows)})
    return merged


def one_se_epoch(curve: list[dict]) -> int:
    """The fewest epochs whose `rho_mean` is within one standard error of the best epoch's: a gain smaller than
    the noise does not buy more training (Breiman's one-standard-error rule). With a prior (the curve starts at
    epoch 0, the prior alone) a trained epoch must also show a validated gain (train.validated_gain), as `fit`
    requires: otherwise the prior is kept."""
    eligible = _eligible(curve)
    best = max(eligible, key=lambda row: row["rho_mean"])
    return next(row["epoch"] for row in eligible if row["rho_mean"] >= best["rho_mean"] - best["rho_se"])


def best_epoch(curve: list[dict]) -> int:
    """The epoch of the highest `rho_mean` among those `one_se_epoch` may choose (the prior alone, and trained
    epochs with a validated gain): the same rule without its preference for fewer epochs."""
    return max(_eligible(curve), key=lambda row: row["rho_mean"])["epoch"]


def _eligible(curve: list[dict]) -> list[dict]:
    start = curve[0] if curve and curve[0]["epoch"] == 0 else None
    return [row for row in curve if row is start or start is None or validated_gain(row["rho_mean"], row["rho_se"])]


def choose_epochs(fold_curves: dict[str, list[list[dict]]]) -> dict[str, int]:
    """From each training set's fold curves (set name -> one curve per fold): the epoch count its folds choose
    together (`best_epoch` of their mean curve), for the model fitted on that whole set."""
    return {name: best_epoch(fold_curve(curves)) for name, curves in fold_curves.items()}


def scaled_epochs(epochs: int, chosen_on: float, fit_on: float, last_epoch: int, every: int = 1) -> int:
    """Rule 4, replaced (module doc) and kept for the benchmarks that compare it: a count chosen on fits of
    `chosen_on` images, multiplied by fit_on / chosen_on for a fit on `fit_on` images, rounded to a validated
    epoch (a multiple of `every`), capped at `last_epoch`; 0, the prior alone, stays 0."""
    if epochs == 0:
        return 0
    scaled = max(every, round(epochs * fit_on / chosen_on / every) * every)
    return min(last_epoch, scaled)


def final_epochs(cross_curves: list[list[dict]]) -> int:
    """The epoch count of a fit on several sets: `best_epoch` of their cross-set curves pooled (each a whole set's
    fit scored on another set)."""
    return best_epoch(fold_curve(cross_curves))


def with_epochs(config: TrainConfig, epochs: int) -> TrainConfig:
    """The config stopped after `epochs`, its schedule unchanged: epoch e of the final fit takes the same step,
    at the same learning rate, as epoch e of the validation curves it was chosen on."""
    return replace(config, stop_epoch=epochs)


def selection_splits(train: list[BrainDataset], folds: int = SELECTION_FOLDS) -> dict | None:
    """Each training set's folds that choose the epochs ('<set> fold k' -> (training, held-out)): `folds` of them,
    fewer where a set is small; None when a set has too few images for two folds of MIN_SPLIT_IMAGES (then
    nothing can be chosen). Trained on the first half of the subjects, held out: the fold's images of the other
    half (`splits.subject_fold_splits`); a set with a target of one subject is folded by images alone."""
    splits = {}
    for dataset in train:
        k = min(folds, len(dataset) // MIN_SPLIT_IMAGES)
        if k < 2:
            return None
        try:  # a fold whose RDMs cannot be scored (splits.subset): these folds are --select-epochs', not --folds'
            if all(len(subject_rdms(r)) >= 2 for r in dataset.targets.values()):
                splits.update({label: (fit_on, new_people) for label, (fit_on, _, new_people)
                               in subject_fold_splits(dataset, k, seed=0).items()})
            else:
                splits.update(fold_splits(dataset, k, seed=0))
        except ConfigError as exc:
            if exc.option != "folds":
                raise
            raise ConfigError("select_epochs", exc.problem) from None
    return splits


def curves_by_set(curves: dict[str, list[dict]], names: list[str]) -> dict[str, list[list[dict]]]:
    """The fold curves of `selection_splits` grouped by training set, as `choose_epochs` takes them."""
    return {name: [curve for label, curve in curves.items() if label.startswith(f"{name} fold ")] for name in names}


def select_epochs(config: TrainConfig, train: list[BrainDataset], seeds: tuple[int, ...] = (0,),
                  folds: int = SELECTION_FOLDS, progress: bool | Progress = False) -> tuple[int | None, dict]:
    """The epoch count for a model of `config` fitted on all of `train`: on several sets, chosen on their
    cross-set curves (`final_epochs`); on one, on its folds (new images of new people, `choose_epochs`).
    Returns (epochs, the curves by split); epochs is None when a set has too few images for two folds (then the
    caller trains the config's epochs and says so)."""
    if len(train) > 1:
        curves = validation_curves(config, cross_set_splits({d.name: d for d in train}), seeds, progress)
        return final_epochs(list(curves.values())), curves
    splits = selection_splits(train, folds)
    if splits is None:
        return None, {}
    curves = validation_curves(config, splits, seeds, progress)
    return choose_epochs(curves_by_set(curves, [train[0].name]))[train[0].name], curves
