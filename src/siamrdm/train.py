"""Training the Siamese RDM network: data preparation, pair-factorised steps, the schedule, validation, resume.

The run's settings live in config.py, augmentation in augment.py, checkpoint files in checkpoint.py; this
module re-exports their public names for callers of `siamrdm.train`.

One epoch is one optimiser step on all pairs within every training set (pairs never cross sets).
While the body is frozen its features are computed once per image and augmented view and cached; once
it is unfrozen, each step runs the body once per image (in chunks, so memory stays bounded) and the
head on all pairs. Validation uses the official metric on held-out images; the best epoch is kept.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .augment import augment_batch, crop_flip, draw_boxes, image_generator
from .backbones import create_body, images_to_tensor
from .checkpoint import load_checkpoint as load_checkpoint  # re-exported: tests and callers read checkpoints here
from .checkpoint import load_run_state, reading, save_checkpoint
from .config import PRESETS as PRESETS  # re-exported: callers of siamrdm.train find the run's settings here too
from .config import ConfigError as ConfigError
from .config import TrainConfig as TrainConfig
from .config import check_config as check_config
from .config import config_from_dict as config_from_dict
from .config import config_from_preset as config_from_preset
from .config import pick_device as pick_device
from .data import BrainDataset, DataError, ImageSet, group_average, subject_rdms, target_key
from .errors import TrainingDiverged as TrainingDiverged
from .files import atomic_path, run_folder, run_mode
from .model import (
    SiameseRDMNet,
    all_pairs,
    all_pairs_correlation_loss,
    all_pairs_loss,
    all_pairs_outputs,
    head_config,
)
from .prior import PriorFit, fit_prior, prior_vector, stage_rdms
from .rdm import rescale, square_rdm, upper_tri
from .scoring import score_row
from .scoring_torch import spearman_torch, standardised_ranks_torch
from .tables import number

# --------------------------------------------------------------------------- data for training


@dataclass
class PairTargets:
    """One image set ready for training: pixels, and the rescaled group-mean target of each pair."""

    name: str
    images: torch.Tensor  # (N, 3, S, S) in [0, 1]
    targets: torch.Tensor  # (P, T), P = N(N-1)/2 pairs in upper-triangle order
    subject_rdms: dict[str, np.ndarray]  # for validation with the official metric
    normalisation: dict[str, dict[str, float]]
    keys: list[str]  # each image's identity (its folder and name): for the feature cache
    official: bool = False  # an Algonauts set: its targets' published ceilings apply
    prior_pairs: torch.Tensor | None = None  # (P, T) the prior's values, already subtracted from `targets`


def prepare_set(dataset: BrainDataset, targets: tuple[str, ...], config: TrainConfig) -> PairTargets:
    missing = [t for t in targets if t not in dataset.targets]
    if missing:
        raise DataError(f"image set {dataset.name}: no RDMs for target(s) {', '.join(missing)}")
    columns, normalisation = [], {}
    for target in targets:
        values, params = rescale(upper_tri(group_average(dataset.targets[target])), config.rescale)
        columns.append(values)
        normalisation[target] = params
    return PairTargets(
        name=dataset.name,
        images=images_to_tensor(dataset.images.images, config.image_size),
        targets=torch.tensor(np.stack(columns, axis=1), dtype=torch.float32),
        subject_rdms={t: dataset.targets[t] for t in targets},
        normalisation=normalisation,
        keys=[f"{dataset.images.source}/{name}" for name in dataset.images.names],
        official=dataset.official,
    )


def subset(dataset: BrainDataset, index: np.ndarray, name: str) -> BrainDataset:
    """The images `index` of a dataset with their RDMs (rows and columns)."""
    images = ImageSet([dataset.images.names[k] for k in index], [dataset.images.images[k] for k in index],
                      dataset.images.source)
    targets = {t: r[..., index[:, None], index[None, :]] for t, r in dataset.targets.items()}
    return BrainDataset(name, images, targets, dataset.official)


def split_holdout(dataset: BrainDataset, fraction: float, seed: int) -> tuple[BrainDataset, BrainDataset]:
    """Hold out a random `fraction` of a set's images for validation (pairs among them only)."""
    n = len(dataset)
    if not 0 < fraction < 1:
        raise ConfigError("val_fraction", f"must be between 0 and 1, got {fraction}")
    n_val = max(3, round(n * fraction))
    if n - n_val < 3:
        raise ConfigError("val_fraction", f"{fraction} of the {n} images of set {dataset.name} leaves "
                                          f"{n - n_val} for training; both sides need at least 3")
    order = np.random.default_rng(seed).permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return subset(dataset, train, f"{dataset.name}-train"), subset(dataset, val, f"{dataset.name}-val")


