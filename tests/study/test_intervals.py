"""Seed-bootstrap intervals of the headline numbers on planted per-seed values."""

from __future__ import annotations

import numpy as np
import pytest

from sae_fast.analysis._common import STABLE, UNSTABLE
from sae_fast.study.steps import intervals as iv


def _planted(S: int = 8, F: int = 400, d: int = 32, r: int = 4, seed: int = 0):
    """Per seed a planted share of stable latents around 0.6 (differing by seed), unstable latents inside an
    r-dim span firing at a third of the stable latents' frequency."""
    rng = np.random.default_rng(seed)
    span = np.linalg.qr(rng.standard_normal((d, r)))[0]
    shares = np.clip(0.6 + 0.05 * rng.standard_normal(S), 0.3, 0.9)
    labels, freq, decs = [], [], []
    for s in range(S):
        lab = np.full(F, UNSTABLE)
        lab[: round(shares[s] * F)] = STABLE
        f = np.where(lab == STABLE, 0.03, 0.01) * rng.uniform(0.8, 1.2, F)
        dec = rng.standard_normal((F, d))
        dec[lab == UNSTABLE] = rng.standard_normal(((lab == UNSTABLE).sum(), r)) @ span.T
        labels.append(lab)
        freq.append(f)
        decs.append(dec)
    return np.stack(labels), np.stack(freq), decs, shares


def test_per_seed_intervals_cover_planted_values_and_have_width():
    labels, freq, decs, shares = _planted()
    rows = {r["name"]: r for r in iv.label_intervals(labels, freq, 1000, 0)}
    st = rows["share stable"]
    assert st["unit"] == "seed" and st["lo"] <= 0.6 <= st["hi"] and st["estimate"] == pytest.approx(shares.mean(), 1e-2)
    assert 0.01 < st["hi"] - st["lo"] < 0.15  # seeds differ: an interval of real width, not a point
    assert rows["share unstable"]["lo"] <= 0.4 <= rows["share unstable"]["hi"]
    ratio = rows["frequency ratio unstable / stable"]
    assert ratio["lo"] <= 1 / 3 <= ratio["hi"] and ratio["hi"] < 0.5
    er = {r["name"]: r for r in iv.rank_intervals(decs, labels, "unstable", 500, 0)}
    assert er["ER/d unstable, matched n"]["hi"] <= 4 / 32 + 1e-9 < er["ER/d stable, matched n"]["lo"]
    assert er["ER/d unstable − ER/d stable"]["hi"] < 0


def test_pair_and_pooling_intervals_and_reasons_for_missing_ones():
    rng = np.random.default_rng(1)
    S = 6
    pairs = [{"train": a, "test": b, "balanced_accuracy": 0.7 + 0.02 * rng.standard_normal(),
              "f1_unstable": 0.5 + 0.05 * rng.standard_normal()} for a in range(S) for b in range(S) if a != b]
    acc, f1 = iv.classifier_intervals(pairs, S, 1000, 0)
    assert acc["unit"] == f1["unit"] == "seed pair"
    assert acc["lo"] <= 0.7 <= acc["hi"] and f1["lo"] <= 0.5 <= f1["hi"] and f1["hi"] - f1["lo"] > 0
    pooling = {"pooled": {"p_hat_mean": 0.8, "ev": 0.9, "share_stable": 0.7},
               "single": [{"p_hat_mean": 0.6 + 0.02 * i, "ev": 0.9, "share_stable": 0.5} for i in range(4)]}
    gain = {r["name"]: r for r in iv.pooling_intervals(pooling, 1000, 0)}
    assert gain["pooling gain in p̂"]["lo"] > 0.1 and gain["pooling gain in p̂"]["hi"] <= 0.2 + 1e-9
    assert gain["pooling change in EV"]["estimate"] == pytest.approx(0.0)
    contrasts = [{"stable_vs_unstable": 0.19 + 0.01 * i, "stable_vs_random": 0.1} for i in range(5)]
    masked = {m["name"]: m for m in iv.masking_entries(
        {"delta_ev": {"stable": 0.3, "stable_n": 0.2, "unstable_4n": 0.01},
         "per_seed": [c for c in contrasts]}, 1000, 0)}
    gap = masked["ΔEV(n stable) − ΔEV(ratio·n unstable)"]
    assert gap["unit"] == "seed" and gap["lo"] < 0.21 < gap["hi"] and gap["estimate"] == pytest.approx(0.21)
    assert "fewer than 2 seeds" in masked["ΔEV(ratio·n unstable) − ΔEV(random, same size)"]["reason"]
    assert np.isnan(masked["ΔEV stable (anchor)"]["lo"]) and "anchor seed" in masked["ΔEV stable (anchor)"]["reason"]
    one = iv.masking_entries({"delta_ev": {"stable_n": 0.2}, "per_seed": [contrasts[0]]}, 10, 0)
    assert one[0]["estimate"] == pytest.approx(0.19) and np.isnan(one[0]["lo"]) and one[0]["reason"]
    assert "not run" in iv.masking_entries({}, 10, 0)[0]["reason"]
    assert "not run" in iv.classifier_intervals([], S, 10, 0)[0]["reason"]
    assert "not run" in iv.pooling_intervals({}, 10, 0)[0]["reason"]
