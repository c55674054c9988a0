"""Fused score GEMM + running row/column max for matching: ``S = A @ B.T`` is never written to memory.

Each program computes one (BLOCK_M x BLOCK_N) tile of S with float32 accumulation, reduces it to the tile's
best and second-best value per row and per column, and folds them into global per-row / per-column results
with atomics:

* best: a 64-bit key ``(orderable float32 bits << 32) | (2^32 - 1 - index)``, so one ``atomic_max`` keeps the
  largest value and, among exact ties, the smallest index;
* second best (value only, an orderable int32 key): ``atomic_max`` of the tile's second-best value and of the
  value that lost the best-slot exchange (``min(old, new)`` of the ``atomic_max`` on best). Every value that was
  ever in, or offered to, the best slot except the final winner is offered here, so the result is the exact
  second-largest entry of the row (column) as computed by the kernel.

The second best lets the caller certify the low-precision arg-max against float32 (see sae_fast.matching).

Segments: B may be the row-wise concatenation of G dictionaries of ``segment`` rows each (several seeds matched
against one anchor in one launch). The row results are then kept per segment, (M, G), with indices local to the
segment; a column tile never straddles two segments. The column results are unchanged (over all of A).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import grouped_tile, interpreting

_INT64_MIN = -(2**63)
_INT32_MIN = -(2**31)


@triton.jit
def _orderable(v):
    """float32 -> int32 whose signed order is the float order (finite values and -inf)."""
    bits = v.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.jit
def _match_max_kernel(
    a_ptr, b_ptr,
    row_best_ptr, row_second_ptr, col_best_ptr, col_second_ptr,
    M, N, K, stride_am, stride_bn, SEG_N, NUM_SEG,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    BOTH: tl.constexpr, UPCAST: tl.constexpr,
):
    """A (M, K) and B (N, K): row-major with unit stride along K, one dtype (fp32 / fp16 / bf16); B is NUM_SEG
    segments of SEG_N rows (N = NUM_SEG * SEG_N). row_best (M, NUM_SEG) int64 and row_second (M, NUM_SEG) int32,
    contiguous; col_best (N,) int64, col_second (N,) int32: initialised to the int minimum by the caller; updated
    with atomic_max. UPCAST: cast tiles to fp32 before tl.dot (needed for bf16 under the Triton interpreter)."""
    tiles_per_seg = tl.cdiv(SEG_N, BLOCK_N)
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), NUM_SEG * tiles_per_seg, GROUP_M)
    seg = pid_n // tiles_per_seg
    first_local = (pid_n % tiles_per_seg) * BLOCK_N

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    local_n = first_local + tl.arange(0, BLOCK_N)  # row of B within its segment
    offs_n = seg * SEG_N + local_n
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = local_n < SEG_N
    # 64-bit row offsets: M * K can exceed 2^31 elements (2^20 x 4096)
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    b_rows = b_ptr + offs_n.to(tl.int64)[:, None] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        a = tl.load(a_rows + kk[None, :], mask=mask_m[:, None] & (kk[None, :] < K), other=0.0)
        b = tl.load(b_rows + kk[None, :], mask=mask_n[:, None] & (kk[None, :] < K), other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc)
    s = tl.where(mask_m[:, None] & mask_n[None, :], acc, float("-inf"))

    # rows: best and second best of this tile, folded into the global row results
    r_val = tl.max(s, axis=1)
    r_arg = tl.argmax(s, axis=1)
    r_sec = tl.max(tl.where(tl.arange(0, BLOCK_N)[None, :] == r_arg[:, None], float("-inf"), s), axis=1)
    r_key = _orderable(r_val).to(tl.int64) * 4294967296 + (4294967295 - (first_local + r_arg).to(tl.int64))
    r_slot = offs_m.to(tl.int64) * NUM_SEG + seg
    r_old = tl.atomic_max(row_best_ptr + r_slot, r_key, mask=mask_m)
    r_lost = (tl.minimum(r_old, r_key) >> 32).to(tl.int32)
    tl.atomic_max(row_second_ptr + r_slot, tl.maximum(r_lost, _orderable(r_sec)), mask=mask_m)

    if BOTH:
        c_val = tl.max(s, axis=0)
        c_arg = tl.argmax(s, axis=0)
        c_sec = tl.max(tl.where(tl.arange(0, BLOCK_M)[:, None] == c_arg[None, :], float("-inf"), s), axis=0)
        c_key = _orderable(c_val).to(tl.int64) * 4294967296 + (4294967295 - (pid_m * BLOCK_M + c_arg).to(tl.int64))
        c_old = tl.atomic_max(col_best_ptr + offs_n, c_key, mask=mask_n)
        c_lost = (tl.minimum(c_old, c_key) >> 32).to(tl.int32)
        tl.atomic_max(col_second_ptr + offs_n, tl.maximum(c_lost, _orderable(c_sec)), mask=mask_n)


def _from_orderable(key: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_orderable``: int32 keys -> float32 values."""
    bits = torch.where(key >= 0, key, key ^ 0x7FFFFFFF)
    return bits.view(torch.float32)


