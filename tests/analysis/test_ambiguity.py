import numpy as np
import pytest
import scipy.sparse as sp

from sae_fast.analysis.ambiguity import (
    activation_null,
    activation_pursuit,
    curves_by_bin,
    dictionary_codes,
    direction_pursuit,
    nearest_atoms,
    null_dictionary,
)
from sae_fast.errors import UsageError


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_direction_pursuit_sees_few_atom_latents():
    rng = np.random.default_rng(0)
    d, Fb = 32, 96
    B = _unit(rng.standard_normal((Fb, d)))
    same = B[:10] + 0.01 * rng.standard_normal((10, d))  # one atom each
    mix = np.stack([B[rng.choice(Fb, 3, replace=False)].sum(0) for _ in range(10)])  # three atoms each
    A = _unit(np.concatenate([same, mix, rng.standard_normal((10, d))]))
    res = direction_pursuit(A, B, m_max=4, candidates=16)
    share, null = res["share"], res["null_share"]
    assert share.shape == (30, 4) and np.all(np.diff(share, axis=1) >= -1e-9)
    assert share[:10, 0].min() > 0.99
    assert share[10:20, 0].max() < 0.75 and share[10:20, 2].min() > 0.97  # ambiguous: one atom no, three yes
    assert null[10:20, 2].mean() < share[10:20, 2].mean() - 0.3
    assert share[20:, 2].mean() < 0.6  # random directions are not explained by a few atoms in d = 32


def test_nearest_atoms_matches_dense_argsort():
    rng = np.random.default_rng(1)
    A, B = _unit(rng.standard_normal((20, 8))), _unit(rng.standard_normal((50, 8)))
    dense = np.argsort(-np.abs(A @ B.T), axis=1)[:, :5]
    assert np.array_equal(nearest_atoms(A, B, 5, block=7), dense)


def test_activation_pursuit_recovers_a_two_latent_code():
    rng = np.random.default_rng(2)
    N, Fb = 4000, 20
    cb = np.where(rng.random((N, Fb)) < 0.2, rng.exponential(size=(N, Fb)), 0.0)
    ya = cb[:, 3] + cb[:, 7]  # latent 0 of seed a = two latents of seed b
    yb = cb[:, 5] + 0.1 * rng.standard_normal(N)  # latent 1 = one latent of b plus noise
    ca = sp.csr_matrix(np.column_stack([ya, yb]))
    r2 = activation_pursuit(ca, sp.csr_matrix(cb), np.tile(np.arange(Fb), (2, 1)), latents=[0, 1], m_max=3)
    assert r2[0, 0] < 0.7 and r2[0, 1] > 0.99
    assert r2[1, 0] > 0.8


def test_curves_by_bin_and_checks():
    curves = curves_by_bin(np.array([[0.1, 0.5], [0.9, 1.0]]), [0.0, 1.0], edges=(0.0, 0.5, 1.0))
    assert curves[0]["mean"] == [0.1, 0.5] and curves[1]["count"] == 1
    with pytest.raises(UsageError, match="neighbours"):
        activation_pursuit(np.zeros((4, 2)), np.zeros((4, 2)), np.zeros((3, 2)), latents=[0])


def _sparse_rows(rng, n: int, F: int, active: int) -> np.ndarray:
    """(n, F) non-negative codes with ``active`` latents per row, exponential values."""
    codes = np.zeros((n, F))
    for i in range(n):
        codes[i, rng.choice(F, active, replace=False)] = rng.exponential(size=active) + 0.5
    return codes


def test_activation_null_stays_low_where_a_seed_sharing_the_directions_explains_everything():
    rng = np.random.default_rng(4)
    N, d, active, m_max, cand = 4000, 64, 3, 4, 8
    A = np.linalg.qr(rng.standard_normal((d, d)))[0].T  # seed a: an orthonormal dictionary
    perm = rng.permutation(d)
    B = _unit(A[perm] + 0.01 * rng.standard_normal((d, d)))  # seed b: the same directions, reordered
    codes_a = _sparse_rows(rng, N, d, active)
    x = codes_a @ A + 0.01 * rng.standard_normal((N, d))
    lat = np.arange(d)
    trained = activation_pursuit(sp.csr_matrix(codes_a), sp.csr_matrix(codes_a[:, perm]), nearest_atoms(A, B, cand),
                                 latents=lat, m_max=m_max)
    assert trained[:, 0].min() > 0.99  # one latent of b is the latent of a
    R = null_dictionary(B, seed=0)
    null = activation_null(sp.csr_matrix(codes_a), x, A, R, latents=lat, k=active, m_max=m_max, candidates=cand)
    assert null.shape == (d, m_max) and np.isfinite(null).all()
    # the dictionary is the direction null's own draw: passing it in gives the direction null unchanged
    direction_null = direction_pursuit(A, B, m_max=m_max, candidates=cand, seed=0)["null_share"]
    assert np.allclose(direction_pursuit(A, B, m_max=m_max, candidates=cand, null_dict=R)["null_share"],
                       direction_null, atol=1e-12)
    # its expected value at m = 1, computed densely: among the TopK codes of the latent's nearest random atoms, the
    # one best correlated with its code on the first half of the rows, fitted there, R² on the second half
    pre = (x - x.mean(0)) @ R.T
    dense = np.where(pre >= np.sort(pre, axis=1)[:, [-active]], np.maximum(pre, 0.0), 0.0)
    near = np.argsort(-np.abs(A @ R.T), axis=1)[:, :cand]
    half = N // 2
    expected = []
    for i in lat:
        y, cols = codes_a[:, i], dense[:, near[i]]
        j = max(range(cand), key=lambda c: np.nan_to_num(np.corrcoef(y[:half], cols[:half, c])[0, 1]) ** 2)
        slope, icpt = np.polyfit(cols[:half, j], y[:half], 1)
        resid = y[half:] - (slope * cols[half:, j] + icpt)
        expected.append(1 - (resid**2).sum() / ((y[half:] - y[half:].mean()) ** 2).sum())
    assert np.allclose(null[:, 0], expected, atol=1e-6)
    assert 0.0 < null.mean(axis=0)[-1] < 0.35 and np.all(np.diff(null.mean(axis=0)) > -0.01)  # low, and flat-ish
    assert null.mean(axis=0)[-1] < trained.mean(axis=0)[-1] - 0.6
    # the same pursuit against seed b itself (not its random dictionary) is not low: the dictionary is what differs
    assert activation_null(sp.csr_matrix(codes_a), x, A, B, latents=lat, k=active, m_max=1)[:, 0].mean() > 0.8


def test_dictionary_codes_match_a_dense_topk_and_are_checked(monkeypatch):
    import sae_fast.analysis.ambiguity as amb

    rng = np.random.default_rng(5)
    x, R = rng.standard_normal((30, 6)), _unit(rng.standard_normal((10, 6)))
    pre = (x - x.mean(0)) @ R.T
    dense = np.where(pre >= np.sort(pre, axis=1)[:, [-3]], np.maximum(pre, 0.0), 0.0)
    assert np.allclose(dictionary_codes(x, R, 3).toarray(), dense)
    monkeypatch.setattr(amb, "PRE_BUDGET", 25)  # blocks of 2 rows: the same codes
    assert np.allclose(dictionary_codes(x, R, 3).toarray(), dense)
    with pytest.raises(UsageError, match="k must be"):
        dictionary_codes(x, R, 11)
    with pytest.raises(UsageError, match="rows must have shape"):
        dictionary_codes(x[:, :5], R, 3)
