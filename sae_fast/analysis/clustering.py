"""Average-linkage clustering on a sparse affinity graph, cut at an affinity threshold.

The same clusters as scipy's average linkage on the dense distance ``1 - affinity`` cut at ``1 - threshold``
(``fcluster(..., criterion="distance")``), when every pair missing from the graph has affinity 0 (as for
firing correlations clipped at 0: latents that never fire together have negative correlation) and
``threshold > 0``: two clusters are merged while their mean pairwise affinity is >= threshold, and a pair
with no edge contributes 0 to that mean. Average linkage has no inversions, so merging the best pair
greedily until the best mean falls below the threshold is the dendrogram cut (ties may be merged in another
order). Memory O(n + E) for n nodes and E edges; time O(E·log E) plus the neighbour-list merges.
"""

from __future__ import annotations

import heapq

import numpy as np
import scipy.sparse as sp


def _neighbour_sums(affinity: sp.spmatrix) -> list[dict[int, float]]:
    a = sp.coo_matrix(affinity)
    keep = (a.row != a.col) & (a.data > 0)
    sums: list[dict[int, float]] = [{} for _ in range(a.shape[0])]
    for i, j, v in zip(a.row[keep].tolist(), a.col[keep].tolist(), a.data[keep].tolist()):
        sums[i][j] = v  # symmetric input: (j, i) sets the other side
    return sums


def average_linkage(affinity: sp.spmatrix, threshold: float) -> np.ndarray:
    """(n,) cluster label of each node (0..C-1, by first member) from a symmetric sparse (n, n) affinity in
    [0, 1]; diagonal ignored, absent pairs count as affinity 0. See the module docstring."""
    n = affinity.shape[0]
    if affinity.shape != (n, n):
        raise ValueError(f"affinity must be square, got {affinity.shape}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (absent pairs have affinity 0), got {threshold}")
    sums = _neighbour_sums(affinity)
    size = np.ones(n, dtype=np.int64)
    parent = np.arange(n)
    heap = [(-v, i, j) for i in range(n) for j, v in sums[i].items() if i < j and v >= threshold]
    heapq.heapify(heap)
    while heap:
        neg, a, b = heapq.heappop(heap)
        if b not in sums[a]:
            continue  # a or b was merged away since this entry was pushed
        mean = sums[a][b] / (size[a] * size[b])
        if abs(mean + neg) > 1e-12 * max(1.0, mean):
            continue  # stale: the pair's mean changed; its current value was pushed too
        if len(sums[a]) < len(sums[b]):
            a, b = b, a
        del sums[a][b], sums[b][a]
        for c, v in sums[b].items():  # Lance-Williams for average linkage: sums add up
            sums[a][c] = sums[a].get(c, 0.0) + v
            sums[c][a] = sums[a][c]
            del sums[c][b]
        sums[b] = {}
        size[a] += size[b]
        parent[b] = a
        for c, v in sums[a].items():
            m = v / (size[a] * size[c])
            if m >= threshold:
                heapq.heappush(heap, (-m, min(a, c), max(a, c)))
    return _labels(parent)


def _labels(parent: np.ndarray) -> np.ndarray:
    root = parent.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    _, labels = np.unique(root, return_inverse=True)
    return labels
