"""Exact row-wise top-k with the project's tie rule (values descending, ties to the lowest index), without a
full sort: torch.topk, then only rows where a value equal to the k-th was left out pay a cumulative-count pass.

Pure torch, any device. Used by the kernels' host code (selection over per-tile candidates, AuxK) and by the
CPU path of `sae_fast.ops` (where it replaces the reference's full sort; same result).
"""

from __future__ import annotations

import torch

__all__ = ["select_topk_lowest_index", "sort_desc_lowest_index"]


def sort_desc_lowest_index(values: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First k of each row in (value desc, index asc) order."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    by_value = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, by_value), indices.gather(1, by_value)


def _select_resolving_ties(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`select_topk_lowest_index` for rows with exact ties at the k-th value: those ties go to the lowest
    indices by a cumulative count (a few passes over the rows)."""
    n = scores.shape[0]
    kth = torch.topk(scores, k, dim=1, sorted=True).values[:, -1:]
    greater = scores > kth
    ties = scores == kth
    room = k - greater.sum(1, keepdim=True)
    keep = greater | (ties & (torch.cumsum(ties, 1, dtype=torch.int32) <= room))
    pos = keep.nonzero()[:, 1].view(n, k)  # ascending latent order within each row
    return scores.gather(1, pos), pos


def select_topk_lowest_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise top-k of a (N, M) float matrix in (value desc, index asc) order, as sae_fast.reference's
    `topk_lowest_index` but without a full sort: torch.topk, whose choice among values equal to the k-th one is
    arbitrary, so rows where it left such a tie out are redone by `_select_resolving_ties`; then only the (N, k)
    winners are sorted."""
    n = scores.shape[0]
    if k == 0 or n == 0:
        return scores.new_empty((n, k)), torch.empty((n, k), dtype=torch.int64, device=scores.device)
    vals, pos = torch.topk(scores, k, dim=1, sorted=True)
    kth = vals[:, -1:]
    left_out = (scores == kth).sum(1) != (vals == kth).sum(1)  # a value equal to the k-th was not taken
    if bool(left_out.any()):
        rows = left_out.nonzero().squeeze(1)
        vals[rows], pos[rows] = _select_resolving_ties(scores[rows], k)
    return sort_desc_lowest_index(vals, pos, k)
