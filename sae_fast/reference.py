"""Plain-PyTorch reference of every sae_fast kernel: dense, obviously correct, differentiable by autograd.

These functions are the tests' oracle and the CPU path of `sae_fast.ops`. They build dense (N, F) and
(N, k, d) temporaries on purpose: clarity over speed.

Conventions shared with the Triton kernels (`kernels/`):
- Top-k order: values descending; ties broken by the LOWEST latent index. The same selection rule holds
  for the running top-k in `kernels/encoder_topk.py`, so indices compare exactly.
- Activations are relu'd pre-activations, so zero values are possible (then the lowest indices win).
- AuxK selects among dead latents only; it returns `min(k_aux, num_dead)` columns.
- Pre-activations are computed and selected in fp32 (fp64 for fp64 inputs) whatever the input dtype, as the
  kernels accumulate in fp32: rounding them to bf16 first would make ties the kernels do not see. Only the
  selected values are cast back to the input dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "decode",
    "decode_backward",
    "encode_backward",
    "encode_topk",
    "gather_weighted_sum",
    "preactivations",
    "sparse_transpose_matmul",
    "sparse_values_grad",
    "topk_lowest_index",
]


def _acc(*tensors: Tensor) -> torch.dtype:
    """Accumulation dtype: float32, or float64 when any input is float64."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def topk_lowest_index(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k along the last axis, values descending, ties broken by the lowest index.

    Differentiable in `scores` (the values are gathered from it). Returns (values, int64 indices).
    """
    order = torch.sort(scores.detach(), dim=-1, descending=True, stable=True).indices[..., :k]
    return scores.gather(-1, order), order


def preactivations(x: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
    """relu(x @ W_enc.T + b_enc): (N, d) x (F, d) + (F,) -> (N, F) in fp32 (fp64 if any input is fp64).

    Never rounded to a 16-bit input dtype: the kernels select on their fp32 accumulators."""
    acc = _acc(x, W_enc, b_enc)
    return torch.relu(torch.nn.functional.linear(x.to(acc), W_enc.to(acc), b_enc.to(acc)))


def encode_topk(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    dead_mask: Tensor | None = None,
    k_aux: int | None = None,
    *,
    topk: Callable[[Tensor, int], tuple[Tensor, Tensor]] = topk_lowest_index,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Top-k of relu(x W_encᵀ + b_enc) and, with `dead_mask`, the AuxK top-k over dead latents.

    x: (N, d) (already centred by b_dec); W_enc: (F, d); b_enc: (F,); dead_mask: (F,) bool.
    Returns values (N, k) in x's dtype, indices (N, k) int64, and aux_values / aux_indices of shape
    (N, min(k_aux, num_dead)) (None when `dead_mask` is None). Aux indices are latent indices. Both selections
    are made on the fp32 (fp64) pre-activations; only the selected values are cast to x's dtype.
    `topk`: the selection, (scores, k) -> (values, indices) by this module's rule; the CPU path of
    `sae_fast.ops` passes one that selects the same without a full sort.
    """
    pre = preactivations(x, W_enc, b_enc)
    values, indices = topk(pre, k)
    values = values.to(x.dtype)
    if dead_mask is None:
        return values, indices, None, None
    if k_aux is None:
        raise ValueError("k_aux is required with dead_mask")
    dead = torch.nonzero(dead_mask, as_tuple=False).squeeze(1)  # ascending latent order
    k_eff = min(k_aux, int(dead.numel()))
    aux_values, aux_pos = topk(pre[:, dead], k_eff)
    return values, indices, aux_values.to(x.dtype), dead[aux_pos]


def _gather_rows(table: Tensor, indices: Tensor, acc: torch.dtype) -> Tensor:
    """table[indices] as (*indices.shape, d) in `acc`. index_select, not advanced indexing: its backward
    (index_add) sums in a fixed order on the CPU, where advanced indexing's accumulating index_put made
    training runs differ in the last bits from run to run."""
    return table.to(acc).index_select(0, indices.reshape(-1)).view(*indices.shape, table.shape[1])


def gather_weighted_sum(weights: Tensor, indices: Tensor, table: Tensor) -> Tensor:
    """out[n] = Σ_j weights[n, j] · table[indices[n, j]]: (N, k), (N, k), (F, d) -> (N, d).

    This is the decoder forward (table = W_dec) and the encoder's input gradient (table = W_enc).
    Computed in fp32, returned in `table`'s dtype.
    """
    acc = _acc(weights, table)
    rows = _gather_rows(table, indices, acc)  # (N, k, d)
    out = torch.einsum("nk,nkd->nd", weights.to(acc), rows)
    return out.to(table.dtype)


def decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Sparse decode WITHOUT the decoder bias: Σ_j values[n, j] · W_dec[indices[n, j]] -> (N, d)."""
    return gather_weighted_sum(values, indices, W_dec)


def sparse_values_grad(grad_out: Tensor, indices: Tensor, table: Tensor) -> Tensor:
    """g[n, j] = <grad_out[n], table[indices[n, j]]>: (N, d), (N, k), (F, d) -> (N, k) fp32."""
    acc = _acc(grad_out, table)
    return torch.einsum("nd,nkd->nk", grad_out.to(acc), _gather_rows(table, indices, acc))


def sparse_transpose_matmul(indices: Tensor, weights: Tensor, dense: Tensor, num_latents: int) -> Tensor:
    """out[f] = Σ_{(n, j): indices[n, j] = f} weights[n, j] · dense[n]: -> (F, d) fp32.

    The row-sparse weight gradient of the decoder (dense = grad_out, weights = values) and of the
    encoder (dense = x, weights = grad of pre-activations). Dense via a one-hot matrix: reference only.
    """
    n = indices.shape[0]
    acc = _acc(weights, dense)
    onehot = torch.zeros(n, num_latents, dtype=acc, device=dense.device)
    onehot.scatter_add_(1, indices, weights.to(acc))
    return onehot.T @ dense.to(acc)


def decode_backward(grad_out: Tensor, values: Tensor, indices: Tensor, W_dec: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of `decode`: (grad_values (N, k) fp32, grad_W_dec (F, d) fp32)."""
    grad_values = sparse_values_grad(grad_out, indices, W_dec)
    grad_W_dec = sparse_transpose_matmul(indices, values, grad_out, W_dec.shape[0])
    return grad_values, grad_W_dec


def encode_backward(
    grad_values: Tensor, values: Tensor, indices: Tensor, x: Tensor, W_enc: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the selected relu activations w.r.t. (x, W_enc, b_enc), all fp32.

    grad_values, values, indices: (N, k) — pass AuxK columns concatenated with the top-k ones.
    The relu gate is `values > 0`. Returns dx (N, d), dW_enc (F, d), db_enc (F,).
    """
    acc = _acc(grad_values, x, W_enc)
    g = grad_values.to(acc) * (values > 0)
    dx = gather_weighted_sum(g, indices, W_enc.to(acc))
    dW = sparse_transpose_matmul(indices, g, x, W_enc.shape[0])
    db = torch.zeros(W_enc.shape[0], dtype=acc, device=x.device).index_add_(0, indices.reshape(-1), g.reshape(-1))
    return dx, dW, db
