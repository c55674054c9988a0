"""How many seeds are enough (method.md §11, "Label noise").

With N comparison seeds a latent whose true match rate is q gets X ~ Binomial(N, q) matches and is labelled
unstable when X ≤ εN, stable when X ≥ (1 − ε)N (the endpoint split). :func:`label_probabilities` gives the three
label probabilities; e.g. q = 0.1, ε = 0.05 is labelled unstable with probability 0.48 at N = 7 and 0.03 at N = 95.

:func:`seed_count_curve` subsamples the comparison seeds of a finished run (S' = 2 … S seeds, i.e. N' = S' − 1
comparisons per anchor, ``draws`` random subsets each) and reports the agreement of the labels with the full
run's, the shares stable / unstable, and two predictions of the agreement: **hypergeometric** (exact for
subsampling N' of the run's own N comparisons, given each latent's full count) and **binomial** (a fresh run of
N' comparisons if each latent's true rate were its full p̂). :func:`recommend_seeds` turns the binomial
prediction into the number of seeds a target agreement with the N → ∞ label needs.

:func:`seed_subset_curve` draws whole seed subsets instead (S' of the S seeds, labels from the comparisons inside
the subset only), so that any downstream number (classifier F1, subspace excess, ...) can be recomputed on what a
run of S' seeds would have seen; the numbers are callbacks of (seed ids, their labels).

Memory: the (A, N, F) match indicators (bool) plus one (A, N', F) subsample at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

import numpy as np
from scipy.stats import binom, hypergeom

from ..errors import UsageError
from ._common import NEITHER, STABLE, UNSTABLE, ArrayLike, as_numpy


def _label_of_count(x: np.ndarray, n: int, eps: float) -> np.ndarray:
    p = x / n
    return np.where(p >= 1 - eps, STABLE, np.where(p <= eps, UNSTABLE, NEITHER)).astype(np.int8)


def _count_ranges(n: int, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which counts 0..n give a stable, unstable, neither label (bool (n+1,) each)."""
    lab = _label_of_count(np.arange(n + 1), n, eps)
    return lab == STABLE, lab == UNSTABLE, lab == NEITHER


class AgreementRow(TypedDict):
    num_seeds: int
    agreement: float | None
    agreement_sd: float | None
    predicted_hypergeometric: float | None
    predicted_binomial: float | None
    share_stable: float | None
    share_unstable: float | None


class Recommendation(TypedDict):
    """``num_seeds`` null when no seed count up to the largest in ``agreement_at`` reaches the target."""

    target: float
    num_seeds: int | None
    agreement_at: dict[int, float | None]


class SubsetRow(TypedDict):
    """One S' of the seed subsets; each of ``subset_metrics`` follows as ``<name>`` and ``<name>_sd``."""

    num_seeds: int
    draws: int


def label_probabilities(q: ArrayLike, n: int, eps: float = 0.05) -> np.ndarray:
    """(..., 3) probabilities of the labels (stable, unstable, neither) of latents with match rate q at n
    comparisons: Binomial(n, q) counts through the endpoint split at ``eps``."""
    if n < 1:
        raise UsageError(f"n must be >= 1 comparison, got {n}")
    qa = np.asarray(q, dtype=np.float64)[..., None]
    pmf = binom.pmf(np.arange(n + 1), n, qa)  # (..., n+1)
    return np.stack([pmf[..., m].sum(-1) for m in _count_ranges(n, eps)], axis=-1)


def _predicted(full_counts: np.ndarray, n_full: int, n_sub: int, eps: float, full_labels: np.ndarray) -> tuple:
    """Mean predicted agreement with the full labels: hypergeometric (subsampling) and binomial (fresh seeds)."""
    ranges = _count_ranges(n_sub, eps)
    ks = np.arange(n_sub + 1)
    hyper, bino = np.zeros(full_counts.shape), np.zeros(full_counts.shape)
    for lab, rng_mask in zip((STABLE, UNSTABLE, NEITHER), ranges):
        sel = full_labels == lab
        if sel.any():
            x = full_counts[sel][:, None]
            hyper[sel] = hypergeom.pmf(ks[rng_mask][None, :], n_full, x, n_sub).sum(-1)
            bino[sel] = binom.pmf(ks[rng_mask][None, :], n_sub, x / n_full).sum(-1)
    return float(hyper.mean()), float(bino.mean())


