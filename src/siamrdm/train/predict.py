"""Trained models as RDM predictors: ensembles of seeds, saving and loading, and predicting any images.

A predictor file (`model.pt`) holds the training config, one state_dict per seed, the target
rescaling and the run's metrics. Predictions are the mean over seeds of the symmetric pair outputs, in
the rescaled target units (the challenge metric is rank-based, so the units do not matter).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..io.datasets import BrainDataset, target_key
from ..io.files import check_output_file, check_same_settings, run_folder, run_mode, write_settings, write_text
from ..io.images import IMAGE_ORDER_FILE, ImageSet
from ..model.backbones import images_to_tensor
from ..model.network import SiameseRDMNet
from ..model.prior import PriorFit
from .checkpoint import check_tensors, finite, load_checkpoint, reading, save_checkpoint
from .config import TrainConfig, check_config, config_from_dict, pick_device, purpose_text
from .fullbatch import build_model, feature_views, predict_rdms, prior_rdms, split_holdout
from .loop import seed_summary
from .ranks import Ranks, barrier, current_ranks
from .trainer import StepData, fit

MODEL_FORMAT = "siamrdm-predictor-1"


def _prior_weights_hash(config: TrainConfig) -> str | None:
    """The prior is rebuilt from the pretrained weights at prediction time; with a weights file, its hash is
    kept in the model file so that a changed file is refused instead of silently changing predictions."""
    if config.weights in (None, "random"):
        return None
    path = Path(config.weights)
    if not path.is_file():
        raise DataError(f"{path}: the weights file of this model's prior is missing")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_prior_weights(payload: dict, config: TrainConfig, path: str | os.PathLike) -> None:
    """Refuse a model whose prior's weights file changed since training (see `_prior_weights_hash`)."""
    saved = payload.get("prior_weights_sha256")
    if saved and _prior_weights_hash(config) != saved:
        raise DataError(f"{path}: the weights file {config.weights} changed since this model was trained, so its "
                        "prior would differ; use the original file")


class RDMPredictor:
    """One or more trained Siamese networks (seeds) that predict the RDM of any set of images."""

    def __init__(self, models: list[SiameseRDMNet], config: TrainConfig, normalisation: dict | None = None,
                 metrics: dict | None = None, priors: dict[str, PriorFit] | None = None,
                 output_keys: dict[str, str] | None = None):
        if not models:
            raise ValueError("a predictor needs at least one model")
        self.models = models
        self.config = config
        self.normalisation = normalisation or {}
        self.metrics = metrics or {}
        self.priors = priors or {}  # the same for every seed: fitted on the training images only
        # The key each target's RDM is written under: the challenge's key ('EVC' -> 'EVC_RDMs') for models
        # trained on the Algonauts sets, the user's own key unchanged for their own data.
        self.output_keys = output_keys or {t: target_key(t, official=True) for t in config.targets}

    @property
    def targets(self) -> tuple[str, ...]:
        return self.config.targets

    @torch.no_grad()
    def predict(self, images: ImageSet | list[np.ndarray]) -> dict[str, np.ndarray]:
        """The predicted (N, N) RDM of the images for each target: symmetric, zero diagonal, seed-averaged
        (and averaged over each image and its mirror with `tta`), plus the prior when the model has one."""
        pixels = images_to_tensor(images.images if isinstance(images, ImageSet) else images, self.config.image_size)
        total = None
        for model in self.models:
            model.eval()
            device = next(model.parameters()).device
            views = feature_views(model, pixels, self.config, device)
            rdms = predict_rdms(model, views)
            total = rdms if total is None else total + rdms
        mean = total / len(self.models)
        prior = prior_rdms(self.priors, images, self.config)
        if prior is not None:
            mean = mean + prior
        if not np.isfinite(mean).all():  # finite weights can still overflow: never hand on a NaN
            raise DataError(f"the model predicts non-finite dissimilarities for these {len(pixels)} images")
        return {target: mean[k] for k, target in enumerate(self.targets)}

    def predict_prior(self, images: ImageSet) -> dict[str, np.ndarray] | None:
        """The prior alone (the model before any step: a pretrained stage's RDM, rescaled) for each target, or None
        for a model without one: what the trained model is measured against where it must not do worse."""
        prior = prior_rdms(self.priors, images, self.config)
        return None if prior is None else {target: prior[k] for k, target in enumerate(self.targets)}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        save_checkpoint(path, {
            "format": MODEL_FORMAT, "config": asdict(self.config),
            "members": [{k: v.cpu() for k, v in m.state_dict().items()} for m in self.models],
            "normalisation": self.normalisation, "metrics": self.metrics,
            "priors": {t: p.to_dict() for t, p in self.priors.items()},
            "prior_weights_sha256": _prior_weights_hash(self.config) if self.priors else None,
            "output_keys": self.output_keys,
            "body": self.models[0].body.describe(),
            "purpose": purpose_text(self.config.per_image),  # what the model is for (README, "Other studies")
        })
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> RDMPredictor:
        """Load a predictor; the body's weights come from the file, so no pretrained download is needed.

        The file is plain data but may not be what fit wrote: its config is checked as a fit's would be (image
        size bounds included, before any body runs at that size), every weight must be finite, and anything
        else amiss is one line naming the file."""
        payload = load_checkpoint(path)
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            raise DataError(f"{path}: not a siamrdm model file (expected the model.pt that 'siamrdm fit' writes)")
        dev = pick_device(device)
        with reading(path, "model file"):
            config = config_from_dict(payload["config"])
            check_config(replace(config, weights="random", device=device))  # weights: the file's own, below
            members = payload["members"]
            if not isinstance(members, list) or not members:
                raise DataError(f"{path}: malformed siamrdm model file: no trained networks in it ('members')")
            models = []
            for k, state in enumerate(members):
                try:
                    check_tensors(state, f"network {k + 1} of {len(members)}")
                except DataError as exc:
                    raise DataError(f"{path}: {exc}") from None
                model = build_model(replace(config, weights="random"), dev)
                check_body(payload.get("body"), model.body.describe(), path)
                model.load_state_dict(state)
                if not bool((model.feature_std > 0).all()):  # fit clamps it at 1e-6; zero would divide by zero
                    raise DataError(f"{path}: network {k + 1} of {len(members)}: its feature_std is not positive")
                models.append(model.eval())
            priors = _read_priors(payload.get("priors") or {}, config, path)
            normalisation, metrics = payload["normalisation"], payload["metrics"]
            if not isinstance(normalisation, dict) or not isinstance(metrics, dict):
                raise TypeError("normalisation and metrics must be dicts")
            output_keys = {str(k): str(v) for k, v in (payload.get("output_keys") or {}).items()} or None
            if output_keys and len(set(output_keys.values())) != len(output_keys):
                raise ValueError(f"output_keys write two targets under one key: {output_keys}")
        check_prior_weights(payload, config, path)
        return cls(models, replace(config, device=device), normalisation, metrics, priors, output_keys)


