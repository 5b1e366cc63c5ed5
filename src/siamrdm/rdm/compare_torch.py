"""Spearman's rho on the device (torch), for the per-epoch validation of training.

Per-epoch validation scores the predicted pairs where they are (the GPU), so that an epoch's score costs one
host synchronisation; the same Spearman as `compare.compare_rdms` to float rounding (tests check it against
scipy). Kept apart from `compare`, which the command line's `score` and `noise-ceiling` load without torch.
"""

from __future__ import annotations

import torch


def rank_average_torch(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..L along the last dimension, ties given their average rank (scipy.stats.rankdata's default), for
    a batch of vectors at once on their device: sort, then each tie group's first and last sorted position."""
    values, order = x.sort(dim=-1)
    length = x.shape[-1]
    position = torch.arange(length, device=x.device).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)  # a tie group starts here
    starts[..., 1:] = values[..., 1:] != values[..., :-1]
    ends = torch.ones_like(starts)  # a tie group ends here
    ends[..., :-1] = starts[..., 1:]
    first = torch.where(starts, position, 0).cummax(dim=-1).values
    last = torch.where(ends, position, length - 1).flip(-1).cummin(dim=-1).values.flip(-1)
    dtype = x.dtype if x.is_floating_point() else torch.float64
    sorted_ranks = (first + last).to(dtype) / 2 + 1
    return torch.empty_like(sorted_ranks).scatter_(-1, order, sorted_ranks)


def standardised_ranks_torch(x: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dimension, centred and scaled to unit norm (a constant vector stays zero):
    Spearman's rho of two such vectors is their dot product."""
    ranks = rank_average_torch(x)
    ranks = ranks - ranks.mean(dim=-1, keepdim=True)
    norms = ranks.norm(dim=-1, keepdim=True)
    return ranks / torch.where(norms > 0, norms, torch.ones_like(norms))


def spearman_torch(predicted: torch.Tensor, targets: torch.Tensor, ranked: bool = False) -> torch.Tensor:
    """Spearman's rho of one predicted vector (L,) with each target vector (..., L): shape (...). With `ranked`,
    `targets` are already `standardised_ranks_torch` of the targets (fixed subjects, ranked once per run).
    A constant prediction orders no pair and scores 0, and a prediction with NaN (a diverged model) scores NaN,
    both as in `compare_rdms`: a sort would rank NaN as the largest value and give a finite rho, so a broken
    model could be kept as the best epoch. The NaN check stays on the device (no host synchronisation)."""
    ranks = targets if ranked else standardised_ranks_torch(targets)
    rho = ranks @ standardised_ranks_torch(predicted)
    return torch.where(predicted.isnan().any(), torch.nan, rho)
