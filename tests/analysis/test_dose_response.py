import numpy as np
import pytest

from sae_fast.analysis.calibration import PlantedStudy, planted_study
from sae_fast.analysis.dose_response import bin_masks, dose_response
from sae_fast.analysis.stability import anchor_scores
from sae_fast.errors import UsageError


def _run(share: float, by: str = "p_hat"):
    pl = planted_study(PlantedStudy(num_seeds=4, n_stable=120, n_unstable=64, grouped_share=share, seed=1))
    p = anchor_scores(pl.decoders).p_hat
    res = dose_response(pl.decoders, p, np.stack(pl.freqs), by=by, ranks=(4,), max_n=24, null_draws=20,
                        set_draws=2, n_boot=200)
    return res, pl, p


def test_dose_response_finds_planted_groups_in_their_bins():
    res, pl, p = _run(0.9)
    used = [b for b in res["bins"] if not b["skipped"]]
    assert len(used) >= 2
    # the bin holding most grouped latents has an excess whose seed-bootstrap interval is above 0
    grouped_p = p[0, pl.grouped[0]]
    centre = np.median(grouped_p)
    best = min(used, key=lambda b: abs(b["centre"] - centre))
    assert best["ranks"][4]["excess_lo"] > 0 and best["ranks"][4]["p_value"] <= 0.05


def test_dose_response_negative_control_has_no_excess():
    res, _, _ = _run(0.0)
    used = [b for b in res["bins"] if not b["skipped"]]
    assert used
    assert all(b["ranks"][4]["excess"] < 0.1 for b in used)


def test_bins_and_checks():
    v = np.array([[0.0, 0.05, 0.5, 1.0]])
    masks = bin_masks(v, np.array([0.0, 0.05, 0.95, 1.0]))
    assert [m.sum() for m in masks] == [1, 2, 1]
    with pytest.raises(UsageError, match="by must be"):
        dose_response([np.eye(4)] * 2, np.zeros((2, 4)), np.zeros((2, 4)), by="size")


def _split_group(seed: int = 0, S: int = 4, d: int = 32):
    """Per seed: a shared rank-4 group of 80 latents split over the two low-p̂ bins (40 each, with 40 random
    latents each), and 160 random latents at high p̂. Equal firing frequencies."""
    rng = np.random.default_rng(seed)
    span = np.linalg.qr(rng.standard_normal((d, 4)))[0]
    decs, p_hat, group = [], [], []
    for _ in range(S):
        g = rng.standard_normal((80, 4)) @ span.T
        decs.append(np.concatenate([g[:40], rng.standard_normal((40, d)), g[40:], rng.standard_normal((200, d))]))
        p_hat.append(np.concatenate([np.full(80, 0.0), np.full(80, 0.2), np.full(160, 0.9)]))
        group.append(np.concatenate([np.ones(40), np.zeros(40), np.ones(40), np.zeros(200)]).astype(bool))
    return decs, np.stack(p_hat), np.stack(group), np.full((S, 320), 0.01)


def test_null_outside_planted_groups_recovers_the_excess_the_other_bins_hide():
    decs, p_hat, group, freq = _split_group()
    # every latent here is its own seed's random direction (no outside population shared across seeds), so the
    # null's disjoint-draw bias that max_outside_share guards against does not arise: n may take half the pool
    kw = dict(by="p_hat", edges=(0.0, 0.1, 0.5, 1.0), ranks=(4,), max_n=32, max_outside_share=0.5, null_draws=10,
              set_draws=2, n_boot=200)
    plain = dose_response(decs, p_hat, freq, **kw)
    clean = dose_response(decs, p_hat, freq, exclude_from_null=group, **kw)
    assert clean["excluded_from_null"] == group.sum()
    assert [b["null_excludes_group"] for b in clean["bins"]] == [True, True, True]
    assert not any(b["null_excludes_group"] for b in plain["bins"])
    low_plain, low_clean = plain["bins"][0]["ranks"][4], clean["bins"][0]["ranks"][4]
    # the other low bin holds the same subspace: the plain null is inflated, the excluding one is not
    assert low_plain["null"] > low_clean["null"] + 0.02 and low_clean["excess"] > low_plain["excess"] + 0.02
    # the planted trend: excess falls with p̂ (both low bins hold the group, the high bin none)
    ex = [b["ranks"][4]["excess"] for b in clean["bins"]]
    assert ex[0] > 0.1 and ex[1] > 0.1 and abs(ex[2]) < 0.05 and clean["trend"][4] < 0
    with pytest.raises(UsageError, match="exclude_from_null"):
        dose_response(decs, p_hat, freq, exclude_from_null=group[:, :10], **kw)
