"""Fused encoder forward: GEMM + bias + ReLU + running top-k over latent tiles (never the dense N x F matrix).

For a block of BLOCK_M rows, one program walks a contiguous range of latent tiles (BLOCK_N latents each),
computes the tile of pre-activations on tensor cores (bf16/fp16 in, fp32 accumulate), applies bias and
ReLU, and merges it into a running top-k kept in registers. Merging is threshold-driven: a row only
does work while the tile still holds a value above its current k-th value, so after the first tiles most
tiles cost one max-reduction. The latent axis is also split over `splits` programs; the host merges their
k candidates per row exactly (a sort of splits·k values).

Selection order: value descending, ties broken by the lowest latent index (same as sae_fast.reference).
AuxK in the same pass: with a dead-latent map, the epilogue also stores the relu'd pre-activations of the
dead latents (only those) into a compact (N, num_dead) buffer; the host takes its top-k_aux.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_tensor, interpreting, next_pow2, num_sms

__all__ = ["encoder_topk", "select_topk_lowest_index"]


def _configs() -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": 128}, num_warps=4, num_stages=1)]
    # untuned guesses (no GPU was available when this was written): the running top-k state costs
    # BLOCK_M * next_pow2(k) * 8 bytes of registers, so 8 warps keep larger tiles from spilling
    return [
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    ]


@triton.autotune(configs=_configs(), key=["D", "F", "K", "SPLITS", "HAS_DEAD"])
@triton.jit
def _encoder_topk_kernel(
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
    in the dead buffer or -1), dead_out (N, num_dead) (x's dtype) receives relu(x Wᵀ + b) of the dead latents.
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
    offs_k = tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    for t in range(t_begin, t_end):
        cols = t * BLOCK_N + offs_n
        col_ok = cols < F
        cols64 = cols.to(tl.int64)
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        a_ptrs = x_ptr + rows64[:, None] * D + offs_k[None, :]
        b_ptrs = w_ptr + cols64[None, :] * D + offs_k[:, None]
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
        s = tl.maximum(acc + bias[None, :], 0.0)
        if HAS_DEAD:
            pos = tl.load(dead_pos_ptr + cols, mask=col_ok, other=-1)
            tl.store(
                dead_out_ptr + rows64[:, None] * num_dead + pos[None, :],
                s.to(dead_out_ptr.dtype.element_ty),
                mask=row_ok[:, None] & (pos >= 0)[None, :],
            )
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


def _sort_desc_lowest_index(values: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First k of each row in (value desc, index asc) order."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    by_value = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, by_value), indices.gather(1, by_value)


def select_topk_lowest_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise top-k of a (N, M) float matrix in (value desc, index asc) order, as sae_fast.reference's
    `topk_lowest_index` but without a full sort: torch.topk finds each row's k-th value, ties at that value are
    resolved to the lowest indices with a cumulative count, and only the (N, k) winners are sorted."""
    n = scores.shape[0]
    if k == 0 or n == 0:
        return scores.new_empty((n, k)), torch.empty((n, k), dtype=torch.int64, device=scores.device)
    kth = torch.topk(scores, k, dim=1, sorted=True).values[:, -1:]
    greater = scores > kth
    ties = scores == kth
    room = k - greater.sum(1, keepdim=True)
    keep = greater | (ties & (torch.cumsum(ties, 1, dtype=torch.int32) <= room))
    pos = keep.nonzero()[:, 1].view(n, k)  # ascending latent order within each row
    vals = scores.gather(1, pos)
    order = torch.argsort(vals, dim=1, descending=True, stable=True)  # stable: lowest index first on ties
    return vals.gather(1, order), pos.gather(1, order)


def encoder_topk(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    dead_mask: torch.Tensor | None = None,
    k_aux: int | None = None,
    *,
    splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Top-k of relu(x W_encᵀ + b_enc) per row, plus the AuxK top-k_aux among dead latents in the same pass.

    x: (N, d), W_enc: (F, d), b_enc: (F,): contiguous, one dtype in {fp32, bf16, fp16}; 1 <= k <= F.
    dead_mask: (F,) bool or None; k_aux >= 1 when dead_mask is given.
    Returns values (N, k) fp32 (descending; ties: lowest index), indices (N, k) int64, and, with a dead
    mask, aux_values / aux_indices (N, min(k_aux, num_dead)) (x's dtype / int64 latent indices), else None.
    Extra memory: (N, splits, k) candidates plus (N, num_dead) in x's dtype for AuxK (the relu'd pre-activations
    of the dead latents only; e.g. 1.7 GB at N = 8192 with 10% of 2^20 latents dead in bf16).
    """
    n, d = x.shape
    f = W_enc.shape[0]
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    check_tensor("x", x, (n, d), dtypes)
    check_tensor("W_enc", W_enc, (f, d), (x.dtype,))
    check_tensor("b_enc", b_enc, (f,), (x.dtype,))
    if not 1 <= k <= f:
        raise ValueError(f"k must be in [1, {f}], got {k}")
    if f + next_pow2(k) >= 2**31:
        raise ValueError("num_latents must be below 2**31 - k")
    device = x.device
    has_dead = dead_mask is not None
    if has_dead:
        check_tensor("dead_mask", dead_mask, (f,), (torch.bool,))
        if k_aux is None or k_aux < 1:
            raise ValueError("k_aux must be a positive int with dead_mask")
        dead_idx = torch.nonzero(dead_mask, as_tuple=False).squeeze(1)
        num_dead = int(dead_idx.numel())
        dead_pos = torch.full((f,), -1, dtype=torch.int32, device=device)
        dead_pos[dead_idx] = torch.arange(num_dead, dtype=torch.int32, device=device)
        # in the input dtype: the AuxK values are returned in it anyway, and bf16 halves this buffer
        dead_out = torch.empty((n, num_dead), dtype=x.dtype, device=device)
    else:
        num_dead = 0
        dead_pos = torch.empty(1, dtype=torch.int32, device=device)
        dead_out = torch.empty(1, dtype=x.dtype, device=device)
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
        cast = x.dtype == torch.bfloat16 and interpreting()  # the interpreter's bf16 tl.dot is wrong
        ieee = x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
        _encoder_topk_kernel[grid](
            x, W_enc, b_enc, cand_v, cand_i, dead_pos, dead_out, n, f, d, num_dead,
            K=k, KP=max(2, next_pow2(k)), SPLITS=splits, HAS_DEAD=has_dead, CAST_FP32=cast, IEEE_FP32=ieee,
        )  # fmt: skip
    cand_v, cand_i = cand_v.view(n, splits * k), cand_i.view(n, splits * k).long()
    values, indices = _sort_desc_lowest_index(cand_v, cand_i, k)
    if not has_dead:
        return values, indices, None, None
    aux_values, aux_pos = select_topk_lowest_index(dead_out, min(k_aux, num_dead))
    return values, indices, aux_values, dead_idx[aux_pos]