def kept_epochs(path: str | os.PathLike) -> tuple[dict[str, int], bool]:
    """Each seed's kept epoch ('seed0' -> epoch, `seed_summary`'s best_epoch) as a model file records it, and
    whether the fit had a prior (its epoch 0: the prior alone, else the untrained head), read without building its
    networks (their tensors mapped, not read): the epoch `siamrdm report` names as kept, which only the fit's rule
    knows (with a prior, a trained epoch is kept only where every target gains)."""
    payload = load_checkpoint(path, mmap=True)
    metrics = payload.get("metrics") if payload.get("format") == MODEL_FORMAT else None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: not a siamrdm model file (expected the model.pt that 'siamrdm fit' writes)")
    kept = {}
    for seed, record in metrics.items():
        epoch = record.get("best_epoch") if isinstance(record, dict) else None
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise DataError(f"{path}: malformed siamrdm model file: {seed}'s kept epoch is {epoch!r}")
        kept[str(seed)] = epoch
    config = payload.get("config")
    prior = config.get("prior", "none") if isinstance(config, dict) else None
    if not isinstance(prior, str):
        raise DataError(f"{path}: malformed siamrdm model file: its config's prior is {prior!r}")
    return kept, prior != "none"


def check_body(saved: dict | None, rebuilt: dict, path: str | os.PathLike) -> None:
    """The body rebuilt from the library's code must be the one trained: the same stages and normalisation (a
    library's other version could cut a `timm:`/`torchvision:` model differently). Files from before the body
    was recorded hold a registered body, which siamrdm itself defines."""
    if saved is None:
        return
    if not isinstance(saved, dict):
        raise TypeError(f"body must be a dict, got {type(saved).__name__}")
    for key, value in rebuilt.items():
        if saved.get(key) != value:
            raise DataError(f"{path}: its body {rebuilt['name']} was trained with {key} {saved.get(key)}, but the "
                            f"installed libraries build {value} (another timm or torchvision version?)")


def _read_priors(saved: dict, config: TrainConfig, path: str | os.PathLike) -> dict[str, PriorFit]:
    """A model file's priors: one per target, on stages the backbone has, with finite numbers (a NaN scale would
    make every prediction NaN)."""
    from ..model.backbones import backbone_stages

    if not isinstance(saved, dict):
        raise TypeError(f"priors must be a dict, got {type(saved).__name__}")
    priors = {str(t): PriorFit.from_dict(p) for t, p in saved.items()}
    if priors and set(priors) != set(config.targets):
        raise DataError(f"{path}: its priors are for {', '.join(priors)}, its targets {', '.join(config.targets)}")
    stages = backbone_stages(config.backbone)
    for target, prior in priors.items():
        where = f"{path}: the prior of {target}"
        unknown = [s for s in prior.weights if s not in stages]
        if not prior.weights or unknown:
            raise DataError(f"{where} has no stage weights, or stages {config.backbone} lacks: {', '.join(unknown)}")
        try:
            for name, value in {"scale": prior.scale, "intercept": prior.intercept, **prior.weights}.items():
                finite(value, name)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
    return priors


