"""Seed-bootstrap intervals of the study's headline numbers, for the verdict section (method.md §11, "Dependence").

Every number that exists once per seed is resampled over seeds (:func:`sae_fast.analysis.bootstrap.seed_bootstrap`);
every number that exists once per (train, test) or (a, b) seed pair over seeds with the pairs they keep
(:func:`sae_fast.analysis.bootstrap.pair_bootstrap`). Labels are the full run's (fixed); what is resampled is which
seeds' values enter the mean. A number measured once for the run (the masking ΔEV of all stable / all unstable
latents, on the anchor seed only) is listed with its value, no interval and the reason.

Memory: O(S·F·d) decoders (effective ranks, one seed at a time) + O(n_boot).
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from ...analysis._common import STABLE, UNSTABLE
from ...analysis.bootstrap import Interval, pair_bootstrap, seed_bootstrap
from ...analysis.effective_rank import effective_rank
from .subspaces import seed_sets

NAN = float("nan")


class IntervalRow(TypedDict):
    """A headline number with its seed-bootstrap interval, or the reason it has none; NaN stored as null."""

    name: str
    unit: str
    estimate: float | None
    lo: float | None
    hi: float | None
    draws: int
    reason: str


def _entry(name: str, unit: str, ci: Interval | None, *, estimate: float = NAN, reason: str = "") -> IntervalRow:
    if ci is None:
        return {"name": name, "unit": unit, "estimate": estimate, "lo": NAN, "hi": NAN, "draws": 0,
                "reason": reason}
    return {"name": name, "unit": unit, **ci.as_dict(), "reason": reason}


def _per_seed(name: str, values: list[float], n_boot: int, seed: int) -> IntervalRow:
    vals = [v for v in values if np.isfinite(v)]
    if len(vals) < 2:
        return _entry(name, "seed", None, estimate=float(np.mean(vals)) if vals else NAN,
                      reason="fewer than 2 seeds with a value")
    return _entry(name, "seed", seed_bootstrap(vals, n_boot=n_boot, seed=seed))


def label_intervals(labels: np.ndarray, freq: np.ndarray, n_boot: int, seed: int) -> list[IntervalRow]:
    """Shares of stable / unstable latents per seed and the frequency ratio unstable / stable per seed."""
    rows = [_per_seed("share stable", [float(np.mean(lab == STABLE)) for lab in labels], n_boot, seed),
            _per_seed("share unstable", [float(np.mean(lab == UNSTABLE)) for lab in labels], n_boot, seed)]
    ratios = []
    for s in range(len(labels)):
        st, un = freq[s][labels[s] == STABLE], freq[s][labels[s] == UNSTABLE]
        ratios.append(float(un.mean() / st.mean()) if len(st) and len(un) and st.mean() > 0 else NAN)
    return [*rows, _per_seed("frequency ratio unstable / stable", ratios, n_boot, seed)]


def rank_intervals(decoders: list, labels: np.ndarray, kind: str, n_boot: int, seed: int) -> list[IntervalRow]:
    """Per seed, ER/d of the study's set and of the stable set at matched size (a random subset of the larger),
    and their difference."""
    rng = np.random.default_rng([seed, 0xE4])
    tested_er, stable_er = [], []
    for s, dec in enumerate(decoders):
        tested, stable = np.flatnonzero(seed_sets(labels, None, kind)[s]), np.flatnonzero(labels[s] == STABLE)
        n = min(len(tested), len(stable))
        if n < 2:
            tested_er.append(NAN)
            stable_er.append(NAN)
            continue
        d = np.asarray(dec).shape[1]
        tested_er.append(effective_rank(np.asarray(dec)[rng.choice(tested, n, replace=False)]) / d)
        stable_er.append(effective_rank(np.asarray(dec)[rng.choice(stable, n, replace=False)]) / d)
    diff = [a - b for a, b in zip(tested_er, stable_er)]
    return [_per_seed(f"ER/d {kind}, matched n", tested_er, n_boot, seed),
            _per_seed("ER/d stable, matched n", stable_er, n_boot, seed),
            _per_seed(f"ER/d {kind} − ER/d stable", diff, n_boot, seed)]


def classifier_intervals(pairs: list[dict], num_seeds: int, n_boot: int, seed: int) -> list[IntervalRow]:
    """Balanced accuracy and F1 of the unstable class over (train, test) seed pairs."""
    out = []
    for key, name in (("balanced_accuracy", "classifier balanced accuracy"), ("f1_unstable", "classifier F1")):
        rows = [p for p in pairs if np.isfinite(p.get(key, NAN))]
        if not rows:
            out.append(_entry(name, "seed pair", None, reason="classifier step not run or no pair with a value"))
            continue
        vals = np.array([p[key] for p in rows])
        prs = np.array([(p["train"], p["test"]) for p in rows])
        out.append(_entry(name, "seed pair", pair_bootstrap(vals, prs, num_seeds=num_seeds, n_boot=n_boot,
                                                            seed=seed)))
    return out


def pooling_intervals(pooling: dict, n_boot: int, seed: int) -> list[IntervalRow]:
    """Pooled SAE minus each single pool seed: p̂, EV and share of stable latents."""
    if "pooled" not in pooling or not pooling.get("single"):
        return [_entry("pooling gain in p̂", "seed", None, reason="pooling step not run")]
    out = []
    for key, name in (("p_hat_mean", "pooling gain in p̂"), ("ev", "pooling change in EV"),
                      ("share_stable", "pooling gain in share stable")):
        gains = [pooling["pooled"].get(key, NAN) - s.get(key, NAN) for s in pooling["single"]]
        out.append(_per_seed(name, gains, n_boot, seed))
    return out


CONTRAST_NAMES = {"stable_vs_unstable": "ΔEV(n stable) − ΔEV(ratio·n unstable)",
                  "stable_vs_random": "ΔEV(n stable) − ΔEV(random, same size)",
                  "stable_vs_freqmatched": "ΔEV(n stable) − ΔEV(frequency-matched, same size)",
                  "unstable_vs_random": "ΔEV(ratio·n unstable) − ΔEV(random, same size)",
                  "unstable_vs_freqmatched": "ΔEV(ratio·n unstable) − ΔEV(frequency-matched, same size)"}
"""the masking ΔEV contrasts (:data:`sae_fast.analysis.masking.CONTRASTS`) as the tables name them"""


def masking_entries(masking: dict, n_boot: int, seed: int) -> list[IntervalRow]:
    """The masking ΔEV contrasts with their seed-bootstrap interval over the masked seeds' per-seed values
    (``masking.per_seed``), then the anchor's whole-set ΔEVs (measured on the anchor only, no interval)."""
    dev = masking.get("delta_ev", {})
    if not dev:
        return [_entry("ΔEV contrasts", "none", None, reason="masking step not run")]
    per_seed = masking.get("per_seed", [])
    rows = []
    for key, name in CONTRAST_NAMES.items():
        vals = [float(e.get(key, NAN)) for e in per_seed]
        rows.append(_per_seed(name, vals, n_boot, seed))
    why = "whole-set ΔEV: measured on the anchor seed only (the contrasts above carry the seed interval)"
    return [*rows, *(_entry(f"ΔEV {k} (anchor)", "none", None, estimate=float(v), reason=why)
                     for k, v in dev.items() if k in ("stable", "unstable"))]


def subspace_entries(subspace: dict) -> list[IntervalRow]:
    """The nulls step's subspace excess per rank, with its seed-pair bootstrap interval."""
    if not subspace:
        return [_entry("subspace excess", "seed pair", None, reason="nulls step not run")]
    return [_entry(f"subspace excess r = {r}", "seed pair",
                   Interval(t["excess"], t.get("excess_lo", NAN), t.get("excess_hi", NAN), 0))
            for r, t in sorted(subspace.items(), key=lambda kv: int(kv[0]))]
