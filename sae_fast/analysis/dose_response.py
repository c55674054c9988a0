"""Dose-response of subspace reproducibility (method.md §11): the paper's claim predicts a *trend* of cross-seed
subspace sharing over p̂ (more sharing beyond the null the less stable the latents), not only an endpoint contrast.

Every latent of every seed (p̂ with that seed as the anchor) falls into a p̂ bin (or a firing-frequency quantile
bin); per bin and rank r, :func:`sae_fast.analysis.nulls.subspace_test` gives the cross-seed cos² of the bin's
latents, the frequency-matched outside null and the split-half ceiling at one common subsample size n for all
bins (cos² depends on n, so bins must share it). The excess over the null gets a seed-bootstrap interval
(:func:`sae_fast.analysis.bootstrap.pair_bootstrap` over its per-pair values), and the trend is the Spearman
correlation of bin centre with excess.

Memory: that of :func:`subspace_test` per bin (one n × d subsample per seed at a time).
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from scipy.stats import spearmanr

from ..errors import UsageError
from ._common import ArrayLike, as_numpy
from .bootstrap import pair_bootstrap
from .nulls import MAX_OUTSIDE_SHARE, null_sample_cap, subspace_test

P_HAT_EDGES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def bin_masks(values: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
    """(S, F) bool masks per bin [e_i, e_{i+1}) (the last bin includes its upper edge)."""
    out = []
    for i in range(len(edges) - 1):
        hi = values <= edges[i + 1] if i == len(edges) - 2 else values < edges[i + 1]
        out.append((values >= edges[i]) & hi)
    return out


class BinExcess(TypedDict):
    excess: float | None
    excess_lo: float | None
    excess_hi: float | None
    R: float | None
    p_value: float | None


class DoseBin(TypedDict):
    """One bin; ``ranks`` is empty when the bin was skipped (too few latents)."""

    lo: float | None
    hi: float | None
    centre: float | None
    sizes: list[int]
    skipped: bool
    null_excludes_group: bool
    ranks: dict[int, BinExcess]


class Binning(TypedDict):
    """:func:`dose_response`: one binning (by p̂ or by frequency) with the Spearman trend of excess per rank."""

    by: str
    edges: list[float]
    bins: list[DoseBin]
    trend: dict[int, float | None]
    excluded_from_null: int
    n: int


def dose_response(
    decoders: list[ArrayLike],
    p_hat: ArrayLike,
    freqs: ArrayLike,
    *,
    by: str = "p_hat",
    edges: tuple[float, ...] | None = None,
    freq_bins: int = 4,
    ranks: tuple[int, ...] = (8, 16, 32),
    alive: ArrayLike | None = None,
    exclude_from_null: ArrayLike | None = None,
    max_n: int = 256,
    max_outside_share: float = MAX_OUTSIDE_SHARE,
    null_draws: int = 50,
    set_draws: int = 3,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Binning:
    """Subspace excess over the frequency-matched outside null per p̂ (or frequency) bin.

    Parameters
    ----------
    decoders: S decoders (F, d).
    p_hat: (S, F) p̂ of every latent with its own seed as the anchor.
    freqs: (S, F) firing frequencies (for the frequency match, and the bins when ``by="frequency"``).
    by: "p_hat" or "frequency".
    edges: bin edges (default: p̂ 0, .05, .25, .5, .75, .95, 1; frequency: ``freq_bins`` pooled quantiles).
    ranks: subspace ranks r (a rank above n is skipped).
    alive: (S, F) bool latents that may be used (default all).
    exclude_from_null: (S, F) bool latents that never enter a bin's null (they still count in their own bin), e.g.
        members of planted groups or of candidate subspaces: without it a bin's null may be drawn from other bins
        that hold the same subspace, which shrinks the excess. A bin whose outside pool this would leave below
        max(ranks) latents keeps the full pool (``null_excludes_group`` False in its entry).
    max_n, null_draws, set_draws: see :func:`subspace_test`; n is common to all bins with at least 2 max(ranks)
        latents in every seed (smaller bins are reported as skipped).
    max_outside_share: n is at most this share of each usable bin's smallest outside pool (see
        :func:`subspace_test`).
    n_boot, alpha: seed-bootstrap interval of each excess.
    seed: seed of all draws.

    Returns
    -------
    ``{"by", "edges", "n", "excluded_from_null", "bins": [{"lo", "hi", "centre", "sizes", "skipped",
    "null_excludes_group", "ranks": {r: {"cross", "null",
    "ceiling", "excess", "excess_lo", "excess_hi", "R", "p_value"}}}], "trend": {r: spearman rho}}``.
    """
    P = as_numpy(p_hat, "p_hat", ndim=2)
    Fq = as_numpy(freqs, "freqs", ndim=2)
    S = len(decoders)
    if P.shape[0] != S or Fq.shape != P.shape:
        raise UsageError(f"p_hat and freqs must be (S={S}, F) like the decoders, got {P.shape} and {Fq.shape}")
    ok = np.ones(P.shape, dtype=bool) if alive is None else np.asarray(alive, dtype=bool)
    e = _bin_edges(by, P, Fq, ok, edges, freq_bins)
    masks = [m & ok for m in bin_masks(P if by == "p_hat" else Fq, e)]
    excl = np.zeros(P.shape, dtype=bool) if exclude_from_null is None else np.asarray(exclude_from_null, dtype=bool)
    if excl.shape != P.shape:
        raise UsageError(f"exclude_from_null must be (S={S}, F={P.shape[1]}) like p_hat, got {excl.shape}")
    sizes = [[int(m[s].sum()) for s in range(S)] for m in masks]
    pools, excluded = _null_pools(masks, ok, excl, max(ranks))
    usable = [min(sz) >= 2 * max(ranks) and _fits(m, pl, max(ranks)) for sz, m, pl in zip(sizes, masks, pools)]
    n = _common_n(masks, pools, sizes, usable, max_n, max_outside_share, min(ranks))
    out: dict = {"by": by, "edges": e.tolist(), "bins": [], "trend": {}, "excluded_from_null": int(excl.sum()),
                 "n": n}
    for i, (m, pl, sz, use) in enumerate(zip(masks, pools, sizes, usable)):
        entry: dict = {"lo": float(e[i]), "hi": float(e[i + 1]), "centre": float((e[i] + e[i + 1]) / 2),
                       "sizes": sz, "skipped": not use, "null_excludes_group": excluded[i], "ranks": {}}
        if use:
            res = subspace_test(decoders, list(m), freqs=list(Fq), allowed=list(pl), ranks=ranks, n=n,
                                set_draws=set_draws, null_draws=null_draws, seed=seed + i)
            entry["ranks"] = _rank_entries(res, S, n_boot, alpha, seed)
        out["bins"].append(entry)
    for r in ranks:
        pts = [(b["centre"], b["ranks"][r]["excess"]) for b in out["bins"] if r in b["ranks"]]
        out["trend"][r] = float(spearmanr(*zip(*pts))[0]) if len(pts) >= 3 else float("nan")
    return out


def _bin_edges(by: str, P: np.ndarray, Fq: np.ndarray, ok: np.ndarray, edges: tuple[float, ...] | None,
               freq_bins: int) -> np.ndarray:
    """The bin edges: given, or the default p̂ edges, or ``freq_bins`` pooled frequency quantiles."""
    if by == "p_hat":
        return np.asarray(edges if edges is not None else P_HAT_EDGES, dtype=np.float64)
    if by == "frequency":
        return np.asarray(edges if edges is not None else np.quantile(Fq[ok], np.linspace(0, 1, freq_bins + 1)))
    raise UsageError(f"by must be 'p_hat' or 'frequency', got {by!r}")


def _fits(m: np.ndarray, pool: np.ndarray, r_max: int) -> bool:
    """Whether every seed keeps at least ``r_max`` latents of ``pool`` outside the bin ``m``."""
    return min(int((pool[s] & ~m[s]).sum()) for s in range(len(m))) >= r_max


def _null_pools(masks: list[np.ndarray], ok: np.ndarray, excl: np.ndarray, r_max: int
                ) -> tuple[list[np.ndarray], list[bool]]:
    """Per bin: what the set or its null may use (``excl`` latents of other bins left out), and whether the
    exclusion applied; a bin whose outside pool the exclusion empties keeps the full pool."""
    pools = []
    for m in masks:
        cut = ok & ~(excl & ~m)
        pools.append(cut if _fits(m, cut, r_max) else ok)
    return pools, [bool(excl.any()) and pl is not ok for pl in pools]


def _common_n(masks: list[np.ndarray], pools: list[np.ndarray], sizes: list[list[int]], usable: list[bool],
              max_n: int, max_outside_share: float, min_rank: int) -> int:
    """The set size n shared by all usable bins (half the smallest bin, at most max_n and the share of its outside
    pool that keeps the null's draws nearly independent, :func:`sae_fast.analysis.nulls.null_sample_cap`)."""
    if not any(usable):
        return 0
    S = len(sizes[0])
    return min([max_n] + [min(sz) // 2 for sz, u in zip(sizes, usable) if u]
               + [null_sample_cap(min(int((pl[s] & ~m[s]).sum()) for s in range(S)), max_outside_share, min_rank)
                  for m, pl, u in zip(masks, pools, usable) if u])


def _rank_entries(res: dict, S: int, n_boot: int, alpha: float, seed: int) -> dict:
    """Each rank's cross / null / ceiling / excess / R / p-value with the seed-bootstrap interval of the excess."""
    out = {}
    for r, t in res["ranks"].items():
        ci = pair_bootstrap(t["excess_pairs"], res["pairs"], num_seeds=S, n_boot=n_boot, alpha=alpha, seed=seed)
        out[r] = {k: t[k] for k in ("cross", "null", "ceiling", "excess", "R", "p_value")}
        out[r].update(excess_lo=ci.lo, excess_hi=ci.hi)
    return out
