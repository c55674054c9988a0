"""Seed-bootstrap confidence intervals (method.md §11, "Dependence").

The unit of replication of a seed study is the **seed**: two seed pairs that share a seed are not independent, and
the draw-to-draw spread of a subsampling null is not an interval over seeds. Both functions here resample seeds
with replacement and recompute the statistic on each resample:

* :func:`seed_bootstrap` takes one value (or one row, or any object) per seed and a statistic of a list of them;
* :func:`pair_bootstrap` takes one value per seed pair with the pairs' seed ids; a resample of seeds keeps every
  pair (a, b) of two *distinct* drawn seeds, weighted by how often each was drawn (a seed drawn twice is not
  paired with itself, which would be a within-seed comparison).

Intervals are percentile intervals of the bootstrap distribution (level ``1 - alpha``). Memory: O(n_boot) floats
plus one resample of the inputs at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..errors import UsageError


class Interval(NamedTuple):
    """A point estimate (the statistic on all seeds) with its bootstrap percentile interval."""

    estimate: float
    lo: float
    hi: float
    draws: int
    """bootstrap resamples that gave a finite value"""

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi, "draws": self.draws}

    def covers(self, value: float) -> bool:
        return bool(self.lo <= value <= self.hi)


def _check(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise UsageError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"alpha must be in (0, 1), got {alpha}")


def _interval(estimate: float, values: list[float], alpha: float) -> Interval:
    vals = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if len(vals) == 0:
        return Interval(float(estimate), float("nan"), float("nan"), 0)
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(lo), float(hi), len(vals))


def seed_bootstrap(
    per_seed: Sequence[Any],
    statistic: Callable[[list[Any]], float] = lambda xs: float(np.mean(xs)),
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Interval:
    """Percentile interval of ``statistic`` over resamples of seeds.

    Parameters
    ----------
    per_seed: one entry per seed (a number, an array, or anything ``statistic`` understands).
    statistic: maps a list of per-seed entries to a float (default: the mean).
    n_boot: bootstrap resamples.
    alpha: 1 - confidence level.
    seed: seed of the resampling.

    Returns
    -------
    :class:`Interval` (estimate on all seeds, lo, hi, number of finite resamples).
    """
    _check(n_boot, alpha)
    S = len(per_seed)
    if S < 2:
        raise UsageError(f"per_seed must hold at least 2 seeds, got {S}")
    rng = np.random.default_rng([seed, 0xB007])
    items = list(per_seed)
    values = [float(statistic([items[i] for i in rng.integers(0, S, S)])) for _ in range(n_boot)]
    return _interval(float(statistic(items)), values, alpha)


def pair_weights(pairs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Weight of each pair (a, b) in a resample where seed s was drawn ``counts[s]`` times: counts[a] * counts[b]."""
    return counts[pairs[:, 0]] * counts[pairs[:, 1]]


def pair_bootstrap(
    values: np.ndarray,
    pairs: np.ndarray,
    *,
    num_seeds: int | None = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Interval:
    """Percentile interval of the weighted mean of per-pair ``values`` over resamples of **seeds**.

    Parameters
    ----------
    values: (P,) one statistic per seed pair (e.g. a cross-seed cos², or cos² minus its null).
    pairs: (P, 2) the two seed ids of each pair (a != b).
    num_seeds: number of seeds (default: 1 + the largest id).
    n_boot, alpha, seed: as in :func:`seed_bootstrap`.

    Returns
    -------
    :class:`Interval`; the estimate is the plain mean over pairs. A resample with fewer than two distinct seeds
    holds no pair and is skipped (``draws`` counts the others).
    """
    _check(n_boot, alpha)
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    prs = np.asarray(pairs, dtype=np.int64)
    if prs.ndim != 2 or prs.shape != (len(vals), 2):
        raise UsageError(f"pairs must have shape ({len(vals)}, 2) to match values, got {prs.shape}")
    if len(vals) == 0:
        raise UsageError("values must hold at least one seed pair")
    if np.any(prs[:, 0] == prs[:, 1]) or prs.min() < 0:
        raise UsageError("pairs must name two different, non-negative seed ids")
    S = int(num_seeds if num_seeds is not None else prs.max() + 1)
    if prs.max() >= S:
        raise UsageError(f"pairs hold seed id {prs.max()} but num_seeds is {S}")
    rng = np.random.default_rng([seed, 0xB008])
    boot = []
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, S, S), minlength=S).astype(np.float64)
        w = pair_weights(prs, counts)
        boot.append(float(w @ vals / w.sum()) if w.sum() > 0 else float("nan"))
    return _interval(float(vals.mean()), boot, alpha)
