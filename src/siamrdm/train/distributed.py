"""Several processes (ranks) training one model: the all-pairs loss of a mini-batch split by rows.

Each rank embeds its shard of the mini-batch's images; the standardised features of all shards are gathered
with their gradient (torch.distributed.nn.all_gather), and each rank computes the loss of its rows of pair
tiles (its own images as image a) against every image of the mini-batch (model.all_pairs_loss with `rows`).
The row blocks add up to the full mini-batch loss, and the gather's backward sums every rank's gradient
w.r.t. a shard's features back onto that shard, so the body's backward on each rank sees the whole loss.

Gradients are then averaged over ranks, as DistributedDataParallel does (one all_reduce of the flattened
gradients). Each rank's loss is scaled by the number of ranks, so that this average is exactly the gradient of
the single-process mean loss. The step is written out rather than wrapped in DDP because the body's backward
runs in chunks after the head's (two passes keep memory bounded, as in fullbatch.FullBatchStep), which DDP's
one-forward-one-backward hooks do not follow.

With one process every collective is skipped, so the same code is the single-process mini-batch step.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import DataError
from ..io.condensed import CondensedRDMs
from ..model.network import SiameseRDMNet, all_pairs_loss
from ..rdm.splits import holdout_indices
from .config import ConfigError, TrainConfig, check_config, pick_device
from .fullbatch import build_model, predict_pairs
from .largeset import (
    AugmentedImages,
    HeldOutTarget,
    ImageStore,
    collate_pixels,
    load_pixels,
    pair_index,
    rescale_in_place,
)
from .loop import KeptChoice
from .predict import RDMPredictor, fit_seeds
from .ranks import Ranks as Ranks  # re-exported: callers place a run's ranks here
from .ranks import current_ranks as current_ranks


def launched_by_torchrun() -> bool:
    """torchrun (torch.distributed.run) sets these for every process it starts."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def init_from_env(device: str = "auto") -> tuple[Ranks, str | None]:
    """Join the process group torchrun describes: nccl on CUDA (one GPU per local rank: 'cuda' and 'cuda:N' mean
    the rank's own), gloo otherwise (`device` 'cpu', or 'auto' without CUDA). More processes on a node than it has
    GPUs is refused (a ConfigError naming the device) before joining.

    Returns the ranks and the device this rank must use ('cuda:LOCAL_RANK'; None for the device asked for)."""
    if not launched_by_torchrun():
        return Ranks(), None
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    device = None
    if use_cuda:
        local = int(os.environ["LOCAL_RANK"])
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local >= count:
            raise ConfigError("device", f"rank {os.environ['RANK']} runs on its node's GPU {local} (its local rank), "
                                        f"but this machine has {count} CUDA device(s): start at most {count} "
                                        "processes per node (torchrun --nproc-per-node), or use --device cpu")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current_ranks(), device


# How long a rank that failed for another reason than its own bad input waits before it exits (see `rank_session`).
PEER_FAILURE_GRACE_S = 10.0