def fit_predictor(config: TrainConfig, train: list[BrainDataset], val: list[BrainDataset] = (),
                  seeds: tuple[int, ...] = (0,), out_dir: str | os.PathLike | None = None, resume: bool = False,
                  progress: bool = True, overwrite: bool = False,
                  image_order: list[str] | None = None, settings: dict | None = None) -> RDMPredictor:
    """Train one model per seed on image sets in memory (each in out_dir/seed<k> with its checkpoints and log)
    and bundle them (`fit_seeds`). With `image_order` (your own data: the RDM rows' images, written to
    out_dir/images.txt) the predictor writes your own keys, without it the challenge's."""
    return fit_seeds(config, train, val, seeds, out_dir, resume=resume, progress=progress, overwrite=overwrite,
                     settings=settings, image_order=image_order, official=image_order is None)


def fit_seeds(config: TrainConfig, train: Sequence[BrainDataset] | StepData, val: Sequence[BrainDataset] = (),
              seeds: tuple[int, ...] = (0,), out_dir: str | os.PathLike | None = None, *, resume: bool = False,
              progress: bool = True, overwrite: bool = False, settings: dict | None = None,
              image_order: list[str] | None = None, official: bool = True, ranks: Ranks | None = None,
              ) -> RDMPredictor:
    """The one run driver, for any data (trainer.make_step) on one process or every rank: train one model per
    seed (trainer.fit in out_dir/seed<k>, resumed from its last.pt with `resume`) and bundle them.

    `out_dir` is owned by the main process for the whole run (files.run_folder): new or empty, or with
    `overwrite` an earlier siamrdm run, cleared first, or with `resume` the run to continue, started with the
    same `settings` (what the command ran with, written to out_dir/settings.json as given). `official`: the
    predictor writes the challenge's keys ('EVC' -> 'EVC_RDMs'), else the targets' own names.
    """
    ranks = ranks or current_ranks()
    with contextlib.ExitStack() as stack:
        barrier(ranks)  # every rank has checked its inputs and the folder before the main process writes to it
        if out_dir is not None and ranks.main:
            stack.enter_context(run_folder(out_dir, "fit", run_mode(overwrite, resume)))
            start_run(Path(out_dir), seeds, resume, settings, image_order)
        barrier(ranks)
        models, normalisation, metrics, priors = [], {}, {}, {}
        for seed in seeds:
            seed_dir = Path(out_dir) / f"seed{seed}" if out_dir else None
            result = fit(replace(config, seed=seed), train, val, seed_dir, resume, progress, ranks)
            models.append(result.model.eval())
            normalisation, priors = result.normalisation, result.priors
            metrics[f"seed{seed}"] = seed_summary(result)
        keys = {t: target_key(t, official=official) for t in config.targets}
        predictor = RDMPredictor(models, replace(config, seed=seeds[0]), normalisation, metrics, priors, keys)
        if out_dir and ranks.main:
            predictor.save(Path(out_dir) / "model.pt")
        barrier(ranks)
        return predictor


def start_run(out_dir: Path, seeds: tuple[int, ...], resume: bool, settings: dict | None,
              image_order: list[str] | None) -> None:
    """What a run writes before it trains: settings.json (checked against the run's own when resuming), the
    image order (an --order file for the next run), and a check of every file the fit will write (a folder in
    a checkpoint's place, a user's file), so that none is refused only after training."""
    if resume and settings is not None:
        check_same_settings(out_dir, settings)
    if settings is not None:
        write_settings(out_dir, settings)
    if image_order is not None:
        write_text(out_dir / IMAGE_ORDER_FILE, "\n".join(image_order) + "\n")
    for path in [out_dir / "model.pt", *(out_dir / f"seed{seed}" / name for seed in seeds
                                         for name in ("last.pt", "log.csv"))]:
        check_output_file(path)


def fit_predict(config: TrainConfig, train: list[BrainDataset], images: ImageSet | list[np.ndarray],
                seeds: tuple[int, ...] = (0,), val_fraction: float = 0.0, progress: bool = True,
                out_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Train on `train` only and predict the RDMs of `images` (a shortcut for Python callers; evaluate's Siamese
    rows choose their epochs on folds instead: evaluate.predict_siamese).

    With `val_fraction`, the best epoch is chosen on images held out of the training sets; otherwise the
    config's epochs run in full. Either way nothing about `images` is seen before prediction.
    """
    val: list[BrainDataset] = []
    if val_fraction > 0:
        split = [split_holdout(d, val_fraction, config.seed) for d in train]
        train, val = [t for t, _ in split], [v for _, v in split]
    return fit_predictor(config, train, val, seeds, out_dir, progress=progress).predict(images)
