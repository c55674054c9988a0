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
    rounding-error bound (computed from the actual rounding of the inputs, see ``rounding_tolerance``);
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

Modules: ``rows`` (input check, unit rows), ``result`` (:class:`Match`), ``exact`` (tiled sweep and re-scoring),
``fused`` (the Triton GEMM + max path), ``faiss_index`` (:class:`FaissIndex`), ``recall`` (recall@1); this
module picks the backend and runs it (``match``, ``match_many``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from .exact import LOW_PRECISION, default_blocks, exact_topk, rounding_tolerance, strict_cuda_matmul, topk_sweep
from .faiss_index import (
    APPROXIMATE_KINDS,
    INDEX_KINDS,
    FaissIndex,
    default_nlist,
    faiss_available,
    faiss_has_cagra,
    faiss_has_gpu,
    import_faiss,
)
from .fused import fused_top1
from .recall import DEFAULT_RECALL_SAMPLE, recall_at_1, sampled_recall
from .result import Match
from .rows import ArrayLike, as_unit_rows

__all__ = [
    "APPROXIMATE_KINDS", "AUTO_FAISS_MIN_FLOP", "BACKENDS", "DEFAULT_RECALL_SAMPLE", "INDEX_KINDS", "LOW_PRECISION",
    "ArrayLike", "FaissIndex", "Match", "as_unit_rows", "choose_backend", "default_blocks", "default_nlist",
    "exact_topk", "faiss_available", "faiss_has_cagra", "faiss_has_gpu", "fused_top1", "import_faiss", "match",
    "match_many", "recall_at_1", "resolve_device", "rounding_tolerance", "sampled_recall", "strict_cuda_matmul",
    "topk_sweep",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "exact", "faiss")
# backend="auto" on a CPU: above this many flop (2 F_A F_B d) per pair, faiss IVF instead of the exact sweep.
# bench/RESULTS.md measures the CPU sweep at 30-56 GFLOP/s on 2 loaded cores (~130 quiet): 1e13 flop is about
# 3 minutes there, e.g. F = 2^17 at d = 768 (2.6e13) goes to IVF, F = 2^16 at d = 768 (6.6e12) stays exact.
AUTO_FAISS_MIN_FLOP = 1e13


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
    column indices, info, description); shapes as in ``topk_sweep`` (``segment`` included)."""
    dev = a32.device
    tile_dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    bm, bn = default_blocks(dev, a32.shape[0], b32.shape[0])
    tiles = (blocks[0] or bm, blocks[1] or bn)
    name = str(tile_dtype).replace("torch.", "")
    if kernel == "triton":
        if k != 1 or absolute:
            raise ValueError("kernel='triton' supports k = 1 and signed cosine only; use kernel='torch'")
        with strict_cuda_matmul():
            rv, ri, cv, ci, info = fused_top1(a32, b32, both, tile_dtype, candidates, tol, tiles, segment)
        desc = (f"exact: fused Triton GEMM+max kernel, {name} inputs, float32 accumulation, on {dev.type}, "
                "best re-scored in float32 and certified against the second best")
    elif kernel == "torch":
        with strict_cuda_matmul():
            rv, ri, cv, ci, info = exact_topk(a32, b32, k, both, absolute, tile_dtype, candidates, tol, tiles, segment)
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

    Parameters
    ----------
    A, B:
        Dictionaries (numpy arrays or torch tensors), one row per feature; rows are unit-normalised internally.
    k:
        Partners per row, best first.
    both:
        Also the top-k rows of A for every row of B (one sweep serves both directions on the exact backend).
    backend:
        ``auto`` | ``exact`` | ``faiss`` (see the module docstring).
    absolute:
        Rank by |cos| (a row and its negation are the same feature) and return |cos|.
    device, dtype, candidates, tol, block_rows, block_cols:
        Exact backend: the device (default: CUDA when available); the score tiles' dtype (default float32 on
        CPU, float16 on CUDA: the same tensor-core speed as bfloat16 and 8x smaller rounding for unit rows, so far
        fewer rows need re-scoring; low-precision results are re-scored so the top-k is the float32 one); the
        low-precision candidates kept per row before re-scoring; the certification margin (default: a rounding
        bound computed from the inputs); the tile, ``block_rows`` x ``block_cols``.
    index, nlist, nprobe, index_a, index_b:
        faiss backend: the index kind (default ``flat``; ``ivf`` when ``auto`` picks faiss by size), its IVF
        lists and the lists searched (a prebuilt index's own nprobe is restored afterwards), or prebuilt indexes:
        ``index_b`` is searched with A, ``index_a`` with B.
    recall_sample:
        For an approximate index, recall@1 against the exact float32 top-1 on that many random rows (default
        min(1000, F); 0 disables): A -> B in ``info["recall_at_1"]`` and, with ``both``, B -> A in
        ``info["recall_at_1_ba"]``.
    normalize:
        False (exact backend) trusts that A and B are already checked unit-norm float32 rows on the device and
        skips the checks and the copy.
    kernel:
        ``torch`` (tiled torch GEMM + running top-k) or ``triton`` (fused GEMM + max kernel: k = 1, signed cosine,
        bfloat16/float16 tiles; CUDA, or CPU under TRITON_INTERPRET=1).
    verbose:
        Also print what ran to stderr.

    Returns
    -------
    A :class:`Match` with CPU tensors; ``Match.backend`` says what ran, ``Match.info`` how long it took and why
    that backend was picked.

    Memory (exact backend): the unit rows of A and B in float32 plus one score tile (2^23 entries on CPU, 2^27
    on GPU) and O((F_A + F_B) max(k, candidates)) running lists; never the F_A x F_B matrix.
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
        result = _match_exact(A, B, k, both, absolute, dev, normalize, dtype, candidates, tol,
                              (block_rows, block_cols), kernel)
    else:
        result = _match_faiss(A, B, k, both, absolute, index, nlist, nprobe, index_a, index_b, recall_sample)
    fa, fb, d = result.info.pop("_shape")
    seconds = time.perf_counter() - t0
    result.info.update(seconds=seconds, flop=2.0 * fa * fb * d, picked=chosen, picked_reason=reason)
    msg = f"match: backend={backend!r} -> {result.backend} ({fa}x{fb}, d={d}, {seconds:.3f} s)"
    log.info(msg)
    if verbose:
        print(msg, file=sys.stderr)
    return result


def _match_exact(A: ArrayLike, B: ArrayLike, k: int, both: bool, absolute: bool, dev: torch.device, normalize: bool,
                 dtype: torch.dtype | None, candidates: int, tol: float | None, blocks: tuple[int | None, int | None],
                 kernel: str) -> Match:
    """``match`` on the exact backend (arguments as there); ``info["_shape"]`` holds (F_A, F_B, d)."""
    if normalize:
        a32, b32 = as_unit_rows("A", A, dev), as_unit_rows("B", B, dev)
    else:
        a32, b32 = A, B
    if a32.shape[1] != b32.shape[1]:
        raise ValueError(f"A and B must have the same d, got A {tuple(a32.shape)} and B {tuple(b32.shape)}")
    if k > b32.shape[0] or (both and k > a32.shape[0]):
        raise ValueError(f"k = {k} exceeds the rows of B ({b32.shape[0]}) or, with both, of A ({a32.shape[0]})")
    rv, ri, cv, ci, info, desc = _exact_backend(a32, b32, k, both, absolute, dtype, candidates, tol, blocks, kernel)
    info["_shape"] = (a32.shape[0], b32.shape[0], a32.shape[1])
    return Match(ri.cpu(), rv.cpu(), ci.cpu() if both else None, cv.cpu() if both else None, desc, absolute, info)


def _match_faiss(A: ArrayLike, B: ArrayLike, k: int, both: bool, absolute: bool, index: str, nlist: int | None,
                 nprobe: int | None, index_a: FaissIndex | None, index_b: FaissIndex | None,
                 recall_sample: int | None) -> Match:
    """``match`` on the faiss backend (arguments as there); ``info["_shape"]`` holds (F_A, F_B, d)."""
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
    fa, fb = idx_ab.shape[0], ib.n
    info: dict[str, Any] = {"build_seconds": ib.build_seconds + (ia.build_seconds if ia is not None and both else 0.0),
                            "_shape": (fa, fb, ib.d)}
    if ib.kind in APPROXIMATE_KINDS:
        n = min(DEFAULT_RECALL_SAMPLE if recall_sample is None else recall_sample, fa)
        if n > 0:
            info["recall_at_1"] = sampled_recall(A, ib, idx_ab, cos_ab, n, absolute)
            info["recall_rows"] = n
            if both and ia.kind in APPROXIMATE_KINDS:
                info["recall_at_1_ba"] = sampled_recall(B, ia, idx_ba, cos_ba, min(n, fb), absolute)
    return Match(idx_ab, cos_ab, idx_ba, cos_ba, desc, absolute, info)


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
    once: this is how a stability run batches seeds.

    Parameters
    ----------
    A:
        The query dictionary (F_A, d).
    Bs:
        G dictionaries of one shape (F_B, d), or one (G * F_B, d) tensor holding them stacked.
    segment:
        With a stacked tensor: F_B, the rows of one dictionary (``normalize=False`` then trusts that its rows are
        checked unit-norm float32 on the device, as for :func:`match`).
    k, both, absolute, device, dtype, candidates, tol, block_rows, block_cols, kernel, normalize:
        As for :func:`match`.

    Returns
    -------
    One :class:`Match` per dictionary, equal to what :func:`match` gives for that pair (indices local to the
    dictionary).

    Memory: the stacked unit rows (G F_B d float32) plus the tile and running lists of :func:`match`.
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

