"""Similarity of candidate subspaces across seeds: for each query basis, its best candidate in every other seed.

Similarity of two orthonormal bases of ranks p, q: ``sum cos²θ / max(p, q)`` (or ``/ min(p, q)``) over their
principal angles θ. All pairs are scored in float64 GEMM chunks (:func:`cos2_chunks`), or, on the cross-seed
neighbour graph, each query only against its partner candidates (:func:`candidate_partners`); the winners are
re-scored from their principal angles. Used by :func:`sae_fast.analysis.candidates.candidate_subspaces`.
"""

from __future__ import annotations

import numpy as np

from ..angles import principal_angles_pairs


def cos2_chunks(queries: list[np.ndarray], bases: list[np.ndarray], max_entries: int = 2**20):
    """Yields (q0, q1, (q1 - q0, C) sums of cos² of the principal angles) for chunks of queries against every base
    (orthonormal columns); each chunk holds at most ``max_entries`` products, so memory stays O(max_entries).

    Sum cos²θ = ||Uqᵀ Ub||_F² (the squared singular values of Uqᵀ Ub are the cos²θ), so all pairs come from a
    few float64 GEMMs of the stacked bases.
    """
    ub = np.concatenate(bases, axis=1)
    b_starts = np.concatenate([[0], np.cumsum([b.shape[1] for b in bases])[:-1]])
    q0 = 0
    while q0 < len(queries):
        q1, cols = q0, 0
        while q1 < len(queries) and (q1 == q0 or (cols + queries[q1].shape[1]) * ub.shape[1] <= max_entries):
            cols += queries[q1].shape[1]
            q1 += 1
        g = np.concatenate(queries[q0:q1], axis=1).T @ ub
        g *= g
        per_base = np.add.reduceat(g, b_starts, axis=1)  # (query columns, C)
        q_starts = np.concatenate([[0], np.cumsum([q.shape[1] for q in queries[q0:q1]])[:-1]])
        yield q0, q1, np.add.reduceat(per_base, q_starts, axis=0)
        q0 = q1


def winners_dense(bases: list[np.ndarray], owner: np.ndarray, queries: list[np.ndarray], query_owner: np.ndarray,
                   num_seeds: int, pick) -> list[tuple[int, int, int]]:
    """(query, best candidate, seed) for every query and other seed, scoring every pair in chunks."""
    q_ranks = np.array([q.shape[1] for q in queries])
    b_ranks = np.array([b.shape[1] for b in bases])
    cols_of = [np.flatnonzero(owner == s) for s in range(num_seeds)]
    win = []
    for q0, q1, sums in cos2_chunks(queries, bases):
        sim = sums / pick(q_ranks[q0:q1, None], b_ranks[None, :])
        for s, cols in enumerate(cols_of):
            rows = np.flatnonzero(query_owner[q0:q1] != s)
            if len(cols) and len(rows):
                best = cols[sim[np.ix_(rows, cols)].argmax(axis=1)]
                win += [(q0 + r, c, s) for r, c in zip(rows.tolist(), best.tolist())]
    return win


def winners_sparse(bases: list[np.ndarray], owner: np.ndarray, queries: list[np.ndarray], query_owner: np.ndarray,
                    partners: list[np.ndarray], pick) -> list[tuple[int, int, int]]:
    """(query, best candidate, seed) scoring each query against its ``partners`` (candidate indices) only."""
    b_ranks = np.array([b.shape[1] for b in bases])
    win = []
    for q, (uq, cand) in enumerate(zip(queries, partners)):
        cand = cand[owner[cand] != query_owner[q]]
        if not len(cand):
            continue
        starts = np.concatenate([[0], np.cumsum(b_ranks[cand])[:-1]])
        g = uq.T @ np.concatenate([bases[c] for c in cand], axis=1)
        sim = np.add.reduceat((g * g).sum(axis=0), starts) / pick(uq.shape[1], b_ranks[cand])
        for s in np.unique(owner[cand]).tolist():
            mine = owner[cand] == s
            win.append((q, int(cand[mine][sim[mine].argmax()]), s))
    return win


