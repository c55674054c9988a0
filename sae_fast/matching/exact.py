"""The exact backend: tiles of ``A @ B.T`` folded into running top-k lists, low-precision tiles re-scored.

One pass over the tiles serves both directions (row top-k A -> B, column top-k B -> A); the whole F_A x F_B
score matrix is never held. Memory: one tile (2^23 float32 entries on CPU, 2^27 on GPU) plus the running
lists, O((F_A + F_B) m) for m candidates per row. Low-precision (float16/bfloat16) tiles keep ``m`` candidates
per row that are re-scored in float32 and certified against :func:`rounding_tolerance`; rows that are not
certified are recomputed in float32 against all of B.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from .._ext import has_extension

LOW_PRECISION = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}  # unit roundoff


def default_blocks(device: torch.device, fa: int, fb: int) -> tuple[int, int]:
    """Tile sizes (rows of A, rows of B) per score tile: 2^23 fp32 entries on CPU, 2^27 on GPU."""
    if device.type == "cuda":
        bm, budget = 8192, 2**27
    else:
        bm, budget = 2048, 2**23
    bm = min(bm, fa)
    return bm, max(1, min(fb, budget // bm))


def _scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T. CUDA with low-precision inputs: asks for a float32 result when torch supports it. CPU float32:
    numpy's BLAS (OpenBLAS in numpy wheels), measured ~30% faster than torch's CPU GEMM at these shapes."""
    if a.is_cuda:
        if a.dtype in LOW_PRECISION and _cuda_out_dtype_ok():
            return torch.mm(a, b.T, out_dtype=torch.float32)
        return a @ b.T
    if a.dtype == torch.float32 and a.device.type == "cpu" and not a.requires_grad:
        return torch.from_numpy(a.numpy() @ b.numpy().T)
    return a @ b.T


def _native_merge() -> Any:
    """The C++ extension when it has ``topk_merge`` (an older build may not), else None."""
    if not has_extension():
        return None
    from .. import _C

    return _C if hasattr(_C, "topk_merge") else None


def _cuda_out_dtype_ok() -> bool:
    from ..kernels._common import cuda_mm_fp32_out_ok  # lazy: it imports Triton

    return cuda_mm_fp32_out_ok()