@contextlib.contextmanager
def rank_session(ranks: Ranks) -> Iterator[None]:
    """The part of a run that uses the process group, and how it ends when a rank fails.

    A rank's own bad input (a DataError) propagates at once: `cli.main` prints its one line and that rank's
    process exits 2. The other ranks then see the collective they were in fail ('Connection closed by peer' from
    gloo). Such a failure, and any other one, waits `PEER_FAILURE_GRACE_S` seconds before it propagates (and
    exits 1), so that torchrun first sees the rank that failed, reports it as the root cause with its exit code
    2, and stops the others (SIGTERM) before they print a second error. torchrun itself then exits 1, whatever
    its workers' codes. Either way the process group is destroyed on the way out, and a failure to destroy it
    never hides the error that ended the run.
    """
    try:
        yield
    except DataError:
        raise
    except Exception:
        if ranks.world > 1:
            time.sleep(PEER_FAILURE_GRACE_S)
        raise
    finally:
        if ranks.world > 1 and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def shard_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous shards of n images over `world` ranks, sizes differing by at most one (np.array_split's)."""
    edges = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(n), world)])
    return [(int(edges[r]), int(edges[r + 1])) for r in range(world)]


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' equal-shaped tensors, differentiable: the backward sums over ranks the gradients sent to each
    part and hands each rank its own (torch.distributed.nn's all_gather does this too, but is deprecated)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        summed = torch.stack(grads).contiguous()
        dist.all_reduce(summed)
        return summed[dist.get_rank()]


def all_gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return _GatherWithGrad.apply(tensor)


def gather_features(local: torch.Tensor, bounds: list[tuple[int, int]], ranks: Ranks) -> torch.Tensor:
    """Every rank's features in rank order, (N, ...), with their gradient: the backward sums the gradients that
    all ranks' losses send to a shard and returns them to the rank that owns it. Shards may differ in size
    (padded to the largest for the collective)."""
    if ranks.world == 1:
        return local
    size = max(stop - start for start, stop in bounds)
    padded = torch.cat([local, local.new_zeros(size - len(local), *local.shape[1:])]) if len(local) < size else local
    parts = all_gather_with_grad(padded.contiguous())
    return torch.cat([part[: stop - start] for part, (start, stop) in zip(parts, bounds, strict=True)])


def rows_loss(model: SiameseRDMNet, local_features: torch.Tensor, targets: torch.Tensor, ranks: Ranks,
              bounds: list[tuple[int, int]], tile: int | None = None) -> tuple[torch.Tensor, float]:
    """(loss to back-propagate on this rank, the mini-batch's mean loss) for standardised local features.

    The first is this rank's row block of the all-pairs loss times the number of ranks, so that averaging the
    ranks' gradients (`average_gradients`) gives the gradient of the mean loss over all pairs of the batch."""
    features = gather_features(local_features, bounds, ranks)
    loss = all_pairs_loss(model.head, features, targets, tile=tile, rows=bounds[ranks.rank])
    value = loss.detach().double()
    if ranks.world > 1:
        dist.all_reduce(value)
    return loss * ranks.world, float(value)


def average_gradients(parameters: list[torch.nn.Parameter], ranks: Ranks) -> None:
    """Average the gradients over ranks, as DistributedDataParallel does: one all_reduce of them all, flattened.
    Parameters without a gradient (a frozen body) are left out on every rank alike."""
    if ranks.world == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ranks.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(model: torch.nn.Module, ranks: Ranks) -> None:
    """Start every rank from rank 0's weights and buffers (as DDP does when it wraps a model)."""
    if ranks.world == 1:
        return
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def minibatch_backward(model: SiameseRDMNet, pixels: torch.Tensor, targets: torch.Tensor, ranks: Ranks,
                       bounds: list[tuple[int, int]], train_body: bool, chunk: int,
                       tile: int | None = None) -> float:
    """Gradients (averaged over ranks) of the mean loss over all pairs of one mini-batch; returns that loss.

    `pixels` are this rank's shard of the batch's images (already on the model's device), `targets` the (P, T)
    rescaled targets of all pairs i < j of the whole batch in upper-triangle order. With `train_body`, two
    passes keep memory bounded: the body without a graph first, then, once the head's loss has given the
    features' gradient, the body again in chunks of `chunk` images, back-propagating it (the same gradient as
    one big graph).
    """
    with torch.no_grad():
        raw = torch.cat([model.body(pixels[k : k + chunk]) for k in range(0, len(pixels), chunk)]) if len(pixels) \
            else pixels.new_zeros(0, *model.feature_shape)
    if train_body:
        raw.requires_grad_()
    loss, value = rows_loss(model, model.standardise(raw), targets, ranks, bounds, tile)
    loss.backward()
    if train_body:
        for k in range(0, len(pixels), chunk):
            model.body(pixels[k : k + chunk]).backward(raw.grad[k : k + chunk])
    average_gradients([p for p in model.parameters() if p.requires_grad], ranks)
    return value


# --------------------------------------------------------------------------- the mini-batch fit
# An epoch is one pass over the training images in mini-batches of `batch_images` (over all ranks); a step
# trains on all pairs among the batch's images. Images are drawn in an order seeded by the run's seed and the
# epoch, each image augmented by a generator seeded by the seed, the epoch and the image: a run on one rank
# and on K ranks sees the same batches and views, so it trains the same model (up to float rounding).


@dataclass
class BatchSettings:
    """The mini-batch path's settings beside TrainConfig; saved in its checkpoints and settings.json."""

    batch_images: int = 256  # images per step, over all ranks
    val_fraction: float = 0.0  # images held out for validation (pairs among them only); 0: none
    loader_workers: int = 2  # DataLoader worker processes per rank; 0 loads in the training process
    split_seed: int = 0  # the held-out split (splits.holdout_indices)

    def same_run(self, other: BatchSettings) -> bool:
        """Whether a checkpoint with `other` continues this run (the loader's workers change nothing)."""
        return replace(self, loader_workers=0) == replace(other, loader_workers=0)


def check_batch_settings(batch: BatchSettings, world: int = 1) -> BatchSettings:
    """Refuse bad values before any work; `world` ranks share each batch, at least 2 images each."""
    if not isinstance(batch.batch_images, int) or batch.batch_images < 2:
        raise ConfigError("batch_images", f"a step needs at least 2 images (one pair), got {batch.batch_images}")
    if batch.batch_images < 2 * world:
        raise ConfigError("batch_images", f"{batch.batch_images} images per step cannot be shared by {world} "
                                          "ranks: give at least 2 per rank")
    if not isinstance(batch.loader_workers, int) or batch.loader_workers < 0:
        raise ConfigError("loader_workers", f"must be 0 or more, got {batch.loader_workers}")
    if not (isinstance(batch.val_fraction, int | float) and math.isfinite(batch.val_fraction)
            and 0 <= batch.val_fraction < 1):
        raise ConfigError("val_fraction", f"must be at least 0 and below 1, got {batch.val_fraction}")
    return batch


# The full-batch fit's settings that this path does not have, and the value it runs with: refused when set
# otherwise, never silently ignored.
FULL_BATCH_ONLY = {"precision": "fp32", "channels_last": False, "validate_every": 1, "per_image": "keep",
                   "head_average": None, "set_weights": "pairs", "group_target": "mean", "train_stages": "all"}
# The full-batch fit's settings this path has no use for (each epoch crops and flips afresh, no cached views):
# refused unless left at TrainConfig's default, so that a value given is never silently ignored.
FULL_BATCH_UNUSED = ("augment_views",)


def check_minibatch_config(config: TrainConfig) -> TrainConfig:
    """A config for the mini-batch path checked whole, before any work: the settings this path cannot honour
    refused first (`refuse_full_batch_settings`), then every check of `config.check_config`. In that order, so
    that a setting this path refuses is refused as such (a prior: 'trains without a prior'), not by a full-batch
    check of what goes with it (the pairwise head 'cannot correct a prior'). The one check the command line runs
    (fit --batch-images), so the library's line is its line."""
    return check_config(refuse_full_batch_settings(config))


def refuse_full_batch_settings(config: TrainConfig) -> TrainConfig:
    """Refuse, before any folder is made, the settings the mini-batch path cannot honour (a prior, a loss over all
    pairs, `FULL_BATCH_ONLY`); cheap, so `fit_large` and every step run it (`check_minibatch_config` adds the
    rest)."""
    if config.prior != "none":
        raise ConfigError("prior", "the mini-batch path trains without a prior (its stage RDMs would be N x N); "
                                   "use none")
    if config.loss != "mse":  # a correlation over a mini-batch's pairs is not the correlation over all pairs
        raise ConfigError("loss", f"the mini-batch path trains with the mse loss only, not {config.loss!r}")
    for name, value in FULL_BATCH_ONLY.items():
        if getattr(config, name) != value:
            raise ConfigError(name, f"the mini-batch path (batch_images) runs with {value} only, not "
                                    f"{getattr(config, name)!r}")
    for name in FULL_BATCH_UNUSED:
        default = getattr(TrainConfig, name)
        if getattr(config, name) != default:
            raise ConfigError(name, f"the mini-batch path (batch_images) has no use for it (each epoch augments "
                                    f"afresh): leave it at {default!r}, not {getattr(config, name)!r}")
    return config


@dataclass
class LargeTargets:
    """A large set's targets, read in one pass over the RDM files before a run starts, so that a bad value is
    refused before the run folder is made and several seeds read the files once."""

    train_index: np.ndarray  # sorted image indices
    val_index: np.ndarray
    values: np.ndarray  # (P_train, T) float32, rescaled, in the upper-triangle order of the training images
    normalisation: dict[str, dict[str, float]]  # per target: the rescaling fitted on the training pairs
    held_out: dict[str, HeldOutTarget]  # per target; empty without held-out images


def read_targets(rdms: dict[str, CondensedRDMs], n_images: int, batch: BatchSettings,
                 rescale: str) -> LargeTargets:
    """Split the images (`batch.val_fraction`, `batch.split_seed`) and read every target's pairs: the training
    pairs' group mean, rescaled (4 bytes a pair), and the held-out pairs' subjects."""
    train_index, val_index = holdout_indices(n_images, batch.val_fraction, batch.split_seed)
    columns, normalisation, held_out = [], {}, {}
    for target, condensed in rdms.items():
        train_values, val_values = condensed.split(train_index, val_index)
        normalisation[target] = rescale_in_place(train_values, rescale)
        columns.append(train_values)
        if len(val_index):
            held_out[target] = HeldOutTarget.from_values(val_values)
    values = columns[0][:, None] if len(columns) == 1 else np.stack(columns, axis=1)
    return LargeTargets(train_index, val_index, values, normalisation, held_out)


@dataclass
class LargeSet:
    """A large image set ready to train in mini-batches: its images on disk, its targets read and split, the
    batch settings. As a trainer's data (trainer.make_step) it trains with `MiniBatchStep`."""

    images: ImageStore
    targets: LargeTargets
    batch: BatchSettings

    def make_step(self, config: TrainConfig, ranks: Ranks | None = None) -> MiniBatchStep:
        return MiniBatchStep(config, self.batch, self.images, self.targets, ranks)


class MiniBatchStep:
    """The mini-batch way of training (loop.Step) on this rank: data, model, the epoch's steps, validation.

    Every rank holds the same model and optimiser (the same start, the same averaged gradients); only rank 0
    validates, logs and writes files, and tells the others whether to stop early."""

    priors: dict = {}  # no prior on this path (refuse_full_batch_settings)
    checkpoint_every_s = 0.0  # an epoch is many steps: checkpoint after every one

    def __init__(self, config: TrainConfig, batch: BatchSettings, images: ImageStore, data: LargeTargets,
                 ranks: Ranks | None = None):
        refuse_full_batch_settings(config)
        if tuple(data.normalisation) != tuple(config.targets):
            raise ConfigError("targets", f"{config.targets} are not the targets of the RDMs given, "
                                         f"{tuple(data.normalisation)}")
        self.ranks = ranks or current_ranks()
        self.main = self.ranks.main
        self.config, self.batch = config, check_batch_settings(batch, self.ranks.world)
        self.device = pick_device(config.device)
        self.name = Path(images.source).stem
        self.train_index, self.val_index, self.targets = data.train_index, data.val_index, data.values
        self.normalisation = {self.name: data.normalisation}
        self.held_out = data.held_out
        self.has_validation = bool(self.held_out)
        self.dataset = AugmentedImages(images, config)
        self.model = build_model(config, self.device).train()  # the body stays in eval mode (ImageNet BatchNorm)
        self._set_feature_stats()
        broadcast_parameters(self.model, self.ranks)  # rank 0's head and feature statistics, bit for bit
        self._val_features: list[torch.Tensor] | None = None

    @property
    def label(self) -> str:
        return f" ({self.ranks.world} ranks)" if self.ranks.world > 1 else ""

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_index) / self.batch.batch_images)

    # ---- data

    def _load(self, shards: list[list[tuple[int, int]]]) -> Iterator[torch.Tensor]:
        """This rank's shard of each batch, (image index, epoch) items loaded by worker processes, as float
        pixels on the device."""
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=shards, collate_fn=collate_pixels,
                                             num_workers=self.batch.loader_workers,
                                             pin_memory=self.device.type == "cuda")
        for pixels in load_pixels(loader):
            yield pixels.to(self.device, non_blocking=True).float().div_(255)

    @torch.no_grad()
    def _plain_features(self, index: np.ndarray, flipped: bool = False) -> list[torch.Tensor]:
        """Raw body features of these images, not augmented, in chunks, on the device; with `flipped`, those of
        the mirror images too (test-time augmentation), from the same read of the images."""
        chunk, body = self.config.body_chunk, self.model.body
        views: list[list[torch.Tensor]] = [[], []] if flipped else [[]]
        for pixels in self._load([[(int(i), 0) for i in index[k : k + chunk]] for k in range(0, len(index), chunk)]):
            views[0].append(body(pixels))
            if flipped:
                views[1].append(body(pixels.flip(-1)))
        return [torch.cat(view) for view in views]

    def _set_feature_stats(self, sample: int = 512) -> None:
        """Standardise the features with the statistics of up to `sample` training images, evenly spaced (every
        rank computes the same)."""
        picks = np.unique(np.linspace(0, len(self.train_index) - 1, min(sample, len(self.train_index))).astype(int))
        self.model.set_feature_stats(self._plain_features(self.train_index[picks])[0])

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's mini-batches as positions among the training images: a seeded shuffle cut into
        `steps_per_epoch` batches whose sizes differ by at most one (never a batch of one image)."""
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.train_index))
        return np.array_split(order, self.steps_per_epoch)

    # ---- the epoch's steps

    def train_epoch(self, epoch: int, frozen: bool, optimizer_step) -> tuple[float, dict]:
        ranks = self.ranks
        batches = self.batches(epoch)
        shards = []
        for positions in batches:
            first, stop = shard_bounds(len(positions), ranks.world)[ranks.rank]
            shards.append([(int(self.train_index[p]), epoch) for p in positions[first:stop]])
        total, pairs = 0.0, 0
        n_train = len(self.train_index)
        for positions, pixels in zip(batches, self._load(shards), strict=True):
            targets = torch.from_numpy(self.targets[pair_index(positions, n_train)]).to(self.device)
            self.model.zero_grad(set_to_none=True)
            value = minibatch_backward(self.model, pixels, targets, ranks,
                                       shard_bounds(len(positions), ranks.world), not frozen, self.config.body_chunk)
            optimizer_step()
            total, pairs = total + value * len(targets), pairs + len(targets)
        return total / pairs, {"steps": len(batches)}

    @torch.no_grad()
    def validate(self, frozen: bool) -> dict[str, dict]:
        """The official metric on the pairs among the held-out images, per target (keys 'set-val/target')."""
        if self._val_features is None or not frozen:  # a frozen body gives the same features every epoch
            views = self._plain_features(self.val_index, flipped=self.config.tta)
            self._val_features = [self.model.standardise(v) for v in views]
        pairs = sum(predict_pairs(self.model, v) for v in self._val_features) / len(self._val_features)
        values = pairs.double().cpu().numpy()
        return {f"{self.name}-val/{target}": held.score(values[:, k])
                for k, (target, held) in enumerate(self.held_out.items())}

    # ---- across ranks

    def agree(self, flag: bool) -> bool:
        """Rank 0's flag (early stopping is decided where the validation is) on every rank."""
        if self.ranks.world > 1:
            tensor = torch.tensor([int(flag)], device=self.device)
            dist.broadcast(tensor, src=0)
            flag = bool(tensor.item())
        return flag

    def share_choice(self, loop: KeptChoice) -> None:
        """Only rank 0 validated: every rank returns its chosen model and history."""
        if self.ranks.world > 1:
            broadcast_parameters(self.model, self.ranks)
            chosen = [(loop.best_epoch, loop.best_score, loop.history)]
            dist.broadcast_object_list(chosen, src=0)
            loop.best_epoch, loop.best_score, loop.history = chosen[0]

    @torch.no_grad()
    def predicts_finite(self, body_trained: bool) -> bool:
        """Whether the model predicts finite values for the pairs among the training images its feature statistics
        came from (up to 512, evenly spaced), through the body as it now is."""
        picks = np.unique(np.linspace(0, len(self.train_index) - 1, min(512, len(self.train_index))).astype(int))
        features = self._plain_features(self.train_index[picks])[0]
        return bool(torch.isfinite(predict_pairs(self.model, self.model.standardise(features))).all())

    def extra_state(self) -> dict:
        return {"batch": asdict(self.batch), "world_size": self.ranks.world, "normalisation": self.normalisation}

    def load_extra_state(self, state: dict) -> None:
        """A checkpoint continues this run with any number of ranks (nothing in it belongs to a rank)."""
        if not BatchSettings(**state.get("batch", {})).same_run(self.batch):
            raise ConfigError("resume", "the checkpoint in the run folder has other settings; use the same ones "
                                        "or a new folder")


