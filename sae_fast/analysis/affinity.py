"""Affinities between latents, the graphs that candidate subspaces are clustered on.

From a (N tokens, n latents) 0/1 firing matrix: co-firing (``|i and j fire together| / min(|i|, |j|)``) and the
phi correlation clipped at 0, dense (small n) or sparse (only pairs that co-fire are stored); from unit decoder
rows: |cos| to each row's nearest neighbours. Used by :func:`sae_fast.analysis.candidates.cluster_latents`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._common import ArrayLike


def coactivation_affinity(fires: ArrayLike) -> np.ndarray:
    """(n, n) co-firing affinity from a boolean firing matrix (N tokens, n latents)."""
    f = np.asarray(fires, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"fires must be (N, n), got shape {f.shape}")
    both = f.T @ f
    count = np.diag(both).copy()
    denom = np.minimum.outer(count, count)
    with np.errstate(invalid="ignore", divide="ignore"):
        aff = np.where(denom > 0, both / np.maximum(denom, 1), 0.0)
    np.fill_diagonal(aff, 1.0)
    return aff


def correlation_affinity(fires: ArrayLike) -> np.ndarray:
    """(n, n) Pearson correlation (phi coefficient) of the latents' firing indicators, clipped at 0."""
    f = np.asarray(fires, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"fires must be (N, n), got shape {f.shape}")
    p = f.mean(axis=0)
    cov = (f.T @ f) / f.shape[0] - np.outer(p, p)
    sd = np.sqrt(np.clip(p * (1 - p), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(np.outer(sd, sd) > 0, cov / np.outer(sd, sd), 0.0)
    corr = np.clip(corr, 0.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    return corr


def _sparse_fires(fires: ArrayLike, n: int) -> sp.csr_matrix:
    f = sp.csr_matrix(np.asarray(fires) if not sp.issparse(fires) else fires)
    if f.shape[1] != n:
        raise ValueError(f"fires must have shape (N, {n}), got {f.shape}")
    f = f.astype(np.float64)
    f.eliminate_zeros()
    f.data[:] = 1.0
    return f


def sparse_firing_affinity(fires: ArrayLike, kind: str = "correlation") -> sp.csr_matrix:
    """(n, n) sparse firing affinity from a (N, n) 0/1 firing matrix (dense or sparse): ``"correlation"`` (phi
    coefficient clipped at 0) or ``"coactivation"`` (both / min). Only pairs that fire together at least once
    are stored; every other pair has affinity exactly 0 in both kinds. Memory O(nnz of fires^T fires)."""
    f = _sparse_fires(fires, fires.shape[1])
    N = f.shape[0]
    both = (f.T @ f).tocoo()
    count = np.asarray(f.sum(axis=0)).ravel()
    i, j, c = both.row, both.col, both.data
    if kind == "correlation":
        p = count / N
        sd = np.sqrt(np.clip(p * (1 - p), 0.0, None))
        den = sd[i] * sd[j]
        with np.errstate(invalid="ignore", divide="ignore"):
            val = np.where(den > 0, (c / N - p[i] * p[j]) / den, 0.0)
    elif kind == "coactivation":
        den = np.minimum(count[i], count[j])
        val = np.where(den > 0, c / np.maximum(den, 1), 0.0)
    else:
        raise ValueError(f"kind must be 'correlation' or 'coactivation', got {kind!r}")
    val = np.clip(val, 0.0, 1.0)
    keep = (val > 0) & (i != j)
    return sp.csr_matrix((val[keep], (i[keep], j[keep])), shape=both.shape)


def cosine_neighbour_affinity(rows: np.ndarray, neighbours: int = 32) -> sp.csr_matrix:
    """(n, n) sparse |cos| between unit rows, kept for each row's ``neighbours`` nearest others (symmetrised:
    a pair is kept when either holds the other). Pairs outside every top-m list count as 0, which is exact for
    a clustering threshold above the m-th neighbour's |cos|. Memory O(n·m)."""
    from ..matching import match

    n = rows.shape[0]
    m = min(neighbours + 1, n)
    res = match(rows, rows, k=m, backend="exact", absolute=True, device="cpu")
    idx, cos = res.index_ab.numpy(), res.cos_ab.numpy().astype(np.float64)
    i = np.repeat(np.arange(n), m)
    keep = (idx.ravel() >= 0) & (idx.ravel() != i)
    a = sp.csr_matrix((np.clip(cos.ravel()[keep], 0.0, 1.0), (i[keep], idx.ravel()[keep])), shape=(n, n))
    return a.maximum(a.T).tocsr()
