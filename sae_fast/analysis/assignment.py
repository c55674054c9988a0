"""One-to-one (Hungarian-style) matching of two dictionaries on the sparse top-m neighbour graph.

``sparse_one_to_one`` finds the one-to-one matching of A's latents to B's that maximises the total cosine, using
only the pairs in the top-m neighbour lists (either direction) of the matching sweep, with
``scipy.sparse.csgraph.min_weight_full_bipartite_matching``. Every latent of A also gets a private "unmatched"
option worth cosine ``floor``, so a full matching always exists and a pair below ``floor`` is never forced.
The result is exact for the graph: it equals the dense assignment (``scipy.optimize.linear_sum_assignment`` on the
(F_A, F_B) cosines clipped at ``floor``) whenever every pair of that optimum lies in the graph, which is the case
when m covers each latent's competitive partners (m = F makes it the dense problem). This lifts the dense
``hungarian_match``'s 2^15-latent cap. Memory: O((F_A + F_B)·m) for the graph; no (F_A, F_B) array.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import min_weight_full_bipartite_matching


def sparse_one_to_one(index_ab: np.ndarray, cos_ab: np.ndarray, num_b: int, *, index_ba: np.ndarray | None = None,
                      cos_ba: np.ndarray | None = None, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(partner in B of each latent of A, -1 if unmatched; its cosine, NaN if unmatched).

    Parameters
    ----------
    index_ab, cos_ab : (F_A, m) top-m neighbours in B of each latent of A and their cosines (-1 for none).
    num_b : F_B.
    index_ba, cos_ba : (F_B, m) the same from B to A (optional: adds B's lists to the graph).
    floor : cosine an unmatched latent is worth; pairs at or below it are never chosen.
    """
    fa = index_ab.shape[0]
    rows, cols, vals = [np.repeat(np.arange(fa), index_ab.shape[1])], [index_ab.ravel()], [cos_ab.ravel()]
    if index_ba is not None and cos_ba is not None:
        rows.append(index_ba.ravel())
        cols.append(np.repeat(np.arange(index_ba.shape[0]), index_ba.shape[1]))
        vals.append(cos_ba.ravel())
    r, c, v = (np.concatenate(x) for x in (rows, cols, vals))
    keep = (r >= 0) & (c >= 0) & np.isfinite(v) & (v > floor)
    r, c, v = r[keep], c[keep], v[keep].astype(np.float64)
    # cost 1 + floor - cos > 0 for a real pair (sparse zeros would mean "no edge"), 1 for the unmatched option
    dummy = sp.csr_matrix((np.ones(fa), (np.arange(fa), num_b + np.arange(fa))), shape=(fa, num_b + fa))
    cost = _dedupe(sp.coo_matrix((1.0 + floor - v, (r, c)), shape=(fa, num_b + fa))) + dummy
    _, col = min_weight_full_bipartite_matching(cost.tocsr())
    partner = np.where(col < num_b, col, -1).astype(np.int64)
    cosine = np.full(fa, np.nan)
    matched = partner >= 0
    cosine[matched] = 1.0 + floor - np.asarray(cost[np.flatnonzero(matched), partner[matched]]).ravel()
    return partner, cosine


def _dedupe(m: sp.coo_matrix) -> sp.csr_matrix:
    """A pair listed twice (in A's and in B's lists) keeps one entry (the same value), not their sum."""
    key = m.row.astype(np.int64) * m.shape[1] + m.col
    _, first = np.unique(key, return_index=True)
    return sp.csr_matrix((m.data[first], (m.row[first], m.col[first])), shape=m.shape)
