"""Small helpers shared by the analyses: input checks and unit-normalised decoder rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array or torch tensor


def as_numpy(x: ArrayLike, name: str, *, ndim: int | None = None, dtype: Any = np.float64) -> np.ndarray:
    """A finite numpy copy of ``x`` (numpy or torch) with the given number of dims, else a clear error."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        x = x.float().numpy() if x.is_floating_point() else x.numpy()
    arr = np.asarray(x)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {arr.shape}")
    if dtype is not None:
        if np.dtype(dtype).kind == "f" and arr.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(dtype, copy=False)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf entries")
    return arr


def unit_rows(decoder: ArrayLike, name: str = "decoder") -> np.ndarray:
    """(F, d) float64 rows scaled to unit norm (zero rows stay zero)."""
    arr = as_numpy(decoder, name, ndim=2)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def check_decoders(decoders: list[ArrayLike], name: str = "decoders") -> list[np.ndarray]:
    """Unit-row copies of a list of (F_s, d) decoders that share d."""
    if len(decoders) == 0:
        raise ValueError(f"{name} must be a non-empty list of (num_latents, d) matrices")
    out = [unit_rows(dec, f"{name}[{i}]") for i, dec in enumerate(decoders)]
    d = out[0].shape[1]
    for i, dec in enumerate(out):
        if dec.shape[1] != d:
            raise ValueError(f"{name}[{i}] has d={dec.shape[1]} but {name}[0] has d={d}")
    return out


def index_array(idx: ArrayLike, size: int, name: str) -> np.ndarray:
    """Latent indices as int64; accepts an index list or a boolean mask of length ``size``."""
    arr = np.asarray(idx)
    if arr.dtype == bool:
        if arr.shape != (size,):
            raise ValueError(f"{name} as a boolean mask must have shape ({size},), got {arr.shape}")
        return np.flatnonzero(arr)
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= size):
        raise ValueError(f"{name} holds indices outside [0, {size})")
    return arr

# Labels of the endpoint split, the same values as sae_fast.stability (STABLE, UNSTABLE, NEITHER).
STABLE, UNSTABLE, NEITHER = 1, -1, 0
