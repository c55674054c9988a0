"""The sparse one-to-one matching equals the dense assignment when the graph holds the optimum's pairs."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from sae_fast import match
from sae_fast.analysis.assignment import sparse_one_to_one


def _dense(a: np.ndarray, b: np.ndarray) -> float:
    cos = np.clip(a @ b.T, 0.0, None)
    r, c = linear_sum_assignment(-cos)
    return float(cos[r, c].sum())


def test_equals_dense_assignment_on_the_complete_graph_and_planted_pairs_on_a_sparse_one():
    rng = np.random.default_rng(0)
    for fa, fb in ((30, 30), (25, 40), (40, 25)):
        a = rng.standard_normal((fa, 8))
        b = rng.standard_normal((fb, 8))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        m = match(a, b, k=fb, backend="exact", device="cpu")  # every pair: the dense problem
        partner, cos = sparse_one_to_one(m.index_ab.numpy(), m.cos_ab.numpy(), fb)
        assert abs(np.nansum(cos) - _dense(a, b)) < 1e-5
        used = partner[partner >= 0]
        assert len(set(used.tolist())) == len(used)  # one-to-one
    # planted: B is a permutation of A plus noise; top-4 lists suffice to recover it exactly
    a = rng.standard_normal((2000, 32))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    perm = rng.permutation(2000)
    b = a[perm] + 0.05 * rng.standard_normal((2000, 32))
    m = match(a, b, k=4, both=True, backend="exact", device="cpu")
    partner, cos = sparse_one_to_one(m.index_ab.numpy(), m.cos_ab.numpy(), 2000, index_ba=m.index_ba.numpy(),
                                     cos_ba=m.cos_ba.numpy())
    np.testing.assert_array_equal(perm[partner], np.arange(2000))
    assert (cos > 0.9).all()


def test_pairs_at_or_below_the_floor_stay_unmatched():
    idx = np.array([[0, 1], [0, 1]])
    cos = np.array([[0.9, 0.2], [0.8, 0.1]], dtype=np.float32)
    partner, value = sparse_one_to_one(idx, cos, 2, floor=0.3)
    assert partner.tolist() == [0, -1] and np.isnan(value[1]) and abs(value[0] - 0.9) < 1e-6
