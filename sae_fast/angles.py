"""Principal angles between subspaces: input checks, dispatch to the C++ extension or a batched torch path.

Algorithm (Knyazev & Argentati 2002): orthonormalise each basis (column-pivoted QR; SVD where the
basis is rank-deficient), take the singular values of Qaᵀ Qb (cosines) and of the residual
Qb − Qa Qaᵀ Qb (sines), pair the i-th largest cosine with the i-th smallest sine, and take the angle from
the sine below 45° and from the cosine above. Everything runs in float64; float32 input is promoted.

Rank cut-off: singular values at or below ``max(d, p) * eps64 * s_max`` count as zero (numpy's
``matrix_rank`` rule). A basis whose rank is below its number of columns spans a smaller subspace;
the angles it cannot have are reported as π/2 (its missing directions are orthogonal to everything), so
the result never holds NaN and keeps the shape ``(..., min(p, q))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ._ext import extension

ArrayLike = Any  # numpy array or torch tensor


def _is_tensor(x: object) -> bool:
    return isinstance(x, torch.Tensor)


def _as_float64(name: str, x: ArrayLike, min_ndim: int = 2) -> np.ndarray | torch.Tensor:
    """Checks one basis argument (dtype, rank, emptiness, finiteness) and promotes it to float64."""
    if _is_tensor(x):
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (float32 or float64), got {x.dtype}")
        out: np.ndarray | torch.Tensor = x.detach().to(torch.float64)
        finite = bool(torch.isfinite(out).all())
    else:
        arr = np.asarray(x)
        if arr.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating-point array (float32 or float64), got {arr.dtype}")
        out = arr.astype(np.float64, copy=False)
        finite = bool(np.isfinite(out).all())
    if out.ndim < min_ndim:
        raise ValueError(f"{name} must have shape (..., d, r) with at least 2 dims, got shape {tuple(out.shape)}")
    if any(s == 0 for s in out.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(out.shape)}")
    if not finite:
        raise ValueError(f"{name} contains NaN or inf entries")
    return out


def principal_angles(A: ArrayLike, B: ArrayLike, *, num_threads: int = 0) -> np.ndarray | torch.Tensor:
    """Principal angles between span(A) and span(B), in radians, ascending, float64.

    A has shape (..., d, p) and B (..., d, q); leading dims broadcast. Returns (..., min(p, q)).
    Columns need not be orthonormal; rank-deficient bases are handled (see the module docstring).
    numpy in -> numpy out (C++ extension); torch in -> torch out on the input's device (CUDA tensors
    use a batched torch implementation on the GPU; CPU tensors the C++ extension).
    ``num_threads`` (C++ only): 0 uses every OpenMP thread.
    """
    a = _as_float64("A", A)
    b = _as_float64("B", B)
    if a.shape[-2] != b.shape[-2]:
        raise ValueError(
            f"A and B must have the same ambient dimension d (shape[-2]): got A {tuple(a.shape)}, "
            f"B {tuple(b.shape)}"
        )
    torch_in = _is_tensor(a) or _is_tensor(b)
    if torch_in and ((_is_tensor(a) and a.is_cuda) or (_is_tensor(b) and b.is_cuda)):
        device = a.device if _is_tensor(a) and a.is_cuda else b.device
        at = torch.as_tensor(a, device=device)
        bt = torch.as_tensor(b, device=device)
        batch = torch.broadcast_shapes(at.shape[:-2], bt.shape[:-2])
        at = at.expand(*batch, *at.shape[-2:])
        bt = bt.expand(*batch, *bt.shape[-2:])
        return principal_angles_torch(at, bt)
    an = a.cpu().numpy() if _is_tensor(a) else a
    bn = b.cpu().numpy() if _is_tensor(b) else b
    try:
        batch = np.broadcast_shapes(an.shape[:-2], bn.shape[:-2])
    except ValueError as err:
        raise ValueError(
            f"the leading (batch) dims of A {an.shape[:-2]} and B {bn.shape[:-2]} do not broadcast"
        ) from err
    d, p, q = an.shape[-2], an.shape[-1], bn.shape[-1]
    a3 = np.ascontiguousarray(np.broadcast_to(an, (*batch, d, p)).reshape(-1, d, p))
    b3 = np.ascontiguousarray(np.broadcast_to(bn, (*batch, d, q)).reshape(-1, d, q))
    out = extension().principal_angles_batch(a3, b3, num_threads).reshape(*batch, min(p, q))
    return torch.from_numpy(out) if torch_in else out


def principal_angles_pairs(
    bases: Sequence[ArrayLike], pairs: ArrayLike, *, num_threads: int = 0
) -> np.ndarray | torch.Tensor:
    """Principal angles for many pairs of subspaces; each basis is orthonormalised once.

    ``bases``: a sequence of (d, r_i) matrices (r_i may differ). ``pairs``: (M, 2) integer indices into
    ``bases``. Returns an (M, r_max) float64 array, r_max being the largest min(r_a, r_b) over the pairs:
    row m holds the min(r_a, r_b) angles of pair m ascending, then NaN padding (use ``np.isfinite`` or the
    nan-aware reductions of ``subspace_similarity``). Rank-deficient bases give π/2 for the angles they
    cannot have, never NaN. With torch CUDA bases, the torch GPU path computes it (output on that device).
    """
    if isinstance(bases, (np.ndarray, torch.Tensor)) and bases.ndim == 3:
        bases = list(bases)
    if len(bases) == 0:
        raise ValueError("bases must be a non-empty sequence of (d, r_i) matrices")
    checked = []
    for i, basis in enumerate(bases):
        arr = _as_float64(f"bases[{i}]", basis)
        if arr.ndim != 2:
            raise ValueError(f"bases[{i}] must be 2-D (d, r_i), got shape {tuple(arr.shape)}")
        checked.append(arr)
    d = checked[0].shape[0]
    for i, arr in enumerate(checked):
        if arr.shape[0] != d:
            raise ValueError(f"bases[{i}] has d={arr.shape[0]} but bases[0] has d={d}; all bases must share d")
    idx = pairs.detach().cpu().numpy() if _is_tensor(pairs) else np.asarray(pairs)
    if idx.size == 0:
        return np.zeros((0, 0))
    if idx.dtype.kind not in "iu":
        raise TypeError(f"pairs must be an integer array, got dtype {idx.dtype}")
    if idx.ndim != 2 or idx.shape[1] != 2:
        raise ValueError(f"pairs must have shape (M, 2), got {idx.shape}")
    if idx.min() < 0 or idx.max() >= len(checked):
        raise ValueError(f"pairs holds indices outside [0, {len(checked)}): min {idx.min()}, max {idx.max()}")
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    cuda = next((a.device for a in checked if _is_tensor(a) and a.is_cuda), None)
    if cuda is not None:
        return _pairs_torch([torch.as_tensor(a, device=cuda) for a in checked], torch.as_tensor(idx, device=cuda))
    arrays = [np.ascontiguousarray(a.cpu().numpy() if _is_tensor(a) else a) for a in checked]
    out = extension().principal_angles_pairs(arrays, idx, num_threads)
    return torch.from_numpy(out) if any(_is_tensor(b) for b in bases) else out


class SubspaceSimilarity(NamedTuple):
    """Scalar summaries of principal angles θ (over the last axis, NaN padding ignored).

    mean_cos2: mean of cos²θ (1 = same subspace, r/d expected between random r-subspaces of R^d).
    chordal_distance: sqrt(Σ sin²θ), the projection Frobenius distance ‖P_A − P_B‖_F / √2 for equal ranks.
    projection_distance: sin θ_max = ‖P_A − P_B‖_2.
    largest_angle: θ_max in radians.
    """

    mean_cos2: np.ndarray
    chordal_distance: np.ndarray
    projection_distance: np.ndarray
    largest_angle: np.ndarray


def subspace_similarity(angles_or_A: ArrayLike, B: ArrayLike | None = None) -> SubspaceSimilarity:
    """Summaries of principal angles: pass an angle array (..., m) (NaN-padded rows allowed), or two bases."""
    if B is not None:
        angles_or_A = principal_angles(angles_or_A, B)
    theta = angles_or_A.detach().cpu().numpy() if _is_tensor(angles_or_A) else np.asarray(angles_or_A)
    theta = theta.astype(np.float64, copy=False)
    if theta.ndim == 0 or theta.shape[-1] == 0:
        raise ValueError(f"angles must have shape (..., m) with m > 0, got {theta.shape}")
    valid = np.isfinite(theta)
    count = valid.sum(axis=-1)
    cos2 = np.where(valid, np.cos(theta) ** 2, 0.0)
    sin2 = np.where(valid, np.sin(theta) ** 2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_cos2 = np.where(count > 0, cos2.sum(axis=-1) / np.maximum(count, 1), np.nan)
    largest = np.where(count > 0, np.max(np.where(valid, theta, -np.inf), axis=-1), np.nan)
    return SubspaceSimilarity(
        mean_cos2=mean_cos2,
        chordal_distance=np.where(count > 0, np.sqrt(sin2.sum(axis=-1)), np.nan),
        projection_distance=np.sin(largest),
        largest_angle=largest,
    )


def random_subspace_angles(d: int, p: int, q: int, n: int, seed: int = 0) -> np.ndarray:
    """Null baseline: principal angles (n, min(p, q)) between n pairs of Haar-random p- and q-subspaces of R^d.

    Gaussian matrices span Haar-distributed subspaces; seeded, so the baseline is reproducible.
    """
    for name, value in (("d", d), ("p", p), ("q", q), ("n", n)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if p > d or q > d:
        raise ValueError(f"p and q must not exceed d: got d={d}, p={p}, q={q}")
    rng = np.random.default_rng(seed)
    return principal_angles(rng.standard_normal((n, d, p)), rng.standard_normal((n, d, q)))


# ----------------------------------------------------------------------------------------------------------
# Batched torch implementation (used for CUDA tensors; also runs on CPU tensors, which the tests use).


def _orthonormal_torch(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal bases (…, d, r) of float64 batches, columns beyond each rank zeroed; and the ranks."""
    d, r = a.shape[-2], a.shape[-1]
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    tol = max(d, r) * torch.finfo(torch.float64).eps * s[..., :1]
    keep = (s > tol) & (s[..., :1] > 0)
    return u * keep.unsqueeze(-2), keep.sum(-1)