def _merge(
    val: torch.Tensor, idx: torch.Tensor, s: torch.Tensor, offset: int, m: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Folds the top-m of score tile ``s`` along ``dim`` (index offset ``offset``) into a running top-m
    (val (n, m) float32 sorted descending, idx (n, m) int64). Earlier tiles win exact ties.

    CPU float32 tiles go to the C++ extension (``_C.topk_merge``: one comparison per score against the list's
    last entry, no sort of the tile; among equal scores the lower index wins); the torch code below is the
    fallback and the GPU path."""
    native = _native_merge()
    if native is not None and s.dtype == torch.float32 and s.device.type == "cpu" and s.is_contiguous():
        val, idx = val.clone(memory_format=torch.contiguous_format), idx.clone(memory_format=torch.contiguous_format)
        native.topk_merge(s.numpy(), val.numpy(), idx.numpy(), offset, dim == 0, torch.get_num_threads())
        return val, idx
    if m == 1 and dim == 0 and not s.is_cuda:
        # CPU, columns: the max value is cheap, the arg-max along dim 0 is not (strided); find the arg-max only
        # where the tile improves the running max (a fraction that shrinks as the sweep goes on). Not on GPU,
        # where nonzero() would sync the host.
        v = s.amax(dim=dim).float()
        better = (v > val[:, 0]).nonzero().flatten()
        if better.numel():
            j = s.index_select(1, better).argmax(dim=0)
            val, idx = val.clone(), idx.clone()
            val[better, 0] = v[better]
            idx[better, 0] = j + offset
        return val, idx
    if m == 1:
        if dim == 1 and s.dtype == torch.float32 and not s.is_cuda:
            # CPU, rows: numpy's arg-max along contiguous rows is ~3x faster than torch's max with indices (the
            # same first-of-equal-maxima rule)
            j = torch.from_numpy(s.numpy().argmax(axis=1))
            v = s.gather(1, j.unsqueeze(1)).squeeze(1)
        else:
            v, j = s.max(dim=dim)
            v = v.float()
        better = v > val[:, 0]
        return (torch.where(better, v, val[:, 0]).unsqueeze(1),
                torch.where(better, j + offset, idx[:, 0]).unsqueeze(1))
    mt = min(m, s.shape[dim])
    v, j = s.topk(mt, dim=dim)
    if dim == 0:
        v, j = v.T, j.T
    v = torch.cat([val, v.float()], dim=1)
    j = torch.cat([idx, j + offset], dim=1)
    top, order = v.topk(m, dim=1)
    return top, j.gather(1, order)


def _column_spans(fb: int, segment: int, block_cols: int) -> list[tuple[int, int]]:
    """Column tiles [j0, j1) over F_B rows of B that never straddle two segments of ``segment`` rows: whole
    segments per tile while they fit in ``block_cols``, else pieces of one segment."""
    if segment <= block_cols:
        step = (block_cols // segment) * segment
        return [(j0, min(j0 + step, fb)) for j0 in range(0, fb, step)]
    return [(g0 + c0, g0 + min(c0 + block_cols, segment)) for g0 in range(0, fb, segment)
            for c0 in range(0, segment, block_cols)]


def topk_sweep(
    a_mat: torch.Tensor,
    b_mat: torch.Tensor,
    m: int,
    both: bool,
    absolute: bool,
    block_rows: int,
    block_cols: int,
    segment: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One pass over the tiles of ``a_mat @ b_mat.T``: running top-m per row and (if ``both``) per column.

    Parameters
    ----------
    a_mat, b_mat : (F_A, d) and (F_B, d), of one dtype on one device.
    m : how many best entries each row (and column) keeps.
    both : also the running top-m of every column (B -> A).
    absolute : rank by |score|.
    block_rows, block_cols : the tile, block_rows x block_cols.
    segment : b_mat is G = F_B / segment dictionaries of ``segment`` rows stacked; the row results are then per
        dictionary, (F_A, G, min(m, segment)) with indices local to it (the column results are unchanged).

    Returns
    -------
    Row values (F_A, min(m, F_B)) float32 and row indices int64, and the column analogues (F_B, min(m, F_A)) or
    None.

    Memory: one tile (block_rows x block_cols) plus the running lists, O((F_A + F_B) m); never F_A x F_B.
    """
    fa, fb = a_mat.shape[0], b_mat.shape[0]
    seg = fb if segment is None else segment
    if seg <= 0 or fb % seg:
        raise ValueError(f"segment must divide the rows of B ({fb}), got {segment}")
    groups = fb // seg
    mr, mc = min(m, seg), min(m, fa)
    dev = a_mat.device
    row_val = torch.empty((fa, groups, mr), dtype=torch.float32, device=dev)
    row_idx = torch.empty((fa, groups, mr), dtype=torch.int64, device=dev)
    col_val = torch.full((fb, mc), -math.inf, dtype=torch.float32, device=dev) if both else None
    col_idx = torch.zeros((fb, mc), dtype=torch.int64, device=dev) if both else None
    spans = _column_spans(fb, seg, block_cols)
    for i0 in range(0, fa, block_rows):
        a = a_mat[i0:i0 + block_rows]
        r = a.shape[0]
        rv = torch.full((r, groups, mr), -math.inf, dtype=torch.float32, device=dev)
        ri = torch.zeros((r, groups, mr), dtype=torch.int64, device=dev)
        for j0, j1 in spans:
            s = _scores(a, b_mat[j0:j1])
            if absolute:
                s = s.abs_()
            g0, g1 = j0 // seg, (j1 - 1) // seg + 1
            ng = g1 - g0
            # (r, ng * width) -> (r * ng, width): one row per (row of A, dictionary) pair
            v, i = _merge(rv[:, g0:g1].reshape(r * ng, mr), ri[:, g0:g1].reshape(r * ng, mr),
                          s.reshape(r * ng, (j1 - j0) // ng), j0 - g0 * seg, mr, dim=1)
            rv[:, g0:g1], ri[:, g0:g1] = v.view(r, ng, mr), i.view(r, ng, mr)
            if both:
                col_val[j0:j1], col_idx[j0:j1] = _merge(col_val[j0:j1], col_idx[j0:j1], s, i0, mc, dim=0)
        row_val[i0:i0 + r] = rv
        row_idx[i0:i0 + r] = ri
    if segment is None:
        row_val, row_idx = row_val.squeeze(1), row_idx.squeeze(1)
    return row_val, row_idx, col_val, col_idx


def _rounding_error(x32: torch.Tensor, xl: torch.Tensor, chunk: int = 65536) -> float:
    """max over rows of ||x32 - float(xl)||_2, the actual input rounding error of each row."""
    err = 0.0
    for r0 in range(0, x32.shape[0], chunk):
        err = max(err, float((x32[r0:r0 + chunk] - xl[r0:r0 + chunk].float()).norm(dim=1).max()))
    return err


def rounding_tolerance(a32, al, b32, bl, output_low_precision: bool) -> float:
    """Upper bound on |cos_float32 - cos_low| for unit rows a, b and their rounded copies ã, b̃:
    |a·b - ã·b̃| <= ||a-ã|| + ||ã|| ||b-b̃|| (Cauchy-Schwarz), plus the rounding of the output when the
    score tile is stored in low precision, plus float32 accumulation over d terms (d 2^-24)."""
    ea, eb = _rounding_error(a32, al), _rounding_error(b32, bl)
    norm = (1 + ea) * (1 + eb)
    tol = ea + (1 + ea) * eb + a32.shape[1] * 2.0**-24 * norm
    if output_low_precision:
        tol += LOW_PRECISION[al.dtype] * norm
    return tol + 1e-6


def _rescore(
    q: torch.Tensor,
    db: torch.Tensor,
    cand_val: torch.Tensor,
    cand_idx: torch.Tensor,
    k: int,
    tol: float,
    absolute: bool,
    blocks: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Float32 top-k of each row of q among its low-precision candidates, certified against ``tol``;
    uncertified rows are recomputed in float32 against all of db. Returns (values, indices, n_recomputed)."""
    n, m = cand_idx.shape
    d = q.shape[1]
    out_val = torch.empty((n, k), dtype=torch.float32, device=q.device)
    out_idx = torch.empty((n, k), dtype=torch.int64, device=q.device)
    chunk = max(1, 2**26 // (m * d))
    for r0 in range(0, n, chunk):
        cand = cand_idx[r0:r0 + chunk]
        exact = torch.bmm(db[cand], q[r0:r0 + chunk].unsqueeze(2)).squeeze(2)
        if absolute:
            exact = exact.abs_()
        v, order = exact.topk(k, dim=1)
        out_val[r0:r0 + chunk], out_idx[r0:r0 + chunk] = v, cand.gather(1, order)
    if m >= db.shape[0]:
        return out_val, out_idx, 0  # every row of db was a candidate
    unsure = (out_val[:, k - 1] <= cand_val[:, m - 1] + tol).nonzero().flatten()
    if unsure.numel():
        v, i, _, _ = topk_sweep(q[unsure], db, k, False, absolute, *blocks)
        out_val[unsure], out_idx[unsure] = v, i
    return out_val, out_idx, int(unsure.numel())


def exact_topk(
    a32: torch.Tensor,
    b32: torch.Tensor,
    k: int,
    both: bool,
    absolute: bool,
    dtype: torch.dtype,
    candidates: int,
    tol: float | None,
    blocks: tuple[int, int],
    segment: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
    """Top-k by a tiled sweep, low-precision tiles re-scored in float32.

    Parameters
    ----------
    a32, b32 : checked unit rows (F_A, d), (F_B, d), float32 on the device.
    k, both, absolute : as for :func:`sae_fast.matching.match`.
    dtype : the tiles' dtype: float32, or bfloat16/float16 (then re-scored and certified).
    candidates : low-precision candidates kept per row before re-scoring.
    tol : the certification margin (default: the rounding bound of :func:`rounding_tolerance`).
    blocks : the tile (rows, columns).
    segment : as in :func:`topk_sweep`.

    Returns
    -------
    (row values, row indices, column values, column indices, info), shaped as by :func:`topk_sweep` with m = k.

    Memory: a low-precision copy of A and B, one tile, and O((F_A + F_B) max(k, candidates)) running lists.
    """
    if dtype == torch.float32:
        rv, ri, cv, ci = topk_sweep(a32, b32, k, both, absolute, *blocks, segment=segment)
        return rv, ri, cv, ci, {"rescored_rows": 0}
    if dtype not in LOW_PRECISION:
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    al, bl = a32.to(dtype), b32.to(dtype)
    output_low = not (a32.is_cuda and _cuda_out_dtype_ok())
    if tol is None:
        tol = rounding_tolerance(a32, al, b32, bl, output_low)
    m = max(candidates, k + 1)
    rv, ri, cv, ci = topk_sweep(al, bl, m, both, absolute, *blocks, segment=segment)
    del al, bl
    if segment is None:
        rv, ri, n_rows = _rescore(a32, b32, rv, ri, k, tol, absolute, blocks)
    else:
        per = [_rescore(a32, b32[g0:g0 + segment], rv[:, g], ri[:, g], k, tol, absolute, blocks)
               for g, g0 in enumerate(range(0, b32.shape[0], segment))]
        rv, ri = torch.stack([p[0] for p in per], 1), torch.stack([p[1] for p in per], 1)
        n_rows = sum(p[2] for p in per)
    n_cols = 0
    if both:
        cv, ci, n_cols = _rescore(b32, a32, cv, ci, k, tol, absolute, blocks[::-1])
    return rv, ri, cv, ci, {"rescored_rows": n_rows, "rescored_cols": n_cols, "tolerance": tol, "candidates": m}



@contextlib.contextmanager
def strict_cuda_matmul():
    """Float32 GEMMs in true float32 (no TF32) and float32 accumulation of fp16/bf16 GEMMs (no reduced-precision
    split-K reductions): the rounding bound of ``rounding_tolerance`` assumes both. Restores the flags after."""
    m = torch.backends.cuda.matmul
    names = ("allow_tf32", "allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction")
    old = {n: getattr(m, n) for n in names if hasattr(m, n)}
    try:
        for n in old:
            setattr(m, n, False)
        yield
    finally:
        for n, v in old.items():
            setattr(m, n, v)
