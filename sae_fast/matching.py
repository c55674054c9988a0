"""Top-k cosine matching between the rows of two dictionaries, in one sweep over tiles of the score matrix.

``match(A, B)`` finds, for every row of A (shape (F_A, d)), the k rows of B (shape (F_B, d)) with the largest
cosine similarity, and optionally the same from B to A. Rows are unit-normalised internally (float32).

Backends
--------
``exact``
    Tiles of ``A @ B.T`` are computed one at a time (never the whole F_A x F_B matrix) and folded into a
    running row top-k (A -> B) and a running column top-k (B -> A), so one pass over the tiles serves both
    directions. CPU: float32 tiles. GPU: float16 (default) or bfloat16 tiles with float32 accumulation; each
    row keeps ``candidates`` low-precision candidates, which are then re-scored in float32. A row is certified
    when its float32 k-th best candidate beats the low-precision score of the last candidate by more than a
    rounding-error bound (computed from the actual rounding of the inputs, see ``_rounding_tolerance``);
    rows that are not certified (near ties) are recomputed in float32 against all of B. The returned indices
    are therefore the float32 top-k and the returned cosines are float32 cosines.
``faiss``
    A faiss index over B (and over A when both directions are asked): ``flat`` (IndexFlatIP, exact),
    ``ivf`` (IndexIVFFlat), ``ivf_sq`` (IVF with an fp16 scalar quantiser), ``hnsw`` (IndexHNSWFlat, CPU only),
    ``cagra`` (GpuIndexCagra, the cuVS graph index: only in GPU faiss builds with cuVS). GPU faiss is used when
    the installed faiss has GPU support and a GPU is visible. Build an index once with
    :class:`FaissIndex` and pass it as ``index_b`` to reuse it against many dictionaries. Returned cosines
    are re-scored in float32 for the returned indices.
``auto``
    ``faiss`` when a prebuilt index is passed; on CUDA ``exact`` (the tensor-core sweep does both directions
    of (2^17, 2048) in 135 ms where faiss ``knn_gpu`` needs 156 ms for one, issue 6 anchors); on a CPU an IVF
    index with sampled recall@1 when the sweep would cost more than ``AUTO_FAISS_MIN_FLOP`` (2 F_A F_B d) and
    faiss is installed, else ``exact``. What was picked is in ``Match.backend``, ``info["picked"]`` (and why
    in ``info["picked_reason"]``) and is logged at INFO level.

``absolute=True`` ranks by |cos| (a row and its negation count as the same feature) and returns |cos|.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

ArrayLike = Any  # numpy array or torch tensor of shape (F, d)

BACKENDS = ("auto", "exact", "faiss")
INDEX_KINDS = ("flat", "ivf", "ivf_sq", "hnsw", "cagra")
_LOW_PRECISION = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}  # unit roundoff
APPROXIMATE_KINDS = ("ivf", "ivf_sq", "hnsw", "cagra")
# backend="auto" on a CPU: above this many flop (2 F_A F_B d) per pair, faiss IVF instead of the exact sweep.
# bench/RESULTS.md measures the CPU sweep at 30-56 GFLOP/s on 2 loaded cores (~130 quiet): 1e13 flop is about
# 3 minutes there, e.g. F = 2^17 at d = 768 (2.6e13) goes to IVF, F = 2^16 at d = 768 (6.6e12) stays exact.
AUTO_FAISS_MIN_FLOP = 1e13
DEFAULT_RECALL_SAMPLE = 1000  # rows sampled for recall@1 of an approximate index, unless told otherwise


@dataclass
class Match:
    """Top-k matches between the rows of A and the rows of B.

    index_ab: (F_A, k) int64, for row i of A the rows of B with the k largest cosines, best first
        (-1 where an approximate index returned fewer than k results).
    cos_ab: (F_A, k) float32, those cosines computed in float32 (|cos| when ``absolute``; -inf where index is -1).
    index_ba, cos_ba: (F_B, k), the same from B to A; None unless ``both=True``.
    backend: what ran, in words (e.g. ``"exact: torch float32 tiles 1024x16384 on cpu"``).
    info: numbers about the run: ``seconds``, ``rescored_rows`` (rows recomputed in float32), ``flop`` ...
    """

    index_ab: torch.Tensor
    cos_ab: torch.Tensor
    index_ba: torch.Tensor | None
    cos_ba: torch.Tensor | None
    backend: str
    absolute: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def best_ab(self) -> torch.Tensor:
        """(F_A,) best cosine of each row of A in B."""
        return self.cos_ab[:, 0]

    @property
    def best_ba(self) -> torch.Tensor:
        """(F_B,) best cosine of each row of B in A (needs ``both=True``)."""
        if self.cos_ba is None:
            raise ValueError("this Match was computed with both=False; call match(..., both=True)")
        return self.cos_ba[:, 0]

    def mutual(self, theta: float | None = None) -> torch.Tensor:
        """(F_A,) bool: row i of A and its best row j of B are each other's nearest neighbour (and, when
        ``theta`` is given, their cosine is >= theta). Needs ``both=True``. A 1:1 partial matching."""
        if self.index_ba is None:
            raise ValueError("mutual nearest neighbours need both directions; call match(..., both=True)")
        j = self.index_ab[:, 0]
        ok = j >= 0
        back = torch.full_like(j, -1)
        back[ok] = self.index_ba[j[ok], 0]
        out = ok & (back == torch.arange(j.numel()))
        if theta is not None:
            out &= self.cos_ab[:, 0] >= theta
        return out


# ----------------------------------------------------------------------------------------------------------
# input checks


def as_unit_rows(name: str, x: ArrayLike, device: torch.device | str | None = None) -> torch.Tensor:
    """Checks a dictionary (2-D, floating, finite, no zero rows) and returns its unit-normalised rows as a
    float32 tensor on ``device`` (default: where it is). Raises ValueError/TypeError naming ``name``."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        raise TypeError(f"{name} must be a torch tensor or numpy array of shape (F, d), got {type(x).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point (float32/float64/bfloat16/float16), got {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (F, d), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    if device is not None:
        t = t.to(device)
    t = t.to(torch.float32)
    bad = ~torch.isfinite(t).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        raise ValueError(f"{name} has {rows.numel()} rows with NaN or inf (first: row {int(rows[0])})")
    norms = t.norm(dim=1, keepdim=True)
    zero = (norms == 0).flatten()
    if bool(zero.any()):
        rows = zero.nonzero().flatten()
        raise ValueError(f"{name} has {rows.numel()} zero rows (first: row {int(rows[0])}); cosine is undefined")
    return t / norms


# ----------------------------------------------------------------------------------------------------------
# exact backend: tiled GEMM with running top-k in both directions


def _default_blocks(device: torch.device, fa: int, fb: int) -> tuple[int, int]:
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
        if a.dtype in _LOW_PRECISION and _cuda_out_dtype_ok():
            return torch.mm(a, b.T, out_dtype=torch.float32)
        return a @ b.T
    if a.dtype == torch.float32 and a.device.type == "cpu" and not a.requires_grad:
        return torch.from_numpy(a.numpy() @ b.numpy().T)
    return a @ b.T


def _cuda_out_dtype_ok() -> bool:
    from .kernels._common import cuda_mm_fp32_out_ok  # lazy: it imports Triton

    return cuda_mm_fp32_out_ok()


def _merge(
    val: torch.Tensor, idx: torch.Tensor, s: torch.Tensor, offset: int, m: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Folds the top-m of score tile ``s`` along ``dim`` (index offset ``offset``) into a running top-m
    (val (n, m) float32 sorted descending, idx (n, m) int64). Earlier tiles win exact ties."""
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


def _topk_sweep(
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

    a_mat (F_A, d), b_mat (F_B, d) of one dtype on one device. Returns row values (F_A, min(m, F_B)) float32,
    row indices int64, and the column analogues (F_B, min(m, F_A)) or None. ``segment``: b_mat is G = F_B /
    segment dictionaries of ``segment`` rows stacked; the row results are then per dictionary, (F_A, G,
    min(m, segment)) with indices local to it (the column results are unchanged).
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


def _rounding_tolerance(a32, al, b32, bl, output_low_precision: bool) -> float:
    """Upper bound on |cos_float32 - cos_low| for unit rows a, b and their rounded copies ã, b̃:
    |a·b - ã·b̃| <= ||a-ã|| + ||ã|| ||b-b̃|| (Cauchy-Schwarz), plus the rounding of the output when the
    score tile is stored in low precision, plus float32 accumulation over d terms (d 2^-24)."""
    ea, eb = _rounding_error(a32, al), _rounding_error(b32, bl)
    norm = (1 + ea) * (1 + eb)
    tol = ea + (1 + ea) * eb + a32.shape[1] * 2.0**-24 * norm
    if output_low_precision:
        tol += _LOW_PRECISION[al.dtype] * norm
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
        v, i, _, _ = _topk_sweep(q[unsure], db, k, False, absolute, *blocks)
        out_val[unsure], out_idx[unsure] = v, i
    return out_val, out_idx, int(unsure.numel())


def _exact(
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
    """Top-k by a tiled sweep (see ``_topk_sweep``, also for ``segment``), low-precision tiles re-scored."""
    if dtype == torch.float32:
        rv, ri, cv, ci = _topk_sweep(a32, b32, k, both, absolute, *blocks, segment=segment)
        return rv, ri, cv, ci, {"rescored_rows": 0}
    if dtype not in _LOW_PRECISION:
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    al, bl = a32.to(dtype), b32.to(dtype)
    output_low = not (a32.is_cuda and _cuda_out_dtype_ok())
    if tol is None:
        tol = _rounding_tolerance(a32, al, b32, bl, output_low)
    m = max(candidates, k + 1)
    rv, ri, cv, ci = _topk_sweep(al, bl, m, both, absolute, *blocks, segment=segment)
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


def _exact_fused(
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
    others go through the candidate path of ``_exact``. ``segment``: as in ``_topk_sweep``; rows (F_A, G, 1)."""
    if dtype not in _LOW_PRECISION:
        raise ValueError(f"kernel='triton' needs dtype torch.bfloat16 or torch.float16 (tl.dot on float32 "
                         f"would use TF32), got {dtype}")
    if not a32.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError("kernel='triton' needs a CUDA device (on a CPU only under TRITON_INTERPRET=1, set before "
                         "sae_fast.kernels is imported); use kernel='torch'")
    from .kernels.match_max import match_max

    al, bl = a32.to(dtype).contiguous(), b32.to(dtype).contiguous()
    if tol is None:
        tol = _rounding_tolerance(a32, al, b32, bl, output_low_precision=False)
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
            v, i, _, _, _ = _exact(q[r], part, 1, False, False, dtype, candidates, tol, blocks)
            val[r, g], idx[r, g] = v[:, 0], i[:, 0]
        return val.unsqueeze(-1) if wide else val, idx.unsqueeze(-1) if wide else idx, int(rows.numel())

    rv, ri, info["rescored_rows"] = certify(a32, b32, ri, r2, segment)
    cv = None
    if both:
        cv, ci, info["rescored_cols"] = certify(b32, a32, ci, c2)
    return rv, ri, cv, ci if both else None, info


# ----------------------------------------------------------------------------------------------------------
# faiss backend


def _import_faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("backend='faiss' needs faiss: pip install 'sae_fast[faiss]' (faiss-cpu)") from err
    return faiss


def faiss_available() -> bool:
    """True when the module ``faiss`` can be imported."""
    try:
        _import_faiss()
    except ImportError:
        return False
    return True


def faiss_has_gpu() -> bool:
    """True when the installed faiss is a GPU build and sees at least one GPU."""
    if not faiss_available():
        return False
    faiss = _import_faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def faiss_has_cagra() -> bool:
    """True when the installed faiss is a GPU build with cuVS (``GpuIndexCagra``) and sees a GPU."""
    return faiss_has_gpu() and hasattr(_import_faiss(), "GpuIndexCagra")


def default_nlist(n: int) -> int:
    """IVF list count: about 4 sqrt(n), a power of two, with at least 39 training points per list."""
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return max(1, min(nlist, n // 39))


class FaissIndex:
    """A faiss inner-product index over the unit-normalised rows of one dictionary (F, d).

    Build it once and search it with many query dictionaries. ``kind``: ``flat`` (exact IndexFlatIP),
    ``ivf`` (IndexIVFFlat), ``ivf_sq`` (IVF, fp16 scalar quantiser), ``hnsw`` (IndexHNSWFlat, CPU only),
    ``cagra`` (GpuIndexCagra: GPU faiss with cuVS only, see :func:`faiss_has_cagra`).
    ``nlist`` (IVF lists, default ``default_nlist(F)``), ``nprobe`` (lists searched, default max(1, nlist/64)),
    ``hnsw_m`` / ``ef_construction`` / ``ef_search`` for HNSW; ``graph_degree`` / ``itopk_size`` for CAGRA.
    ``use_gpu``: None = when a GPU faiss is installed and a GPU is visible. ``threads``: OpenMP threads for faiss
    on CPU (None: faiss's default).
    """

    def __init__(
        self,
        x: ArrayLike,
        kind: str = "flat",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        graph_degree: int = 32,
        itopk_size: int = 64,
        use_gpu: bool | None = None,
        threads: int | None = None,
        seed: int = 0,
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
        faiss = _import_faiss()
        if threads is not None:
            faiss.omp_set_num_threads(int(threads))
        self.rows = as_unit_rows("x", x, device="cpu")
        xn = np.ascontiguousarray(self.rows.numpy())
        n, d = xn.shape
        self.kind, self.d, self.n = kind, d, n
        t0 = time.perf_counter()
        self._keep: list[Any] = []  # objects faiss indexes refer to
        self._search_params: Any = None
        if kind == "cagra":
            if use_gpu is False or not faiss_has_cagra():
                raise ValueError("index kind 'cagra' needs a GPU faiss built with cuVS (faiss.GpuIndexCagra) and a "
                                 "visible GPU; this faiss has none: use 'ivf' or 'flat'")
            res = faiss.StandardGpuResources()
            self._keep.append(res)
            config = faiss.GpuIndexCagraConfig()
            config.graph_degree = int(graph_degree)
            config.intermediate_graph_degree = 2 * int(graph_degree)
            index = faiss.GpuIndexCagra(res, d, faiss.METRIC_INNER_PRODUCT, config)
            self._search_params = faiss.SearchParametersCagra()
            self._search_params.itopk_size = max(int(itopk_size), 1)
            desc = f"GpuIndexCagra(graph_degree={graph_degree}, itopk_size={itopk_size})"
            use_gpu = False  # already on the GPU: no index_cpu_to_gpu below
            on_gpu = True
        elif kind == "flat":
            index = faiss.IndexFlatIP(d)
            desc = "IndexFlatIP"
        elif kind in ("ivf", "ivf_sq"):
            nlist = default_nlist(n) if nlist is None else int(nlist)
            if not 1 <= nlist <= n:
                raise ValueError(f"nlist must be in [1, {n}] (rows of x), got {nlist}")
            quantizer = faiss.IndexFlatIP(d)
            self._keep.append(quantizer)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFScalarQuantizer(
                    quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
                )
            index.cp.seed = seed
            nprobe = max(1, nlist // 64) if nprobe is None else int(nprobe)
            desc = f"{type(index).__name__}(nlist={nlist})"
        else:
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
            desc = f"IndexHNSWFlat(M={hnsw_m}, efConstruction={ef_construction}, efSearch={ef_search})"
        if kind != "cagra":
            if use_gpu is None:
                use_gpu = faiss_has_gpu() and kind != "hnsw"
            on_gpu = bool(use_gpu)
        if use_gpu:
            if kind == "hnsw":
                raise ValueError("HNSW has no GPU index in faiss; use kind='flat', 'ivf' or 'ivf_sq'")
            if not faiss_has_gpu():
                raise ValueError("use_gpu=True but the installed faiss has no GPU support or sees no GPU")
            res = faiss.StandardGpuResources()
            self._keep.append(res)
            index = faiss.index_cpu_to_gpu(res, 0, index)
        if kind in ("ivf", "ivf_sq", "cagra"):
            index.train(xn)  # CAGRA builds its graph here; its add() throws in some faiss versions
        if kind != "cagra":
            index.add(xn)
        self.nprobe = nprobe
        if nprobe is not None:
            self.set_nprobe(nprobe, index)
        self.index = index
        self.build_seconds = time.perf_counter() - t0
        self.description = f"faiss {desc} on {'gpu' if on_gpu else 'cpu'}"

    def set_nprobe(self, nprobe: int, index: Any = None) -> None:
        """Sets the number of IVF lists searched per query (IVF kinds only)."""
        if self.kind not in ("ivf", "ivf_sq"):
            raise ValueError(f"nprobe applies to IVF indexes, this one is {self.kind!r}")
        index = self.index if index is None else index
        if hasattr(index, "nprobe"):
            index.nprobe = int(nprobe)
        else:  # pragma: no cover - GPU index wrappers
            _import_faiss().GpuParameterSpace().set_index_parameter(index, "nprobe", int(nprobe))
        self.nprobe = int(nprobe)

    def search(self, q: ArrayLike, k: int = 1, *, absolute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k rows of this index for every row of q: (cosines (n, k) float32, indices (n, k) int64),
        cosines re-scored in float32; index -1 and cosine -inf where fewer than k results were found."""
        qn = as_unit_rows("q", q, device="cpu")
        if qn.shape[1] != self.d:
            raise ValueError(f"q must have d = {self.d} columns like the index, got shape {tuple(qn.shape)}")
        if not 1 <= k <= self.n:
            raise ValueError(f"k must be in [1, {self.n}] (rows in the index), got {k}")
        q_np = np.ascontiguousarray(qn.numpy())
        kw = {} if self._search_params is None else {"params": self._search_params}
        _, idx = self.index.search(q_np, k, **kw)
        idx = torch.from_numpy(idx).to(torch.int64)
        if absolute:
            _, idx_neg = self.index.search(np.ascontiguousarray(-q_np), k, **kw)
            idx = torch.cat([idx, torch.from_numpy(idx_neg).to(torch.int64)], dim=1)
        val = _gather_cos(qn, self.rows, idx, absolute)
        if absolute:  # merge the searches for q and -q, dropping duplicate indices
            dup = torch.zeros_like(idx, dtype=torch.bool)
            srt, order = idx.sort(dim=1)
            dup.scatter_(1, order[:, 1:], (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0))
            val = val.masked_fill(dup, -math.inf)
        val, order = val.topk(k, dim=1)
        idx = idx.gather(1, order)
        idx[torch.isinf(val)] = -1
        return val, idx


def _gather_cos(q: torch.Tensor, db: torch.Tensor, idx: torch.Tensor, absolute: bool) -> torch.Tensor:
    """Float32 cosines of q[i] with db[idx[i, j]]; -inf where idx is -1."""
    valid = idx >= 0
    safe = idx.clamp_min(0)
    out = torch.empty(idx.shape, dtype=torch.float32)
    chunk = max(1, 2**26 // (idx.shape[1] * q.shape[1]))
    for r0 in range(0, q.shape[0], chunk):
        out[r0:r0 + chunk] = torch.bmm(db[safe[r0:r0 + chunk]], q[r0:r0 + chunk].unsqueeze(2)).squeeze(2)
    if absolute:
        out = out.abs_()
    return out.masked_fill_(~valid, -math.inf)


# ----------------------------------------------------------------------------------------------------------
# public entry point


@contextlib.contextmanager
def _strict_cuda_matmul():
    """Float32 GEMMs in true float32 (no TF32) and float32 accumulation of fp16/bf16 GEMMs (no reduced-precision
    split-K reductions): the rounding bound of ``_rounding_tolerance`` assumes both. Restores the flags after."""
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


def resolve_device(device: torch.device | str | None, *xs: ArrayLike) -> torch.device:
    """The device to compute on: ``device`` if given, else that of a CUDA tensor input, else CUDA when
    available, else CPU."""
    if device is not None:
        return torch.device(device)
    for x in xs:
        if isinstance(x, torch.Tensor) and x.is_cuda:
            return x.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_backend(backend: str, device: torch.device, index_given: bool,
                   flop: float | None = None) -> tuple[str, str]:
    """Resolves ``auto`` to (backend, reason): ``faiss`` when a prebuilt index is given; ``exact`` on CUDA
    (faster than faiss there, see the module docstring); on a CPU ``faiss`` (IVF) when ``flop`` (2 F_A F_B d of
    one pair) exceeds ``AUTO_FAISS_MIN_FLOP`` and faiss is installed, else ``exact``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend, f"backend={backend!r} asked for"
    if index_given:
        return "faiss", "auto: a prebuilt faiss index was passed"
    if device.type == "cuda":
        return "exact", "auto: CUDA device, the tensor-core sweep beats faiss there"
    if flop is None or flop <= AUTO_FAISS_MIN_FLOP:
        size = "" if flop is None else f"{flop:.3g} flop <= {AUTO_FAISS_MIN_FLOP:.3g}, "
        return "exact", f"auto: {device.type}, {size}exact sweep"
    if not faiss_available():
        return "exact", f"auto: {flop:.3g} flop > {AUTO_FAISS_MIN_FLOP:.3g} on {device.type} but faiss is not installed"
    return "faiss", (f"auto: {flop:.3g} flop > {AUTO_FAISS_MIN_FLOP:.3g} on {device.type} and faiss installed: IVF "
                     "with sampled recall@1")


def _dims(x: ArrayLike) -> tuple[int, int] | None:
    """(F, d) of a 2-D array/tensor, else None (the checks come later)."""
    shape = getattr(x, "shape", None)
    return (int(shape[0]), int(shape[1])) if shape is not None and len(shape) == 2 else None


def _exact_backend(
    a32: torch.Tensor,
    b32: torch.Tensor,
    k: int,
    both: bool,
    absolute: bool,
    dtype: torch.dtype | None,
    candidates: int,
    tol: float | None,
    blocks: tuple[int | None, int | None],
    kernel: str,
    segment: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, Any], str]:
    """The exact backend on checked unit rows (device tensors): picks the tile dtype and size, runs the torch or
    Triton sweep, waits for the device, and describes what ran. Returns (row values, row indices, column values,
    column indices, info, description); shapes as in ``_topk_sweep`` (``segment`` included)."""
    dev = a32.device
    tile_dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    bm, bn = _default_blocks(dev, a32.shape[0], b32.shape[0])
    tiles = (blocks[0] or bm, blocks[1] or bn)
    name = str(tile_dtype).replace("torch.", "")
    if kernel == "triton":
        if k != 1 or absolute:
            raise ValueError("kernel='triton' supports k = 1 and signed cosine only; use kernel='torch'")
        with _strict_cuda_matmul():
            rv, ri, cv, ci, info = _exact_fused(a32, b32, both, tile_dtype, candidates, tol, tiles, segment)
        desc = (f"exact: fused Triton GEMM+max kernel, {name} inputs, float32 accumulation, on {dev.type}, "
                "best re-scored in float32 and certified against the second best")
    elif kernel == "torch":
        with _strict_cuda_matmul():
            rv, ri, cv, ci, info = _exact(a32, b32, k, both, absolute, tile_dtype, candidates, tol, tiles, segment)
        desc = f"exact: torch {name} tiles {tiles[0]}x{tiles[1]} on {dev.type}"
        if tile_dtype != torch.float32:
            desc += f", top-{info['candidates']} re-scored in float32"
    else:
        raise ValueError(f"kernel must be 'torch' or 'triton', got {kernel!r}")
    if dev.type == "cpu":
        desc += f", {torch.get_num_threads()} threads"
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return rv, ri, cv, ci, info, desc


def match(
    A: ArrayLike,
    B: ArrayLike,
    *,
    k: int = 1,
    both: bool = False,
    backend: str = "auto",
    absolute: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    candidates: int = 8,
    tol: float | None = None,
    block_rows: int | None = None,
    block_cols: int | None = None,
    index: str | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
    index_a: FaissIndex | None = None,
    index_b: FaissIndex | None = None,
    recall_sample: int | None = None,
    normalize: bool = True,
    kernel: str = "torch",
    verbose: bool = False,
) -> Match:
    """For every row of A (F_A, d), its top-k rows of B (F_B, d) by cosine; with ``both``, also B -> A.

    backend: ``auto`` | ``exact`` | ``faiss`` (see the module docstring). ``absolute``: rank by |cos|.
    Exact backend: ``device`` (default: CUDA when available), ``dtype`` of the score tiles (default float32
    on CPU, float16 on CUDA: same tensor-core speed as bfloat16 and 8x smaller rounding for unit-norm rows, so
    far fewer rows need re-scoring; low-precision results are re-scored so the top-k is the float32 one),
    ``candidates`` kept per row before re-scoring, ``tol`` the certification margin (default: a rounding
    bound computed from the inputs), ``block_rows`` x ``block_cols`` the tile. faiss backend: ``index`` kind
    (default ``flat``; ``ivf`` when ``auto`` picks faiss by size), ``nlist``, ``nprobe`` (a prebuilt index's own
    nprobe is restored afterwards), or prebuilt ``index_b`` (searched with A) and ``index_a`` (searched with B).
    ``recall_sample``: for an approximate index, recall@1 against the exact float32 top-1 on that many random
    rows (default min(1000, F); 0 disables), A -> B in ``info["recall_at_1"]`` and, with ``both``, B -> A in
    ``info["recall_at_1_ba"]``.
    ``kernel``: ``torch`` (tiled torch GEMM + running top-k) or ``triton`` (fused GEMM + max kernel, k = 1, signed
    cosine, bfloat16/float16 tiles; CUDA, or CPU under TRITON_INTERPRET=1). ``normalize=False`` (exact
    backend) trusts that A and B are already checked unit-norm float32 rows on the device and skips the checks
    and the copy. Returns a :class:`Match` with CPU tensors; ``Match.backend`` says what ran.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if recall_sample is not None and (not isinstance(recall_sample, int) or recall_sample < 0):
        raise ValueError(f"recall_sample must be a non-negative int or None, got {recall_sample!r}")
    dev = resolve_device(device, A, B)
    da, db = _dims(A), _dims(B)
    flop = 2.0 * da[0] * db[0] * da[1] if da is not None and db is not None else None
    chosen, reason = choose_backend(backend, dev, index_b is not None or index_a is not None, flop)
    if index is None:
        index = "ivf" if backend == "auto" and chosen == "faiss" and index_b is None else "flat"
    t0 = time.perf_counter()
    if chosen == "exact":
        if normalize:
            a32, b32 = as_unit_rows("A", A, dev), as_unit_rows("B", B, dev)
        else:
            a32, b32 = A, B
        if a32.shape[1] != b32.shape[1]:
            raise ValueError(f"A and B must have the same d, got A {tuple(a32.shape)} and B {tuple(b32.shape)}")
        if k > b32.shape[0] or (both and k > a32.shape[0]):
            raise ValueError(f"k = {k} exceeds the rows of B ({b32.shape[0]}) or, with both, of A ({a32.shape[0]})")
        rv, ri, cv, ci, info, desc = _exact_backend(a32, b32, k, both, absolute, dtype, candidates, tol,
                                                    (block_rows, block_cols), kernel)
        fa, fb, d = a32.shape[0], b32.shape[0], a32.shape[1]
        result = Match(ri.cpu(), rv.cpu(), ci.cpu() if both else None, cv.cpu() if both else None, desc, absolute, info)
    else:
        ia = index_a
        ib = index_b if index_b is not None else FaissIndex(B, index, nlist=nlist, nprobe=nprobe)
        if both and ia is None:
            ia = FaissIndex(A, index, nlist=nlist, nprobe=nprobe)
        given = {id(x): x for x in (ia, ib) if x is not None}.values()
        ivfs = [x for x in given if x.kind in ("ivf", "ivf_sq")]
        saved = [(ix, ix.nprobe) for ix in ivfs]
        try:
            if nprobe is not None:
                for ix in ivfs:
                    ix.set_nprobe(nprobe)
            cos_ab, idx_ab = ib.search(A, k, absolute=absolute)
            cos_ba = idx_ba = None
            if both:
                cos_ba, idx_ba = ia.search(B, k, absolute=absolute)
            desc = ib.description + (f", nprobe={ib.nprobe}" if ib.kind.startswith("ivf") else "")
        finally:  # a caller's index keeps its own nprobe
            for ix, old in saved:
                if old is not None and ix.nprobe != old:
                    ix.set_nprobe(old)
        fa, fb, d = idx_ab.shape[0], ib.n, ib.d
        info = {"build_seconds": ib.build_seconds + (ia.build_seconds if ia is not None and both else 0.0)}
        if ib.kind in APPROXIMATE_KINDS:
            n = min(DEFAULT_RECALL_SAMPLE if recall_sample is None else recall_sample, fa)
            if n > 0:
                info["recall_at_1"] = _sampled_recall(A, ib, idx_ab, cos_ab, n, absolute)
                info["recall_rows"] = n
                if both and ia.kind in APPROXIMATE_KINDS:
                    info["recall_at_1_ba"] = _sampled_recall(B, ia, idx_ba, cos_ba, min(n, fb), absolute)
        result = Match(idx_ab, cos_ab, idx_ba, cos_ba, desc, absolute, info)
    seconds = time.perf_counter() - t0
    result.info.update(seconds=seconds, flop=2.0 * fa * fb * d, picked=chosen, picked_reason=reason)
    msg = f"match: backend={backend!r} -> {result.backend} ({fa}x{fb}, d={d}, {seconds:.3f} s)"
    log.info(msg)
    if verbose:
        print(msg, file=sys.stderr)
    return result


def match_many(
    A: ArrayLike,
    Bs: Sequence[ArrayLike] | torch.Tensor,
    *,
    segment: int | None = None,
    k: int = 1,
    both: bool = False,
    absolute: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    candidates: int = 8,
    tol: float | None = None,
    block_rows: int | None = None,
    block_cols: int | None = None,
    kernel: str = "torch",
    normalize: bool = True,
) -> list[Match]:
    """``[match(A, B, ...) for B in Bs]`` (exact backend) in one sweep over A against all the Bs stacked.

    Many small score tiles become few large GEMMs (one Triton launch with ``kernel="triton"``) and A is read
    once: this is how a stability run batches seeds. Bs: G dictionaries of the same shape (F_B, d), or one
    (G * F_B, d) tensor holding them stacked with ``segment`` = F_B (``normalize=False`` then trusts that its
    rows are checked unit-norm float32 on the device, as for :func:`match`). Each returned :class:`Match`
    equals what :func:`match` gives for that pair (indices local to the dictionary); the other arguments are
    those of :func:`match`.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    t0 = time.perf_counter()
    if isinstance(Bs, torch.Tensor) and Bs.ndim == 2:
        if segment is None or segment <= 0 or Bs.shape[0] % segment:
            raise ValueError(f"a stacked Bs of shape {tuple(Bs.shape)} needs segment = the rows of one "
                             f"dictionary (dividing {Bs.shape[0]}), got {segment}")
        dev = resolve_device(device, A, Bs)
        stacked = as_unit_rows("Bs", Bs, dev) if normalize else Bs
    else:
        if not isinstance(Bs, Sequence) or not Bs:
            raise ValueError("Bs must be a non-empty sequence of (F_B, d) dictionaries or a stacked tensor")
        dev = resolve_device(device, A, *Bs)
        parts = [as_unit_rows(f"Bs[{g}]", b, dev) for g, b in enumerate(Bs)]
        shapes = sorted({tuple(b.shape) for b in parts})
        if len(shapes) > 1:
            raise ValueError(f"every dictionary in Bs must have one shape, got {shapes}")
        segment = parts[0].shape[0]
        stacked = torch.cat(parts) if len(parts) > 1 else parts[0]
        del parts
    a32 = as_unit_rows("A", A, dev) if normalize else A
    if a32.shape[1] != stacked.shape[1]:
        raise ValueError(f"A and Bs must have the same d, got A {tuple(a32.shape)} and rows of d = {stacked.shape[1]} "
                         "in Bs")
    if k > segment or (both and k > a32.shape[0]):
        raise ValueError(f"k = {k} exceeds the rows of a dictionary in Bs ({segment}) or, with both, of A "
                         f"({a32.shape[0]})")
    rv, ri, cv, ci, info, desc = _exact_backend(a32, stacked, k, both, absolute, dtype, candidates, tol,
                                                (block_rows, block_cols), kernel, segment)
    rv, ri = rv.cpu(), ri.cpu()
    cv, ci = (cv.cpu(), ci.cpu()) if both else (None, None)
    groups = stacked.shape[0] // segment
    seconds = time.perf_counter() - t0
    info.update(seconds=seconds, flop=2.0 * a32.shape[0] * stacked.shape[0] * a32.shape[1], picked="exact",
                dictionaries=groups)
    log.info("match_many: %s (%dx%d x %d, d=%d, %.3f s)", desc, a32.shape[0], segment, groups, a32.shape[1], seconds)
    out = []
    for g in range(groups):
        rows = slice(g * segment, (g + 1) * segment)
        out.append(Match(ri[:, g].contiguous(), rv[:, g].contiguous(), ci[rows] if both else None,
                         cv[rows] if both else None, desc, absolute, dict(info)))
    return out


def _sampled_recall(A: ArrayLike, index: FaissIndex, idx: torch.Tensor, cos: torch.Tensor, n: int,
                    absolute: bool) -> float:
    """recall@1 of an approximate search on n random rows of A (fixed seed) against the exact float32 top-1."""
    a = A if isinstance(A, torch.Tensor) else torch.from_numpy(np.asarray(A))
    rows = torch.randperm(a.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    q = as_unit_rows("A", a[rows.to(a.device)], "cpu")
    blocks = _default_blocks(torch.device("cpu"), q.shape[0], index.n)
    best, best_j, _, _ = _topk_sweep(q, index.rows, 1, False, absolute, *blocks)
    same = (idx[rows, 0] == best_j[:, 0]) | (cos[rows, 0] >= best[:, 0] - 1e-6)
    return float(same.float().mean())


def recall_at_1(approx: Match, exact: Match) -> float:
    """Fraction of rows of A whose top-1 in ``approx`` equals the top-1 in ``exact`` (or ties it in cosine)."""
    same = approx.index_ab[:, 0] == exact.index_ab[:, 0]
    tie = approx.cos_ab[:, 0] >= exact.cos_ab[:, 0] - 1e-6
    return float((same | tie).float().mean())

