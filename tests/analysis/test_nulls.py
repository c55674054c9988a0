import numpy as np
import pytest

from sae_fast.analysis.nulls import (
    MAX_OUTSIDE_SHARE,
    frequency_matched_outside,
    null_sample_cap,
    random_dictionary_null,
    spectrum_matched_decoder,
    subspace_test,
)
from sae_fast.errors import UsageError


def _aniso(rng, m, d, frame, power=1.0):
    x = rng.standard_normal((m, d)) * np.arange(1, d + 1) ** (-power / 2)
    x = x @ frame.T
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_spectrum_matched_decoder_keeps_second_moment_and_breaks_features():
    rng = np.random.default_rng(0)
    d = 16
    D = _aniso(rng, 200, d, np.linalg.qr(rng.standard_normal((d, d)))[0])
    null = spectrum_matched_decoder(D, np.random.default_rng(1))
    assert null.shape == D.shape and np.allclose(np.linalg.norm(null, axis=1), 1)
    # the row second moment (up to row renormalisation) stays close; individual rows do not
    g0, g1 = D.T @ D / len(D), null.T @ null / len(null)
    assert np.linalg.norm(g0 - g1) / np.linalg.norm(g0) < 0.35
    assert (np.abs(D @ null.T).max(axis=1) > 0.95).mean() < 0.2


def test_random_dictionary_null_is_below_trained_shared_features():
    rng = np.random.default_rng(2)
    d, F = 16, 64
    common = rng.standard_normal((F, d))
    decs = [common + 0.05 * rng.standard_normal((F, d)) for _ in range(3)]  # every feature shared
    out = random_dictionary_null(decs, draws=2)
    assert out["trained"]["p_hat_mean"] > 0.95 and out["null"]["p_hat_mean"] < 0.3
    assert out["trained"]["pw_mcc"] > 0.95 and out["null"]["pw_mcc"] < out["trained"]["pw_mcc"] - 0.3



def test_a_known_trained_p_hat_is_used_and_the_null_is_unchanged(monkeypatch):
    """The study passes the stability step's mean p̂: the trained decoders are then not matched again."""
    from sae_fast.analysis import nulls

    rng = np.random.default_rng(3)
    decs = [rng.standard_normal((48, 12)) for _ in range(3)]
    full = random_dictionary_null(decs, draws=1, pw_mcc=False)
    calls = []
    real = nulls.anchor_scores
    monkeypatch.setattr(nulls, "anchor_scores", lambda ds, **kw: calls.append(1) or real(ds, **kw))
    given = random_dictionary_null(decs, draws=1, pw_mcc=False, trained_p_hat=full["trained"]["p_hat_mean"])
    assert len(calls) == 1  # the null dictionaries only
    assert given["trained"]["p_hat_mean"] == full["trained"]["p_hat_mean"]
    assert given["null"]["p_hat_mean"] == full["null"]["p_hat_mean"]


def test_absolute_null_matches_on_absolute_cosines():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((40, 10))
    flips = [base * rng.choice([-1.0, 1.0], size=(40, 1)) for _ in range(3)]  # the same features, signs flipped
    assert random_dictionary_null(flips, draws=1, pw_mcc=False, absolute=True)["trained"]["p_hat_mean"] == 1.0
    assert random_dictionary_null(flips, draws=1, pw_mcc=False)["trained"]["p_hat_mean"] < 0.9

def test_frequency_matched_outside_matches_frequencies_and_avoids_set():
    rng = np.random.default_rng(3)
    freq = rng.lognormal(size=400)
    tested = np.zeros(400, dtype=bool)
    tested[np.argsort(freq)[:100]] = True  # the rarest quarter
    tested[np.argsort(freq)[:100:2]] = False  # half of them stay outside so low bins can be matched
    pick = frequency_matched_outside(rng, freq, tested, 40)
    assert len(set(pick.tolist())) == 40 and not tested[pick].any()
    assert np.median(freq[pick]) < np.quantile(freq, 0.3)


