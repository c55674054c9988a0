"""Firing data kept sparse: each seed's positive codes on the held-out rows as a CSR matrix (N × F).

Built from any architecture's code (:mod:`.codes`): a TopK SAE's (values, indices), N·k entries at most, or a
ReLU / JumpReLU / gated SAE's sparse (N, F) code, nnz entries. Frequencies, co-activation and the candidates'
firing affinities are computed from it; no dense (N × F) array is ever formed. Memory: O(nnz) for the codes,
plus one batch's pre-activations O(batch·F) while encoding.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp
import torch

from .codes import SparseCoder, positive_entries
from .masking import num_latents_of


@torch.no_grad()
def sparse_codes(sae: SparseCoder, batches: Iterable[torch.Tensor]) -> sp.csr_matrix:
    """(N, F) float32 CSR of the positive activations of ``sae`` (any architecture) over a stream of (batch, d)
    rows: a TopK SAE's positive top-k values, another SAE's positive sparse code.

    Memory: O(nnz) for the result (N·k at most for TopK) plus one batch's encoding, O(batch·F)."""
    F = num_latents_of(sae)
    data, cols, counts = [], [], []
    for xb in batches:
        rows, latents, values = (t.cpu() for t in positive_entries(sae.encode(xb), F))
        data.append(values.float().numpy())
        cols.append(latents.numpy().astype(np.int32))
        counts.append(torch.bincount(rows, minlength=xb.shape[0]).numpy())
    if not counts:
        raise ValueError("no activation rows to encode")
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    codes = sp.csr_matrix((np.concatenate(data), np.concatenate(cols), indptr), shape=(len(indptr) - 1, F))
    codes.sort_indices()
    return codes


def frequency_from_codes(codes: sp.csr_matrix) -> np.ndarray:
    """(F,) float64 share of rows on which each latent fires (a positive value in the code). Memory O(F)."""
    counts = np.bincount(codes.indices, minlength=codes.shape[1]).astype(np.float64)
    return counts / max(codes.shape[0], 1)


def firing_indicator(codes: sp.csr_matrix, rows: int | None = None, columns: np.ndarray | None = None
                     ) -> sp.csr_matrix:
    """(rows, n) float64 CSR of 0/1 firing, first ``rows`` rows, ``columns`` (latent indices) only.
    Memory O(nnz)."""
    f = codes[:rows] if rows is not None else codes
    if columns is not None:
        f = f[:, np.asarray(columns, dtype=np.int64)]
    f = f.astype(np.float64)
    f.data[:] = 1.0
    return f.tocsr()


def save_codes(codes: sp.csr_matrix, path: str) -> None:
    """Write the codes as an .npz (scipy's sparse format)."""
    sp.save_npz(path, codes, compressed=False)


def load_codes(path: str) -> sp.csr_matrix:
    """Read what :func:`save_codes` wrote."""
    return sp.load_npz(path).tocsr()
