"""Row-sparse products of the CPU training step, over the (row, latent) pairs of top-k codes only.

`gather_weighted_sum` (the decoder forward and the encoder's input gradient) is torch's `embedding_bag`;
`sparse_dot` (the decoder's value gradient) and `sparse_transpose` (the weight gradients: out[f] = Σ over the
pairs of latent f of weight · dense[row]) run in the C++ extension (csrc/sparse_rows.cpp: OpenMP over rows or
latents, the GIL released, each output row summed by one thread in a fixed order, so results are bit-identical
between runs and thread counts; without the extension a torch fallback gives the same sums in another order).
Inputs: CPU tensors of one dtype, float32 or float64; indices int64 in [0, F) (not checked here: `sae_fast.ops`
checks or produces them). Work is O(P · d) for P = N · k pairs; no (N × F) array.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._ext import has_extension

__all__ = ["gather_weighted_sum", "sparse_dot", "sparse_transpose"]

_FALLBACK_CHUNK_ELEMENTS = 1 << 22  # the torch fallback's (pairs, d) working set: 16 MiB in fp32


def _native() -> object | None:
    if not has_extension():
        return None
    from . import _C

    return _C if hasattr(_C, "sparse_transpose") else None


def _np(t: Tensor) -> object:
    return t.contiguous().numpy()


def gather_weighted_sum(weights: Tensor, indices: Tensor, table: Tensor) -> Tensor:
    """out[n] = Σ_j weights[n, j] · table[indices[n, j]]: (N, k), (N, k), (F, d) -> (N, d), by `embedding_bag`
    (a per-sample-weighted sum of rows; one bag per thread, so deterministic). Memory: the output."""
    if indices.shape[1] == 0 or indices.shape[0] == 0:
        return table.new_zeros((indices.shape[0], table.shape[1]))
    return torch.nn.functional.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")


def sparse_dot(dense: Tensor, indices: Tensor, table: Tensor) -> Tensor:
    """out[n, j] = <dense[n], table[indices[n, j]]>: (N, d), (N, k), (F, d) -> (N, k). Memory: the output
    (the fallback: a (rows, k, d) chunk of 2^22 elements)."""
    n, k = indices.shape
    out = dense.new_empty((n, k))
    native = _native()
    if out.numel() == 0:
        return out
    if native is not None:
        native.sparse_dot(_np(dense), _np(indices), _np(table), out.numpy(), torch.get_num_threads())
        return out
    step = max(1, _FALLBACK_CHUNK_ELEMENTS // max(k * table.shape[1], 1))
    for r in range(0, n, step):
        rows = table.index_select(0, indices[r : r + step].reshape(-1)).view(-1, k, table.shape[1])
        out[r : r + step] = torch.bmm(rows, dense[r : r + step, :, None]).squeeze(2)
    return out


def sparse_transpose(
    weights: Tensor, indices: Tensor, dense: Tensor, num_latents: int, *, with_sums: bool = False
) -> tuple[Tensor, Tensor | None]:
    """(out (F, d), sums (F,) or None): out[f] = Σ_{(n, j): indices[n, j] = f} weights[n, j] · dense[n], and with
    `with_sums` sums[f] = Σ of those weights. weights, indices: (N, k); dense: (N, d). Every row of out is
    written (zero for a latent without pairs). Memory: the output plus O(N k + F) int64 (the pairs sorted by
    latent); the fallback adds a (pairs, d) chunk of 2^22 elements."""
    out = dense.new_empty((num_latents, dense.shape[1]))
    sums = dense.new_empty((num_latents,)) if with_sums else None
    native = _native()
    if native is not None and indices.numel():
        args = (_np(weights), _np(indices), _np(dense), out.numpy())
        native.sparse_transpose(*args, sums.numpy() if sums is not None else None, torch.get_num_threads())
        return out, sums
    out.zero_()
    flat_idx, flat_w = indices.reshape(-1), weights.reshape(-1)
    if sums is not None:
        sums.zero_().index_add_(0, flat_idx, flat_w)
    k = max(indices.shape[1], 1)
    step = max(1, _FALLBACK_CHUNK_ELEMENTS // max(dense.shape[1], 1))
    for p in range(0, flat_idx.numel(), step):
        part = slice(p, p + step)
        rows = torch.arange(part.start, min(part.stop, flat_idx.numel()), device=dense.device) // k
        out.index_add_(0, flat_idx[part], flat_w[part, None] * dense.index_select(0, rows))
    return out, sums
