"""Sparse average linkage and sparse firing affinities against scipy's dense linkage on the dense matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from sae_fast.analysis.candidates import (
    cluster_latents,
    coactivation_affinity,
    correlation_affinity,
    sparse_firing_affinity,
)
from sae_fast.analysis.clustering import average_linkage


def _partition(labels: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)}


def _dense_cut(aff: np.ndarray, threshold: float) -> np.ndarray:
    dist = np.clip(1.0 - aff, 0.0, None)
    dist = (dist + dist.T) / 2
    np.fill_diagonal(dist, 0.0)
    return fcluster(linkage(squareform(dist, checks=False), "average"), t=1 - threshold, criterion="distance")


@pytest.mark.parametrize("threshold", [0.05, 0.1, 0.3])
def test_sparse_average_linkage_equals_scipy_on_sparse_affinities(threshold):
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = 40
        a = np.triu(rng.random((n, n)) * (rng.random((n, n)) < 0.15), 1)
        a = a + a.T
        assert _partition(average_linkage(sp.csr_matrix(a), threshold)) == _partition(_dense_cut(a, threshold))


def test_sparse_firing_affinities_equal_the_dense_ones_and_cluster_alike():
    rng = np.random.default_rng(2)
    f = rng.random((500, 40)) < 0.04
    for g in range(4):  # planted co-firing groups of 5 latents
        on = rng.random(500) < 0.1
        f[np.ix_(on, range(5 * g, 5 * g + 5))] |= rng.random((on.sum(), 5)) < 0.8
    for kind, dense in (("correlation", correlation_affinity), ("coactivation", coactivation_affinity)):
        want = dense(f)
        np.fill_diagonal(want, 0.0)
        np.testing.assert_allclose(sparse_firing_affinity(sp.csr_matrix(f), kind).toarray(), want, atol=1e-12)
    rows = rng.standard_normal((40, 8))
    clusters = cluster_latents(rows, fires=sp.csr_matrix(f), method="correlation", threshold=0.2)
    planted = {frozenset(range(5 * g, 5 * g + 5)) for g in range(4)}
    assert planted <= {frozenset(c.tolist()) for c in clusters}
    dense_labels = _dense_cut(correlation_affinity(f), 0.2)
    assert {frozenset(c.tolist()) for c in clusters} == {c for c in _partition(dense_labels) if len(c) >= 2}


def test_threshold_must_be_positive():
    with pytest.raises(ValueError, match="threshold must be > 0"):
        average_linkage(sp.csr_matrix((3, 3)), 0.0)
