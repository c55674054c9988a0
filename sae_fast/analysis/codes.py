"""The analyses' view of an SAE's codes, whatever its architecture (:class:`sae_fast.formats.SparseCoder`).

A TopK SAE encodes to ``(values (N, k), indices (N, k))``; ReLU, JumpReLU, gated and BatchTopK SAEs encode to a
sparse COO tensor (N, F). :func:`positive_entries` turns either into the (row, latent, value) triples of the
positive activations, :func:`mask_code` zeroes a set of latents in either form (decode it with
``sae.decode(*as_args(code))``), and :func:`fixed_k` says whether an SAE has a fixed number of active latents
per row (TopK) — the analyses that assume one (the k/F baseline, pooling's TopK refit) read it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..formats.protocol import SparseCoder, architecture_of, as_args, to_sparse

__all__ = ["TOPK_ONLY", "SparseCoder", "as_args", "fixed_k", "mask_code", "positive_entries", "topk_only_note"]

TOPK_ONLY = "topk"
"""the architecture the fixed-k analyses need"""


def fixed_k(sae: Any) -> int | None:
    """The SAE's fixed number of active latents per row (a TopK SAE's ``k``), or None for other architectures."""
    k = getattr(sae, "k", None)
    return int(k) if architecture_of(sae) == TOPK_ONLY and k is not None else None


def topk_only_note(sae: Any, what: str) -> str | None:
    """None for a TopK SAE, else the sentence the report shows for an analysis (``what``) that needs a fixed k."""
    if fixed_k(sae) is not None:
        return None
    return (f"{what} assumes a TopK SAE (a fixed k active latents per row); these seeds are "
            f"{architecture_of(sae)!r} SAEs, so it is not computed for them")


def positive_entries(code: Any, num_latents: int) -> tuple[Tensor, Tensor, Tensor]:
    """(rows int64, latents int64, values) of the positive activations in a code from ``encode``, sorted by row.

    ``code``: ``(values (N, k), indices (N, k))`` or a sparse/dense (N, F) tensor with F = ``num_latents``.
    Memory: O(nnz) (the entries), on the code's device.
    """
    if isinstance(code, tuple):
        values, indices = code
        keep = values > 0
        rows = torch.arange(values.shape[0], device=values.device)[:, None].expand_as(values)[keep]
        return rows, indices[keep].to(torch.int64), values[keep]
    if not isinstance(code, Tensor) or code.dim() != 2 or code.shape[1] != num_latents:
        raise ValueError(f"an SAE code must be (values, indices) or an (N, {num_latents}) tensor, got "
                         f"{tuple(code.shape) if isinstance(code, Tensor) else type(code).__name__}")
    sparse = to_sparse(code, num_latents)
    idx, vals = sparse.indices(), sparse.values()
    keep = vals > 0
    return idx[0, keep], idx[1, keep], vals[keep]


def mask_code(code: Any, masked: Tensor) -> Any:
    """The code with the latents where ``masked`` (F,) bool is True set to zero (no re-selection); same form.

    Memory: O(nnz) for a sparse code, O(N·k) for a TopK code.
    """
    if isinstance(code, tuple):
        values, indices = code
        return values * (~masked[indices]).to(values.dtype), indices
    sparse = code.coalesce() if code.is_sparse else code.to_sparse().coalesce()
    idx, vals = sparse.indices(), sparse.values()
    kept = vals * (~masked[idx[1]]).to(vals.dtype)
    return torch.sparse_coo_tensor(idx, kept, sparse.shape, is_coalesced=True, check_invariants=False)
