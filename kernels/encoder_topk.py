"""Fused encoder forward: GEMM + bias + ReLU + top-k over latent tiles (never the dense N x F matrix).

Two Triton kernels, both on tensor cores (bf16/fp16 in, fp32 accumulate):

* `_tile_candidates_kernel` (the default): one program per (BLOCK_M rows, BLOCK_N latents) tile computes the
  tile of pre-activations, applies bias and ReLU, and keeps only each row's M largest values of the tile
  (M rounds of a max-with-index reduction), writing (N, num_tiles, M) candidates. The host takes an exact
  top-k over the candidates. Exactness guard: a row whose k-th value does not exceed some tile's M-th kept
  value might have lost a member of its top-k in that tile, so such rows (a fraction of a percent at the M
  chosen, see `_candidates_per_tile`) are recomputed by the exact kernel below.
* `_running_topk_kernel`: one program walks a range of latent tiles keeping a running top-k in registers
  (threshold-driven merge); exact for every row, about 2.5x the GEMM on an H100, so it serves the guard's rows.

Selection order: value descending, ties broken by the lowest latent index (same as sae_fast.reference).
AuxK in the same pass: with a dead-latent map, the epilogue also stores the relu'd pre-activations of the
dead latents (only those) into a compact (N, num_dead) fp32 buffer; the host takes its top-k_aux (on fp32 values,
like the top-k: rounding them to a 16-bit input dtype first would make ties that sae_fast.reference does not).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..topk import select_topk_lowest_index, sort_desc_lowest_index
from ._common import (
    FLOAT_DTYPES,
    check_devices,
    check_tensor,
    cuda_mm_fp32_out_ok,
    grouped_tile,
    interpreting,
    next_pow2,
    num_sms,
)

__all__ = ["TileConfig", "encoder_topk"]


# The dead latents' pre-activations by a separate GEMM over them while they are at most F / 8: on an H100 the
# kernel's own dead store cost 9-27% of the encoder at 1% dead (bench/RESULTS.md), a GEMM over 1% of the
# latents ~1% of it. With many dead latents (early training) the kernel's store avoids a second large GEMM.
DEAD_GEMM_MAX_FRACTION = 8
# The (N, num_dead) fp32 AuxK buffer is kept below this; above it (many dead latents in a large batch, e.g. all
# of 2^20 latents dead at N = 8192 would be 32 GiB) the dead latents are scanned in chunks of columns by a GEMM
# with a running top-k_aux merge, so memory stays bounded at the cost of a second GEMM over the dead latents.
DEAD_BUFFER_MAX_BYTES = 2**30
TILE_N = 128  # latents per tile of the tile-candidates kernel on a GPU (its M is chosen for this width)


class TileConfig:
    """Explicit launch shape of the tile-candidates kernel (bypasses autotuning): blocks, warps, stages, group."""

    def __init__(self, block_m: int, block_n: int, block_k: int, num_warps: int, num_stages: int, group_m: int = 8):
        self.block_m, self.block_n, self.block_k = block_m, block_n, block_k
        self.num_warps, self.num_stages, self.group_m = num_warps, num_stages, group_m

    def __repr__(self) -> str:
        return (
            f"TileConfig(block_m={self.block_m}, block_n={self.block_n}, block_k={self.block_k}, "
            f"num_warps={self.num_warps}, num_stages={self.num_stages}, group_m={self.group_m})"
        )


def _tile_configs() -> list[triton.Config]:
    """Autotuning candidates for 16-bit inputs on a GPU (one config under the interpreter); BLOCK_N = TILE_N.

    Kept from a sweep of six on an H100 (bench/encoder_sweep.py, N = 8192, k = 64, bf16; bench/RESULTS.md):
    BLOCK_M 256 won at F >= 2^18 (1.49x the cuBLAS GEMM at (4096, 2^18)), BLOCK_M 128 with 8 warps at 2^17;
    4-stage, 64-row and wide-group variants were 5-41% slower at F >= 2^17 and no faster at 2^14.
    """
    if interpreting():
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 4}, num_warps=4, num_stages=1)]
    shapes = [(256, 64, 8, 3), (128, 64, 8, 3), (128, 32, 4, 4)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": TILE_N, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=st)
        for bm, bk, w, st in shapes
    ]


# fp32 inputs (tests, fp32 training without autocast) run one config: 16-bit configs' shared memory doubles in
# fp32 (the 256-row one does not fit), and autotuning an IEEE-fp32 GEMM at 2^20 latents costs a minute.
_FP32_TILE = TileConfig(128, TILE_N, 32, 8, 3)


def _candidates_per_tile(k: int, f: int, block_n: int, unsure_per_row: float | None = None) -> int:
    """Smallest M with (tiles per row) x P(Poisson(λ) >= M) <= unsure_per_row, λ = k·BLOCK_N/F the expected
    top-k members per tile when the winners spread over the latents; at least ceil(k / tiles) so that the
    candidates hold k values; min(BLOCK_N, F) makes every value a candidate (then nothing is unsure).

    Default unsure_per_row: 2e-3 from 1024 tiles up, 1e-4 below. On the H100 (N = 8192, k = 64) the guard's
    recomputation cost little next to a long pass (2^17: M = 3 with 301 unsure rows 12.2 ms, M = 4 with 5 rows
    12.6 ms, M = 6 13.3 ms) but dominated a short one (2^14: M = 6 with 7 rows 2.53 ms, M = 8 with none 1.93 ms).
    """
    tiles = triton.cdiv(f, block_n)
    if unsure_per_row is None:
        unsure_per_row = 2e-3 if tiles >= 1024 else 1e-4
    lam = k * block_n / f
    m, tail, term = 1, 1.0 - math.exp(-lam), math.exp(-lam)  # tail = P(X >= m)
    while m < min(block_n, f) and tiles * tail > unsure_per_row:
        term *= lam / m
        tail -= term
        m += 1
    return max(m, triton.cdiv(k, tiles), 1)


@triton.jit
def _relu_nan_to_inf(z):
    """relu(z) with NaN mapped to +inf. tl.maximum (maxnum) would map NaN to 0 and hide a NaN weight; +inf is
    ordered, so it is selected and `sae_fast.ops.encode`'s O(N·k) finiteness check of the outputs sees it."""
    return tl.where(z != z, float("inf"), tl.maximum(z, 0.0))