def seed_count_curve(
    matched: ArrayLike,
    *,
    eps: float = 0.05,
    sizes: tuple[int, ...] | None = None,
    draws: int = 5,
    seed: int = 0,
) -> list[AgreementRow]:
    """Label agreement with the full run when only S' seeds are used.

    Parameters
    ----------
    matched: (A, N, F) bool, matched[a, k, i] = latent i of anchor a has a partner at cos >= theta in the k-th
        other seed (e.g. ``best_cos >= theta``; N = S − 1).
    eps: endpoint split.
    sizes: seed counts S' to try (default 2 … S); S' − 1 comparison seeds are drawn per anchor.
    draws: random subsets per S'.
    seed: seed of the subsets.

    Returns
    -------
    One dict per S': ``num_seeds``, ``comparisons``, ``agreement`` (mean over draws, anchors and latents),
    ``agreement_sd`` (over draws), ``predicted_hypergeometric``, ``predicted_binomial``, ``share_stable``,
    ``share_unstable``, ``changed_stable`` / ``changed_unstable`` (share of the full run's stable / unstable
    latents labelled otherwise).
    """
    M = as_numpy(matched, "matched", ndim=3, dtype=bool)
    A, N, _ = M.shape
    if N < 1:
        raise UsageError("matched must hold at least one comparison seed")
    counts = M.sum(axis=1)
    full = _label_of_count(counts, N, eps)
    sizes = tuple(range(2, N + 2)) if sizes is None else tuple(int(s) for s in sizes)
    if any(not 2 <= s <= N + 1 for s in sizes):
        raise UsageError(f"sizes must lie in [2, {N + 1}] (the run has {N + 1} seeds), got {sizes}")
    rng = np.random.default_rng([seed, 0x5EED5])
    rows = []
    for s in sizes:
        n = s - 1
        agree, st, un, ch_st, ch_un = [], [], [], [], []
        for _ in range(draws if n < N else 1):
            sub = np.stack([M[a][rng.choice(N, n, replace=False)] for a in range(A)])
            lab = _label_of_count(sub.sum(axis=1), n, eps)
            agree.append(float((lab == full).mean()))
            st.append(float((lab == STABLE).mean()))
            un.append(float((lab == UNSTABLE).mean()))
            ch_st.append(float((lab[full == STABLE] != STABLE).mean()) if (full == STABLE).any() else np.nan)
            ch_un.append(float((lab[full == UNSTABLE] != UNSTABLE).mean()) if (full == UNSTABLE).any() else np.nan)
        hyper, bino = _predicted(counts.reshape(-1), N, n, eps, full.reshape(-1))
        rows.append({"num_seeds": s, "comparisons": n, "agreement": float(np.mean(agree)),
                     "agreement_sd": float(np.std(agree)), "predicted_hypergeometric": hyper,
                     "predicted_binomial": bino, "share_stable": float(np.mean(st)),
                     "share_unstable": float(np.mean(un)), "changed_stable": float(np.nanmean(ch_st)),
                     "changed_unstable": float(np.nanmean(ch_un))})
    return rows


def recommend_seeds(p_hat: ArrayLike, *, eps: float = 0.05, target: float = 0.9,
                    max_seeds: int = 256) -> Recommendation:
    """The smallest seed count whose labels agree with the N → ∞ labels for at least ``target`` of the latents,
    if each latent's true match rate were its p̂ here (binomial model; NaN-free p̂ in [0, 1]).

    The N → ∞ label of rate q is stable if q ≥ 1 − ε, unstable if q ≤ ε, else neither. Returns ``{"target",
    "num_seeds" (None if above max_seeds), "agreement_at": {S: agreement} for a few S}``.
    """
    q = as_numpy(p_hat, "p_hat").reshape(-1)
    if np.any((q < 0) | (q > 1)):
        raise UsageError("p_hat must lie in [0, 1]")
    vals, weight = np.unique(np.round(q, 6), return_counts=True)
    lim_v = np.where(vals >= 1 - eps, 0, np.where(vals <= eps, 1, 2))

    def agreement(s: int) -> float:
        probs = label_probabilities(vals, s - 1, eps)  # (V, 3)
        return float((probs[np.arange(len(vals)), lim_v] * weight).sum() / weight.sum())

    found = next((s for s in range(2, max_seeds + 1) if agreement(s) >= target), None)
    marks = sorted({2, 4, 8, 16, 32, 64, 96, *([found] if found else [])} & set(range(2, max_seeds + 1)))
    return {"target": target, "num_seeds": found, "agreement_at": {s: agreement(s) for s in marks},
            "latents": len(q)}