def _angles_from_orthonormal(qa: torch.Tensor, ra: torch.Tensor, qb: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """Angles (…, min(p, q)) from zero-padded orthonormal bases qa (…, d, p), qb (…, d, q) with ranks ra, rb."""
    if qb.shape[-1] > qa.shape[-1]:
        qa, ra, qb, rb = qb, rb, qa, ra
    m = qb.shape[-1]
    c = qa.transpose(-1, -2) @ qb
    cosines = torch.linalg.svdvals(c)[..., :m].clamp(0.0, 1.0)  # descending
    residual = qb - qa @ c
    residual = residual - qa @ (qa.transpose(-1, -2) @ residual)
    r = torch.linalg.qr(residual, mode="r").R
    sines = torch.linalg.svdvals(r).flip(-1).clamp(0.0, 1.0)  # ascending
    # Zeroed columns of qb add spurious zero sines at the front: drop them, fill the end with 1 (90°).
    deficit = (m - rb).unsqueeze(-1)
    pos = torch.arange(m, device=qa.device) + deficit
    sines = torch.where(pos < m, sines.gather(-1, pos.clamp(max=m - 1)), torch.ones_like(sines))
    theta = torch.where(cosines**2 >= 0.5, torch.asin(sines), torch.acos(cosines))
    return theta.sort(dim=-1).values


def principal_angles_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched torch principal angles: a (…, d, p), b (…, d, q) float64 with equal batch dims."""
    qa, ra = _orthonormal_torch(a)
    qb, rb = _orthonormal_torch(b)
    return _angles_from_orthonormal(qa, ra, qb, rb)


def _pairs_torch(bases: list[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """The torch counterpart of the C++ pairs routine: bases grouped by width, orthonormalised once."""
    ortho = [_orthonormal_torch(basis) for basis in bases]
    widths = [b.shape[-1] for b in bases]
    # group pairs by (r_a, r_b) so that each group is one batched computation
    groups: dict[tuple[int, int], list[int]] = {}
    for m, (i, j) in enumerate(idx.tolist()):
        groups.setdefault((widths[i], widths[j]), []).append(m)
    width = max(min(wa, wb) for wa, wb in groups)
    out = torch.full((idx.shape[0], width), math.nan, dtype=torch.float64, device=idx.device)
    for (wa, wb), members in groups.items():
        rows = idx[members]
        qa = torch.stack([ortho[i][0] for i in rows[:, 0].tolist()])
        ra = torch.stack([ortho[i][1] for i in rows[:, 0].tolist()])
        qb = torch.stack([ortho[j][0] for j in rows[:, 1].tolist()])
        rb = torch.stack([ortho[j][1] for j in rows[:, 1].tolist()])
        out[members, : min(wa, wb)] = _angles_from_orthonormal(qa, ra, qb, rb)
    return out
