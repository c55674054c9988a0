"""The `SparseCoder` protocol that every SAE sae_fast loads satisfies, and helpers over its sparse codes.

A TopK SAE (:class:`~sae_fast.sae.TopKSAE`) encodes to ``(values (N, k), indices (N, k))`` and decodes with
``decode(values, indices)``; the other architectures (:mod:`sae_fast.formats.architectures`) encode to a
sparse COO tensor (N, F) and decode with ``decode(code)``. ``coder.decode(*as_args(code))`` reconstructs
either; :func:`to_sparse` turns either code into a sparse (N, F) tensor.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["SparseCoder", "architecture_of", "as_args", "reconstruct", "to_sparse"]


@runtime_checkable
class SparseCoder(Protocol):
    """What the analyses need of an SAE, whatever its architecture.

    ``W_dec`` (F, d): one decoder direction per latent; ``d_in`` (d) and ``num_latents`` (F);
    ``architecture``: ``'topk'``, ``'relu'``, ``'jumprelu'``, ``'gated'``, ``'batchtopk'`` or
    ``'matryoshka_batchtopk'``; ``k``: the fixed number of active latents per row (TopK) or None.
    ``encode(x)`` (N, d) returns the architecture's own sparse code, ``decode(*as_args(code))`` the (N, d)
    reconstruction including the decoder bias.
    """

    W_dec: Tensor
    d_in: int
    num_latents: int

    def encode(self, x: Tensor) -> Any: ...

    def decode(self, *code: Tensor) -> Tensor: ...


def architecture_of(coder: Any) -> str:
    """The coder's ``architecture``; a TopK SAE built in memory (no attribute) is ``'topk'``."""
    return str(getattr(coder, "architecture", "topk"))


def as_args(code: Any) -> tuple[Tensor, ...]:
    """The positional arguments of ``decode`` for a code returned by ``encode``."""
    return tuple(code) if isinstance(code, tuple) else (code,)


def to_sparse(code: Any, num_latents: int) -> Tensor:
    """A code as a coalesced sparse COO tensor (N, F). Memory: O(nnz)."""
    if isinstance(code, tuple):
        values, indices = code
        n, k = values.shape
        rows = torch.arange(n, device=values.device).repeat_interleave(k)
        idx = torch.stack([rows, indices.reshape(-1).to(torch.int64)])
        return torch.sparse_coo_tensor(idx, values.reshape(-1), (n, num_latents), check_invariants=True).coalesce()
    if not isinstance(code, Tensor):
        raise TypeError(f"code must be (values, indices) or a tensor, got {type(code).__name__}")
    return (code if code.is_sparse else code.to_sparse()).coalesce()


def reconstruct(coder: SparseCoder, x: Tensor) -> Tensor:
    """``decode(encode(x))`` for any coder: the (N, d) reconstruction."""
    return coder.decode(*as_args(coder.encode(x)))
