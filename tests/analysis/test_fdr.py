import numpy as np
import pytest

from sae_fast.analysis.fdr import candidate_fdr, empirical_pvalues, fdr_summary, qvalues, storey_pi0, tail_pvalues
from sae_fast.errors import UsageError


def test_bh_on_known_pvalues():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    # hand-computed BH: q_i = min_{j>=i} p_j m / j
    expected = np.minimum.accumulate((p * 10 / np.arange(1, 11))[::-1])[::-1]
    assert np.allclose(qvalues(p), expected)
    s = fdr_summary(p, levels=(0.05, 0.1))
    assert s["discoveries"] == {0.05: 2, 0.1: 6}  # 0.06 * 10 / 6 = 0.1; 0.074 * 10 / 7 > 0.1


def test_storey_pi0_recovers_planted_null_share():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=800), rng.beta(0.05, 20, size=200)])  # 80 % nulls
    assert abs(storey_pi0(p) - 0.8) < 0.08
    s = fdr_summary(p)
    assert abs(s["non_null_share"] - 0.2) < 0.08
    # FDR control: the share of uniform (null) p-values among discoveries at 0.1 stays near or below 0.1
    disc = s["q"] <= 0.1
    assert disc[800:].mean() > 0.5 and disc[:800].sum() / max(disc.sum(), 1) < 0.15


def test_empirical_pvalues_floor_and_tail_fit():
    rng = np.random.default_rng(1)
    null = rng.normal(size=10_000)
    p = empirical_pvalues([0.0, 10.0], null)
    assert abs(p[0] - 0.5) < 0.02 and p[1] == pytest.approx(1 / 10_001)
    t = tail_pvalues([3.0, 4.5], null)
    # the normal's true tail: 1.35e-3 and 3.4e-6; the fitted tail goes below the empirical floor
    assert 3e-4 < t[0] < 4e-3 and t[1] < 1 / 10_001


def test_candidate_fdr_assigns_latent_qvalues():
    cands = {"candidates": [{"seed": 0, "latents": [1, 2], "p_value": 0.0001},
                            {"seed": 1, "latents": [0], "p_value": 0.9}]}
    s = candidate_fdr(cands, [4, 3])
    assert cands["candidates"][0]["q_value"] == pytest.approx(0.0002)
    assert np.allclose(s["latent_q"][0], [1, 0.0002, 0.0002, 1]) and s["latent_q"][1][0] == pytest.approx(0.9)


def test_rejects_bad_pvalues():
    with pytest.raises(UsageError, match="p-values"):
        qvalues([0.1, 1.5])


def _fdr_of(decs, sets, **kw):
    from sae_fast.analysis.candidates import candidate_subspaces

    res = candidate_subspaces(decs, sets, min_null_draws=2000, null_neighbours=2000, pvalues="tail", **kw)
    return res, candidate_fdr(res, [len(d) for d in decs])


def test_fitted_tail_lets_a_strong_planted_candidate_pass_bh_and_not_the_negative_control():
    """~2,000 pooled draws floor empirical p at 1/2001: with the fitted tail the planted shared subspace (8 latents
    of each seed in one 3-dim span, among 200 random ones) goes below that floor and gets q < 0.05, while clusters
    of isotropic latents (no shared subspace) get no discovery and mostly q >= 0.1."""
    rng = np.random.default_rng(0)
    d, S, r = 64, 3, 3
    base = np.linalg.qr(rng.standard_normal((d, r)))[0]
    decs = [np.concatenate([rng.standard_normal((8, r)) @ base.T, rng.standard_normal((200, d))]) for _ in range(S)]
    kw = {"method": "cosine", "threshold": 0.3, "tau": 0.5, "normalize": "max"}
    res, fdr = _fdr_of(decs, [np.arange(208)] * S, freqs=[rng.random(208) for _ in range(S)], **kw)
    draws = res["null_draws"]["mean_best_similarity"]
    assert len(draws) == len(res["null_draws"]["size"]) == res["null"]["draws"] >= 2000
    planted = [c for c in res["candidates"] if max(c["latents"]) < 8 and c["size"] >= 4]
    assert len(planted) == S and all(c["q_value"] < 0.05 for c in planted) and fdr["discoveries"][0.05] >= S
    best = min(c["p_value"] for c in planted)
    assert best < 1 / (len(draws) + 1) <= empirical_pvalues([max(c["mean_best_similarity"] for c in planted)], draws)
    neg = [rng.standard_normal((46, 12)) for _ in range(S)]
    kw["threshold"] = 0.5
    res_n, fdr_n = _fdr_of(neg, [np.arange(46)] * S, freqs=[rng.random(46) for _ in range(S)], **kw)
    q = np.array([c["q_value"] for c in res_n["candidates"]])
    assert len(q) >= 5 and np.mean(q >= 0.1) >= 0.8 and fdr_n["discoveries"][0.05] == 0


def test_a_bounded_null_tail_does_not_give_zero_p_values_past_its_largest_draw():
    """Uniform null draws fit a generalized-Pareto shape near -1 (an endpoint at the largest draw): a statistic
    just beyond it must not get p ≈ 0 (the exponential tail is used instead, see tail_pvalues)."""
    from sae_fast.analysis.fdr import tail_pvalues

    null = np.random.default_rng(0).uniform(0.0, 1.0, 2000)
    p = tail_pvalues([1.01], null)[0]
    assert p > 1e-3  # the bounded fit gave ~1e-300 here
