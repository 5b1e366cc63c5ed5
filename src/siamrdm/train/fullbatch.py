"""Full-batch training of the Siamese RDM network: data preparation, the pair-factorised step, validation.

The run's settings live in config.py, augmentation in augment.py, checkpoint files in checkpoint.py and the
epochs, schedule, kept epoch, checkpoints and resume in trainer.py (the one trainer, which runs this step on
image sets in memory); this module re-exports their public names for callers of `siamrdm.train`.

One epoch is one optimiser step on all pairs within every training set (pairs never cross sets).
While the body is frozen its features are computed once per image and augmented view and cached; once
it is unfrozen, each step runs the body once per image (in chunks, so memory stays bounded) and the
head on all pairs. With `train_stages` K the unfrozen epochs train only the body's top K stages: the output of
the stage below them is cached per image and view as the frozen features are, and each step runs the K stages
on it. Validation uses the official metric on held-out images.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..errors import TrainingDiverged as TrainingDiverged
from ..io.datasets import BrainDataset, target_key
from ..io.images import ImageSet
from ..model.backbones import create_body, images_to_tensor
from ..model.network import (
    SiameseRDMNet,
    all_pairs,
    all_pairs_correlation_loss,
    all_pairs_loss,
    all_pairs_outputs,
    head_config,
)
from ..model.prior import PriorFit, fit_prior, prior_vector, stage_rdms
from ..rdm.compare_torch import spearman_torch, standardised_ranks_torch
from ..rdm.core import group_average, rank_unit, rescale, square_rdm, subject_rdms, upper_tri
from ..rdm.parts import per_image_fit
from ..rdm.records import score_row
from ..rdm.reliability import target_reliability
from ..rdm.splits import split_holdout as split_holdout  # re-exported: callers of siamrdm.train split here too
from ..rdm.splits import subset as subset
from .augment import augment_batch, crop_flip, draw_boxes, image_generator
from .checkpoint import load_checkpoint as load_checkpoint  # re-exported: tests and callers read checkpoints here
from .config import PRESETS as PRESETS  # re-exported: callers of siamrdm.train find the run's settings here too
from .config import ConfigError as ConfigError
from .config import TrainConfig as TrainConfig
from .config import check_config as check_config
from .config import config_from_dict as config_from_dict
from .config import config_from_preset as config_from_preset
from .config import pick_device as pick_device
from .loop import TRAINING_MUST_BEAT_ZERO_BY_SE as TRAINING_MUST_BEAT_ZERO_BY_SE
from .loop import KeptChoice
from .loop import selection_score as selection_score
from .loop import validated_gain as validated_gain

# --------------------------------------------------------------------------- data for training


@dataclass
class PairTargets:
    """One image set ready for training: pixels, and the rescaled group-mean target of each pair."""

    name: str
    images: torch.Tensor  # (N, 3, S, S) in [0, 1]
    targets: torch.Tensor  # (P, T), P = N(N-1)/2 pairs in upper-triangle order
    subject_rdms: dict[str, np.ndarray]  # for validation with the official metric
    normalisation: dict[str, dict[str, float]]
    keys: list[str]  # the feature cache's key: each image's file (folder, resolved; name) and pixels (digest)
    seed_keys: list[str]  # each image's identity as its augmentation is seeded: its folder's name and its name
    official: bool = False  # an Algonauts set: its targets' published ceilings apply
    prior_pairs: torch.Tensor | None = None  # (P, T) the prior's values, already subtracted from `targets`


def group_target(rdms: np.ndarray, kind: str = "mean") -> np.ndarray:
    """The upper triangle a network learns from subject RDMs ((S, N, N) or (S, K, N, N)): "mean", the subjects'
    mean RDM (the paper's); "ranks", the mean of each subject's ranks (each RDM's upper triangle ranked, then
    averaged; a subject's K RDMs count as one subject's share). The official score averages each subject's
    Spearman rho, and a prediction's mean Spearman rho over the subjects is its correlation with the mean of their
    standardised ranks: so "ranks" is the target that score rewards, and every subject weighs the same in it,
    whatever the range of their dissimilarities."""
    if kind == "mean":
        return upper_tri(group_average(rdms))
    ranks = np.apply_along_axis(rank_unit, -1, upper_tri(subject_rdms(np.asarray(rdms, dtype=np.float64))))
    return (ranks.mean(axis=1) if ranks.ndim == 3 else ranks).mean(axis=0)


def prepare_set(dataset: BrainDataset, targets: tuple[str, ...], config: TrainConfig) -> PairTargets:
    dataset.check_targets(targets)
    columns, normalisation = [], {}
    for target in targets:
        learnt = group_target(dataset.targets[target], config.group_target)
        if np.ptp(learnt) == 0:  # subjects whose orders cancel: rescaled, a target of zeros that trains to nothing
            what = "mean RDM" if config.group_target == "mean" else "mean of the ranks"
            raise ConfigError("group_target", f"{dataset.name}/{target}: the {what} of its subjects is the same for "
                                              "every pair (their orders cancel), so there is nothing to learn")
        values, params = rescale(learnt, config.rescale)
        columns.append(values)
        normalisation[target] = params
    return PairTargets(
        name=dataset.name,
        images=images_to_tensor(dataset.images.images, config.image_size),
        targets=torch.tensor(np.stack(columns, axis=1), dtype=torch.float32),
        subject_rdms={t: dataset.targets[t] for t in targets},
        normalisation=normalisation,
        keys=[f"{Path(dataset.images.source).resolve()}/{name}/{digest}"
              for name, digest in zip(dataset.images.names, dataset.images.digests(), strict=True)],
        seed_keys=[f"{Path(dataset.images.source).name}/{name}" for name in dataset.images.names],
        official=dataset.official,
    )


# Frozen-body features of single images, shared by every full-batch step of a process: a challenge fits many models on
# the same images (targets, directions, held-out splits), and a pretrained body gives each image and augmented
# view the same features every time. Keyed by everything the features depend on; bounded in entries.
_VIEW_CACHE: dict[tuple, torch.Tensor] = {}
_VIEW_CACHE_ENTRIES = 20_000


@torch.no_grad()
def frozen_views(model: SiameseRDMNet, data: PairTargets, config: TrainConfig, n_views: int,
                 device: torch.device, below: int = 0) -> torch.Tensor:
    """(V, N, C, H, W) raw body features of every image: view 0 plain, then augmented views. With `below` K > 0,
    the output of the stage just below the body's top K stages instead (`Body.below_top`), from the same views.

    Each image's augmentation is drawn from a generator seeded by the run's seed, the image's identity (its
    folder's name and its name: not the path it was given by, so `--data ../x` and `--data /abs/x` train the same
    model) and the view, so an image has the same views whichever subset of its set it is trained in (folds,
    held-out splits), and cached features can be reused. The body must be the untrained pretrained one.
    """
    crop_key = (config.backbone, config.weights, config.stage, config.image_size, config.crop_scale, config.seed)
    numerics = (str(device), config.precision, config.channels_last, below)
    run = partial(model.body.below_top, count=below) if below else None
    out = None
    for view in range(n_views):
        views = [(*crop_key, key, view) for key in data.seed_keys]  # what an image's crop is seeded by
        keys = [(*crop_key, key, view, *numerics) for key in data.keys]  # the cache's: the file and the numerics
        missing = [k for k, key in enumerate(keys) if key not in _VIEW_CACHE]
        if missing:
            pixels = data.images[missing]
            if view:
                size = pixels.shape[-1]
                boxes = torch.cat([draw_boxes(1, size, config.crop_scale, image_generator(views[k])) for k in missing])
                pixels = crop_flip(pixels, boxes)
            computed = body_features(model, pixels, config, device, run)
            if len(_VIEW_CACHE) + len(missing) > _VIEW_CACHE_ENTRIES:
                _VIEW_CACHE.clear()
            for m, k in enumerate(missing):
                _VIEW_CACHE[keys[k]] = computed[m]
        stacked = torch.stack([_VIEW_CACHE[key] for key in keys])
        if out is None:
            out = stacked.new_empty((n_views, *stacked.shape))
        out[view] = stacked
    return out


BodyPart = Callable[[torch.Tensor], torch.Tensor]  # a part of the body: pixels or a stage's output -> a later one


def body_pass(model: SiameseRDMNet, pixels: torch.Tensor, config: TrainConfig, device: torch.device,
              run: BodyPart | None = None) -> torch.Tensor:
    """The body on one chunk of pixels, in the config's precision (bf16: under autocast, so the output is bf16)
    and memory layout (channels_last, as `build_model` laid out the body's weights); with `run`, that part of the
    body on its input (`Body.below_top` on pixels, `Body.top` on the cached output of the stage below)."""
    pixels = pixels.to(device, non_blocking=True)
    if config.channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        return model.body(pixels) if run is None else run(pixels)


@torch.no_grad()
def body_features(model: SiameseRDMNet, images: torch.Tensor, config: TrainConfig,
                  device: torch.device, run: BodyPart | None = None) -> torch.Tensor:
    """Raw body features of images (or of `run`, a part of the body, on its inputs) in chunks, kept on `device`:
    float32, contiguous (N, C, H, W), whatever the body's precision and layout, so cached features and the head
    see one dtype and layout."""
    chunk = config.body_chunk
    return torch.cat([body_pass(model, images[k : k + chunk], config, device, run).float()
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


class FullBatchStep:
    """Full-batch training (loop.Step): one optimiser step an epoch on all pairs within every training set, the
    frozen body's features cached per image and augmented view, validation on the device.

    `train_stages` K (not 0, not 'all'): the unfrozen epochs train the body's top K stages with the head, on the
    cached output of the stage below them (`frozen_views(below=K)`: per image and view, the frozen phase's views
    and `augment_views` count). So each epoch the trained part sees one of the cached views rather than a fresh
    crop as with 'all', and its cost is that of the K stages; the lower stages never change. K = 0: the unfrozen
    epochs train the head alone on the frozen features (the one-cycle schedule then runs on the head)."""

    steps_per_epoch = 1
    main = True
    checkpoint_every_s = 30.0  # an epoch is one step: checkpoint by the clock
    label = ""

    def __init__(self, config: TrainConfig, train: list[BrainDataset], val: list[BrainDataset] = ()):
        if not train:
            raise DataError("no training sets given")
        self.config = config
        self.device = pick_device(config.device)
        self.model = build_model(config, self.device)
        self.model.body.eval()  # BatchNorm statistics stay those of ImageNet, frozen or not
        self.train_sets = [prepare_set(d, config.targets, config) for d in train]
        self.val_sets = [prepare_set(d, config.targets, config) for d in val]
        self.has_validation = bool(self.val_sets)
        self.normalisation = {s.name: s.normalisation for s in self.train_sets}
        self.priors = self._fit_priors(train) if config.prior != "none" else {}
        self._shape_targets()
        self.set_shares = set_shares(train, self.train_sets, config)
        # Epoch averaging: the model holds the moving average of the head's weights between steps (so validation,
        # the kept epoch and the saved model are the average); the optimiser steps the raw weights.
        self._raw_head = None if config.head_average is None else self._head_copy()
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
        # train_stages K: the output of the stage below the top K stages, per image and view (the views the frozen
        # epochs draw from, and as many), and the top stages; the frozen features are those stages on it, so the
        # body runs once per image and view.
        count = config.train_stages
        self._cut = count if isinstance(count, int) and count > 0 else None
        self._top: BodyPart | None = None
        self._below: list[torch.Tensor] = []
        self._val_below: dict[int, list[torch.Tensor]] = {}
        if self._cut is None:
            self._views = [frozen_views(self.model, s, config, n_views, self.device) for s in self.train_sets]
        else:
            self._top = partial(self.model.body.top, count=self._cut)
            below_views = config.augment_views if config.augment else 1
            self._below = [frozen_views(self.model, s, config, below_views, self.device, below=self._cut)
                           for s in self.train_sets]
            self._views = [torch.stack([body_features(self.model, view, config, self.device, self._top)
                                        for view in below[:n_views]]) for below in self._below]
        self.model.set_feature_stats(torch.cat([views[0] for views in self._views]))
        self._val_features: dict[int, list[torch.Tensor]] = {}
        self.last_pairs: dict[str, torch.Tensor] = {}  # the latest validation's (P, T) pair predictions per set

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

    def _shape_targets(self) -> None:
        """What the head learns, after the prior's part is taken out: with `per_image` 'remove' the least-squares
        per-image part (a_i + a_j) of it is removed (its mean kept), so the head can only learn which pairs differ,
        not which images are far from all others in this study; with `shrinkage` s it learns (1 - s) of it, the
        minimiser of the squared error plus s / (1 - s) times the correction's own square (a ridge toward the
        prior)."""
        config = self.config
        if config.per_image == "keep" and not config.shrinkage:
            return
        for s in self.train_sets:
            for k in range(s.targets.shape[1]):
                column = s.targets[:, k].double().numpy()
                if config.per_image == "remove":
                    _, fitted = per_image_fit(column, len(s.images))
                    column = column - fitted + fitted.mean()
                s.targets[:, k] = torch.from_numpy(column * (1 - config.shrinkage)).float()

    def _head_copy(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.head.parameters()]

    @contextlib.contextmanager
    def raw_weights(self):
        """Inside: the head holds the weights the optimiser steps; after: their moving average again (updated with
        the new raw weights). Without `head_average`, nothing changes."""
        if self._raw_head is None:
            yield
            return
        params = list(self.model.head.parameters())
        average = self._head_copy()
        with torch.no_grad():
            for p, raw in zip(params, self._raw_head, strict=True):
                p.copy_(raw)
        try:
            yield
        finally:
            decay = self.config.head_average
            with torch.no_grad():
                self._raw_head = self._head_copy()
                for p, mean in zip(params, average, strict=True):
                    p.copy_(mean.mul_(decay).add_(p, alpha=1 - decay))

    # ---- the parts of a step (a benchmark times them one by one: bench_training.factorised_breakdown)

    def plain_features(self, index: int) -> torch.Tensor:
        """Raw body features of training set `index`'s images, not augmented (the frozen body's view 0)."""
        return self._views[index][0]

    def frozen_features(self, index: int) -> torch.Tensor:
        """Body features of one set for this epoch: each image's view drawn from the cached pool."""
        return self.drawn_views(self._views[index])

    def drawn_views(self, stacked: torch.Tensor) -> torch.Tensor:
        """(V, N, ...) cached views -> (N, ...): each image's view for this epoch, drawn from the run's generator."""
        pick = torch.randint(len(stacked), (stacked.shape[1],), generator=self.generator).to(self.device)
        return stacked[pick, torch.arange(stacked.shape[1], device=self.device)]

    def trained_inputs(self, index: int) -> tuple[torch.Tensor, BodyPart | None]:
        """What the trained part of the body runs on this unfrozen epoch, and that part: this epoch's (augmented)
        pixels and the whole body, or with `train_stages` K the drawn cached views below the top K stages and
        those stages."""
        if self._cut is None:
            return self.augmented_images(index), None
        return self.drawn_views(self._below[index]), self._top

    def augmented_images(self, index: int) -> torch.Tensor:
        """This epoch's pixels of training set `index`: augmented when the config says so."""
        data = self.train_sets[index]
        return augment_batch(data.images, self.config, self.generator) if self.config.augment else data.images

    def pair_loss(self, features: torch.Tensor, data: PairTargets) -> torch.Tensor:
        """The loss of both pair orders against the rescaled target: MSE (model.all_pairs_loss, exactly the loss
        of pair_predictions(both_orders=True)) or 1 - Pearson r of prior + head against the target
        (model.all_pairs_correlation_loss). Tiled over images x images, so memory stays O(N) however many pairs."""
        features = self.model.standardise(features)
        if self.config.loss == "correlation":
            return all_pairs_correlation_loss(self.model.head, features, data.targets.to(self.device),
                                              None if data.prior_pairs is None else data.prior_pairs.to(self.device))
        return all_pairs_loss(self.model.head, features, data.targets.to(self.device))

    def body_backward(self, images: torch.Tensor, features_grad: torch.Tensor, run: BodyPart | None = None) -> None:
        """The body (or its trained part `run`) again on its inputs in chunks, back-propagating the head's gradient
        w.r.t. its features."""
        chunk = self.config.body_chunk
        for k in range(0, len(images), chunk):
            out = body_pass(self.model, images[k : k + chunk], self.config, self.device, run)
            out.backward(features_grad[k : k + chunk].to(out.dtype))

    def gradients(self, frozen: bool) -> torch.Tensor:
        """Zeroed, then the gradients of the mean loss over all pairs within every training set (pairs never
        cross sets); returns that loss, on the device (0-d tensor), so that a step does not wait for the device.

        Each set's mean is weighted by its share (`set_shares`: its pair count, or with `set_weights` 'reliability'
        pairs times the reliability of its targets), so an epoch is one step whether there is one set or two: epoch
        counts chosen on a one-set validation curve mean the same number of steps, on the same schedule, in a final
        fit on both sets. Unfrozen, two passes keep memory bounded: the head's gradient w.r.t. the
        features first, then the body in chunks (`body_backward`); the same gradient as one big graph."""
        self.model.zero_grad(set_to_none=True)
        mean_loss = torch.zeros((), device=self.device)
        for index in range(len(self.train_sets)):
            share = self.set_shares[index]
            mean_loss += self.set_gradients(index, frozen, share) * share
        return mean_loss

    def set_gradients(self, index: int, frozen: bool, share: float = 1.0) -> torch.Tensor:
        """Add the gradients of `share` x the loss of training set `index` and return that loss (detached): on the
        cached frozen features while the body is frozen (or with `train_stages` 0), else through the trained part
        of the body (`trained_inputs`)."""
        data = self.train_sets[index]
        if frozen or self.config.train_stages == 0:
            loss = self.pair_loss(self.frozen_features(index), data)
            (loss * share).backward()
        else:
            inputs, run = self.trained_inputs(index)
            features = body_features(self.model, inputs, self.config, self.device, run)
            features.requires_grad_()
            loss = self.pair_loss(features, data)
            (loss * share).backward()
            self.body_backward(inputs, features.grad, run)
        return loss.detach()

    def train_epoch(self, epoch: int, frozen: bool, optimizer_step) -> tuple[torch.Tensor, dict]:
        with self.raw_weights():
            loss = self.gradients(frozen)
            optimizer_step()
        return loss, {}

    # ---- validation

    def validate(self, frozen: bool) -> dict[str, dict]:
        """Official metric on every validation set; keys 'set/target'."""
        pairs = {}
        for k, s in enumerate(self.val_sets):
            if not frozen and self.config.train_stages != 0:
                self._val_features[k] = self.trained_feature_views(k, s)
            elif k not in self._val_features:  # the pretrained body: features once, from the process's cache
                self._val_features[k] = self.frozen_feature_views(s)
            predicted = predict_upper(self.model, self._val_features[k]).to(self._score_dtype)
            if self._val_priors[k] is not None:
                predicted = predicted + self._val_priors[k]
            pairs[k] = self.last_pairs[s.name] = predicted
        return self.score_pairs(pairs)

    def trained_feature_views(self, index: int, data: PairTargets) -> list[torch.Tensor]:
        """`feature_views` of validation set `index` with the body being trained; with `train_stages` K, the top K
        stages on the output of the stage below them, computed once (those stages never change)."""
        if self._cut is None:
            return feature_views(self.model, data.images, self.config, self.device)
        if index not in self._val_below:
            below = [frozen_views(self.model, data, self.config, 1, self.device, below=self._cut)[0]]
            if self.config.tta:
                below.append(body_features(self.model, data.images.flip(-1), self.config, self.device,
                                           partial(self.model.body.below_top, count=self._cut)))
            self._val_below[index] = below
        return [self.model.standardise(body_features(self.model, v, self.config, self.device, self._top))
                for v in self._val_below[index]]

    def frozen_feature_views(self, data: PairTargets) -> list[torch.Tensor]:
        """`feature_views` of a validation set while the body is the pretrained one: the plain view from the
        features cache that training fills (a challenge validates on images other fits train on), so each image
        passes the body once per process; the mirror view of `tta` is computed."""
        views = [frozen_views(self.model, data, self.config, 1, self.device)[0]]
        if self.config.tta:
            views.append(body_features(self.model, data.images.flip(-1), self.config, self.device))
        return [self.model.standardise(v) for v in views]

    @torch.no_grad()
    def predicts_finite(self, body_trained: bool) -> bool:
        """Whether the head predicts finite values for every training pair (the prior's part is finite), from the
        images as they are: the cached features while the body is the pretrained one, else through the body as it
        now is."""
        for k, s in enumerate(self.train_sets):
            if body_trained and self.config.train_stages != 0:
                features = body_features(self.model, s.images, self.config, self.device)
            else:
                features = self.plain_features(k)
            if not torch.isfinite(predict_pairs(self.model, self.model.standardise(features))).all():
                return False
        return True

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

    # ---- one process: nothing to agree on or share

    def agree(self, flag: bool) -> bool:
        return flag

    def share_choice(self, loop: KeptChoice) -> None:
        pass

    @property
    def last_rdms(self) -> dict[str, np.ndarray]:
        """The latest validation's predicted (T, N, N) RDMs per validation set (with the prior, if any); empty
        before the first validation (with `validate_every` > 1, after the first epochs too)."""
        return {s.name: pairs_to_rdms(self.last_pairs[s.name], len(s.images))
                for s in self.val_sets if s.name in self.last_pairs}

    def extra_state(self) -> dict:
        return {"generator": self.generator.get_state(), "normalisation": self.normalisation,
                "priors": {t: p.to_dict() for t, p in self.priors.items()}, "raw_head": self._raw_head}

    def load_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if self._raw_head is not None:
            raw = state.get("raw_head")
            shapes = [p.shape for p in self._raw_head]
            if not isinstance(raw, list) or not all(isinstance(r, torch.Tensor) for r in raw) or [
                    r.shape for r in raw] != shapes:
                raise ConfigError("resume", "the checkpoint holds no raw head weights for the moving average")
            self._raw_head = [r.to(self.device) for r in raw]


def set_shares(datasets: list[BrainDataset], prepared: list[PairTargets], config: TrainConfig) -> list[float]:
    """Each training set's share of the loss, summing to 1: its pair count; with `set_weights` 'reliability', its
    pair count times its targets' mean reliability (Spearman-Brown of the split-half across subjects, below 0
    counted as 0), so a set whose RDMs are close to noise (the 118 set's IT) pulls the fit less."""
    weights = [float(len(s.targets)) for s in prepared]
    if config.set_weights == "reliability" and len(datasets) > 1:  # one set takes the whole loss whatever its RDMs
        for k, dataset in enumerate(datasets):
            values = [target_reliability(dataset.targets[t])["reliability"] for t in config.targets]
            if any(v is None for v in values):
                raise ConfigError("set_weights", f"image set {dataset.name} has one subject, so its reliability is "
                                                 "unknown: weight sets by pairs")
            weights[k] *= max(float(np.mean(values)), 0.0)
    total = sum(weights)
    if total <= 0:
        raise ConfigError("set_weights", "no training set has reliable targets (every reliability is 0 or below)")
    return [w / total for w in weights]
