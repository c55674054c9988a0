import numpy as np
import pytest

from sae_fast.analysis.classifier import cross_seed_classifier
from sae_fast.analysis.effective_rank import effective_rank, matched_effective_rank
from sae_fast.analysis.subspaces import cross_seed_subspaces, matched_cross_seed_subspaces


def test_effective_rank_extremes():
    assert effective_rank(np.eye(6)) == pytest.approx(6.0)
    assert effective_rank(np.ones((5, 4))) == pytest.approx(1.0)
    assert effective_rank(np.eye(6), "participation") == pytest.approx(6.0)
    with pytest.raises(ValueError, match="kind"):
        effective_rank(np.eye(3), "nope")


def test_matched_effective_rank_separates_low_rank_set():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 32))
    high = rng.standard_normal((60, 32))
    res = matched_effective_rank(np.concatenate([low, high]), {"low": np.arange(40), "high": np.arange(40, 100)})
    assert res["n"] == 40
    assert res["sets"]["low"]["er_over_d_mean"] < 3.5 / 32 < res["sets"]["high"]["er_over_d_mean"]


def _seeds_with_shared_subspace(S=4, d=48, r=6, n=30, seed=0):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, r)))[0]
    decs, sets = [], []
    for _ in range(S):
        inside = rng.standard_normal((n, r)) @ basis.T  # a fresh random basis inside the shared subspace
        other = rng.standard_normal((n, d))
        decs.append(np.concatenate([inside, other]))
        sets.append(np.arange(n))
    return decs, sets


def test_cross_seed_subspaces_find_shared_subspace():
    decs, sets = _seeds_with_shared_subspace()
    res = cross_seed_subspaces(decs, sets, ranks=(6, 64), n_random=2)
    assert list(res["ranks"]) == [6]  # 64 > d is skipped
    e = res["ranks"][6]
    assert e["set"]["mean_cos2"] > 0.99 and e["set"]["energy"] > 0.99
    assert e["haar"]["mean_cos2"] < 0.3 and e["random_subset"]["mean_cos2"] < 0.6


def test_classifier_learns_a_direction_rule():
    rng = np.random.default_rng(1)
    d = 16
    decs, labels = [], []
    for _ in range(3):
        x = rng.standard_normal((200, d))
        lab = np.where(x[:, 0] > 0.3, 1, np.where(x[:, 0] < -0.3, -1, 0)).astype(np.int8)
        decs.append(x)
        labels.append(lab)
    res = cross_seed_classifier(decs, labels)
    assert len(res["pairs"]) == 6
    assert res["mean"]["balanced_accuracy"] > 0.9 and res["mean"]["f1_stable"] > 0.9
    assert res["mean"]["majority_balanced_accuracy"] == 0.5
    with pytest.raises(ValueError, match="labels"):
        cross_seed_classifier(decs, labels[:2])


def test_matched_null_is_not_degenerate_for_a_set_of_most_latents():
    """A set holding 95 % of the latents: the full-size random subset is nearly the set (no contrast), while the
    matched comparison at n <= F/4 keeps the z-score honest (no planted structure: |z| small); a planted shared
    subspace in a quarter of the latents gives a large z."""
    rng = np.random.default_rng(0)
    d, F, S = 32, 200, 4
    decs = [rng.standard_normal((F, d)) for _ in range(S)]
    big = [np.arange(190)] * S
    full = cross_seed_subspaces(decs, big, ranks=(4,), n_random=2)["ranks"][4]
    assert abs(full["set"]["mean_cos2"] - full["random_subset"]["mean_cos2"]) < 0.05
    res = matched_cross_seed_subspaces(decs, big, ranks=(4,), draws=4)
    assert res["n"] == F // 4 and res["share_of_F"] == pytest.approx(0.95)
    assert abs(res["ranks"][4]["z_mean_cos2"]) < 4
    basis = np.linalg.qr(rng.standard_normal((d, 4)))[0]
    for dec in decs:
        dec[:50] = rng.standard_normal((50, 4)) @ basis.T + 0.1 * rng.standard_normal((50, d))
    res = matched_cross_seed_subspaces(decs, [np.arange(50)] * S, ranks=(4, 64), draws=3)
    assert list(res["ranks"]) == [4]  # rank > n or d skipped
    e = res["ranks"][4]
    assert e["set"]["mean_cos2"] > 0.9 > 0.5 > e["random"]["mean_cos2"] and e["z_mean_cos2"] > 5
    assert e["set"]["mean_cos2_spread"] >= 0 and e["haar_mean_cos2"] == 4 / d


def test_matched_effective_rank_reports_min_nd_and_random_baseline():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 64))
    high = rng.standard_normal((60, 64))
    res = matched_effective_rank(np.concatenate([low, high]), {"low": np.arange(40), "high": np.arange(40, 100)},
                                 n=20, repeats=4)
    low_r, high_r, rand = res["sets"]["low"], res["sets"]["high"], res["random"]
    assert low_r["er_over_min_nd_mean"] == pytest.approx(low_r["er_over_d_mean"] * 64 / 20)
    assert low_r["er_over_min_nd_mean"] < 0.2 < 0.8 < high_r["er_over_min_nd_mean"]
    assert rand["size"] == 100 and rand["er_over_min_nd_std"] > 0
    assert low_r["er_over_min_nd_mean"] < rand["er_over_min_nd_mean"]
