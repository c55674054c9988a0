"""Exact row-wise top-k with the project's tie rule (values descending, ties to the lowest index), without a
full sort: torch.topk of k + 1, then only rows where a value equal to the k-th may have been left out pay a
cumulative-count pass.

Torch, any device (`select_relu_topk_lowest_index` uses the C++ extension on CPU tensors when it is built). Used
by the kernels' host code (selection over per-tile candidates, AuxK) and by the CPU path of `sae_fast.ops`
(where it replaces the reference's full sort; same result).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["select_relu_topk_lowest_index", "select_topk_lowest_index", "sort_desc_lowest_index"]


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
    `topk_lowest_index` but without a full sort: torch.topk of k + 1, whose choice among values equal to the
    k-th one is arbitrary; a row can have such a tie cross the k-th place only if its (k+1)-th value equals its
    k-th, so only those rows are redone by `_select_resolving_ties` (no pass over the whole matrix); then only
    the (N, k) winners are sorted. Memory: O(N · k) besides the redone rows' (rows, M) passes."""
    n, m = scores.shape
    if k == 0 or n == 0:
        return scores.new_empty((n, k)), torch.empty((n, k), dtype=torch.int64, device=scores.device)
    vals, pos = torch.topk(scores, min(k + 1, m), dim=1, sorted=True)
    if k < m:
        crossing = vals[:, k] == vals[:, k - 1]  # a value equal to the k-th may have been left out
        vals, pos = vals[:, :k].contiguous(), pos[:, :k].contiguous()
        if bool(crossing.any()):
            rows = crossing.nonzero().squeeze(1)
            vals[rows], pos[rows] = _select_resolving_ties(scores[rows], k)
    return sort_desc_lowest_index(vals, pos, k)


def select_relu_topk_lowest_index(
    scores: torch.Tensor, k: int, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`select_topk_lowest_index(relu(scores + bias), k)` without the relu'd (N, M) copy or pass.

    On CPU float32/float64 tensors, with the C++ extension built, one pass of `sae_fast._C.relu_topk` (a k-slot
    heap per row that most values enter or leave with one comparison; the bias added on the fly). Elsewhere the
    top k + 1 of the raw scores give the same choice in every row whose k-th value is positive and not tied with
    the (k+1)-th; the other rows (fewer than k positive values, or a tie across the k-th place) are redone on
    their relu'd scores. Values are relu'd; NaN counts as larger than every number, as in torch.topk. `bias`:
    (M,) or None. Memory: O(N · k) (the torch path: plus an (N, M) sum when a bias is given, and the redone
    rows' passes)."""
    n, m = scores.shape
    if k == 0 or n == 0:
        return scores.new_empty((n, k)), torch.empty((n, k), dtype=torch.int64, device=scores.device)
    native = _native_relu_topk(scores, bias)
    if native is not None:
        values, indices = scores.new_empty((n, k)), torch.empty((n, k), dtype=torch.int64)
        biases = None if bias is None else bias.contiguous().numpy()
        native(scores.contiguous().numpy(), biases, values.numpy(), indices.numpy(), torch.get_num_threads())
        return values, indices
    if bias is not None:
        scores = scores + bias
    vals, pos = torch.topk(scores, min(k + 1, m), dim=1, sorted=True)
    redo = ~(vals[:, k - 1] > 0)  # NaN at the k-th place: kept (its rows are reported as non-finite)
    redo &= ~torch.isnan(vals[:, k - 1])
    if k < m:
        redo |= vals[:, k] == vals[:, k - 1]
        vals, pos = vals[:, :k].contiguous(), pos[:, :k].contiguous()
    if bool(redo.any()):
        rows = redo.nonzero().squeeze(1)
        vals[rows], pos[rows] = select_topk_lowest_index(scores[rows].clamp_min(0), k)
    return sort_desc_lowest_index(vals.clamp_min_(0), pos, k)


def _native_relu_topk(scores: torch.Tensor, bias: torch.Tensor | None) -> Callable[..., None] | None:
    """The extension's relu_topk when it applies (CPU, float32/float64, bias of the same dtype), else None."""
    if scores.device.type != "cpu" or scores.dtype not in (torch.float32, torch.float64) or not _USE_NATIVE:
        return None
    if bias is not None and (bias.dtype != scores.dtype or bias.device.type != "cpu"):
        return None
    try:
        from . import _C
    except ImportError:
        return None
    return getattr(_C, "relu_topk", None)


_USE_NATIVE = True  # tests turn it off to check the torch path against the extension