def fit_large(config: TrainConfig, batch: BatchSettings, images: ImageStore, targets: dict[str, CondensedRDMs],
              seeds: tuple[int, ...] = (0,), out_dir: str | os.PathLike | None = None, resume: bool = False,
              progress: bool = True, overwrite: bool = False, settings: dict | None = None,
              ranks: Ranks | None = None) -> RDMPredictor:
    """Train one model per seed on a large image set with mini-batches, on every rank of the process group.

    The settings and targets are checked, and the targets read, before the run folder is made; the run itself is
    the one run driver's (predict.fit_seeds): rank 0 owns the folder, writes settings.json (with "world_size",
    "config" and "batch"), checkpoints in out_dir/seed<k>/ and model.pt; with `resume`, it reads seed<k>/last.pt
    and sends it to every rank.
    """
    ranks = ranks or current_ranks()
    check_batch_settings(batch, ranks.world)
    refuse_full_batch_settings(config)
    data = read_targets(targets, len(images), batch, config.rescale)  # bad values refused before the folder
    record = None if settings is None else {**settings, "world_size": ranks.world, "config": asdict(config),
                                            "batch": asdict(batch)}
    return fit_seeds(config, LargeSet(images, data, batch), (), seeds, out_dir, resume=resume, progress=progress,
                     overwrite=overwrite, settings=record, official=False, ranks=ranks)  # always your own data
