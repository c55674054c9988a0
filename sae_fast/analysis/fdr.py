"""False-discovery control for per-candidate tests (method.md §11, "Multiple testing").

* :func:`empirical_pvalues`: p = (1 + #{null >= stat}) / (1 + N) against a pooled null of N draws. With N draws
  the smallest p is 1/(N+1), so a test of m candidates at FDR q can only reject when N >= m / q or so: pool
  at least 10⁴ draws, or use :func:`tail_pvalues`.
* :func:`tail_pvalues`: the same, but beyond the empirical support a generalized Pareto tail fitted to the top
  ``tail_fraction`` of the null (Knijnenburg et al. 2009) gives p-values below 1/(N+1); the default of the study's
  ``fdr`` step (``candidate_subspaces(pvalues="tail")``, whose raw null draws come back as ``"null_draws"``).
* :func:`qvalues`: Benjamini–Hochberg adjusted p-values (``scipy.stats.false_discovery_control``).
* :func:`storey_pi0`: Storey's estimate of the share of true nulls, π0 = #{p > λ} / ((1 − λ) m), capped at 1.
* :func:`fdr_summary` and :func:`candidate_fdr`: discoveries at several FDR levels, the estimated share of
  non-null candidates 1 − π0, and per-latent q-values (the smallest q of a candidate holding the latent).

Memory: O(m + N) for m tests and N null draws.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import false_discovery_control, genpareto

from ..errors import UsageError
from ._common import ArrayLike


def _pvals(p: ArrayLike, name: str = "p") -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)) or np.any((arr < 0) | (arr > 1)):
        raise UsageError(f"{name} must hold finite p-values in [0, 1]")
    return arr


def empirical_pvalues(stats: ArrayLike, null: ArrayLike) -> np.ndarray:
    """One-sided (large is significant) p-values of ``stats`` against the pooled ``null`` draws."""
    nl = np.sort(np.asarray(null, dtype=np.float64).reshape(-1))
    if len(nl) == 0:
        raise UsageError("null must hold at least one draw")
    st = np.asarray(stats, dtype=np.float64).reshape(-1)
    at_least = len(nl) - np.searchsorted(nl, st - 1e-12, side="left")
    return (1.0 + at_least) / (1.0 + len(nl))


def tail_pvalues(stats: ArrayLike, null: ArrayLike, *, tail_fraction: float = 0.05, min_exceed: int = 10) -> np.ndarray:
    """Empirical p-values, replaced by a generalized-Pareto tail fit where fewer than ``min_exceed`` null draws
    reach the statistic. The tail is fitted to the null's exceedances over its (1 − tail_fraction) quantile.

    A fitted shape below 0 (a bounded tail, usual for similarities bounded by 1) puts an endpoint just past the
    largest draws and gives p ≈ 0 to any statistic beyond it: on planted null studies that made 3 of 8 negative
    controls reject at FDR 0.05. The shape is therefore held at ≥ 0: a bounded fit is replaced by the exponential
    tail (shape 0, the maximum-likelihood scale is the mean exceedance), which decays more slowly (conservative)."""
    if not 0.0 < tail_fraction < 1.0:
        raise UsageError(f"tail_fraction must be in (0, 1), got {tail_fraction}")
    nl = np.asarray(null, dtype=np.float64).reshape(-1)
    st = np.asarray(stats, dtype=np.float64).reshape(-1)
    p = empirical_pvalues(st, nl)
    u = np.quantile(nl, 1 - tail_fraction)
    exceed = nl[nl > u] - u
    far = p * (1 + len(nl)) - 1 < min_exceed
    if len(exceed) < 20 or not far.any():
        return p
    c, _, scale = genpareto.fit(exceed, floc=0.0)
    if c < 0:  # bounded fitted tail: anti-conservative past its endpoint (docstring)
        c, scale = 0.0, float(exceed.mean())
    tail = tail_fraction * genpareto.sf(np.maximum(st[far] - u, 0.0), c, loc=0.0, scale=scale)
    p[far] = np.clip(tail, 1e-300, 1.0)
    return p


def qvalues(p: ArrayLike) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) of the given p-values."""
    arr = _pvals(p)
    return false_discovery_control(arr, method="bh") if len(arr) else arr


def storey_pi0(p: ArrayLike, lam: float = 0.5) -> float:
    """Storey's estimate of the share of true null hypotheses at tuning value ``lam`` (capped at 1)."""
    if not 0.0 <= lam < 1.0:
        raise UsageError(f"lam must be in [0, 1), got {lam}")
    arr = _pvals(p)
    if len(arr) == 0:
        return float("nan")
    return float(min(1.0, np.sum(arr > lam) / ((1.0 - lam) * len(arr))))


def fdr_summary(p: ArrayLike, *, levels: tuple[float, ...] = (0.05, 0.1), lam: float = 0.5) -> dict:
    """``{"tests", "q": (m,) q-values, "discoveries": {level: count}, "pi0", "non_null_share"}``."""
    arr = _pvals(p)
    q = qvalues(arr)
    pi0 = storey_pi0(arr, lam)
    return {"tests": len(arr), "q": q, "discoveries": {float(lv): int(np.sum(q <= lv)) for lv in levels},
            "pi0": pi0, "non_null_share": 1.0 - pi0 if np.isfinite(pi0) else float("nan"),
            "min_p": float(arr.min()) if len(arr) else float("nan")}


def candidate_fdr(candidates: dict, num_latents: list[int], *, levels: tuple[float, ...] = (0.05, 0.1),
                  lam: float = 0.5) -> dict:
    """FDR control over the candidates of :func:`sae_fast.analysis.candidates.candidate_subspaces`.

    Adds ``"q_value"`` to every candidate dict (in place) and returns :func:`fdr_summary` plus ``"latent_q"``:
    per seed a (F_s,) float array, the smallest q of a candidate holding the latent (1 for latents in none).
    """
    cands = candidates.get("candidates", [])
    summary = fdr_summary([c["p_value"] for c in cands], levels=levels, lam=lam)
    latent_q = [np.ones(int(F)) for F in num_latents]
    for c, q in zip(cands, summary["q"]):
        c["q_value"] = float(q)
        idx = np.asarray(c["latents"], dtype=np.int64)
        latent_q[c["seed"]][idx] = np.minimum(latent_q[c["seed"]][idx], q)
    summary["latent_q"] = latent_q
    return summary