# Frozen-body features of single images, shared by every Trainer of a process: a challenge fits many models on
# the same images (targets, directions, held-out splits), and a pretrained body gives each image and augmented
# view the same features every time. Keyed by everything the features depend on; bounded in entries.
_VIEW_CACHE: dict[tuple, torch.Tensor] = {}
_VIEW_CACHE_ENTRIES = 20_000


@torch.no_grad()
def frozen_views(model: SiameseRDMNet, data: PairTargets, config: TrainConfig, n_views: int,
                 device: torch.device) -> torch.Tensor:
    """(V, N, C, H, W) raw body features of every image: view 0 plain, then augmented views.

    Each image's augmentation is drawn from a generator seeded by the run's seed, the image's identity and
    the view, so an image has the same views whichever subset of its set it is trained in (folds, held-out
    splits), and cached features can be reused. The body must be the untrained pretrained one.
    """
    body_key = (config.backbone, config.weights, config.stage, config.image_size, config.crop_scale, config.seed,
                str(device))
    out = None
    for view in range(n_views):
        views = [(*body_key, key, view) for key in data.keys]  # what an image's crop is seeded by
        keys = [(*v, config.precision, config.channels_last) for v in views]  # the body's numerics too
        missing = [k for k, key in enumerate(keys) if key not in _VIEW_CACHE]
        if missing:
            pixels = data.images[missing]
            if view:
                size = pixels.shape[-1]
                boxes = torch.cat([draw_boxes(1, size, config.crop_scale, image_generator(views[k])) for k in missing])
                pixels = crop_flip(pixels, boxes)
            computed = body_features(model, pixels, config, device)
            if len(_VIEW_CACHE) + len(missing) > _VIEW_CACHE_ENTRIES:
                _VIEW_CACHE.clear()
            for m, k in enumerate(missing):
                _VIEW_CACHE[keys[k]] = computed[m]
        stacked = torch.stack([_VIEW_CACHE[key] for key in keys])
        if out is None:
            out = stacked.new_empty((n_views, *stacked.shape))
        out[view] = stacked
    return out


def body_pass(model: SiameseRDMNet, pixels: torch.Tensor, config: TrainConfig, device: torch.device) -> torch.Tensor:
    """The body on one chunk of pixels, in the config's precision (bf16: under autocast, so the output is bf16)
    and memory layout (channels_last, as `build_model` laid out the body's weights)."""
    pixels = pixels.to(device, non_blocking=True)
    if config.channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        return model.body(pixels)


@torch.no_grad()
def body_features(model: SiameseRDMNet, images: torch.Tensor, config: TrainConfig,
                  device: torch.device) -> torch.Tensor:
    """Raw body features of images in chunks, kept on `device`: float32, contiguous (N, C, H, W), whatever the
    body's precision and layout, so cached features and the head see one dtype and layout."""
    chunk = config.body_chunk
    return torch.cat([body_pass(model, images[k : k + chunk], config, device).float()
                      for k in range(0, len(images), chunk)]).contiguous()


# --------------------------------------------------------------------------- validation


def predict_pairs(model: SiameseRDMNet, features: torch.Tensor) -> torch.Tensor:
    """Symmetric predictions for all pairs i < j of images with standardised features: (P, T)."""
    ordered = all_pairs_outputs(model.head, features)
    i, j = all_pairs(len(features), features.device)
    return (ordered[i, j] + ordered[j, i]) / 2


