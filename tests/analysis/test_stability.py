import numpy as np
import pytest

from sae_fast.analysis.stability import anchor_scores, split, summarize, theta_eps_sweep

from ._helpers import planted_decoders


def test_anchor_scores_find_planted_shared_features():
    decs, shared = planted_decoders()
    sc = anchor_scores(decs)
    assert sc.p_hat.shape == (4, len(shared)) and sc.best_cos.shape == (4, 3, len(shared))
    assert (sc.p_hat[:, shared] == 1).all()
    assert (sc.p_hat[:, ~shared] == 0).all()


def test_anchor_scores_agree_with_stability_scores():
    from sae_fast import stability_scores

    decs, _ = planted_decoders(noise=0.3)
    ours = anchor_scores(decs, theta=0.6)
    theirs = stability_scores([d.astype(np.float32) for d in decs], theta=0.6, progress=False, backend="exact")
    np.testing.assert_allclose(ours.p_hat, theirs.p_hat().numpy(), atol=1e-6)


def test_split_and_summary():
    p = np.array([0.0, 0.04, 0.05, 0.5, 0.95, 1.0])
    np.testing.assert_array_equal(split(p, 0.05), [-1, -1, -1, 0, 1, 1])
    s = summarize(p, np.array([[0.1, 0.9]]), eps=0.05)
    assert (s["num_stable"], s["num_unstable"], s["num_neither"]) == (2, 3, 1)
    assert sum(s["p_hat_hist"]["counts"]) == 6 and sum(s["best_cos_hist"]["counts"]) == 2
    with pytest.raises(ValueError, match="eps"):
        split(p, 0.7)
    with pytest.raises(ValueError, match="p_hat"):
        split(np.array([1.5]))


def test_sweep_and_bad_input():
    decs, _ = planted_decoders()
    rows = theta_eps_sweep(anchor_scores(decs).best_cos[0])
    assert len(rows) == 15 and all(0 <= r["share_stable"] <= 1 for r in rows)
    with pytest.raises(ValueError, match="at least 2"):
        anchor_scores(decs[:1])
    bad = [decs[0].copy(), decs[1]]
    bad[0][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        anchor_scores(bad)