def _best_cos(best_cos: ArrayLike) -> np.ndarray:
    """(S, S, F) float array; the diagonal (a seed against itself) may hold NaN and is never read."""
    B = np.asarray(best_cos, dtype=np.float64)
    if B.ndim != 3 or B.shape[0] != B.shape[1]:
        raise UsageError(f"best_cos must have shape (S, S, F), got {B.shape}")
    return B


def subset_labels(best_cos: ArrayLike, seeds: ArrayLike, theta: float, eps: float) -> np.ndarray:
    """(S', F) endpoint labels of the seeds ``seeds`` from their comparisons with each other only.
    ``best_cos`` (S, S, F): best cosine of each latent of seed a in seed b (the diagonal is ignored)."""
    B = _best_cos(best_cos)
    idx = np.asarray(seeds, dtype=np.int64)
    if len(idx) < 2:
        raise UsageError(f"seeds must hold at least 2 seed ids, got {len(idx)}")
    counts = np.stack([sum((B[a, b] >= theta) for b in idx if b != a) for a in idx])
    return _label_of_count(counts, len(idx) - 1, eps)


def seed_subset_curve(
    best_cos: ArrayLike,
    metrics: dict[str, Callable[[np.ndarray, np.ndarray], float]],
    *,
    theta: float = 0.7,
    eps: float = 0.05,
    sizes: tuple[int, ...] | None = None,
    draws: int = 2,
    seed: int = 0,
) -> list[SubsetRow]:
    """Downstream numbers recomputed on random subsets of S' seeds.

    Parameters
    ----------
    best_cos: (S, S, F) best cosine of each latent of seed a among seed b's latents.
    metrics: name -> callable(seed ids (S',), labels (S', F)) returning a float (NaN when undefined).
    theta, eps: the matching threshold and the endpoint split of the labels.
    sizes: seed counts S' (default 2 … S); at S' = S the one subset is every seed.
    draws: random subsets per S' below S.
    seed: seed of the subsets.

    Returns
    -------
    One dict per S': ``num_seeds``, ``draws`` and per metric ``<name>`` (mean over draws, NaN ignored) and
    ``<name>_sd``. Memory: O(S'·F) labels per subset plus what the metrics use.
    """
    B = _best_cos(best_cos)
    S = B.shape[0]
    sizes = tuple(range(2, S + 1)) if sizes is None else tuple(int(s) for s in sizes)
    if any(not 2 <= s <= S for s in sizes):
        raise UsageError(f"sizes must lie in [2, {S}] (the run has {S} seeds), got {sizes}")
    if draws < 1:
        raise UsageError(f"draws must be >= 1, got {draws}")
    rng = np.random.default_rng([seed, 0x5EED6])
    rows = []
    for s in sizes:
        subsets = [np.arange(S)] if s == S else [np.sort(rng.choice(S, s, replace=False)) for _ in range(draws)]
        vals: dict[str, list[float]] = {name: [] for name in metrics}
        for sub in subsets:
            labels = subset_labels(B, sub, theta, eps)
            for name, fn in metrics.items():
                vals[name].append(float(fn(sub, labels)))
        row: dict = {"num_seeds": s, "draws": len(subsets)}
        for name, v in vals.items():
            arr = np.asarray(v, dtype=np.float64)
            ok = arr[np.isfinite(arr)]
            row[name] = float(ok.mean()) if len(ok) else float("nan")
            row[f"{name}_sd"] = float(ok.std()) if len(ok) else float("nan")
        rows.append(row)
    return rows