@torch.no_grad()
def feature_views(model: SiameseRDMNet, pixels: torch.Tensor, config: TrainConfig,
                  device: torch.device) -> list[torch.Tensor]:
    """Standardised body features of the images, and with the config's `tta` of their mirror images too."""
    views = [pixels, pixels.flip(-1)] if config.tta else [pixels]
    return [model.standardise(body_features(model, v, config, device)) for v in views]


@torch.no_grad()
def predict_upper(model: SiameseRDMNet, views: list[torch.Tensor]) -> torch.Tensor:
    """(P, T) predictions for the pairs in upper-triangle order, averaged over the feature views."""
    return sum(predict_pairs(model, v) for v in views) / len(views)


@torch.no_grad()
def predict_rdms(model: SiameseRDMNet, views: list[torch.Tensor], prior: np.ndarray | None = None) -> np.ndarray:
    """(T, N, N) RDMs predicted from feature views (averaged over them), plus the prior's RDMs if any."""
    rdms = pairs_to_rdms(predict_upper(model, views), len(views[0]))
    return rdms if prior is None else rdms + prior


def prior_rdms(priors: dict[str, PriorFit], images: ImageSet | list[np.ndarray],
               config: TrainConfig) -> np.ndarray | None:
    """(T, N, N) prior RDMs of the config's targets for these images (None without a prior)."""
    if not priors:
        return None
    rdms = stage_rdms(images, config.backbone, config.weights, config.image_size)
    return np.stack([square_rdm(prior_vector(priors[t], rdms), len(images)) for t in config.targets])


def pairs_to_rdms(pairs: torch.Tensor, n: int) -> np.ndarray:
    """(P, T) pair predictions -> (T, N, N) symmetric RDMs with zero diagonal."""
    values = pairs.detach().double().cpu().numpy()
    return np.stack([square_rdm(column, n) for column in values.T])


# --------------------------------------------------------------------------- fitting


def restore_run(trainer, state: dict) -> None:
    """What both trainers (this one and distributed.MiniBatchTrainer) keep alike in a checkpoint: the weights,
    the optimiser and schedule, the epoch, the history and the best epoch so far."""
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None and state["scheduler"]:
        trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.epoch, trainer.history = state["epoch"], state["history"]
    trainer.best_state, trainer.best_epoch = state["best_state"], state["best_epoch"]
    trainer.best_score = state["best_score"]


def write_log(path: Path, history: list[dict]) -> None:
    """log.csv of a run: one row per epoch, the columns of every row (validation columns appear with validation)."""
    columns = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


@dataclass
class FitResult:
    model: SiameseRDMNet
    config: TrainConfig
    normalisation: dict  # per training set, per target: the rescaling parameters
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float | None = None  # validation score of the best epoch (see `selection_score`)
    priors: dict[str, PriorFit] = field(default_factory=dict)  # per target, when config.prior is not "none"


def build_model(config: TrainConfig, device: torch.device | None = None) -> SiameseRDMNet:
    torch.manual_seed(config.seed)
    body = create_body(config.backbone, config.weights, config.stage)
    head = head_config(config.head)
    if config.correction_bound is not None:
        head = dataclasses.replace(head, output_bound=config.correction_bound)
    model = SiameseRDMNet(body, len(config.targets), config.image_size, head, distance_init=config.distance_init)
    if config.channels_last:
        model.body.to(memory_format=torch.channels_last)
    return model.to(device or pick_device(config.device))


