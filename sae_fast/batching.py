"""Activations held in memory: the input check every analysis runs first, and their row blocks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

ArrayLike = Any  # numpy array or torch tensor


def batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Row blocks of x."""
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


def check_activations(x: ArrayLike, name: str = "activations") -> torch.Tensor:
    """(N, d) float32 CPU-or-device tensor with no NaN/inf, else a clear error."""
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (N, d), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if t.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows, got {t.shape[0]}")
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(dim=1)).flatten()[:5].tolist()
        raise ValueError(f"{name} contains NaN or inf (first bad rows: {rows})")
    return t
