"""Planted dictionaries and a float64 brute-force reference shared by the matching tests."""

from __future__ import annotations

import math

import pytest
import torch

from sae_fast.matching import faiss_available

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="needs faiss (pip install 'sae_fast[faiss]')")


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def planted(f: int, d: int, cos: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random dictionary A and B = a permuted noisy copy with cos(A[i], B[inv[i]]) ~ cos. Returns A, B, inv."""
    g = torch.Generator().manual_seed(seed)
    a = unit(torch.randn(f, d, generator=g))
    perm = torch.randperm(f, generator=g)
    noise = unit(torch.randn(f, d, generator=g))
    noise = unit(noise - (noise * a).sum(1, keepdim=True) * a)  # orthogonal to a
    b = (cos * a + math.sqrt(1 - cos**2) * noise)[perm]
    return a, b, torch.argsort(perm)


def brute(a: torch.Tensor, b: torch.Tensor, k: int, absolute: bool = False) -> tuple[torch.Tensor, ...]:
    s = unit(a.double()) @ unit(b.double()).T
    if absolute:
        s = s.abs()
    rv, ri = s.topk(k, dim=1)
    cv, ci = s.topk(k, dim=0)
    return rv, ri, cv.T, ci.T
