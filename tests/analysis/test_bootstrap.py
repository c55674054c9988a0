import numpy as np
import pytest

from sae_fast.analysis.bootstrap import pair_bootstrap, seed_bootstrap
from sae_fast.errors import UsageError


def test_seed_bootstrap_covers_planted_mean():
    rng = np.random.default_rng(0)
    hits = [seed_bootstrap(rng.normal(1.5, 1.0, 12), n_boot=300, seed=i).covers(1.5) for i in range(150)]
    assert 0.85 <= np.mean(hits) <= 0.99


def test_seed_bootstrap_interval_shrinks_with_more_seeds():
    rng = np.random.default_rng(1)
    small = seed_bootstrap(rng.normal(0, 1, 5), n_boot=500)
    big = seed_bootstrap(rng.normal(0, 1, 80), n_boot=500)
    assert big.hi - big.lo < (small.hi - small.lo) / 2


def test_pair_bootstrap_resamples_seeds_not_pairs():
    # a pair's value is the sum of its two seeds' effects: pairs sharing a seed are dependent. Resampling pairs
    # as if independent under-covers; resampling seeds covers the planted mean at about the nominal rate.
    rng = np.random.default_rng(2)
    S = 8
    pairs = np.array([(a, b) for a in range(S) for b in range(a + 1, S)])
    seed_hits, naive_hits = [], []
    for i in range(120):
        u = rng.normal(0, 1, S)
        vals = u[pairs[:, 0]] + u[pairs[:, 1]] + 0.1 * rng.normal(size=len(pairs))
        seed_hits.append(pair_bootstrap(vals, pairs, n_boot=300, seed=i).covers(0.0))
        naive = seed_bootstrap(list(vals), n_boot=300, seed=i)  # pairs treated as independent units
        naive_hits.append(naive.covers(0.0))
    assert np.mean(seed_hits) >= 0.8
    assert np.mean(naive_hits) < np.mean(seed_hits) - 0.2


def test_pair_bootstrap_checks_inputs():
    with pytest.raises(UsageError, match="pairs must have shape"):
        pair_bootstrap(np.ones(3), np.zeros((2, 2), dtype=int))
    with pytest.raises(UsageError, match="two different"):
        pair_bootstrap(np.ones(1), np.array([[1, 1]]))
    with pytest.raises(UsageError, match="at least 2 seeds"):
        seed_bootstrap([1.0])
