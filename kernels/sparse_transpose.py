"""Row-sparse weight gradients without atomics: out[f] = Σ_{(n, j): indices[n, j] = f} weights[n, j] · dense[n].

This is dW_dec (dense = grad_out, weights = values) and dW_enc (dense = x, weights = gradient of the
selected pre-activations; its column sums give db_enc). The (N·k) pairs are sorted by latent (a stable
device sort, so the summation order is deterministic), giving a CSR layout: per latent, a start and a
count. One program per (latent, block of d columns) walks that latent's occurrences BLOCK_O at a time and
writes its row once — no atomics, hot latents only lengthen their own loop, unused latents write zeros.
Work O(N·k·d + F·d); extra memory O(N·k + F); no (N·k × d) temporary.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, check_devices, check_index_range, check_tensor, interpreting, next_pow2

__all__ = ["LatentCSR", "latent_csr", "latent_csr_pairs", "sparse_transpose_matmul", "sparse_transpose_pairs"]


class LatentCSR:
    """(latent, row) pairs sorted by latent: rows (P,) int64 dense row of each sorted pair, `order` (P,) int64
    position of each sorted pair in the input order, start (F,) int64 and count (F,) int32 per latent."""

    def __init__(self, rows: torch.Tensor, order: torch.Tensor, start: torch.Tensor, count: torch.Tensor) -> None:
        self.rows, self.order, self.start, self.count = rows, order, start, count


def latent_csr_pairs(latents: torch.Tensor, rows: torch.Tensor, num_latents: int) -> LatentCSR:
    """Latent-sorted layout of P pairs: latents (P,) int64 in [0, num_latents), rows (P,) int64 dense rows.

    A latent >= num_latents raises ValueError (bincount would give it a count past the layout: free to detect);
    a negative one fails in bincount."""
    _, order = torch.sort(latents, stable=True)
    count = torch.bincount(latents, minlength=num_latents)
    if count.shape[0] != num_latents:
        raise ValueError(f"latents must lie in [0, {num_latents}), got a latent up to {count.shape[0] - 1}")
    start = torch.cumsum(count, 0) - count
    return LatentCSR(rows[order].contiguous(), order, start.contiguous(), count.to(torch.int32).contiguous())


def latent_csr(indices: torch.Tensor, num_latents: int) -> LatentCSR:
    """Latent-sorted layout of (N, k) int64 indices (values in [0, num_latents)); pair (n, j) has row n."""
    n, k = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(k)
    return latent_csr_pairs(indices.reshape(-1), rows, num_latents)


_GPU_CONFIGS = [
    triton.Config({"BLOCK_O": 16, "BLOCK_D": 512}, num_warps=4),
    triton.Config({"BLOCK_O": 32, "BLOCK_D": 256}, num_warps=4),
    triton.Config({"BLOCK_O": 16, "BLOCK_D": 256}, num_warps=2),
    triton.Config({"BLOCK_O": 8, "BLOCK_D": 1024}, num_warps=4),
]


@triton.jit
def _csr_rows_kernel(
    rows_ptr, w_ptr, start_ptr, count_ptr, dense_ptr, out_ptr, colsum_ptr, D,
    HAS_COLSUM: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """rows (P,) int64 and w (P,) fp32 in latent-sorted order; start (F,) int64, count (F,) int32;
    dense (N, D) float; out (F, D) any float; colsum (F,) fp32 (when HAS_COLSUM). All contiguous.

    out[f, c] = Σ_{p in [start[f], start[f] + count[f])} w[p] · dense[rows[p], c]; colsum[f] = Σ w[p].
    Grid (F, cdiv(D, BLOCK_D)).
    """
    f = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    begin = tl.load(start_ptr + f)
    cnt = tl.load(count_ptr + f)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    wsum = tl.zeros((BLOCK_O,), tl.float32)
    for o0 in range(0, cnt, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        o_ok = o < cnt
        r = tl.load(rows_ptr + begin + o, mask=o_ok, other=0)
        w = tl.load(w_ptr + begin + o, mask=o_ok, other=0.0)
        vals = tl.load(dense_ptr + r[:, None] * D + cols[None, :], mask=o_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(w[:, None] * vals.to(tl.float32), 0)
        wsum += w
    tl.store(out_ptr + f * D + cols, acc.to(out_ptr.dtype.element_ty), mask=col_ok)
    if HAS_COLSUM:
        tl.store(colsum_ptr + f, tl.sum(wsum, 0), mask=pid_d == 0)


_csr_rows_tuned = triton.autotune(configs=_GPU_CONFIGS, key=["D", "HAS_COLSUM"])(_csr_rows_kernel)


def sparse_transpose_pairs(
    latents: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    dense: torch.Tensor,
    num_latents: int,
    *,
    out_dtype: torch.dtype = torch.float32,
    with_colsum: bool = False,
    csr: LatentCSR | None = None,
    check_range: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """out[f] = Σ_{p: latents[p] = f} weights[p] · dense[rows[p]] -> (F, d) in out_dtype; colsum[f] = Σ weights[p].

    latents, rows: (P,) int64 (latents in [0, F), rows in [0, R)); weights (P,) float; dense (R, d)
    fp32/bf16/fp16; all contiguous, one device. Every output row is written (zeros for latents without pairs).
    `check_range`: verify both index ranges first (host syncs); callers with indices from the encoder skip it.
    """
    p = latents.shape[0]
    r, d = dense.shape
    check_tensor("latents", latents, (p,), (torch.int64,))
    check_tensor("rows", rows, (p,), (torch.int64,))
    check_tensor("weights", weights, (p,), (*FLOAT_DTYPES, torch.float64))
    check_tensor("dense", dense, (r, d), FLOAT_DTYPES)
    check_devices(latents=latents, rows=rows, weights=weights, dense=dense)
    if check_range:
        check_index_range("latents", latents, num_latents)
        check_index_range("rows", rows, r)
    device = dense.device
    out = torch.empty((num_latents, d), dtype=out_dtype, device=device)
    colsum = torch.empty((num_latents,), dtype=torch.float32, device=device) if with_colsum else None
    if num_latents == 0:
        return out, colsum
    if csr is None:
        csr = latent_csr_pairs(latents, rows, num_latents)
    w_sorted = weights[csr.order].float().contiguous()
    args = (csr.rows, w_sorted, csr.start, csr.count, dense, out, colsum if colsum is not None else out, d)
    if interpreting():  # one chunk per row, few occurrences per step: the interpreter pays per program-step
        _csr_rows_kernel[(num_latents, 1)](*args, HAS_COLSUM=with_colsum, BLOCK_O=16, BLOCK_D=next_pow2(d))
    else:
        grid = lambda meta: (num_latents, triton.cdiv(max(d, 1), meta["BLOCK_D"]))
        _csr_rows_tuned[grid](*args, HAS_COLSUM=with_colsum)
    return out, colsum


def sparse_transpose_matmul(
    indices: torch.Tensor,
    weights: torch.Tensor,
    dense: torch.Tensor,
    num_latents: int,
    *,
    out_dtype: torch.dtype = torch.float32,
    with_colsum: bool = False,
    csr: LatentCSR | None = None,
    check_range: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(F, d) = Σ over pairs of weights[n, j] · dense[n] into row indices[n, j]; optional column sums (F,) fp32.

    indices (N, k) int64 in [0, F); weights (N, k) float; dense (N, d) fp32/bf16/fp16; contiguous, one device.
    `csr` reuses a layout from `latent_csr(indices, F)`. Every output row is written (zeros for latents that
    never fired). `check_range`: verify the index range first (one host sync).
    """
    if indices.dim() != 2:
        raise ValueError(f"indices must have shape (N, k), got {tuple(indices.shape)}")
    n, k = indices.shape
    check_tensor("indices", indices, (n, k), (torch.int64,))
    check_tensor("weights", weights, (n, k), (*FLOAT_DTYPES, torch.float64))
    if dense.dim() != 2 or dense.shape[0] != n:
        raise ValueError(f"dense must have shape ({n}, d), got {tuple(dense.shape)}")
    check_devices(indices=indices, weights=weights, dense=dense)
    if check_range:
        check_index_range("indices", indices, num_latents)
    rows = torch.arange(n, device=dense.device).repeat_interleave(k)
    return sparse_transpose_pairs(
        indices.reshape(-1), rows, weights.reshape(-1), dense, num_latents,
        out_dtype=out_dtype, with_colsum=with_colsum, csr=csr, check_range=False,
    )  # fmt: skip
