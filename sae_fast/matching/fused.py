"""The fused path of the exact backend: the Triton GEMM + max kernel (``sae_fast.kernels.match_max``), top-1 only.

The kernel never writes a score tile; it returns each row's best and second-best low-precision score, the best
is re-scored in float32 and certified against the second best (near ties go through the candidate path of
:func:`sae_fast.matching.exact.exact_topk`). Memory: O(F_A + F_B) outputs plus the float32 re-scoring chunks.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .exact import LOW_PRECISION, exact_topk, rounding_tolerance


def _best_cos(q: torch.Tensor, db: torch.Tensor, idx: torch.Tensor, elements: int = 2**26) -> torch.Tensor:
    """Float32 cos(q[i], db[idx[i]]) for every row i; idx (n,) -> (n,), or (n, G) -> (n, G). Rows go in chunks of
    at most ``elements`` gathered values."""
    out = torch.empty(idx.shape, dtype=torch.float32, device=q.device)
    per_row = (idx.shape[1] if idx.ndim == 2 else 1) * q.shape[1]
    chunk = max(1, elements // per_row)
    for r0 in range(0, q.shape[0], chunk):
        rows = q[r0:r0 + chunk]
        out[r0:r0 + chunk] = ((rows.unsqueeze(1) if idx.ndim == 2 else rows) * db[idx[r0:r0 + chunk]]).sum(-1)
    return out


def fused_top1(
    a32: torch.Tensor,
    b32: torch.Tensor,
    both: bool,
    dtype: torch.dtype,
    candidates: int,
    tol: float | None,
    blocks: tuple[int, int],
    segment: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
    """Top-1 in both directions with the fused Triton kernel (sae_fast.kernels.match_max), which never writes the
    score tile and returns each row's best and second-best low-precision score. The best is re-scored in float32;
    a row is certified when that beats the second-best low-precision score by more than the rounding bound,
    others go through the candidate path of ``exact_topk``. ``segment``: as in ``topk_sweep``; rows (F_A, G, 1)."""
    if dtype not in LOW_PRECISION:
        raise ValueError(f"kernel='triton' needs dtype torch.bfloat16 or torch.float16 (tl.dot on float32 "
                         f"would use TF32), got {dtype}")
    if not a32.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError("kernel='triton' needs a CUDA device (on a CPU only under TRITON_INTERPRET=1, set before "
                         "sae_fast.kernels is imported); use kernel='torch'")
    from ..kernels.match_max import match_max  # lazy: it imports Triton (TRITON_INTERPRET must be set first)

    al, bl = a32.to(dtype).contiguous(), b32.to(dtype).contiguous()
    if tol is None:
        tol = rounding_tolerance(a32, al, b32, bl, output_low_precision=False)
    _, ri, r2, _, ci, c2 = match_max(al, bl, both=both, segment=segment)
    del al, bl
    info: dict[str, Any] = {"tolerance": tol, "candidates": max(candidates, 2), "kernel": "triton"}

    def certify(q, db, idx, second, seg=None):
        """idx, second: (n,), or (n, G) per segment of ``seg`` rows of db (local indices). Returns values and
        indices (n, 1) or (n, G, 1), and the number of (row, segment) picks recomputed."""
        wide = idx.ndim == 2
        idx = idx if wide else idx.unsqueeze(1)
        starts = torch.arange(idx.shape[1], device=idx.device) * (seg or 0)
        val = _best_cos(q, db, idx + starts)
        rows, segs = (val <= (second if wide else second.unsqueeze(1)) + tol).nonzero(as_tuple=True)
        for g in segs.unique().tolist():  # near ties: the candidate path against that segment only
            r = rows[segs == g]
            part = db[g * seg:(g + 1) * seg] if wide else db
            v, i, _, _, _ = exact_topk(q[r], part, 1, False, False, dtype, candidates, tol, blocks)
            val[r, g], idx[r, g] = v[:, 0], i[:, 0]
        return val.unsqueeze(-1) if wide else val, idx.unsqueeze(-1) if wide else idx, int(rows.numel())

    rv, ri, info["rescored_rows"] = certify(a32, b32, ri, r2, segment)
    cv = None
    if both:
        cv, ci, info["rescored_cols"] = certify(b32, a32, ci, c2)
    return rv, ri, cv, ci if both else None, info
