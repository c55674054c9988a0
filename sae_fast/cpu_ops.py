"""The CPU path of `sae_fast.ops`: the encoder's top-k and the decoder as autograd functions whose backward
touches only the selected (row, latent) pairs, as the Triton kernels do.

Encoder forward: the pre-activations x W_encᵀ in fp32 (fp64 for fp64 inputs) by one dense GEMM per chunk of rows
into one reused (rows, F) buffer, the top-k of relu(· + b_enc) (and the AuxK top-k) selected from each chunk
(`sae_fast.topk`, the reference's tie rule, the bias added during the selection), then the buffer is dropped:
memory O(chunk · F + N · (k + k_aux))
instead of the reference's (N, F) matrices. Backward: dx as a weighted sum of the chosen encoder rows
(`embedding_bag`), dW_enc and db_enc accumulated per latent from the chosen pairs (`sparse_rows`); no (N, F)
gradient. Decoder: `embedding_bag` forward; backward one dot product per pair for the values and the same
per-latent accumulation for dW_dec. Every sum has a fixed order, so results are bit-identical between runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sparse_rows import gather_weighted_sum, sparse_dot, sparse_transpose
from .topk import select_relu_topk_lowest_index, select_topk_lowest_index

__all__ = ["CHUNK_ELEMENTS", "decode", "encode_topk"]

# Elements of the reused pre-activation buffer: 2^24 (64 MiB in fp32), e.g. 1024 rows at F = 2^14, at least one
# row. On 2 threads at (768, 2^14) the GEMM of 1024-row chunks ran as fast as one (4096-row) GEMM, 256-row chunks
# 19 % slower, 64-row chunks 2.7x slower; the buffer is allocated once per call and reused by every chunk.
CHUNK_ELEMENTS = 1 << 24


def _acc(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _select(
    x: Tensor, W: Tensor, b: Tensor, k: int, dead_idx: Tensor | None, k_aux: int
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Top-k and AuxK (values in the accumulation dtype, indices) of relu(x Wᵀ + b), a chunk of rows at a time.
    x, W, b already in the accumulation dtype. Memory: one (rows, F) buffer plus the (N, k + k_aux) results."""
    n, num_latents = x.shape[0], W.shape[0]
    step = max(1, min(n, CHUNK_ELEMENTS // num_latents))
    buf = x.new_empty((step, num_latents))
    values, indices = x.new_empty((n, k)), torch.empty((n, k), dtype=torch.int64)
    aux_values = aux_indices = None
    if dead_idx is not None:
        aux_values, aux_indices = x.new_empty((n, k_aux)), torch.empty((n, k_aux), dtype=torch.int64)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        # the bias and the relu are taken by the selection: no bias copy into the buffer, no relu pass over it
        pre = torch.mm(x[rows], W.T, out=buf[: rows.stop - start])
        values[rows], indices[rows] = select_relu_topk_lowest_index(pre, k, b)
        if dead_idx is not None:
            assert aux_values is not None and aux_indices is not None
            dead_pre = pre.index_select(1, dead_idx).add_(b[dead_idx]).relu_()
            aux_values[rows], position = select_topk_lowest_index(dead_pre, k_aux)
            aux_indices[rows] = dead_idx[position]
    return values, indices, aux_values, aux_indices


class _EncodeTopK(torch.autograd.Function):
    """Top-k (and AuxK) of relu(x W_encᵀ + b_enc) with a backward over the chosen pairs only."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, k, dead_idx, k_aux):  # type: ignore[override]
        acc = _acc(x)
        values, indices, aux_values, aux_indices = _select(
            x.to(acc), W_enc.to(acc), b_enc.to(acc), k, dead_idx, k_aux
        )
        if aux_values is None:
            aux_values, aux_indices = values.new_empty((x.shape[0], 0)), indices.new_empty((x.shape[0], 0))
        # the relu gate from the accumulation dtype: a tiny fp32 value may round to a 16-bit zero
        ctx.save_for_backward(x, W_enc, torch.cat([indices, aux_indices], 1), torch.cat([values, aux_values], 1) > 0)
        ctx.mark_non_differentiable(indices, aux_indices)
        ctx.k = k
        return values.to(x.dtype), indices, aux_values.to(x.dtype), aux_indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_aux_values, _grad_aux_indices):  # type: ignore[override]
        x, W_enc, indices, gate = ctx.saved_tensors
        acc = _acc(x)
        shapes = ((indices.shape[0], ctx.k), (indices.shape[0], indices.shape[1] - ctx.k))
        grads = [g.to(acc) if g is not None else torch.zeros(shape, dtype=acc)
                 for g, shape in zip((grad_values, grad_aux_values), shapes)]  # fmt: skip
        g = (torch.cat(grads, 1) if shapes[1][1] else grads[0]) * gate
        dx = dW = db = None
        if ctx.needs_input_grad[0]:
            dx = gather_weighted_sum(g, indices, W_enc.to(acc)).to(x.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dW, db = sparse_transpose(g, indices, x.to(acc), W_enc.shape[0], with_sums=True)
            dW, db = dW.to(W_enc.dtype), db.to(W_enc.dtype)  # type: ignore[union-attr]
        return dx, dW, db, None, None, None


def encode_topk(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, dead_mask: Tensor | None, k_aux: int | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """`reference.encode_topk` (same selection, values, tie rule) with the sparse backward. CPU tensors, checked
    by `sae_fast.ops.encode`. Returns values (N, k) in x's dtype, indices (N, k) int64, and with `dead_mask`
    aux_values / aux_indices (N, min(k_aux, num_dead)) (None otherwise). Memory: see the module docstring."""
    dead_idx = None
    k_eff = 0
    if dead_mask is not None:
        if k_aux is None:
            raise ValueError("k_aux is required with dead_mask")
        dead_idx = torch.nonzero(dead_mask, as_tuple=False).squeeze(1)
        k_eff = min(k_aux, int(dead_idx.numel()))
    values, indices, aux_values, aux_indices = _EncodeTopK.apply(x, W_enc, b_enc, k, dead_idx, k_eff)
    if dead_mask is None:
        return values, indices, None, None
    return values, indices, aux_values, aux_indices


class _Decode(torch.autograd.Function):
    """Σ_j values[n, j] · W_dec[indices[n, j]]; backward: a dot product per pair for the values and the
    per-latent accumulation of the pairs for W_dec (fp32 / fp64, values in W_dec's dtype)."""

    @staticmethod
    def forward(ctx, values, indices, W_dec):  # type: ignore[override]
        ctx.save_for_backward(values, indices, W_dec)
        return gather_weighted_sum(values, indices, W_dec)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        values, indices, W_dec = ctx.saved_tensors
        grad_out = grad_out.to(W_dec.dtype).contiguous()
        grad_values = sparse_dot(grad_out, indices, W_dec) if ctx.needs_input_grad[0] else None
        grad_W = None
        if ctx.needs_input_grad[2]:
            grad_W, _ = sparse_transpose(values, indices, grad_out, W_dec.shape[0])
        return grad_values, None, grad_W


def decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """(N, d) = Σ_j values[n, j] · W_dec[indices[n, j]] for fp32 / fp64 CPU tensors with values in W_dec's dtype
    and int64 indices in [0, F) (checked by `sae_fast.ops`). Memory: the output; backward O(N · k + F) besides the
    (F, d) gradient."""
    return _Decode.apply(values.contiguous(), indices.contiguous(), W_dec.contiguous())