def _mean_pct(scores: dict[str, dict]) -> float | None:
    values = [s["pct_nc"] for s in scores.values()]
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def selection_score(scores: dict[str, dict]) -> float:
    """The number the best epoch is chosen on: the mean over validation targets of the signed mean rho. Unlike
    the official mean of rho^2 its chance level is 0 whatever the predicted RDM's structure (scoring.py), and it
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


def record_validation(trainer, row: dict, scores: dict[str, dict]) -> None:
    """Add an epoch's validation scores to its log row and keep the trainer's weights if the epoch is the best so
    far: one rule for the full-batch `Trainer` and the mini-batch trainer (distributed.py), so both log the same
    columns and keep the same epoch. With a prior (epoch 0 is the prior alone), a trained epoch is kept only if
    it shows a validated gain (`validated_gain`, on every validation target)."""
    row["val_pct_nc"] = _mean_pct(scores)
    row["val_r2"] = float(np.mean([v["r2"] for v in scores.values()]))
    row["val_rho"] = float(np.mean([v["rho_mean"] for v in scores.values()]))
    row["val_rho_se"] = float(np.mean([number(v.get("rho_se")) or 0.0 for v in scores.values()]))
    row.update({f"val/{k}": v["pct_nc"] for k, v in scores.items()})
    chosen_on = selection_score(scores)
    if trainer.epoch > 0 and getattr(trainer, "priors", None) and not all(
            validated_gain(v["rho_mean"], v.get("rho_se")) for v in scores.values()):
        return
    if trainer.best_score is None or chosen_on > trainer.best_score:
        trainer.best_score, trainer.best_epoch = chosen_on, trainer.epoch
        trainer.best_state = copy.deepcopy(trainer.model.state_dict())


class Trainer:
    """Holds the state of one run so that a step, an epoch, a checkpoint and a resume each stay small."""

    def __init__(self, config: TrainConfig, train: list[BrainDataset], val: list[BrainDataset] = (),
                 out_dir: str | os.PathLike | None = None, progress: bool = True):
        if not train:
            raise DataError("no training sets given")
        self.config = config
        self.device = pick_device(config.device)
        self.out_dir = Path(out_dir) if out_dir else None
        self.progress = progress
        self.model = build_model(config, self.device)
        self.model.body.eval()  # BatchNorm statistics stay those of ImageNet, frozen or not
        self.train_sets = [prepare_set(d, config.targets, config) for d in train]
        self.val_sets = [prepare_set(d, config.targets, config) for d in val]
        self.priors = self._fit_priors(train) if config.prior != "none" else {}
        for s in self.train_sets + self.val_sets:  # pixels stay on the device: augmentation runs there
            s.images = s.images.to(self.device)
        # Validation on the device: the subjects' standardised ranks once, the prior's pairs once (float64 where
        # the device has it, as the numpy metric computes).
        score_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._val_ranks = [{t: standardised_ranks_torch(torch.from_numpy(upper_tri(subject_rdms(r))).to(
                            self.device, score_dtype)) for t, r in s.subject_rdms.items()} for s in self.val_sets]
        self._val_priors = [None if p is None else torch.from_numpy(upper_tri(p).T.copy()).to(self.device, score_dtype)
                            for p in (prior_rdms(self.priors, d.images, config) for d in val)]
        self._score_dtype = score_dtype
        self.generator = torch.Generator().manual_seed(config.seed)
        # Body features per set for the frozen phase: view 0 plain, then augmented views.
        n_views = config.augment_views if config.augment and config.frozen_epochs else 1
        self._views = [frozen_views(self.model, s, config, n_views, self.device) for s in self.train_sets]
        self.model.set_feature_stats(torch.cat([views[0] for views in self._views]))
        self.optimizer = torch.optim.AdamW(
            [{"params": self.model.head_parameters(), "lr": config.lr},
             {"params": self.model.body_parameters(), "lr": config.lr * config.body_lr_factor}],
            weight_decay=config.weight_decay,
        )
        self.scheduler = None
        if config.unfrozen_epochs:
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=[config.lr, config.lr * config.body_lr_factor],
                total_steps=config.unfrozen_epochs)
            # OneCycleLR sets its first step's rates at once; the frozen epochs before the cycle run at the base rates.
            base_lrs = (config.lr, config.lr * config.body_lr_factor)
            for group, lr in zip(self.optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = lr
        self._val_features: dict[int, torch.Tensor] = {}
        self.last_scores: dict[str, dict] = {}  # the latest validation's scores, 'set/target' -> row
        self.last_pairs: dict[str, torch.Tensor] = {}  # the latest validation's (P, T) pair predictions per set
        self.timings: dict[str, float] | None = None  # seconds per named section of `step`, when a benchmark asks
        self.epoch = 0
        self.history: list[dict] = []
        self._unsettled: list[dict] = []  # rows of this run's epochs whose loss is still a tensor on the device
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.best_epoch, self.best_score = 0, None

    def _fit_priors(self, train: list[BrainDataset]) -> dict[str, PriorFit]:
        """Fit each target's prior on the training images, make the training targets the prior's residuals and
        start the head at zero, so that before any step the model predicts exactly the prior."""
        config = self.config
        rdms = [stage_rdms(d.images, config.backbone, config.weights, config.image_size) for d in train]
        priors = {}
        for k, target in enumerate(config.targets):
            columns = [s.targets[:, k].double().numpy() for s in self.train_sets]
            priors[target] = fit_prior(config.prior, rdms, [d.targets[target] for d in train], columns)
            for s, stage in zip(self.train_sets, rdms, strict=True):
                values = torch.from_numpy(prior_vector(priors[target], stage)).float()
                s.targets[:, k] -= values
                if s.prior_pairs is None:
                    s.prior_pairs = torch.zeros_like(s.targets)
                s.prior_pairs[:, k] = values
        with torch.no_grad():
            self.model.head.linear.weight.zero_()
            self.model.head.linear.bias.zero_()
        return priors

    # ---- steps

    def plain_features(self, index: int) -> torch.Tensor:
        """Raw body features of training set `index`'s images, not augmented (the frozen body's view 0)."""
        return self._views[index][0]

    def _frozen_features(self, index: int) -> torch.Tensor:
        """Body features of one set for this epoch: each image's view drawn from the cached pool."""
        stacked = self._views[index]  # (V, N, C, H, W)
        pick = torch.randint(len(stacked), (stacked.shape[1],), generator=self.generator).to(self.device)
        return stacked[pick, torch.arange(stacked.shape[1], device=self.device)]

    @contextlib.contextmanager
    def section(self, name: str):
        """Time a named part of a step into `self.timings` when a benchmark set it to a dict (else free)."""
        if self.timings is None:
            yield
            return
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        yield
        sync()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def pair_loss(self, features: torch.Tensor, data: PairTargets) -> torch.Tensor:
        """The loss of both pair orders against the rescaled target: MSE (model.all_pairs_loss, exactly the loss
        of pair_predictions(both_orders=True)) or 1 - Pearson r of prior + head against the target
        (model.all_pairs_correlation_loss). Tiled over images x images, so memory stays O(N) however many pairs."""
        features = self.model.standardise(features)
        if self.config.loss == "correlation":
            return all_pairs_correlation_loss(self.model.head, features, data.targets.to(self.device),
                                              None if data.prior_pairs is None else data.prior_pairs.to(self.device))
        return all_pairs_loss(self.model.head, features, data.targets.to(self.device))

    def step(self, frozen: bool) -> float:
        """One optimiser step (`device_step`); its loss copied to the host."""
        return self.device_step(frozen).item()

    def device_step(self, frozen: bool) -> torch.Tensor:
        """One optimiser step on all pairs within every training set (pairs never cross sets); the loss stays
        on the device (0-d tensor), so that a step does not wait for the device to finish.

        The loss is the mean over all those pairs (each set's mean weighted by its pair count), so an epoch
        is one step whether there is one set or two: epoch counts chosen on a one-set validation curve mean
        the same number of steps, on the same schedule, in a final fit on both sets.
        """
        self.optimizer.zero_grad(set_to_none=True)
        total_pairs = sum(len(s.targets) for s in self.train_sets)
        mean_loss = torch.zeros((), device=self.device)
        for index, data in enumerate(self.train_sets):
            share = len(data.targets) / total_pairs
            if frozen:
                with self.section("head_forward_backward"):
                    loss = self.pair_loss(self._frozen_features(index), data)
                    (loss * share).backward()
            else:
                with self.section("augment"):
                    images = data.images
                    if self.config.augment:
                        images = augment_batch(data.images, self.config, self.generator)
                # Two passes keep memory bounded: the head's gradient w.r.t. the features first, then the body
                # in chunks, back-propagating that gradient. Same gradient as one big graph.
                with self.section("body_forward_no_grad"):
                    features = body_features(self.model, images, self.config, self.device)
                    features.requires_grad_()
                with self.section("head_forward_backward"):
                    loss = self.pair_loss(features, data)
                    (loss * share).backward()
                with self.section("body_forward_backward"):
                    chunk = self.config.body_chunk
                    for k in range(0, len(images), chunk):
                        out = body_pass(self.model, images[k : k + chunk], self.config, self.device)
                        out.backward(features.grad[k : k + chunk].to(out.dtype))
            mean_loss += loss.detach() * share
        with self.section("optimizer"):
            self.optimizer.step()
        return mean_loss

    def naive_step(self, index: int, frozen: bool = False, max_batches: int | None = None) -> float:
        """The per-pair training of published Siamese RDM models, for comparison and benchmarks: the body runs
        on both images of every pair (each image augmented on its own), one optimiser step per `pair_batch`
        pairs, pairs shuffled. `max_batches` stops early (a timing sample). Returns the mean loss per pair."""
        data = self.train_sets[index]
        i, j = all_pairs(len(data.images))
        order = torch.randperm(len(i), generator=self.generator)
        batch = self.config.pair_batch
        total, seen = 0.0, 0
        for start in range(0, len(order), batch):
            if max_batches is not None and start // batch >= max_batches:
                break
            pairs = order[start : start + batch]
            images_a, images_b = data.images[i[pairs]], data.images[j[pairs]]
            if self.config.augment:
                images_a = augment_batch(images_a, self.config, self.generator)
                images_b = augment_batch(images_b, self.config, self.generator)
            self.optimizer.zero_grad(set_to_none=True)
            predictions = self.model.forward_naive(images_a.to(self.device), images_b.to(self.device), both_orders=True)
            loss = F.mse_loss(predictions, data.targets[pairs].to(self.device).expand_as(predictions))
            loss.backward()
            self.optimizer.step()
            total, seen = total + loss.item() * len(pairs), seen + len(pairs)
        return total / seen

    def validate(self, frozen: bool) -> dict[str, dict]:
        """Official metric on every validation set; keys 'set/target'."""
        pairs = {}
        for k, s in enumerate(self.val_sets):
            if not frozen or k not in self._val_features:  # a frozen body gives the same features every epoch
                self._val_features[k] = feature_views(self.model, s.images, self.config, self.device)
            predicted = predict_upper(self.model, self._val_features[k]).to(self._score_dtype)
            if self._val_priors[k] is not None:
                predicted = predicted + self._val_priors[k]
            pairs[k] = self.last_pairs[s.name] = predicted
        return self.score_pairs(pairs)

    def score_pairs(self, pairs: dict[int, torch.Tensor]) -> dict[str, dict]:
        """The official metric of (P, T) pair predictions of validation sets (by index), keys 'set/target':
        Spearman on the device, then one copy of all the rhos to the host for the p-values and ceilings."""
        keys, rhos = [], []
        for k, predicted in pairs.items():
            for j, (target, ranks) in enumerate(self._val_ranks[k].items()):
                rho = spearman_torch(predicted[:, j], ranks, ranked=True)
                keys.append((k, target))
                rhos.append(rho.mean(dim=1) if rho.ndim == 2 else rho)  # K RDMs per subject: averaged
        host = np.split(torch.cat(rhos).cpu().numpy(), np.cumsum([len(r) for r in rhos])[:-1]) if rhos else []
        return {f"{self.val_sets[k].name}/{target}": score_row(rho, target_key(target, self.val_sets[k].official),
                                                               self.val_sets[k].subject_rdms[target])
                for (k, target), rho in zip(keys, host, strict=True)}

    @property
    def last_rdms(self) -> dict[str, np.ndarray]:
        """The latest validation's predicted (T, N, N) RDMs per validation set (with the prior, if any); empty
        before the first validation (with `validate_every` > 1, after the first epochs too)."""
        return {s.name: pairs_to_rdms(self.last_pairs[s.name], len(s.images))
                for s in self.val_sets if s.name in self.last_pairs}

    def _record_validation(self, row: dict, frozen: bool) -> None:
        """Validate, add the scores to the epoch's row and keep the weights if this epoch is the best so far."""
        self.last_scores = self.validate(frozen)
        record_validation(self, row, self.last_scores)

    def validate_start(self) -> dict:
        """Epoch 0: the untrained model scored before any step. With a prior it is the prior alone, so the
        best epoch can be 0 when training does not improve on the baseline."""
        row = {"epoch": 0, "phase": "start", "loss": None, "lr": self.optimizer.param_groups[0]["lr"]}
        self._record_validation(row, frozen=True)
        row["seconds"] = 0.0
        self.history.append(row)
        return row

    # ---- epochs

    def run_epoch(self) -> dict:
        self.epoch += 1
        frozen = self.epoch <= self.config.frozen_epochs
        if not frozen and self.scheduler is not None and self.scheduler.last_epoch == 0:  # the cycle starts here
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
                group["lr"] = lr
        self.model.freeze_body(frozen)
        start = time.perf_counter()
        if self.config.pair_mode == "factorised":
            loss = self.device_step(frozen)
        elif self.config.pair_mode != "naive":
            raise ConfigError("pair_mode", f"unknown mode '{self.config.pair_mode}' (choose from factorised, naive)")
        else:
            order = torch.randperm(len(self.train_sets), generator=self.generator).tolist()
            loss = torch.tensor(float(np.mean([self.naive_step(k, frozen) for k in order])))
        if not frozen and self.scheduler is not None:
            self.scheduler.step()
        row = {"epoch": self.epoch, "phase": "frozen" if frozen else "unfrozen", "loss": loss,
               "lr": self.optimizer.param_groups[0]["lr"]}
        self._unsettled.append(row)
        if self.epoch % self.config.validate_every == 0 or self.epoch >= self.last_epoch:
            self.settle_losses()
        if self.validates(self.epoch):
            self._record_validation(row, frozen)
        elif not self.val_sets:
            self.best_epoch, self.best_state = self.epoch, self.model.state_dict()
        row["seconds"] = time.perf_counter() - start
        self.history.append(row)
        return row

    def settle_losses(self) -> None:
        """The losses of the epochs since the last call copied to the host in one go (one synchronisation with
        the device every `validate_every` epochs, not every epoch); a NaN or infinite loss stops the run."""
        rows, self._unsettled = self._unsettled, []
        if not rows:
            return
        values = torch.stack([row["loss"].float() for row in rows]).cpu().tolist()
        for row, value in zip(rows, values, strict=True):
            row["loss"] = value
        bad = next((row for row in rows if not math.isfinite(row["loss"])), None)
        if bad is not None:
            raise TrainingDiverged(f"training diverged at epoch {bad['epoch']} (loss {bad['loss']}); try a lower "
                                   "learning rate")

    def validates(self, epoch: int) -> bool:
        """Whether `epoch` is scored: with validation sets, every `validate_every`-th epoch and the last one."""
        return bool(self.val_sets) and (epoch % self.config.validate_every == 0 or epoch == self.last_epoch)

    @property
    def last_epoch(self) -> int:
        return self.config.last_epoch

    def should_stop(self) -> bool:
        """Early stopping, decided only just after a validation: `early_stopping` epochs or more since the best
        one. Between validations nothing new is known, so a patience shorter than `validate_every` waits for the
        next validation instead of stopping before the run was ever scored (and keeping the untrained model)."""
        patience = self.config.early_stopping
        return bool(self.val_sets and patience and self.validates(self.epoch)
                    and self.epoch - self.best_epoch >= patience)

    def state(self) -> dict:
        return {
            "config": asdict(self.config), "epoch": self.epoch, "history": self.history,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "generator": self.generator.get_state(), "best_state": self.best_state,
            "best_epoch": self.best_epoch, "best_score": self.best_score,
            "normalisation": {s.name: s.normalisation for s in self.train_sets},
            "priors": {t: p.to_dict() for t, p in self.priors.items()},
        }

    def load_state(self, state: dict) -> None:
        saved = config_from_dict(state["config"])
        if replace(saved, device=self.config.device) != self.config:
            raise ConfigError("resume", "the checkpoint in the run folder has other settings; use the same ones "
                                        "or a new folder")
        restore_run(self, state)
        self.generator.set_state(state["generator"])

    def _write_log(self) -> None:
        if self.out_dir and self.history:
            write_log(self.out_dir / "log.csv", self.history)

    def fit(self, checkpoint_every_s: float = 30.0) -> FitResult:
        """Run the remaining epochs; with an out_dir, checkpoint `last.pt` as it goes and `model.pt` at the end."""
        last_save = time.perf_counter()
        if self.epoch == 0 and self.priors and self.val_sets and not self.history:
            self.validate_start()
        bar = tqdm(total=self.config.epochs, initial=self.epoch, disable=not self.progress, unit="epoch",
                   desc=f"fit {'+'.join(self.config.targets)}", leave=False)
        while self.epoch < self.last_epoch and not self.should_stop():
            row = self.run_epoch()
            bar.update(1)
            val, loss = row.get("val_pct_nc"), row["loss"]
            bar.set_postfix(phase=row["phase"], loss=f"{loss:.4f}" if isinstance(loss, float) else "-",
                            val=("-" if val is None else f"{val:.1f}%"), best=self.best_epoch)
            phase_end = self.epoch in (self.config.frozen_epochs, self.last_epoch)
            if self.out_dir and (phase_end or time.perf_counter() - last_save > checkpoint_every_s):
                self.settle_losses()
                save_checkpoint(self.out_dir / "last.pt", self.state())
                self._write_log()
                last_save = time.perf_counter()
        bar.close()
        self.settle_losses()
        self.model.load_state_dict(self.best_state)
        result = FitResult(self.model, self.config, {s.name: s.normalisation for s in self.train_sets},
                           self.history, self.best_epoch, self.best_score, self.priors)
        if self.out_dir:
            save_checkpoint(self.out_dir / "last.pt", self.state())
            self._write_log()
        return result


