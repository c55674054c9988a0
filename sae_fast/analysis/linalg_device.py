"""Where the analyses' dense linear algebra runs: the Gram matrices and eigen/singular decompositions of the
subspace, candidate, classifier, effective-rank and null analyses (``right_singular``, ``gram``).

By default they run in numpy on the CPU. Inside ``with on_device(device):`` (the study runs every step so with
``--device``) the same functions run in torch float64 on that device instead: the (n, d) rows go to the device in
chunks of at most :data:`CHUNK_ROWS` rows, so a set of a million latents never sits on the device at once, and only
the (d, d) Gram matrix and its eigendecomposition live there. Results come back as numpy arrays, so callers do not
change; an explicit ``torch.device("cpu")`` runs the torch path on the CPU (how the tests exercise it).

Memory: O(d²) for the Gram matrix plus one chunk of CHUNK_ROWS·d float64 on the device; the (n, d) input stays
where it is.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["CHUNK_ROWS", "compute_device", "gram", "on_device", "right_singular_on"]

CHUNK_ROWS = 1 << 16
"""rows moved to the device per chunk (0.5 GiB in float64 at d = 1024)"""

_DEVICE: contextvars.ContextVar[torch.device | None] = contextvars.ContextVar("sae_fast_linalg_device", default=None)


@contextlib.contextmanager
def on_device(device: str | torch.device | None) -> Iterator[None]:
    """Run the analyses' Gram/eigen work on ``device`` (torch) inside the block; None keeps numpy."""
    token = _DEVICE.set(None if device is None else torch.device(device))
    try:
        yield
    finally:
        _DEVICE.reset(token)


def compute_device() -> torch.device | None:
    """The device set by the innermost :func:`on_device`, or None (numpy on the CPU)."""
    return _DEVICE.get()


def _torch_gram(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """(d, d) float64 rowsᵀ rows on ``device``, summed over chunks of CHUNK_ROWS rows in a fixed order."""
    d = rows.shape[1]
    out = torch.zeros((d, d), dtype=torch.float64, device=device)
    for start in range(0, rows.shape[0], CHUNK_ROWS):
        part = torch.as_tensor(np.ascontiguousarray(rows[start:start + CHUNK_ROWS]), dtype=torch.float64)
        part = part.to(device, non_blocking=False)
        out.addmm_(part.T, part)
    return out


def gram(rows: np.ndarray) -> np.ndarray:
    """(d, d) float64 Gram matrix rowsᵀ rows of rows (n, d), on the current :func:`compute_device`."""
    device = compute_device()
    if device is None:
        x = np.asarray(rows, dtype=np.float64)
        return x.T @ x
    return _torch_gram(rows, device).cpu().numpy()


def right_singular_on(rows: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Singular values (descending) and right singular vectors (d, m), m = min(n, d), of rows (n, d) computed in
    torch float64 on ``device``: the eigendecomposition of the chunked Gram matrix when n > d, else an SVD of
    the (n ≤ d, d) rows. Same contract as :func:`sae_fast.analysis._common.right_singular`."""
    n, d = rows.shape
    if n > d:
        evals, evecs = torch.linalg.eigh(_torch_gram(rows, device))
        evals, evecs = evals.flip(0), evecs.flip(1)
        return evals.clamp_min(0.0).sqrt().cpu().numpy(), evecs.cpu().numpy()
    x = torch.as_tensor(np.ascontiguousarray(rows), dtype=torch.float64).to(device)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    return s.cpu().numpy(), vh.T.cpu().numpy()
