"""Several processes (ranks) training one model: the all-pairs loss of a mini-batch split by rows.

Each rank embeds its shard of the mini-batch's images; the standardised features of all shards are gathered
with their gradient (torch.distributed.nn.all_gather), and each rank computes the loss of its rows of pair
tiles (its own images as image a) against every image of the mini-batch (model.all_pairs_loss with `rows`).
The row blocks add up to the full mini-batch loss, and the gather's backward sums every rank's gradient
w.r.t. a shard's features back onto that shard, so the body's backward on each rank sees the whole loss.

Gradients are then averaged over ranks, as DistributedDataParallel does (one all_reduce of the flattened
gradients). Each rank's loss is scaled by the number of ranks, so that this average is exactly the gradient of
the single-process mean loss. The step is written out rather than wrapped in DDP because the body's backward
runs in chunks after the head's (two passes keep memory bounded, as in train.Trainer.step), which DDP's
one-forward-one-backward hooks do not follow.

With one process every collective is skipped, so the same code is the single-process mini-batch step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .model import SiameseRDMNet, all_pairs_loss


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run: rank 0 of 1 without torch.distributed."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def current_ranks() -> Ranks:
    """The ranks of the initialised default process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def launched_by_torchrun() -> bool:
    """torchrun (torch.distributed.run) sets these for every process it starts."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def init_from_env() -> tuple[Ranks, str | None]:
    """Join the process group torchrun describes: gloo without CUDA, nccl with it (one GPU per local rank).

    Returns the ranks and the device this rank must use ('cuda:LOCAL_RANK'; None on CPU)."""
    if not launched_by_torchrun():
        return Ranks(), None
    use_cuda = torch.cuda.is_available()
    device = None
    if use_cuda:
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current_ranks(), device


def shard_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous shards of n images over `world` ranks, sizes differing by at most one (np.array_split's)."""
    edges = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(n), world)])
    return [(int(edges[r]), int(edges[r + 1])) for r in range(world)]


def gather_features(local: torch.Tensor, bounds: list[tuple[int, int]], ranks: Ranks) -> torch.Tensor:
    """Every rank's features in rank order, (N, ...), with their gradient: the backward sums the gradients that
    all ranks' losses send to a shard and returns them to the rank that owns it. Shards may differ in size
    (padded to the largest for the collective)."""
    if ranks.world == 1:
        return local
    size = max(stop - start for start, stop in bounds)
    padded = torch.cat([local, local.new_zeros(size - len(local), *local.shape[1:])]) if len(local) < size else local
    parts = torch.distributed.nn.all_gather(padded.contiguous())
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
