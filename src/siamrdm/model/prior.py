"""A baseline prior that the Siamese head corrects: the model starts from the best pretrained-layer RDM.

The paper's own finding, and this project's cross-set table, show that for IT a plain pretrained stage RDM
generalises to new images better than a head trained from scratch, which overfits within a few epochs. So
with a prior the predicted dissimilarity of a pair is

    d(i, j) = scale * prior(i, j) + intercept + head(i, j)

where prior(i, j) is a fixed combination of the pretrained network's stage RDMs (1 - Pearson r of the
stage's activations, rank-transformed within the image set and scaled to [0, 1], so it transfers between
sets of different sizes), `scale` and `intercept` are least squares on the training pairs (the scale kept
positive: where the fit's slope is not, the prior's spread is matched to the target's), and the head
starts at zero and learns the residual. At epoch 0 the prediction ranks the pairs exactly as the prior
does, so the validation curve starts at the baseline's score and training only keeps what improves on it.

Two priors, both fitted on training images only:
- "layer": the single stage whose RDM scores best (mean r^2 over subjects, averaged over training sets) of
  those that agree with the subjects in sign (baselines.select_best_layer);
- "nnls": a non-negative weighted sum of all stage RDMs (baselines.fit_nnls over all training sets' pairs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..choices import PRIORS as PRIORS  # the names, torch-free there, for the command line
from ..errors import DataError
from ..io.images import ImageSet
from ..rdm.core import rank_unit, upper_tri
from . import baselines
from .backbones import backbone_stages, create_body

_CACHE: dict[tuple, dict[str, np.ndarray]] = {}  # stage RDMs per image set
_FEATURE_CACHE: dict[tuple, dict[str, np.ndarray]] = {}  # stage features per image set
_CACHE_SIZE = 16


@dataclass
class PriorFit:
    """One target's prior: stage weights on rank-scaled stage RDMs, then a linear map to the training units."""

    kind: str
    weights: dict[str, float]  # stage -> weight (one stage with weight 1 for "layer")
    scale: float
    intercept: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PriorFit:
        return cls(str(values["kind"]), {str(k): float(v) for k, v in values["weights"].items()},
                   float(values["scale"]), float(values["intercept"]))


def stage_rdms(images: ImageSet | list[np.ndarray], backbone: str, weights: str | None, image_size: int,
               progress: bool = False, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Every stage's RDM of the pretrained backbone for these images. Kept per image set (a challenge run fits
    many models on the same sets). Random weights ('random', for tests) are drawn from a fixed seed, so the
    prior of a model is the same at training and at prediction."""
    return _per_image_set(_CACHE, baselines.layer_rdms, False, images, backbone, weights, image_size, progress,
                          batch_size)


def stage_features(images: ImageSet | list[np.ndarray], backbone: str, weights: str | None, image_size: int,
                   progress: bool = False, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Every stage's channels averaged over space (baselines.layer_features) for these images, kept per image
    set and cut for its subsets as `stage_rdms` is, from the same body (random weights from the same seed)."""
    return _per_image_set(_FEATURE_CACHE, baselines.layer_features, True, images, backbone, weights, image_size,
                          progress, batch_size)


def _per_image_set(cache: dict, compute: Callable[..., dict[str, np.ndarray]], features: bool,
                   images: ImageSet | list[np.ndarray], backbone: str, weights: str | None, image_size: int,
                   progress: bool, batch_size: int) -> dict[str, np.ndarray]:
    """`compute` (every stage's RDMs, or with `features` its per-image features) of the body for these images,
    kept in `cache` per image set (the oldest entry out past _CACHE_SIZE) and cut for a subset from a cached set
    that holds all its images."""
    key = None
    if isinstance(images, ImageSet):
        key = (str(images.source), tuple(zip(images.names, images.digests(), strict=True)), backbone, weights,
               image_size)
        if key in cache:
            return cache[key]
        part = _from_cached_superset(key, cache, features)
        if part is not None:
            return part
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        body = create_body(backbone, weights, stage=backbone_stages(backbone)[-1])
    values = compute(images, image_size=image_size, batch_size=batch_size, progress=progress, body=body)
    if key is not None:
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = values
    return values


def _from_cached_superset(key: tuple, cache: dict, features: bool) -> dict[str, np.ndarray] | None:
    """A subset's stage RDMs (or `features`) cut from a cached set that holds all its images (1 - Pearson r of a
    pair, and an image's features, do not depend on the other images), so folds and held-out splits of a set
    cost nothing more."""
    source, names, *rest = key
    for (cached_source, cached_names, *cached_rest), values in cache.items():
        if cached_source != source or cached_rest != rest:
            continue
        position = {name: k for k, name in enumerate(cached_names)}
        if all(name in position for name in names):
            index = np.array([position[name] for name in names])
            return {stage: v[index] if features else v[np.ix_(index, index)] for stage, v in values.items()}
    return None


def prior_vector(fit: PriorFit, rdms: dict[str, np.ndarray]) -> np.ndarray:
    """The prior's upper triangle (in the training target's units) for one image set's stage RDMs."""
    missing = [s for s in fit.weights if s not in rdms]
    if missing:
        raise DataError(f"stage RDMs lack the prior's stage(s) {', '.join(missing)}")
    combined = sum(w * rank_unit(upper_tri(rdms[s])) for s, w in fit.weights.items())
    return fit.scale * combined + fit.intercept


def fit_prior(kind: str, sets_rdms: list[dict[str, np.ndarray]], sets_subjects: list[np.ndarray],
              sets_targets: list[np.ndarray]) -> PriorFit:
    """Fit one target's prior on training sets: their stage RDMs, subject RDMs (to choose or weight stages)
    and rescaled target vectors (the head's training units, for the scale and intercept)."""
    if kind == "layer":
        weights = {baselines.select_best_layer(sets_rdms, sets_subjects): 1.0}
    elif kind == "nnls":
        nnls = baselines.fit_nnls(sets_rdms, sets_subjects)
        weights = {s: w for s, w in nnls.weights.items() if w > 0}
    else:
        raise DataError(f"unknown prior '{kind}' (choose from {', '.join(PRIORS)})")
    unit = PriorFit(kind, weights, 1.0, 0.0)
    x = np.concatenate([prior_vector(unit, r) for r in sets_rdms])
    y = np.concatenate(sets_targets)
    slope, intercept = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (0.0, float(y.mean()))
    if slope <= 0 and np.ptp(x) > 0:  # the network's dissimilarity predicts the brain's with a positive sign
        slope = float(np.std(y) / np.std(x))
        intercept = float(np.mean(y) - slope * np.mean(x))
    return PriorFit(kind, weights, float(slope), float(intercept))