def fit(config: TrainConfig, train: list[BrainDataset], val: list[BrainDataset] = (),
        out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True) -> FitResult:
    """Train one model; with `resume`, continue from out_dir/last.pt when it exists."""
    if resume and out_dir is None:
        raise ConfigError("resume", "needs out_dir, the folder of the run to continue")
    with contextlib.ExitStack() as stack:
        if out_dir is not None:
            stack.enter_context(run_folder(out_dir, "fit", run_mode(resume=resume)))
        trainer = Trainer(config, train, val, out_dir, progress)
        last = Path(out_dir) / "last.pt" if out_dir is not None else None
        if resume and last.is_file():
            with reading(last):  # a malformed last.pt: one line naming it
                trainer.load_state(load_run_state(last))
        return trainer.fit()


# --------------------------------------------------------------------------- LR range test


def lr_range_test(config: TrainConfig, train: list[BrainDataset], start_lr: float = 1e-6, end_lr: float = 1.0,
                  steps: int = 80, progress: bool = True) -> dict:
    """Smith's LR range test on the head (body frozen): the rate grows exponentially each step.

    Returns the rates, the smoothed losses and a suggested rate: the steepest descent of the smoothed loss,
    found before the loss diverges (4x its minimum).
    """
    trainer = Trainer(replace(config, augment=False), train, progress=False)
    trainer.model.freeze_body(True)
    optimizer = torch.optim.AdamW(trainer.model.head_parameters(), lr=start_lr, weight_decay=config.weight_decay)
    factor = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    lrs, losses, smoothed, avg = [], [], [], 0.0
    for step in tqdm(range(steps), disable=not progress, desc="lr-find", leave=False):
        lr = start_lr * factor**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = step % len(trainer.train_sets)
        optimizer.zero_grad(set_to_none=True)
        loss = trainer.pair_loss(trainer.plain_features(index), trainer.train_sets[index])
        loss.backward()
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
