"""Input check shared by every matching backend: a dictionary's rows, checked and unit-normalised."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array or torch tensor of shape (F, d)


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
