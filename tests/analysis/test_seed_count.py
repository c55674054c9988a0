import math

import numpy as np
import pytest

from sae_fast.analysis._common import NEITHER, STABLE, UNSTABLE
from sae_fast.analysis.seed_count import label_probabilities, recommend_seeds, seed_count_curve
from sae_fast.errors import UsageError


def test_label_probabilities_match_the_binomial_arithmetic():
    # method.md §11: q = 0.1 is labelled unstable w.p. 0.9^7 = 0.478 at N = 7 and P(X <= 4) ~ 0.03 at N = 95
    assert label_probabilities(0.1, 7)[1] == pytest.approx(0.9**7)
    by_hand = sum(math.comb(95, k) * 0.1**k * 0.9 ** (95 - k) for k in range(5))  # X <= 4 = floor(0.05 * 95)
    assert label_probabilities(0.1, 95)[1] == pytest.approx(by_hand) and 0.02 < by_hand < 0.04
    probs = label_probabilities(np.array([0.0, 0.5, 1.0]), 20)
    assert np.allclose(probs.sum(-1), 1) and probs[0, 1] == 1 and probs[2, 0] == 1


def test_curve_agreement_follows_the_hypergeometric_prediction():
    rng = np.random.default_rng(0)
    A, N, F = 3, 24, 3000
    q = rng.choice([0.0, 0.03, 0.1, 0.5, 0.97, 1.0], size=(A, 1, F))
    matched = rng.random((A, N, F)) < q
    rows = seed_count_curve(matched, sizes=(3, 8, 16, 25), draws=4)
    assert [r["num_seeds"] for r in rows] == [3, 8, 16, 25]
    for r in rows:
        assert abs(r["agreement"] - r["predicted_hypergeometric"]) < 0.02
    assert rows[-1]["agreement"] == 1.0
    assert rows[0]["agreement"] < rows[2]["agreement"]


def test_recommendation_grows_with_label_noise():
    clean = recommend_seeds(np.concatenate([np.zeros(50), np.ones(50)]), target=0.95)
    noisy = recommend_seeds(np.concatenate([np.full(50, 0.2), np.ones(50)]), target=0.95)
    assert clean["num_seeds"] == 2
    assert noisy["num_seeds"] is not None and noisy["num_seeds"] > 8


def test_checks():
    with pytest.raises(UsageError, match="sizes must lie"):
        seed_count_curve(np.zeros((1, 3, 4), dtype=bool), sizes=(9,))


def test_seed_subsets_relabel_from_their_own_comparisons_and_follow_the_binomial():
    """Latents matched at rate 0.1 in every other seed: on S' seeds the unstable share is P(X = 0) of
    Binomial(S' - 1, 0.1) (ε = 0.05 < 1/(S'-1)); the labels handed to a metric are the subset's own."""
    from sae_fast.analysis.seed_count import seed_subset_curve, subset_labels

    rng = np.random.default_rng(0)
    S, F = 9, 20000
    best = np.where(rng.random((S, S, F)) < 0.1, 0.9, 0.1)
    seen = []

    def unstable_share(seeds, labels):
        assert np.array_equal(labels, subset_labels(best, seeds, 0.7, 0.05))
        seen.append(len(seeds))
        return float(np.mean(labels == UNSTABLE))

    rows = seed_subset_curve(best, {"unstable": unstable_share}, theta=0.7, eps=0.05, sizes=(2, 5, 9), draws=3)
    assert [r["num_seeds"] for r in rows] == [2, 5, 9] and [r["draws"] for r in rows] == [3, 3, 1]
    assert seen == [2, 2, 2, 5, 5, 5, 9]
    for r in rows:
        assert r["unstable"] == pytest.approx(0.9 ** (r["num_seeds"] - 1), abs=0.01)
    # a manual label of one latent: seed 0 against seeds 1, 2 only
    lab = subset_labels(best, [0, 1, 2], 0.7, 0.05)
    hits = (best[0, 1, 7] >= 0.7) + (best[0, 2, 7] >= 0.7)
    assert lab[0, 7] == {0: UNSTABLE, 1: NEITHER, 2: STABLE}[int(hits)]
    with pytest.raises(UsageError, match="sizes must lie"):
        seed_subset_curve(best, {}, sizes=(10,))