@triton.jit
def _relu_preact_tile(
    x_ptr, w_ptr, b_ptr, dead_pos_ptr, dead_out_ptr, rows64, row_ok, cols, col_ok, D, num_dead,
    HAS_DEAD: tl.constexpr, CAST_FP32: tl.constexpr, IEEE_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """relu(x[rows] W[cols]ᵀ + b[cols]) as a (BLOCK_M, BLOCK_N) fp32 tile, on tensor cores (fp32 accumulation);
    with HAS_DEAD also stores its dead-latent columns into dead_out (see the kernels below). Masked rows and
    columns read zeros. A NaN pre-activation becomes +inf (`_relu_nan_to_inf`)."""
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + rows64[:, None] * D + offs_k[None, :]
    b_ptrs = w_ptr + cols.to(tl.int64)[None, :] * D + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, D, BLOCK_K):
        k_ok = (k0 + offs_k) < D
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        bt = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
        if CAST_FP32:
            acc = tl.dot(a.to(tl.float32), bt.to(tl.float32), acc)
        elif IEEE_FP32:
            acc = tl.dot(a, bt, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, bt, acc)
    bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    s = _relu_nan_to_inf(acc + bias[None, :])
    if HAS_DEAD:
        pos = tl.load(dead_pos_ptr + cols, mask=col_ok, other=-1)
        tl.store(
            dead_out_ptr + rows64[:, None] * num_dead + pos[None, :],
            s.to(dead_out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & (pos >= 0)[None, :],
        )
    return s


@triton.jit
def _tile_candidates_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    cand_v_ptr,
    cand_i_ptr,
    dead_pos_ptr,
    dead_out_ptr,
    N,
    F,
    D,
    num_dead,
    M: tl.constexpr,
    HAS_DEAD: tl.constexpr,
    CAST_FP32: tl.constexpr,
    IEEE_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """x (N, D), W (F, D) contiguous, same dtype (fp32/bf16/fp16); b (F,) same dtype. Grid (cdiv(N, BLOCK_M) *
    T,) with T = cdiv(F, BLOCK_N), tiles in grouped order (GROUP_M row blocks share each W tile in L2).

    Writes cand_v (N, T, M) fp32 and cand_i (N, T, M) int32: per row and latent tile, the M largest values of
    relu(x Wᵀ + b) in that tile, descending, ties by lowest index (-inf with an index past the tile where the
    tile has fewer than M latents). With HAS_DEAD: dead_pos (F,) int32 (column in the dead buffer or -1),
    dead_out (N, num_dead) fp32 receives relu(x Wᵀ + b) of the dead latents.
    """
    num_pid_n = tl.cdiv(F, BLOCK_N)
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_M), num_pid_n, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    cols = pid_n * BLOCK_N + offs_n
    row_ok = rows < N
    col_ok = cols < F
    rows64 = rows.to(tl.int64)
    s = _relu_preact_tile(
        x_ptr, w_ptr, b_ptr, dead_pos_ptr, dead_out_ptr, rows64, row_ok, cols, col_ok, D, num_dead,
        HAS_DEAD, CAST_FP32, IEEE_FP32, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    s = tl.where(col_ok[None, :], s, float("-inf"))
    _store_top_m(s, cand_v_ptr, cand_i_ptr, rows64, row_ok, pid_n, num_pid_n, pid_n * BLOCK_N, offs_n, M)


@triton.jit
def _chunk_candidates_kernel(
    pre_ptr, b_ptr, cand_v_ptr, cand_i_ptr, N, C, col0, tiles_total,
    M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """pre (N, C) fp32 contiguous: x W[col0 : col0 + C]ᵀ without bias (a chunk of latents from cuBLAS); b (F,) any
    float. col0 is a multiple of BLOCK_N. Grid (cdiv(N, BLOCK_M), cdiv(C, BLOCK_N)).

    Writes, for the chunk's tiles, the same candidates as `_tile_candidates_kernel` into cand_v / cand_i
    (N, tiles_total, M): the M largest values of relu(pre + b) per row and tile, descending, ties by lowest index.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    local = pid_n * BLOCK_N + offs_n
    row_ok = rows < N
    col_ok = local < C
    rows64 = rows.to(tl.int64)
    pre = tl.load(pre_ptr + rows64[:, None] * C + local[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    bias = tl.load(b_ptr + col0 + local, mask=col_ok, other=0.0).to(tl.float32)
    s = tl.where(col_ok[None, :], _relu_nan_to_inf(pre + bias[None, :]), float("-inf"))
    tile = col0 // BLOCK_N + pid_n
    _store_top_m(s, cand_v_ptr, cand_i_ptr, rows64, row_ok, tile, tiles_total, col0 + pid_n * BLOCK_N, offs_n, M)


@triton.jit
def _store_top_m(s, cand_v_ptr, cand_i_ptr, rows64, row_ok, tile, tiles_total, col_base, offs_n, M: tl.constexpr):
    """Store the M largest entries of each row of the (BLOCK_M, BLOCK_N) tile s (masked entries -inf) at
    cand[row, tile, 0:M], descending, ties by lowest column; indices are col_base + column."""
    out = (rows64 * tiles_total + tile) * M
    for j in tl.static_range(M):
        best, where = tl.max(s, 1, return_indices=True, return_indices_tie_break_left=True)
        tl.store(cand_v_ptr + out + j, best, mask=row_ok)
        tl.store(cand_i_ptr + out + j, col_base + where, mask=row_ok)
        s = tl.where(offs_n[None, :] == where[:, None], float("-inf"), s)


_tile_candidates_tuned = triton.autotune(configs=_tile_configs(), key=["F", "D", "M", "HAS_DEAD"])(
    _tile_candidates_kernel
)


def _configs() -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": 128}, num_warps=4, num_stages=1)]
    # the running top-k state costs BLOCK_M * next_pow2(k) * 8 bytes of registers, so 8 warps keep larger tiles
    # from spilling;
    # the three without register spills in bf16 at k = 64 (bench/compile_report.py, sm_90): this kernel now
    # serves the tile kernel's unsure rows (a few per batch), where compile time matters more than its speed
    return [
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    ]


@triton.autotune(configs=_configs(), key=["D", "F", "K", "SPLITS", "HAS_DEAD"])
@triton.jit
def _running_topk_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    cand_v_ptr,
    cand_i_ptr,
    dead_pos_ptr,
    dead_out_ptr,
    N,
    F,
    D,
    num_dead,
    K: tl.constexpr,
    KP: tl.constexpr,
    SPLITS: tl.constexpr,
    HAS_DEAD: tl.constexpr,
    CAST_FP32: tl.constexpr,
    IEEE_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """x (N, D), W (F, D) contiguous, same dtype (fp32/bf16/fp16); b (F,) same dtype.

    Writes cand_v (N, SPLITS, K) fp32 and cand_i (N, SPLITS, K) int32: for each split of the latent axis,
    the top-K of relu(x Wᵀ + b) restricted to that split (value desc, ties: lowest index; entries from a
    split with fewer than K latents are -inf with index >= F). With HAS_DEAD: dead_pos (F,) int32 (column
    in the dead buffer or -1), dead_out (N, num_dead) fp32 receives relu(x Wᵀ + b) of the dead latents.
    """
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    slot = tl.arange(0, KP)
    # running top-k state; padding slots (>= K) hold +inf so that they are never the minimum
    vals = tl.where(slot[None, :] < K, float("-inf"), float("inf")) + tl.zeros((BLOCK_M, KP), tl.float32)
    idxs = (F + slot)[None, :] + tl.zeros((BLOCK_M, KP), tl.int32)
    n_tiles = tl.cdiv(F, BLOCK_N)
    tiles_per_split = tl.cdiv(n_tiles, SPLITS)
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, n_tiles)
    offs_n = tl.arange(0, BLOCK_N)
    for t in range(t_begin, t_end):
        cols = t * BLOCK_N + offs_n
        col_ok = cols < F
        s = _relu_preact_tile(
            x_ptr, w_ptr, b_ptr, dead_pos_ptr, dead_out_ptr, rows64, row_ok, cols, col_ok, D, num_dead,
            HAS_DEAD, CAST_FP32, IEEE_FP32, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        s = tl.where(row_ok[:, None] & col_ok[None, :], s, float("-inf"))
        tau = tl.min(vals, 1)
        best = tl.max(s, 1)
        n_active = tl.sum((best > tau).to(tl.int32), 0)
        while n_active > 0:
            active = best > tau
            best_col = tl.argmax(s, 1)  # first maximum: lowest index among equal values
            # evict the worst kept entry: minimum value, and among equal values the largest index
            worst_idx = tl.max(tl.where(vals == tau[:, None], idxs, -1), 1)
            replace = active[:, None] & (idxs == worst_idx[:, None])
            vals = tl.where(replace, best[:, None], vals)
            idxs = tl.where(replace, (t * BLOCK_N + best_col)[:, None], idxs)
            s = tl.where(active[:, None] & (offs_n[None, :] == best_col[:, None]), float("-inf"), s)
            tau = tl.min(vals, 1)
            best = tl.max(s, 1)
            n_active = tl.sum((best > tau).to(tl.int32), 0)
    out = rows64[:, None] * (SPLITS * K) + pid_s * K + slot[None, :]
    out_ok = row_ok[:, None] & (slot[None, :] < K)
    tl.store(cand_v_ptr + out, vals, mask=out_ok)
    tl.store(cand_i_ptr + out, idxs, mask=out_ok)


def _running_topk(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int, splits: int | None, dead: tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of every row with the running-top-k kernel (and the dead-latent store when `dead` has one)."""
    n, f = x.shape[0], W.shape[0]
    dead_pos, dead_out, num_dead, has_dead = dead
    device = x.device
    if splits is None:
        if interpreting():
            splits = 1
        else:  # enough programs to fill the GPU, at least 16 tiles of 128 latents per split
            row_blocks = triton.cdiv(max(n, 1), 64)
            splits = max(1, min(triton.cdiv(f, 2048), triton.cdiv(2 * num_sms(device), row_blocks)))
    cand_v = torch.empty((n, splits, k), dtype=torch.float32, device=device)
    cand_i = torch.empty((n, splits, k), dtype=torch.int32, device=device)
    if n > 0:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), splits)
        _running_topk_kernel[grid](
            x, W, b, cand_v, cand_i, dead_pos, dead_out, n, f, x.shape[1], num_dead,
            K=k, KP=max(2, next_pow2(k)), SPLITS=splits, HAS_DEAD=has_dead, **_dot_flags(x.dtype),
        )  # fmt: skip
    return sort_desc_lowest_index(cand_v.view(n, splits * k), cand_i.view(n, splits * k).long(), k)


