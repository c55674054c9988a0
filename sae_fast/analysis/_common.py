"""Small helpers shared by the analyses: input checks and unit-normalised decoder rows."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import numpy as np
import torch

# the labels of the endpoint split: one set, defined with the split in sae_fast.stability.result
from ..stability.result import NEITHER, STABLE, UNSTABLE  # noqa: F401  (used by the analyses through here)
from .linalg_device import compute_device, right_singular_on

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


def right_singular(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values (descending) and right singular vectors (d, m) of rows (n, d), m = min(n, d).

    For n > d it diagonalises the d x d Gram matrix (much cheaper than an SVD of a tall matrix). Inside
    :func:`sae_fast.analysis.linalg_device.on_device` it runs in torch on that device (same results).
    Memory: O(n·d) for the float64 copy of rows plus O(d²).
    """
    device = compute_device()
    if device is not None:
        return right_singular_on(np.asarray(rows, dtype=np.float64), device)
    rows = np.asarray(rows, dtype=np.float64)
    n, d = rows.shape
    with single_thread_lapack():
        if n > d:
            evals, evecs = np.linalg.eigh(rows.T @ rows)
            order = np.argsort(evals)[::-1]
            return np.sqrt(np.clip(evals[order], 0.0, None)), evecs[:, order]
        _, s, vt = np.linalg.svd(rows, full_matrices=False)
    return s, vt.T


def single_thread_lapack() -> contextlib.AbstractContextManager:
    """Limits BLAS/LAPACK to one thread: multithreaded OpenBLAS eigh/svd of a few hundred columns was measured
    ~50x slower than single-threaded on a busy 2-core machine (4.7 s vs 0.07 s for a 384 x 384 eigh).

    The library scan (``threadpoolctl`` reads /proc/self/maps) is done once per process and reused: a fresh
    scan per call cost ~1 ms, which at 50,000 small decompositions (candidates at F = 2^16) was ~80 s."""
    controller = _blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return None
    return ThreadpoolController()
