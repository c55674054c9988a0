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