def _unpack(best: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    value = _from_orderable((best >> 32).to(torch.int32))
    index = 4294967295 - (best & 0xFFFFFFFF)
    return value, index, _from_orderable(second)


def match_max(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    both: bool = True,
    segment: int | None = None,
    block_m: int = 128,
    block_n: int = 128,
    block_k: int = 64,
    group_m: int = 8,
    num_warps: int = 8,
    num_stages: int = 3,
) -> tuple[torch.Tensor, ...]:
    """Row and column max of ``a @ b.T`` without materialising it.

    a: (M, K), b: (N, K), both contiguous, same dtype (float32, float16 or bfloat16), same device (CUDA, or CPU
    under TRITON_INTERPRET=1); M, N < 2^31. Returns (row_val (M,) float32, row_idx (M,) int64,
    row_second (M,) float32, col_val (N,), col_idx (N,), col_second (N,)); the column results are None when
    ``both`` is False. Values are the kernel's float32-accumulated scores of the given (possibly rounded) inputs;
    ties go to the smallest index. ``segment``: b is N / segment dictionaries of ``segment`` rows; the row results
    are then (M, N / segment), best per segment, indices local to it.
    """
    assert a.ndim == 2 and b.ndim == 2, f"a and b must be 2-D, got {tuple(a.shape)} and {tuple(b.shape)}"
    assert a.shape[1] == b.shape[1], f"a and b need the same K, got {tuple(a.shape)} and {tuple(b.shape)}"
    assert a.dtype == b.dtype and a.dtype in (torch.float32, torch.float16, torch.bfloat16), (a.dtype, b.dtype)
    assert a.is_contiguous() and b.is_contiguous(), "a and b must be contiguous (row-major, unit stride along K)"
    assert a.device == b.device, f"a and b must be on one device, got {a.device} and {b.device}"
    m, k = a.shape
    n = b.shape[0]
    assert 0 < m < 2**31 and 0 < n < 2**31 and k > 0, (m, n, k)
    seg = n if segment is None else segment
    assert seg > 0 and n % seg == 0, f"segment must divide the rows of b ({n}), got {segment}"
    num_seg = n // seg
    dev = a.device
    row_best = torch.full((m, num_seg), _INT64_MIN, dtype=torch.int64, device=dev)
    row_second = torch.full((m, num_seg), _INT32_MIN, dtype=torch.int32, device=dev)
    col_best = torch.full((n if both else 1,), _INT64_MIN, dtype=torch.int64, device=dev)
    col_second = torch.full((n if both else 1,), _INT32_MIN, dtype=torch.int32, device=dev)
    grid = (triton.cdiv(m, block_m) * num_seg * triton.cdiv(seg, block_n),)
    _match_max_kernel[grid](
        a, b, row_best, row_second, col_best, col_second, m, n, k, a.stride(0), b.stride(0), seg, num_seg,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, BOTH=both,
        UPCAST=interpreting() and a.dtype == torch.bfloat16,
        **({} if interpreting() else {"num_warps": num_warps, "num_stages": num_stages}),
    )
    rows = _unpack(row_best, row_second)
    if segment is None:
        rows = tuple(t.squeeze(1) for t in rows)
    cols = _unpack(col_best, col_second) if both else (None, None, None)
    return (*rows, *cols)
