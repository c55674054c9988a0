"""Sparse decoder kernels: weighted row gather (embedding-bag forward) and the k dot products of its backward.

`gather_weighted_sum` is the decoder forward (table = W_dec) and the encoder's input gradient
(table = W_enc). `sparse_dot` is the gradient of the k values: <grad_out[n], table[indices[n, j]]>.
Both accumulate in fp32 and mask every load, so any d works (not only powers of two).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, check_devices, check_index_range, check_tensor, interpreting, next_pow2

__all__ = ["decoder_backward", "gather_weighted_sum", "sparse_dot"]


def _block_d(d: int) -> int:
    return min(next_pow2(d), 1024 if interpreting() else 256)


def _block_k(k: int, block_d: int) -> int:
    return max(2, min(next_pow2(k), 4096 // block_d if not interpreting() else 64))


@triton.jit
def _gather_weighted_sum_kernel(
    w_ptr, idx_ptr, table_ptr, out_ptr, K, D,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """weights (N, K) any float, idx (N, K) int64, table (F, D) float, out (N, D) table dtype; contiguous.

    out[n, c] = Σ_j weights[n, j] · table[idx[n, j], c], fp32 accumulation. Grid (N, cdiv(D, BLOCK_D)).
    """
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for j0 in range(0, K, BLOCK_K):
        j = j0 + tl.arange(0, BLOCK_K)
        j_ok = j < K
        idx = tl.load(idx_ptr + n * K + j, mask=j_ok, other=0)
        w = tl.load(w_ptr + n * K + j, mask=j_ok, other=0.0).to(tl.float32)
        rows = tl.load(table_ptr + idx[:, None] * D + cols[None, :], mask=j_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(w[:, None] * rows.to(tl.float32), 0)
    tl.store(out_ptr + n * D + cols, acc.to(out_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def _sparse_dot_kernel(
    g_ptr, idx_ptr, table_ptr, out_ptr, K, D,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """g (N, D) float, idx (N, K) int64, table (F, D) float, out (N, K) fp32; contiguous.

    out[n, j] = Σ_c g[n, c] · table[idx[n, j], c], fp32 accumulation. Grid (N, cdiv(K, BLOCK_K)).
    """
    n = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    j_ok = j < K
    idx = tl.load(idx_ptr + n * K + j, mask=j_ok, other=0)
    acc = tl.zeros((BLOCK_K,), tl.float32)
    for c0 in range(0, D, BLOCK_D):
        cols = c0 + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        g = tl.load(g_ptr + n * D + cols, mask=col_ok, other=0.0).to(tl.float32)
        rows = tl.load(table_ptr + idx[:, None] * D + cols[None, :], mask=j_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(rows.to(tl.float32) * g[None, :], 1)
    tl.store(out_ptr + n * K + j, acc, mask=j_ok)


def _check_indices(indices: torch.Tensor, shape: tuple[int, int], f: int, check_range: bool) -> torch.Tensor:
    check_tensor("indices", indices, shape, (torch.int64, torch.int32))
    if check_range:
        check_index_range("indices", indices, f)
    return indices.long().contiguous()


def gather_weighted_sum(
    weights: torch.Tensor, indices: torch.Tensor, table: torch.Tensor, *, check_range: bool = True
) -> torch.Tensor:
    """Σ_j weights[n, j] · table[indices[n, j]] -> (N, d) in table's dtype.

    weights (N, k) float, indices (N, k) int64/int32 in [0, F), table (F, d); contiguous, one device.
    `check_range`: verify the index range first (one host sync); callers with indices from the encoder skip it.
    """
    n, k = weights.shape
    f, d = table.shape
    check_tensor("weights", weights, (n, k), (*FLOAT_DTYPES, torch.float64))
    check_tensor("table", table, (f, d), FLOAT_DTYPES)
    check_devices(weights=weights, indices=indices, table=table)
    indices = _check_indices(indices, (n, k), f, check_range)
    out = torch.empty((n, d), dtype=table.dtype, device=table.device)
    if n == 0 or d == 0:
        return out
    if k == 0:
        return out.zero_()
    block_d = _block_d(d)
    grid = (n, triton.cdiv(d, block_d))
    _gather_weighted_sum_kernel[grid](weights, indices, table, out, k, d, BLOCK_K=_block_k(k, block_d), BLOCK_D=block_d)
    return out


def sparse_dot(
    grad_out: torch.Tensor, indices: torch.Tensor, table: torch.Tensor, *, check_range: bool = True
) -> torch.Tensor:
    """<grad_out[n], table[indices[n, j]]> -> (N, k) fp32.

    grad_out (N, d) float, indices (N, k) int64/int32 in [0, F), table (F, d) float; contiguous, one device.
    `check_range` as in `gather_weighted_sum`.
    """
    n, d = grad_out.shape
    k = indices.shape[1] if indices.dim() == 2 else -1
    f = table.shape[0]
    check_tensor("grad_out", grad_out, (n, d), FLOAT_DTYPES)
    check_tensor("table", table, (f, d), FLOAT_DTYPES)
    check_devices(grad_out=grad_out, indices=indices, table=table)
    indices = _check_indices(indices, (n, k), f, check_range)
    out = torch.empty((n, k), dtype=torch.float32, device=table.device)
    if n == 0 or k == 0:
        return out
    block_d = _block_d(d)
    block_k = _block_k(k, block_d)
    grid = (n, triton.cdiv(k, block_k))
    _sparse_dot_kernel[grid](grad_out, indices, table, out, k, d, BLOCK_K=block_k, BLOCK_D=block_d)
    return out


def decoder_backward(
    grad_out: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    W_dec: torch.Tensor,
    *,
    check_range: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of out = gather_weighted_sum(values, indices, W_dec).

    grad_out (N, d) in W_dec's dtype, values (N, k) float, indices (N, k) int64 in [0, F), W_dec (F, d);
    contiguous, one device (`check_range` as in `gather_weighted_sum`).
    Returns grad_values (N, k) fp32 and grad_W_dec (F, d) in W_dec's dtype (row-sparse: zero rows for latents
    that never fired; built latent-sorted, without atomics).
    """
    from .sparse_transpose import sparse_transpose_matmul

    grad_values = sparse_dot(grad_out, indices, W_dec, check_range=check_range)
    grad_W, _ = sparse_transpose_matmul(
        indices.long(), values, grad_out, W_dec.shape[0], out_dtype=W_dec.dtype, check_range=False
    )
    return grad_values, grad_W
