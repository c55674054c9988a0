import numpy as np
import pytest
import scipy.sparse as sp

from sae_fast.analysis.ambiguity import activation_pursuit, curves_by_bin, direction_pursuit, nearest_atoms
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