def _dot_flags(dtype: torch.dtype) -> dict[str, bool]:
    return {
        "CAST_FP32": dtype == torch.bfloat16 and interpreting(),  # the interpreter's bf16 tl.dot is wrong
        "IEEE_FP32": dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32,
    }


def _tile_topk(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int, cfg: TileConfig | None, m: int | None, dead: tuple
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """Top-k from per-tile candidates: (values, indices, unsure row mask, rows completed by the zero tail, M).
    Unsure rows are not yet exact."""
    n, f = x.shape[0], W.shape[0]
    dead_pos, dead_out, num_dead, has_dead = dead
    if cfg is None and x.dtype == torch.float32 and not interpreting():
        cfg = _FP32_TILE
    block_n = cfg.block_n if cfg is not None else _tile_configs()[0].kwargs["BLOCK_N"]
    tiles, m, cand_v, cand_i = _candidate_buffers(n, f, k, m, block_n, x.device)
    args = (x, W, b, cand_v, cand_i, dead_pos, dead_out, n, f, x.shape[1], num_dead)
    flags = {"M": m, "HAS_DEAD": has_dead, **_dot_flags(x.dtype)}
    if cfg is None:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]) * tiles,)
        _tile_candidates_tuned[grid](*args, **flags)
    else:
        blocks = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "GROUP_M": cfg.group_m}
        launch = {} if interpreting() else {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        _tile_candidates_kernel[(triton.cdiv(n, cfg.block_m) * tiles,)](*args, **flags, **blocks, **launch)
    return (*_select_candidates(cand_v, cand_i, k, m, block_n, f), m)


def _candidate_buffers(
    n: int, f: int, k: int, m: int | None, block_n: int, device: torch.device
) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """(tiles, M, cand_v (N, tiles, M) fp32, cand_i (N, tiles, M) int32) for candidates of BLOCK_N-wide tiles;
    M from `_candidates_per_tile` unless given, at least ceil(k / tiles), at most min(BLOCK_N, F)."""
    tiles = triton.cdiv(f, block_n)
    m = _candidates_per_tile(k, f, block_n) if m is None else max(int(m), triton.cdiv(k, tiles))
    m = min(m, block_n, f)
    cand_v = torch.empty((n, tiles, m), dtype=torch.float32, device=device)
    cand_i = torch.empty((n, tiles, m), dtype=torch.int32, device=device)
    return tiles, m, cand_v, cand_i


def _select_candidates(
    cand_v: torch.Tensor, cand_i: torch.Tensor, k: int, m: int, block_n: int, f: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Exact top-k over (N, tiles, M) candidates: (values, indices, rows the guard cannot certify, number of rows
    completed by `_fill_zero_tail`)."""
    n, tiles = cand_v.shape[0], cand_v.shape[1]
    values, pos = select_topk_lowest_index(cand_v.view(n, tiles * m), k)
    indices = cand_i.view(n, tiles * m).gather(1, pos).long()
    if m >= min(block_n, f):  # every value of every tile was a candidate
        return values, indices, torch.zeros(n, dtype=torch.bool, device=cand_v.device), 0
    # a tile whose M-th kept value reaches the row's k-th value may hide more of the top-k
    last = cand_v[:, :, m - 1]
    unsure = (last >= values[:, k - 1 :]).any(1)
    # Rows with fewer than k positive pre-activations end their top-k in zeros, which tie in every tile, so the
    # test above fails them all. If no tile's M-th value is positive, every positive value was a candidate and
    # the rest of the top-k are the lowest-index latents that are not positive: filled in directly.
    zero_tail = unsure & (values[:, k - 1] <= 0) & ~(last > 0).any(1)
    rows = zero_tail.nonzero().squeeze(1)
    if rows.numel():
        values[rows], indices[rows] = _fill_zero_tail(values[rows], indices[rows], f)
        unsure[rows] = False
    return values, indices, unsure, int(rows.numel())


def _fill_zero_tail(values: torch.Tensor, indices: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (r, k) whose positive entries (value > 0, a prefix: values descend) are exact: the other slots get
    value 0 and, ascending, the lowest latent indices in [0, f) that are not among the row's positive ones (the
    reference's lowest-index tie rule among the ReLU zeros). They lie below 2k: at most p < k indices are taken."""
    r, k = values.shape
    positive = values > 0
    span = min(f, 2 * k)
    latent = torch.arange(span, device=indices.device)
    marks = torch.zeros((r, span + 1), dtype=torch.bool, device=indices.device)  # column span: the rest
    marks.scatter_(1, torch.where(positive & (indices < span), indices, span), True)
    free = ~marks[:, :span]
    slot = positive.sum(1, keepdim=True) + torch.cumsum(free, 1) - 1  # where each free latent would go
    slot = torch.where(free & (slot < k), slot, k)  # k: a spare column for the rest
    filled = torch.cat([indices, indices.new_zeros(r, 1)], 1).scatter_(1, slot, latent.expand(r, span))
    return torch.where(positive, values, 0.0), filled[:, :k]


def _gemm_fp32(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """x Wᵀ with fp32 output: cuBLAS on 16-bit CUDA inputs (fp32 accumulation, no rounding of the result), else
    an fp32 GEMM (on CUDA it follows torch.backends.cuda.matmul.allow_tf32, like the Triton kernels)."""
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        if cuda_mm_fp32_out_ok():
            return torch.mm(x, W.T, out_dtype=torch.float32)
        # a torch without mm(out_dtype=): 16-bit values are exact in TF32, so a TF32 GEMM of the upcast inputs
        # computes the same products
        matmul = torch.backends.cuda.matmul
        previous, matmul.allow_tf32 = matmul.allow_tf32, True
        try:
            return x.float() @ W.float().T
        finally:
            matmul.allow_tf32 = previous
    return x.float() @ W.float().T


def _cublas_topk(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int, m: int | None, dead: tuple, chunk: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """Top-k from per-tile candidates of cuBLAS chunks: as `_tile_topk`. The chunk's fp32
    pre-activations (N, chunk) are the only dense intermediate; dead latents' AuxK values are copied from them
    (dead = (dead_idx, dead_out) or None)."""
    n, f = x.shape[0], W.shape[0]
    block_m, block_n = (32, 32) if interpreting() else (64, TILE_N)
    tiles, m, cand_v, cand_i = _candidate_buffers(n, f, k, m, block_n, x.device)
    if chunk is None:  # an fp32 chunk of at most 1 GiB
        chunk = 2**28 // max(n, 1)
    chunk = max(block_n, chunk // block_n * block_n)
    starts = list(range(0, f, chunk))
    if dead is not None:  # each chunk's slice of the (ascending) dead latents, found with one host sync
        dead_idx, dead_out = dead
        edges = torch.tensor([*starts, f], device=dead_idx.device)
        dead_bounds = torch.searchsorted(dead_idx, edges).tolist()
    for ci, c0 in enumerate(starts):
        c1 = min(c0 + chunk, f)
        pre = _gemm_fp32(x, W[c0:c1]).contiguous()
        grid = (triton.cdiv(n, block_m), triton.cdiv(c1 - c0, block_n))
        launch = {} if interpreting() else {"num_warps": 8}
        _chunk_candidates_kernel[grid](
            pre, b, cand_v, cand_i, n, c1 - c0, c0, tiles, M=m, BLOCK_M=block_m, BLOCK_N=block_n, **launch
        )
        if dead is not None:
            lo, hi = dead_bounds[ci], dead_bounds[ci + 1]
            if hi > lo:
                cols = dead_idx[lo:hi]
                dead_out[:, lo:hi] = torch.relu(pre[:, cols - c0] + b[cols].float()).to(dead_out.dtype)
        del pre
    return (*_select_candidates(cand_v, cand_i, k, m, block_n, f), m)


def _dead_topk_chunked(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, dead_idx: torch.Tensor, k_aux: int, columns: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k_aux of relu(x Wᵀ + b) over the (ascending) dead latents `dead_idx`, `columns` of them per GEMM.

    x: (N, d), W: (F, d), b: (F,), dead_idx: (num_dead,) int64 ascending. Returns values (N, min(k_aux, num_dead))
    fp32 (descending; ties: lowest latent index) and their latent indices (int64). Each block's own top-k_aux is
    taken first, then merged with the running best, so what outlives a block is (N, 2 k_aux). Peak memory is a
    few times the block: the GEMM output, the ReLU'd copy, and the selection's temporaries (rows with fewer than
    k_aux positive values, the common case among dead latents, take the tie-resolving path: ~4x the block).
    The running best comes first in each merge and holds only lower latent indices than the block, so "lowest
    position" among equal values is "lowest latent index", as in one selection over all dead latents.
    """
    best_v = best_i = None
    for lo in range(0, dead_idx.numel(), columns):
        cols = dead_idx[lo:lo + columns]
        pre = torch.relu(_gemm_fp32(x, W[cols]) + b[cols].float())
        v, pos = select_topk_lowest_index(pre, min(k_aux, pre.shape[1]))
        del pre
        i = cols[pos]
        if best_v is not None:
            v, i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i], dim=1)
            v, pos = select_topk_lowest_index(v, min(k_aux, v.shape[1]))
            i = torch.gather(i, 1, pos)
        best_v, best_i = v, i
    assert best_v is not None and best_i is not None
    return best_v, best_i


def encoder_topk(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    dead_mask: torch.Tensor | None = None,
    k_aux: int | None = None,
    *,
    method: str = "tiles",
    splits: int | None = None,
    tile_config: TileConfig | None = None,
    candidates: int | None = None,
    dead_store: str = "auto",
    chunk: int | None = None,
    stats: dict | None = None,
    dead_buffer_bytes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Top-k of relu(x W_encᵀ + b_enc) per row, plus the AuxK top-k_aux among dead latents in the same pass.

    x: (N, d), W_enc: (F, d), b_enc: (F,): contiguous, one dtype in {fp32, bf16, fp16}; 1 <= k <= F.
    dead_mask: (F,) bool or None; k_aux >= 1 when dead_mask is given.
    method: "tiles" (per-tile candidates from the fused GEMM kernel + exact fallback for the guard's rows),
    "cublas" (the same candidates from fp32 cuBLAS chunks of `chunk` latents, default 2^28 / N, i.e. 1 GiB — the
    only dense intermediate) or "running" (the running top-k kernel for every row; `splits` programs per row
    block). `tile_config` (default: autotuned) and `candidates` (M, default `_candidates_per_tile`) override the
    tile kernel's launch shape and candidates per tile; `stats`, if given, receives "unsure_rows" (recomputed
    exactly), "zero_tail_rows" (fewer than k positive values, completed by index) and "M".
    `dead_store`: where the dead latents' pre-activations come from — "kernel" (stored by the GEMM kernel's
    epilogue), "gemm" (a separate cuBLAS GEMM over the dead latents only) or "auto" (the GEMM while at most
    1 / DEAD_GEMM_MAX_FRACTION of latents are dead); "cublas" copies them from its chunks. Unless "kernel" is
    asked for, when the (N, num_dead) fp32 buffer would exceed `dead_buffer_bytes` (default DEAD_BUFFER_MAX_BYTES,
    1 GiB) the dead latents are instead scanned after the top-k by GEMMs over blocks of them with a running
    top-k_aux merge (same result; memory bounded by a few times the cap, see `_dead_topk_chunked`).
    Returns values (N, k) fp32 (descending; ties: lowest index), indices (N, k) int64, and, with a dead
    mask, aux_values / aux_indices (N, min(k_aux, num_dead)) (fp32 / int64 latent indices), else None. Both
    selections are made on fp32 values.
    Extra memory: (N, F / BLOCK_N, M) candidates (8 bytes each) plus (N, num_dead) fp32 for AuxK (the relu'd
    pre-activations of the dead latents only), at most `dead_buffer_bytes` unless dead_store="kernel".
    """
    n, d = x.shape
    f = W_enc.shape[0]
    check_tensor("x", x, (n, d), FLOAT_DTYPES)
    check_tensor("W_enc", W_enc, (f, d), (x.dtype,))
    check_tensor("b_enc", b_enc, (f,), (x.dtype,))
    check_devices(x=x, W_enc=W_enc, b_enc=b_enc, dead_mask=dead_mask)
    if isinstance(k, bool) or not 1 <= k <= f:
        raise ValueError(f"k must be in [1, {f}], got {k}")
    if f + next_pow2(k) >= 2**31:
        raise ValueError("num_latents must be below 2**31 - k")
    if method not in ("tiles", "cublas", "running"):
        raise ValueError(f"method must be 'tiles', 'cublas' or 'running', got {method!r}")
    device = x.device
    has_dead = dead_mask is not None
    chunked = False  # whether the dead latents are scanned in blocks after the top-k (buffer over the cap)
    in_kernel = False  # whether the GEMM kernel stores the dead latents' pre-activations
    if has_dead:
        check_tensor("dead_mask", dead_mask, (f,), (torch.bool,))
        if k_aux is None or k_aux < 1:
            raise ValueError("k_aux must be a positive int with dead_mask")
        if dead_store not in ("auto", "kernel", "gemm"):
            raise ValueError(f"dead_store must be 'auto', 'kernel' or 'gemm', got {dead_store!r}")
        dead_idx = torch.nonzero(dead_mask, as_tuple=False).squeeze(1)
        num_dead = int(dead_idx.numel())
        if dead_buffer_bytes is None:
            dead_buffer_bytes = DEAD_BUFFER_MAX_BYTES
        if dead_buffer_bytes < 4 * max(n, 1):
            raise ValueError(
                f"dead_buffer_bytes must hold at least one fp32 column of {n} rows, got {dead_buffer_bytes}"
            )
        chunked = dead_store != "kernel" and 4 * n * num_dead > dead_buffer_bytes
        in_kernel = not chunked and method != "cublas" and (
            dead_store == "kernel" or (dead_store == "auto" and num_dead * DEAD_GEMM_MAX_FRACTION > f)
        )
    dead_pos = torch.empty(1, dtype=torch.int32, device=device)
    dead_out = torch.empty(1, dtype=torch.float32, device=device)
    if in_kernel:
        dead_pos = torch.full((f,), -1, dtype=torch.int32, device=device)
        dead_pos[dead_idx] = torch.arange(num_dead, dtype=torch.int32, device=device)
        # fp32, not x's dtype: AuxK selects on fp32 values like the top-k (and the reference)
        dead_out = torch.empty((n, num_dead), dtype=torch.float32, device=device)
    elif has_dead and chunked:
        pass  # scanned in blocks after the top-k
    elif has_dead and method == "cublas":
        dead_out = torch.empty((n, num_dead), dtype=torch.float32, device=device)  # filled from the chunks
    elif has_dead:  # a separate GEMM over the dead latents only, fp32 output like the kernel's store
        dead_out = torch.relu(_gemm_fp32(x, W_enc[dead_idx]) + b_enc[dead_idx].float())
    dead = (dead_pos, dead_out, num_dead if in_kernel else 0, in_kernel)
    if n == 0:
        values = torch.empty((0, k), dtype=torch.float32, device=device)
        indices = torch.empty((0, k), dtype=torch.int64, device=device)
    elif method == "running":
        values, indices = _running_topk(x, W_enc, b_enc, k, splits, dead)
    else:
        if method == "cublas":
            from_chunks = (dead_idx, dead_out) if has_dead and not chunked else None
            values, indices, unsure, filled, m = _cublas_topk(x, W_enc, b_enc, k, candidates, from_chunks, chunk)
        else:
            values, indices, unsure, filled, m = _tile_topk(x, W_enc, b_enc, k, tile_config, candidates, dead)
        rows = unsure.nonzero().squeeze(1)
        if stats is not None:
            stats.update(unsure_rows=int(rows.numel()), zero_tail_rows=filled, M=m)
        if rows.numel():  # exact recomputation of the guard's rows (the dead store is already complete)
            no_dead = (dead_pos, dead_out, 0, False)
            values[rows], indices[rows] = _running_topk(x[rows].contiguous(), W_enc, b_enc, k, splits, no_dead)
    if not has_dead:
        return values, indices, None, None
    if chunked:
        aux_values, aux_idx = _dead_topk_chunked(x, W_enc, b_enc, dead_idx, k_aux, dead_buffer_bytes // (4 * n))
        return values, indices, aux_values, aux_idx
    aux_values, aux_pos = select_topk_lowest_index(dead_out, min(k_aux, num_dead))
    return values, indices, aux_values, dead_idx[aux_pos]
