"""The baselines the paper beats: RDMs of a pretrained network's stages, alone or in a weighted sum.

`layer_rdms` runs a backbone once over the images, in batches, and returns one correlation-distance RDM
(1 - Pearson r of the flattened activations) per stage. `select_best_layer` picks a stage on training data
only; `fit_nnls` / `apply_nnls` fit the target RDM as a non-negative weighted sum of the stage RDMs on training
data and apply the weights to held-out images.

Memory: a stage's RDM needs every image's activations of that stage, but not the other stages'. Each batch's
activations are centred and scaled to unit norm per image (so the Gram matrix of the stored rows is the
Pearson correlation) and written into one float32 buffer per stage. Buffers live in RAM while their total
stays under `memory_mb`, smallest stages first; the rest are disk-backed memory maps in a temporary folder,
so the resident memory is bounded by the budget plus one batch, whatever the number of images. The RDMs are
then computed stage by stage from row blocks of the buffers. This is exact (no random projection) and runs
the body once per image (no recomputation per stage).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls
from tqdm.auto import tqdm

from ..errors import DataError
from ..io.images import ImageSet
from ..io.progress import Progress
from ..rdm.compare import Score, score_rdm
from ..rdm.core import correlation_rdm, group_average, rank_unit, square_rdm, upper_tri
from .backbones import backbone_stages, create_body, images_to_tensor

DEFAULT_BACKBONE = "efficientnet_lite0"
BLOCK_BYTES = 64 * 2**20  # float64 bytes of one row block when computing a Gram matrix


def _image_list(images: ImageSet | list[np.ndarray]) -> list[np.ndarray]:
    return list(images.images) if isinstance(images, ImageSet) else list(images)


def _gram(buffer: np.ndarray) -> np.ndarray:
    """buffer @ buffer.T in float64, reading `buffer` (possibly a memory map) in row blocks.

    torch's float64 matmul: several times faster here than numpy's for these wide, short matrices.
    """
    n, d = buffer.shape
    rows = max(1, BLOCK_BYTES // max(d * 8, 1))
    gram = torch.empty(n, n, dtype=torch.float64)
    for a in range(0, n, rows):
        left = torch.from_numpy(np.asarray(buffer[a : a + rows])).double()
        for b in range(a, n, rows):
            right = left if b == a else torch.from_numpy(np.asarray(buffer[b : b + rows])).double()
            block = left @ right.T
            gram[a : a + rows, b : b + rows] = block
            gram[b : b + rows, a : a + rows] = block.T
    return gram.numpy()


def _every_stage(body: torch.nn.Module | None, backbone: str, weights: str | None) -> torch.nn.Module:
    """`body` (or the backbone's, with these weights, up to its last stage) in eval mode: every stage's output."""
    if body is None:
        body = create_body(backbone, weights, stage=backbone_stages(backbone)[-1])
    return body.eval()


@torch.no_grad()
def layer_rdms(
    images: ImageSet | list[np.ndarray],
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    image_size: int = 224,
    batch_size: int = 16,
    progress: bool = True,
    memory_mb: float = 256.0,
    body: torch.nn.Module | None = None,
) -> dict[str, np.ndarray]:
    """One (N, N) RDM, 1 - Pearson r of the flattened activations, for every stage of a backbone.

    `weights`: None for the pretrained default, 'random', or a state_dict file (see `create_body`). A ready
    `body` (from `create_body(..., stage=last stage)`) may be passed instead to reuse it across image sets.
    See the module docstring for how memory stays bounded.
    """
    pictures = _image_list(images)
    n = len(pictures)
    if n < 3:
        raise DataError(f"layer RDMs need at least 3 images, got {n}")
    body = _every_stage(body, backbone, weights)
    buffers: dict[str, np.ndarray] = {}
    budget = memory_mb * 2**20
    with tempfile.TemporaryDirectory(prefix="siamrdm-layers-") as tmp:
        bar = tqdm(total=n, disable=not Progress.of(progress, "layers").bars, desc="layer features", unit="img",
                   leave=False)
        for start in range(0, n, batch_size):
            batch = images_to_tensor(pictures[start : start + batch_size], image_size)
            outputs = body.stage_outputs(batch)
            if not buffers:  # first batch: the stage sizes are known now; allocate, smallest stages in RAM first
                sizes = {name: out[0].numel() for name, out in outputs.items()}
                used = 0.0
                for name in sorted(sizes, key=sizes.get):
                    nbytes = n * sizes[name] * 4
                    if used + nbytes <= budget:
                        buffers[name] = np.empty((n, sizes[name]), dtype=np.float32)
                        used += nbytes
                    else:
                        path = Path(tmp) / f"{name}.f32"
                        buffers[name] = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, sizes[name]))
            for name, out in outputs.items():
                flat = out.reshape(len(out), -1).double()
                flat = flat - flat.mean(dim=1, keepdim=True)
                norms = flat.norm(dim=1, keepdim=True)
                flat = flat / torch.where(norms > 0, norms, torch.ones_like(norms))
                buffers[name][start : start + len(out)] = flat.float().numpy()
            bar.update(len(batch))
        bar.close()
        stages = list(outputs)  # the body's stage order
        rdms = {name: correlation_rdm(_gram(buffers[name])) for name in stages}
        buffers.clear()  # release the memory maps before the folder goes
    return rdms


@torch.no_grad()
def layer_features(
    images: ImageSet | list[np.ndarray],
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    image_size: int = 224,
    batch_size: int = 16,
    progress: bool = True,
    body: torch.nn.Module | None = None,
) -> dict[str, np.ndarray]:
    """Every stage's channels averaged over space, (N, C) float64 per stage: the features FR-RSA weighs one by
    one (model.frrsa). A channel's spatial mean keeps what the channel codes, not where, so a stage gives C
    features whatever the image size, and memory is N x (sum of C) whatever the number of images."""
    pictures = _image_list(images)
    if not pictures:
        raise DataError("stage features need at least one image")
    body = _every_stage(body, backbone, weights)
    parts: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=len(pictures), disable=not Progress.of(progress, "layers").bars, desc="stage features",
               unit="img", leave=False)
    for start in range(0, len(pictures), batch_size):
        batch = images_to_tensor(pictures[start : start + batch_size], image_size)
        for name, out in body.stage_outputs(batch).items():
            parts.setdefault(name, []).append(out.double().mean(dim=(2, 3)).numpy())
        bar.update(len(batch))
    bar.close()
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


# --------------------------------------------------------------------------- best single layer


def layer_scores(rdms: dict[str, np.ndarray], target_rdms: np.ndarray) -> dict[str, Score]:
    """The challenge score of every stage's RDM against a target's subject RDMs."""
    return {stage: score_rdm(rdm, target_rdms) for stage, rdm in rdms.items()}


def select_best_layer(train_rdms: dict[str, np.ndarray] | list[dict[str, np.ndarray]],
                      train_target_rdms: np.ndarray | list[np.ndarray]) -> str:
    """The stage whose RDM scores best (the official mean r^2 over subjects) against the training set's
    subjects among the stages whose signed mean rho is positive: r^2 is blind to sign and can choose a stage
    whose RDM runs against the brain's (where no stage agrees in sign, the best signed one); with several sets
    (lists, as for `fit_nnls`), on the means over the sets.

    Both arguments belong to the training images: the held-out images play no part in the choice.
    """
    sets_rdms = [train_rdms] if isinstance(train_rdms, dict) else list(train_rdms)
    targets = [train_target_rdms] if isinstance(train_target_rdms, np.ndarray) else list(train_target_rdms)
    if not sets_rdms or not sets_rdms[0]:
        raise DataError("no layer RDMs to choose from")
    scores = [layer_scores(rdms, target) for rdms, target in zip(sets_rdms, targets, strict=True)]
    signed = {stage: float(np.mean([np.mean(s[stage].rho) for s in scores])) for stage in sets_rdms[0]}
    agreeing = [stage for stage, rho in signed.items() if rho > 0]
    if not agreeing:
        return max(signed, key=signed.get)
    return max(agreeing, key=lambda stage: float(np.mean([s[stage].r2 for s in scores])))


# --------------------------------------------------------------------------- non-negative regression


@dataclass
class NNLSFit:
    """Target RDM ~ intercept + sum_k weights[k] * layer RDM k, with every weight >= 0.

    With `rank`, every upper triangle (target and layers) is rank-transformed and scaled to [0, 1] before the
    fit and again before applying, so the weights transfer between image sets of different sizes.
    """

    weights: dict[str, float]
    intercept: float
    rank: bool
    residual: float  # root mean square error of the fit on the training pairs
    notes: list[str] = field(default_factory=list)


def _design(vectors: list[np.ndarray], rank: bool) -> np.ndarray:
    if rank:
        vectors = [rank_unit(v) for v in vectors]
    return np.stack(vectors, axis=1)


def fit_nnls(train_rdms: dict[str, np.ndarray] | list[dict[str, np.ndarray]],
             target_rdm: np.ndarray | list[np.ndarray], rank: bool = True) -> NNLSFit:
    """Non-negative least squares of the target's upper triangle on the layer RDMs' upper triangles.

    `target_rdm` is one (N, N) RDM or a subject stack, which is averaged over subjects first. Several image
    sets may be given as lists (one dict of layer RDMs and one target per set): their pairs are fitted
    together, each set ranked on its own; pairs never cross sets. The intercept is free (not constrained to
    be >= 0): the columns and the target are centred and NNLS runs on the centred problem, which is the
    least-squares solution with a free intercept. `rank` (default) fits ranks, as the Spearman-based metric
    sees them; rank=False fits the raw dissimilarities.
    """
    sets_rdms = [train_rdms] if isinstance(train_rdms, dict) else list(train_rdms)
    targets = [target_rdm] if isinstance(target_rdm, np.ndarray) else list(target_rdm)
    if not sets_rdms or not sets_rdms[0]:
        raise DataError("no layer RDMs to fit")
    if len(sets_rdms) != len(targets):
        raise DataError(f"{len(sets_rdms)} sets of layer RDMs but {len(targets)} targets")
    stages = list(sets_rdms[0])
    xs, ys = [], []
    for rdms, target in zip(sets_rdms, targets, strict=True):
        target = np.asarray(target, dtype=np.float64)
        if target.ndim > 2:
            target = group_average(target)
        n = target.shape[-1]
        for stage in stages:
            if stage not in rdms or rdms[stage].shape != (n, n):
                shape = rdms[stage].shape if stage in rdms else "none"
                raise DataError(f"layer {stage}: RDM has shape {shape}, the target is {n} x {n}")
        xs.append(_design([upper_tri(rdms[s]) for s in stages], rank))
        ys.append(_design([upper_tri(target)], rank)[:, 0])
    x, y = np.vstack(xs), np.concatenate(ys)
    x_mean, y_mean = x.mean(axis=0), y.mean()
    coef, _ = nnls(x - x_mean, y - y_mean)
    notes = []
    if not np.any(coef > 0):  # no layer correlates positively: keep the least bad one so the RDM is not constant
        best = int(np.argmax([np.corrcoef(x[:, k], y)[0, 1] for k in range(len(stages))]))
        coef[best] = 1e-12
        notes.append(f"all weights were 0; kept {stages[best]} with a negligible weight")
    intercept = float(y_mean - x_mean @ coef)
    residual = float(np.sqrt(np.mean((y - intercept - x @ coef) ** 2)))
    return NNLSFit({s: float(c) for s, c in zip(stages, coef, strict=True)}, intercept, rank, residual, notes)


def apply_nnls(fit: NNLSFit, rdms: dict[str, np.ndarray]) -> np.ndarray:
    """The (N, N) RDM predicted for new images from their layer RDMs."""
    missing = [s for s in fit.weights if s not in rdms]
    if missing:
        raise DataError(f"layer RDMs lack the fitted stage(s) {', '.join(missing)}")
    stages = list(fit.weights)
    n = rdms[stages[0]].shape[-1]
    x = _design([upper_tri(rdms[s]) for s in stages], fit.rank)
    return square_rdm(fit.intercept + x @ np.array([fit.weights[s] for s in stages]), n)
