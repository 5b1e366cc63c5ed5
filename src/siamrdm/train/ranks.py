"""This process's place among the ranks of a run (torchrun), and the few collectives a run driver needs.

Kept apart from the mini-batch step (distributed.py) so that the one trainer and the one run driver can ask
"am I the main process?" and wait for the others without depending on how a mini-batch is trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


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


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if ranks.world > 1:
        dist.barrier()


def from_main(value: object, ranks: Ranks) -> object:
    """The main process's `value` on every rank (one process: the value)."""
    if ranks.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
