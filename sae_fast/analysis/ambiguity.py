"""Local basis ambiguity (method.md §11): is an unstable latent of seed a explained by a few latents of seed b,
though by no single one?

* **Decoder directions** (:func:`direction_pursuit`): for each latent i of seed a, orthogonal matching pursuit
  (OMP) of its unit decoder row over the unit decoder rows of seed b, restricted to its ``candidates`` nearest
  atoms of b by |cos| (top-k from a blocked GEMM: never an F × F matrix). ``share[i, m-1]`` = ||P_m d_i||², the
  share of the direction explained by the best m atoms chosen greedily (m = 1 … m_max; m = 1 is the squared best
  cosine). The same against a random dictionary with seed b's spectrum (:func:`null_dictionary`, drawn by
  :func:`sae_fast.analysis.nulls.spectrum_matched_decoder`) is the null.
* **Activations** (:func:`activation_pursuit`): for each latent i of seed a, greedy forward selection of m latents
  of seed b (among the same candidates) whose codes predict its code by least squares with intercept, fitted on
  the first ``train_fraction`` of the rows; ``r2[i, m-1]`` is the R² on the remaining (held-out) rows. Its null
  (:func:`activation_null`) is the same R² against the **same** random dictionary as the direction null, made to
  encode: the held-out rows (centred) are coded by that dictionary as a tied TopK encoder with seed b's mean
  number of active latents per row (:func:`dictionary_codes`), and the pursuit chooses among the random atoms
  nearest to latent i's direction. A dictionary that learned nothing explains the activation only as far as its
  chance alignment with the latent's direction carries (for isotropic rows and linear codes the R² at m = 1 would
  be the squared cosine, the direction null's share; TopK codes can raise it a little, as the ReLU drops the
  negative side of the projections), so the null stays low where a seed sharing the directions gets R² near 1.
* :func:`curves_by_bin`: mean curves vs m per p̂ bin. Basis ambiguity shows as unstable latents whose m = 1
  share is low and whose share at a few atoms is high, above the random-dictionary null.

Memory: decoders O(F·d); the pursuit holds ``block`` × candidates × d floats at a time; the activation pursuit
holds N × candidates floats per latent (codes may be scipy-sparse); the null's codes O(N·k) plus one block of
pre-activations (at most ``PRE_BUDGET`` floats).
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import scipy.sparse as sp

from ..errors import UsageError
from ._common import ArrayLike, check_decoders, unit_rows
from .nulls import spectrum_matched_decoder

PRE_BUDGET = 1 << 24
"""floats of pre-activations (rows × F) :func:`dictionary_codes` holds at a time (128 MB in float64)"""


def null_dictionary(decoder_b: ArrayLike, seed: int = 0) -> np.ndarray:
    """The random dictionary of both nulls: seed b's singular values and right singular vectors with Haar-random
    left singular vectors (:func:`~sae_fast.analysis.nulls.spectrum_matched_decoder`), drawn from ``seed``.
    Returns (F_b, d) float64 unit rows. Memory: three F_b × d float64 arrays."""
    return spectrum_matched_decoder(decoder_b, np.random.default_rng([seed, 0xA3B]))


def nearest_atoms(A: np.ndarray, B: np.ndarray, k: int, *, block: int = 2048) -> np.ndarray:
    """(F_a, k) indices of the k rows of B with the largest |cos| to each row of A (unit rows), by blocks of A.
    Memory: block × F_b floats."""
    k = min(k, len(B))
    out = np.empty((len(A), k), dtype=np.int64)
    for s in range(0, len(A), block):
        cos = np.abs(A[s:s + block] @ B.T)
        top = np.argpartition(-cos, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(cos, top, axis=1), axis=1)
        out[s:s + block] = np.take_along_axis(top, order, axis=1)
    return out


def _omp_block(d: np.ndarray, atoms: np.ndarray, m_max: int) -> np.ndarray:
    """Batched OMP: d (n, dim) unit targets, atoms (n, k, dim) unit candidates -> (n, m_max) explained shares."""
    n, k, _ = atoms.shape
    Q = np.zeros((n, 0, d.shape[1]))
    chosen = np.zeros((n, k), dtype=bool)
    resid = d.copy()
    shares = np.zeros((n, m_max))
    rows = np.arange(n)
    for m in range(min(m_max, k)):
        score = np.abs(np.einsum("nkd,nd->nk", atoms, resid))
        score[chosen] = -1.0
        pick = score.argmax(axis=1)
        chosen[rows, pick] = True
        q = atoms[rows, pick] - np.einsum("nmd,nm->nd", Q, np.einsum("nmd,nd->nm", Q, atoms[rows, pick]))
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        Q = np.concatenate([Q, q[:, None]], axis=1)
        proj = np.einsum("nmd,nm->nd", Q, np.einsum("nmd,nd->nm", Q, d))
        resid = d - proj
        shares[:, m] = np.sum(proj * d, axis=1)
    shares[:, min(m_max, k):] = shares[:, [min(m_max, k) - 1]]
    return np.clip(shares, 0.0, 1.0)


def direction_pursuit(
    decoder_a: ArrayLike,
    decoder_b: ArrayLike,
    *,
    latents: ArrayLike | None = None,
    m_max: int = 8,
    candidates: int = 32,
    null: bool = True,
    block: int = 256,
    seed: int = 0,
    null_dict: ArrayLike | None = None,
) -> dict:
    """Share of each latent's decoder direction explained by the best m atoms of another seed (OMP).

    Parameters
    ----------
    decoder_a, decoder_b: (F_a, d) and (F_b, d) decoders of two seeds.
    latents: latents of seed a to evaluate (default all).
    m_max: largest number of atoms.
    candidates: nearest atoms of b (by |cos|) the pursuit may choose from.
    null: also the pursuit over a spectrum-matched random dictionary in place of b.
    block: latents per batched pursuit (memory block × candidates × d floats).
    seed: seed of the random dictionary (:func:`null_dictionary`).
    null_dict: that random dictionary when already drawn (it is then reused, not drawn again).

    Returns
    -------
    ``{"latents": (n,), "share": (n, m_max), "null_share": (n, m_max) or None}``.
    """
    A, B = check_decoders([decoder_a, decoder_b])
    if m_max < 1 or candidates < 1:
        raise UsageError(f"m_max and candidates must be >= 1, got {m_max} and {candidates}")
    idx = np.arange(len(A)) if latents is None else np.asarray(latents, dtype=np.int64).reshape(-1)

    def run(dict_b: np.ndarray) -> np.ndarray:
        out = np.zeros((len(idx), m_max))
        for s in range(0, len(idx), block):
            rows = A[idx[s:s + block]]
            near = nearest_atoms(rows, dict_b, candidates)
            out[s:s + block] = _omp_block(rows, dict_b[near], m_max)
        return out

    if null:
        null_dict = null_dictionary(B, seed) if null_dict is None else unit_rows(null_dict)
    null_share = run(null_dict) if null else None
    return {"latents": idx, "share": run(B), "null_share": null_share}


def _columns(codes: ArrayLike, cols: np.ndarray) -> np.ndarray:
    """Dense (N, len(cols)) float64 columns of a dense array or a scipy sparse matrix."""
    if hasattr(codes, "tocsc"):
        return np.asarray(codes[:, cols].toarray(), dtype=np.float64)
    return np.asarray(codes, dtype=np.float64)[:, cols]


def _r2_path(y: np.ndarray, X: np.ndarray, train: np.ndarray, m_max: int) -> np.ndarray:
    """Greedy forward selection on the train rows; held-out R² after each of m = 1 … m_max columns."""
    test = ~train
    ss = np.sum((y[test] - y[test].mean()) ** 2)
    out = np.zeros(m_max)
    chosen: list[int] = []
    resid = y[train] - y[train].mean()
    Xc = X[train] - X[train].mean(axis=0)
    norms = np.maximum(np.linalg.norm(Xc, axis=0), 1e-12)
    for m in range(m_max):
        score = np.abs(Xc.T @ resid) / norms
        score[chosen] = -1.0
        chosen.append(int(score.argmax()))
        design = np.column_stack([np.ones(train.sum()), X[train][:, chosen]])
        coef = np.linalg.lstsq(design, y[train], rcond=None)[0]
        resid = y[train] - design @ coef
        pred = np.column_stack([np.ones(test.sum()), X[test][:, chosen]]) @ coef
        out[m] = 1.0 - np.sum((y[test] - pred) ** 2) / ss if ss > 0 else float("nan")
        if len(chosen) == X.shape[1]:
            out[m + 1:] = out[m]
            break
    return out


def activation_pursuit(
    codes_a: ArrayLike,
    codes_b: ArrayLike,
    neighbours: ArrayLike,
    *,
    latents: ArrayLike,
    m_max: int = 8,
    train_fraction: float = 0.5,
) -> np.ndarray:
    """(n, m_max) held-out R² of each latent's code (seed a) from m greedily chosen latents of seed b.

    ``codes_a`` (N, F_a) and ``codes_b`` (N, F_b): codes on the same rows (dense or scipy sparse);
    ``neighbours``: (n, k) candidate latents of b per evaluated latent (e.g. :func:`nearest_atoms`);
    ``latents``: (n,) the evaluated latents of a. A latent that never fires on the held-out rows gets NaN.
    """
    lat = np.asarray(latents, dtype=np.int64).reshape(-1)
    nb = np.asarray(neighbours, dtype=np.int64)
    if nb.shape[0] != len(lat):
        raise UsageError(f"neighbours must have one row per latent ({len(lat)}), got {nb.shape}")
    if not 0.0 < train_fraction < 1.0:
        raise UsageError(f"train_fraction must be in (0, 1), got {train_fraction}")
    N = codes_a.shape[0]
    if codes_b.shape[0] != N:
        raise UsageError(f"codes_a and codes_b must share their rows, got {N} and {codes_b.shape[0]}")
    train = np.arange(N) < int(train_fraction * N)
    ca = codes_a.tocsc() if hasattr(codes_a, "tocsc") else codes_a
    cb = codes_b.tocsc() if hasattr(codes_b, "tocsc") else codes_b
    out = np.full((len(lat), m_max), np.nan)
    for j, i in enumerate(lat):
        y = _columns(ca, np.array([i]))[:, 0]
        if np.ptp(y[~train]) > 0 and np.ptp(y[train]) > 0:
            out[j] = _r2_path(y, _columns(cb, nb[j]), train, m_max)
    return out


def dictionary_codes(rows: ArrayLike, dictionary: ArrayLike, k: int) -> sp.csr_matrix:
    """(N, F) CSR codes of ``rows`` (N, d) under ``dictionary`` (F, d) used as a tied TopK encoder: per row, the k
    largest of ``<x − mean(x), r_j>``, kept where positive (no bias: a dictionary that learned nothing has none).

    Memory: O(N·k) codes plus one block of at most ``PRE_BUDGET`` pre-activations (rows are taken in blocks).
    """
    X = np.asarray(rows, dtype=np.float64)
    R = unit_rows(np.asarray(dictionary, dtype=np.float64))
    if X.ndim != 2 or X.shape[1] != R.shape[1]:
        raise UsageError(f"rows must have shape (N, {R.shape[1]}) to match the dictionary, got {X.shape}")
    if not 1 <= k <= len(R):
        raise UsageError(f"k must be in [1, {len(R)}], got {k}")
    Xc = X - X.mean(axis=0)
    block = max(1, PRE_BUDGET // len(R))
    parts = []
    for s in range(0, len(X), block):
        pre = Xc[s:s + block] @ R.T
        top = np.argpartition(-pre, k - 1, axis=1)[:, :k]
        vals = np.maximum(np.take_along_axis(pre, top, axis=1), 0.0)
        n = len(pre)
        parts.append(sp.csr_matrix((vals.ravel(), top.ravel(), np.arange(0, n * k + 1, k)), shape=(n, len(R))))
    codes = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, len(R)))
    codes.eliminate_zeros()
    return codes


def activation_null(
    codes_a: ArrayLike,
    rows: ArrayLike,
    decoder_a: ArrayLike,
    dictionary: ArrayLike,
    *,
    latents: ArrayLike,
    k: int,
    m_max: int = 8,
    candidates: int = 32,
    train_fraction: float = 0.5,
) -> np.ndarray:
    """(n, m_max) held-out R² of each latent's code (seed a) from m latents of a random dictionary's codes.

    Parameters
    ----------
    codes_a: (N, F_a) seed a's codes on ``rows`` (dense or scipy sparse).
    rows: (N, d) the activations those codes come from.
    decoder_a: (F_a, d) seed a's decoder (the evaluated latents' directions pick the candidate atoms).
    dictionary: (F_b, d) the random dictionary (:func:`null_dictionary` of seed b, as the direction null).
    latents: (n,) evaluated latents of seed a.
    k: active latents per row of the dictionary's TopK codes (seed b's mean, for a like-for-like null).
    m_max, candidates, train_fraction: as :func:`direction_pursuit` and :func:`activation_pursuit`.

    Returns
    -------
    The R² curves, as :func:`activation_pursuit` (NaN for a latent that never fires). Memory: as
    :func:`dictionary_codes` plus :func:`activation_pursuit`.
    """
    lat = np.asarray(latents, dtype=np.int64).reshape(-1)
    R = unit_rows(np.asarray(dictionary, dtype=np.float64))
    near = nearest_atoms(unit_rows(np.asarray(decoder_a, dtype=np.float64))[lat], R, candidates)
    return activation_pursuit(codes_a, dictionary_codes(rows, R, k), near, latents=lat, m_max=m_max,
                              train_fraction=train_fraction)


class Curve(TypedDict):
    """A p̂ bin's curve over m (``mean`` null when the bin holds no sampled latent)."""

    lo: float
    hi: float
    count: int
    mean: list[float | None] | None


def curves_by_bin(values: ArrayLike, p_hat: ArrayLike, edges: tuple[float, ...] = (0.0, 0.05, 0.5, 0.95, 1.0)
                  ) -> list[Curve]:
    """Mean curve (over latents, NaN-aware) of ``values`` (n, m_max) per p̂ bin: [{"lo", "hi", "count", "mean"}]."""
    v = np.asarray(values, dtype=np.float64)
    p = np.asarray(p_hat, dtype=np.float64).reshape(-1)
    out = []
    for i in range(len(edges) - 1):
        last = i == len(edges) - 2
        sel = (p >= edges[i]) & ((p <= edges[i + 1]) if last else (p < edges[i + 1]))
        mean = np.nanmean(v[sel], axis=0).tolist() if sel.any() and np.isfinite(v[sel]).any() else None
        out.append({"lo": edges[i], "hi": edges[i + 1], "count": int(sel.sum()), "mean": mean})
    return out
