import numpy as np
import pytest

from sae_fast.analysis.classifier import cross_seed_classifier
from sae_fast.analysis.effective_rank import effective_rank, matched_effective_rank
from sae_fast.analysis.subspaces import cross_seed_subspaces


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