def best_similarity(bases: list[np.ndarray], owner: np.ndarray, queries: list[np.ndarray], query_owner: np.ndarray,
                     num_seeds: int, normalize: str = "max", partners: list[np.ndarray] | None = None) -> np.ndarray:
    """(Q, S) best similarity of each query basis among the candidates of each seed (NaN: own seed or none).

    Pairs are scored by their sum of cos² (all pairs in chunks, or with ``partners`` only each query's partner
    candidates); each query's best candidate per seed is then re-scored from its principal angles
    (:func:`principal_angles_pairs`), which gives the returned value. Memory O(Q·S + one chunk).
    """
    Q = len(queries)
    best = np.full((Q, num_seeds), np.nan)
    if Q == 0 or not bases:
        return best
    pick = np.maximum if normalize == "max" else np.minimum
    if partners is None:
        winners = winners_dense(bases, owner, queries, query_owner, num_seeds, pick)
    else:
        winners = winners_sparse(bases, owner, queries, query_owner, partners, pick)
    if not winners:
        return best
    win = np.asarray(winners, dtype=np.int64)
    q_ranks = np.array([q.shape[1] for q in queries])
    b_ranks = np.array([b.shape[1] for b in bases])
    theta = principal_angles_pairs(queries + bases, np.stack([win[:, 0], Q + win[:, 1]], 1))
    cos2 = np.where(np.isfinite(theta), np.cos(theta) ** 2, 0.0).sum(axis=1)
    best[win[:, 0], win[:, 2]] = cos2 / pick(q_ranks[win[:, 0]], b_ranks[win[:, 1]])
    return best


def candidate_partners(latent_sets: list[np.ndarray], set_owner: np.ndarray, members: list[np.ndarray],
                       owner: np.ndarray, neighbour_index: np.ndarray) -> list[np.ndarray]:
    """For each latent set (of seed set_owner[i]), the candidates of other seeds that hold a top-m cross-seed
    neighbour (``neighbour_index`` (S, S, F, m)) of one of its latents."""
    S, F = neighbour_index.shape[0], neighbour_index.shape[2]
    cand_of = np.full((S, F), -1, dtype=np.int64)
    for c, m in enumerate(members):
        cand_of[owner[c], m] = c
    out = []
    for lat, a in zip(latent_sets, set_owner.tolist()):
        found = [cand_of[b][neighbour_index[a, b][lat].ravel()] for b in range(S) if b != a]
        found = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
        out.append(found[found >= 0])
    return out


def best_beyond_matches(best: np.ndarray, query_owner: np.ndarray, query_latents: list[np.ndarray],
                        decs: list[np.ndarray], bases: list[np.ndarray], owner: np.ndarray,
                        matched: list[list[np.ndarray]], normalize: str, basis) -> np.ndarray:
    """``best`` (Q, S) with every (query, seed b) whose latents (``query_latents``, of seed ``query_owner``)
    include some individually matched in seed b (``matched[a][b]``: (F_a,) bool, cos >= theta to some latent of
    seed b) re-scored without those latents: the basis of the rest (``basis(rows)``) against every candidate of
    seed b (0 when every latent is matched). A latent that recurs one by one in seed b is a feature, not evidence
    that the span recurs there. Memory: one seed's stacked candidate bases, O(d · sum of their ranks)."""
    out = best.copy()
    pick = np.maximum if normalize == "max" else np.minimum
    b_ranks = np.array([b.shape[1] for b in bases])
    for s in range(best.shape[1]):
        cols = np.flatnonzero(owner == s)
        stacked = np.concatenate([bases[c] for c in cols], axis=1) if len(cols) else None
        starts = np.concatenate([[0], np.cumsum(b_ranks[cols])[:-1]]) if len(cols) else None
        for q, (lat, a) in enumerate(zip(query_latents, query_owner.tolist())):
            if a == s or not np.isfinite(best[q, s]):
                continue
            hit = matched[a][s][lat]
            if not hit.any():
                continue
            rest = lat[~hit]
            if not len(rest) or stacked is None:
                out[q, s] = 0.0
                continue
            u = basis(decs[a][rest])
            g = u.T @ stacked
            out[q, s] = float((np.add.reduceat((g * g).sum(axis=0), starts) / pick(u.shape[1], b_ranks[cols])).max())
    return out
