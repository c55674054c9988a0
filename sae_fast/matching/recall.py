"""Recall@1 of an approximate (faiss IVF/HNSW/CAGRA) search against the exact float32 top-1."""

from __future__ import annotations

import numpy as np
import torch

from .exact import default_blocks, topk_sweep
from .faiss_index import FaissIndex
from .result import Match
from .rows import ArrayLike, as_unit_rows

DEFAULT_RECALL_SAMPLE = 1000  # rows sampled for recall@1 of an approximate index, unless told otherwise


def sampled_recall(A: ArrayLike, index: FaissIndex, idx: torch.Tensor, cos: torch.Tensor, n: int,
                    absolute: bool) -> float:
    """recall@1 of an approximate search on n random rows of A (fixed seed) against the exact float32 top-1."""
    a = A if isinstance(A, torch.Tensor) else torch.from_numpy(np.asarray(A))
    rows = torch.randperm(a.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    q = as_unit_rows("A", a[rows.to(a.device)], "cpu")
    blocks = default_blocks(torch.device("cpu"), q.shape[0], index.n)
    best, best_j, _, _ = topk_sweep(q, index.rows, 1, False, absolute, *blocks)
    same = (idx[rows, 0] == best_j[:, 0]) | (cos[rows, 0] >= best[:, 0] - 1e-6)
    return float(same.float().mean())


def recall_at_1(approx: Match, exact: Match) -> float:
    """Fraction of rows of A whose top-1 in ``approx`` equals the top-1 in ``exact`` (or ties it in cosine)."""
    same = approx.index_ab[:, 0] == exact.index_ab[:, 0]
    tie = approx.cos_ab[:, 0] >= exact.cos_ab[:, 0] - 1e-6
    return float((same | tie).float().mean())