def _study(rng, S, d, shared_group: bool, n_set=40, n_out=120):
    frame = np.linalg.qr(rng.standard_normal((d, d)))[0]
    group = np.linalg.qr(rng.standard_normal((d, 4)))[0]
    decs, sets = [], []
    for _ in range(S):
        out = _aniso(rng, n_out, d, frame)
        if shared_group:
            tested = (group @ rng.standard_normal((4, n_set))).T
            tested /= np.linalg.norm(tested, axis=1, keepdims=True)
        else:
            tested = _aniso(rng, n_set, d, frame)
        decs.append(np.concatenate([out, tested]))
        sets.append(np.arange(n_out + n_set) >= n_out)
    return decs, sets


def test_subspace_test_power_on_planted_group():
    rng = np.random.default_rng(4)
    rejects = []
    for i in range(4):
        decs, sets = _study(rng, 3, 24, True)
        res = subspace_test(decs, sets, ranks=(4,), null_draws=20, seed=i)["ranks"][4]
        rejects.append(res["p_value"] <= 0.05)
        assert res["R"] > 0.5 and res["excess"] > 0
    assert np.mean(rejects) == 1.0


def test_subspace_test_false_positive_rate_on_exchangeable_null():
    # tested latents drawn from the same anisotropic distribution as the rest: no shared subspace beyond the
    # anisotropy every latent has. A Haar null would reject; this one rejects at about alpha.
    rng = np.random.default_rng(5)
    ps = []
    for i in range(30):
        decs, sets = _study(rng, 3, 24, False)
        # each seed's outside latents are its own random directions (no population shared across seeds), so the
        # disjoint-draw bias the default max_outside_share guards against does not arise here
        res = subspace_test(decs, sets, ranks=(4,), null_draws=20, set_draws=1, max_outside_share=0.5,
                            seed=i)["ranks"][4]
        ps.append(res["p_value"])
        assert res["cross"] > 2 * 4 / 24  # far above the Haar value r/d: the anisotropy is real
    assert np.mean(np.array(ps) <= 0.05) <= 0.2


def test_subspace_test_checks_sizes():
    rng = np.random.default_rng(6)
    decs, sets = _study(rng, 2, 16, True, n_set=6, n_out=20)
    with pytest.raises(UsageError, match="at most half of every set"):
        subspace_test(decs, sets, n=5)


def test_default_n_takes_at_most_a_twentieth_of_the_outside_set():
    # disjoint null draws of one shared outside population are anti-correlated (module docstring): the default n
    # stays at MAX_OUTSIDE_SHARE of the smallest outside set, but at least the smallest rank where half of it allows
    rng = np.random.default_rng(7)
    frame = np.linalg.qr(rng.standard_normal((24, 24)))[0]
    shared = _aniso(rng, 160, 24, frame)  # the same outside directions in every seed, like stable latents
    decs = [np.concatenate([shared, _aniso(rng, 64, 24, frame)]) for _ in range(3)]
    sets = [np.arange(224) >= 160] * 3
    assert null_sample_cap(160) == int(160 * MAX_OUTSIDE_SHARE) == 8
    assert subspace_test(decs, sets, ranks=(4,), null_draws=2, set_draws=1)["n"] == 8
    res = subspace_test(decs, sets, ranks=(12, 16), null_draws=2, set_draws=1)  # at least the smallest rank
    assert res["n"] == 12 and list(res["ranks"]) == [12] and res["outside_share"] == 12 / 160  # 16 > n: skipped
    assert subspace_test(decs, sets, ranks=(4,), null_draws=2, set_draws=1, max_outside_share=0.5)["n"] == 32
    assert subspace_test(decs, sets, ranks=(4,), null_draws=2, set_draws=1, theta=None)["n"] == 32  # no exclusion
    assert null_sample_cap(40, floor=8) == 8 and null_sample_cap(10, floor=8) == 5
    with pytest.raises(UsageError, match="max_outside_share"):
        subspace_test(decs, sets, max_outside_share=0.0)
