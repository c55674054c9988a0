"""Decoder-norm upkeep in one pass over memory: row renormalisation and removal of the gradient component
parallel to each decoder row. Torch would need several full passes and fp32 temporaries the size of W_dec."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, check_devices, check_tensor, interpreting, next_pow2

__all__ = ["MAX_D", "normalize_rows_", "remove_parallel_component_"]

MAX_D = 16384  # a whole row is held in registers


@triton.jit
def _normalize_rows_kernel(w_ptr, R, D, eps, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """w (R, D) float, contiguous, updated in place: w[r] /= max(||w[r]||, eps), norm in fp32."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < R)[:, None] & (cols < D)[None, :]
    ptrs = w_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :]
    w = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    norm = tl.maximum(tl.sqrt(tl.sum(w * w, 1)), eps)
    tl.store(ptrs, (w / norm[:, None]).to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _remove_parallel_kernel(g_ptr, w_ptr, R, D, eps, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """g, w (R, D) float, contiguous; g updated in place: g[r] -= <g[r], u> u with u = w[r] / ||w[r]|| (fp32)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < R)[:, None] & (cols < D)[None, :]
    offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = w / tl.maximum(tl.sqrt(tl.sum(w * w, 1)), eps)[:, None]
    g = g - tl.sum(g * u, 1)[:, None] * u
    tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=mask)


def _launch_shape(r: int, d: int) -> tuple[int, int, int, int]:
    block_d = next_pow2(d)
    budget = 4096 if interpreting() else 8192  # elements per program
    block_r = max(1, min(budget // block_d, next_pow2(r)))
    num_warps = 4 if block_r * block_d <= 4096 else 8
    return triton.cdiv(r, block_r), block_r, block_d, num_warps


def normalize_rows_(W: torch.Tensor, eps: float = 1.1920929e-07) -> torch.Tensor:
    """Rescale every row of W (F, d) (fp32/bf16/fp16, contiguous, d <= MAX_D) to unit L2 norm, in place."""
    r, d = W.shape
    check_tensor("W", W, (r, d), FLOAT_DTYPES)
    if d > MAX_D:
        raise ValueError(f"d must be at most {MAX_D}, got {d}")
    if r and d:
        grid, block_r, block_d, warps = _launch_shape(r, d)
        _normalize_rows_kernel[(grid,)](W, r, d, eps, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps)
    return W


def remove_parallel_component_(G: torch.Tensor, W: torch.Tensor, eps: float = 1.1920929e-07) -> torch.Tensor:
    """G[r] -= <G[r], u_r> u_r with u_r = W[r] / ||W[r]||, in place. G, W: (F, d), contiguous, d <= MAX_D."""
    r, d = W.shape
    check_tensor("W", W, (r, d), FLOAT_DTYPES)
    check_tensor("G", G, (r, d), FLOAT_DTYPES)
    check_devices(G=G, W=W)
    if d > MAX_D:
        raise ValueError(f"d must be at most {MAX_D}, got {d}")
    if r and d:
        grid, block_r, block_d, warps = _launch_shape(r, d)
        _remove_parallel_kernel[(grid,)](G, W, r, d, eps, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps)
    return G
