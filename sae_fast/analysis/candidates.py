"""Candidate subspaces of unstable features and their cross-seed reproducibility (beyond the paper, [D]).

1. **Cluster** each seed's unstable latents into candidate low-rank subspaces. Affinity between latents i, j:
   ``"correlation"`` (default): the correlation (phi coefficient, clipped at 0) of their firing indicators on
   held-out activations; ``"coactivation"``: ``|i and j fire together| / min(|i fires|, |j fires|)``;
   ``"cosine"``: ``|cos(d_i, d_j)|`` of unit decoder rows; ``"max"``: the larger of the two. Average-linkage
   hierarchical clustering on ``1 - affinity`` cut at ``1 - threshold``; clusters of at least ``min_size``
   latents become candidates (a single latent is a feature, not a subspace).
2. **Basis** of a candidate: the top right singular vectors of its unit decoder rows holding ``energy``
   (default 95 %) of their squared norm, at most ``max_rank``.
3. **Match** every candidate against every candidate of every other seed by principal angles
   (:func:`sae_fast.principal_angles_pairs`). Similarity of two candidates of ranks p, q:
   ``sum cos²θ / min(p, q)`` (``normalize="min"``, default: 1 when one contains the other, which
   tolerates a group split differently in different seeds; the random null guards against big candidates)
   or ``/ max(p, q)`` (``"max"``: 1 only for identical subspaces; a small subspace inside a big one scores p / q).
   A candidate is *reproduced* in seed b when its best similarity there is >= ``tau``.
4. **Score** of a candidate = share of the other seeds in which it is reproduced, the subspace analogue of
   p̂. **Null** (``"null"``): the same procedure (basis, matching) applied to random latent subsets of the same
   size drawn from the same seed (frequency-matched when ``freqs`` are given). Decoder rows are far from
   isotropic (random subsets of real decoders share much of their span across seeds), so this null, not a
   Haar-random one, says whether a cluster is more than "some latents of this seed". Each candidate gets the
   mean similarity of the subset draws of nearest size (``null_similarity``) and an empirical p-value
   (share of those draws with at least its mean best similarity). The Haar null (``"null_haar"``: random
   subspaces of the same ranks) is kept for reference. Latents whose candidate scores >= ``min_score`` and
   beats the subset null (p <= ``alpha``) belong to a reproducible subspace (basis ambiguity); the others
   look like noise.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..angles import principal_angles_pairs
from ._common import ArrayLike, check_decoders, index_array, right_singular
from .clustering import average_linkage
from .fdr import tail_pvalues


def coactivation_affinity(fires: ArrayLike) -> np.ndarray:
    """(n, n) co-firing affinity from a boolean firing matrix (N tokens, n latents)."""
    f = np.asarray(fires, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"fires must be (N, n), got shape {f.shape}")
    both = f.T @ f
    count = np.diag(both).copy()
    denom = np.minimum.outer(count, count)
    with np.errstate(invalid="ignore", divide="ignore"):
        aff = np.where(denom > 0, both / np.maximum(denom, 1), 0.0)
    np.fill_diagonal(aff, 1.0)
    return aff


def correlation_affinity(fires: ArrayLike) -> np.ndarray:
    """(n, n) Pearson correlation (phi coefficient) of the latents' firing indicators, clipped at 0."""
    f = np.asarray(fires, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"fires must be (N, n), got shape {f.shape}")
    p = f.mean(axis=0)
    cov = (f.T @ f) / f.shape[0] - np.outer(p, p)
    sd = np.sqrt(np.clip(p * (1 - p), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(np.outer(sd, sd) > 0, cov / np.outer(sd, sd), 0.0)
    corr = np.clip(corr, 0.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    return corr


def _sparse_fires(fires: ArrayLike, n: int) -> sp.csr_matrix:
    f = sp.csr_matrix(np.asarray(fires) if not sp.issparse(fires) else fires)
    if f.shape[1] != n:
        raise ValueError(f"fires must have shape (N, {n}), got {f.shape}")
    f = f.astype(np.float64)
    f.eliminate_zeros()
    f.data[:] = 1.0
    return f


def sparse_firing_affinity(fires: ArrayLike, kind: str = "correlation") -> sp.csr_matrix:
    """(n, n) sparse firing affinity from a (N, n) 0/1 firing matrix (dense or sparse): ``"correlation"`` (phi
    coefficient clipped at 0) or ``"coactivation"`` (both / min). Only pairs that fire together at least once
    are stored; every other pair has affinity exactly 0 in both kinds. Memory O(nnz of fires^T fires)."""
    f = _sparse_fires(fires, fires.shape[1])
    N = f.shape[0]
    both = (f.T @ f).tocoo()
    count = np.asarray(f.sum(axis=0)).ravel()
    i, j, c = both.row, both.col, both.data
    if kind == "correlation":
        p = count / N
        sd = np.sqrt(np.clip(p * (1 - p), 0.0, None))
        den = sd[i] * sd[j]
        with np.errstate(invalid="ignore", divide="ignore"):
            val = np.where(den > 0, (c / N - p[i] * p[j]) / den, 0.0)
    elif kind == "coactivation":
        den = np.minimum(count[i], count[j])
        val = np.where(den > 0, c / np.maximum(den, 1), 0.0)
    else:
        raise ValueError(f"kind must be 'correlation' or 'coactivation', got {kind!r}")
    val = np.clip(val, 0.0, 1.0)
    keep = (val > 0) & (i != j)
    return sp.csr_matrix((val[keep], (i[keep], j[keep])), shape=both.shape)


def cosine_neighbour_affinity(rows: np.ndarray, neighbours: int = 32) -> sp.csr_matrix:
    """(n, n) sparse |cos| between unit rows, kept for each row's ``neighbours`` nearest others (symmetrised:
    a pair is kept when either holds the other). Pairs outside every top-m list count as 0, which is exact for
    a clustering threshold above the m-th neighbour's |cos|. Memory O(n·m)."""
    from ..matching import match

    n = rows.shape[0]
    m = min(neighbours + 1, n)
    res = match(rows, rows, k=m, backend="exact", absolute=True, device="cpu")
    idx, cos = res.index_ab.numpy(), res.cos_ab.numpy().astype(np.float64)
    i = np.repeat(np.arange(n), m)
    keep = (idx.ravel() >= 0) & (idx.ravel() != i)
    a = sp.csr_matrix((np.clip(cos.ravel()[keep], 0.0, 1.0), (i[keep], idx.ravel()[keep])), shape=(n, n))
    return a.maximum(a.T).tocsr()


def cluster_latents(
    rows: ArrayLike,
    *,
    fires: ArrayLike | None = None,
    method: str = "correlation",
    threshold: float = 0.1,
    min_size: int = 2,
    neighbours: int = 32,
) -> list[np.ndarray]:
    """Clusters (arrays of positions into ``rows``) of at least ``min_size`` latents; see the module docstring.

    ``fires``: (N, n) 0/1 firing matrix, dense or scipy-sparse (CSR from the top-k codes). The affinity is a
    sparse graph (firing affinities: pairs that co-fire; cosine: each latent's ``neighbours`` nearest) and the
    average-linkage cut runs on it (:func:`sae_fast.analysis.clustering.average_linkage`). Memory O(n·m + nnz of
    the co-firing pairs); no (n, n) dense array."""
    D = check_decoders([rows], "rows")[0]
    n = D.shape[0]
    if n < max(2, min_size):
        return []
    if method in ("correlation", "coactivation", "max"):
        if fires is None:
            raise ValueError(f"method={method!r} needs fires (N tokens, {n} latents)")
        if fires.ndim != 2 or fires.shape[1] != n:
            raise ValueError(f"fires must have shape (N, {n}), got {fires.shape}")
    if method in ("correlation", "coactivation"):
        aff = sparse_firing_affinity(fires, method)
    elif method == "cosine":
        aff = cosine_neighbour_affinity(D, neighbours)
    elif method == "max":
        aff = sparse_firing_affinity(fires, "coactivation").maximum(cosine_neighbour_affinity(D, neighbours))
    else:
        raise ValueError(f"method must be 'correlation', 'coactivation', 'cosine' or 'max', got {method!r}")
    labels = average_linkage(aff, threshold)
    clusters = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    return sorted((c for c in clusters if len(c) >= min_size), key=len, reverse=True)


def candidate_basis(rows: np.ndarray, *, energy: float = 0.95, max_rank: int = 32) -> np.ndarray:
    """(d, r) orthonormal basis of the top singular subspace of rows holding ``energy`` of their norm²."""
    s, v = right_singular(rows)
    vt = v.T
    cum = np.cumsum(s**2) / max(float((s**2).sum()), 1e-300)
    r = int(min(np.searchsorted(cum, energy - 1e-12) + 1, max_rank, len(s)))
    return vt[:r].T.copy()


def _frequency_bins(freq: ArrayLike, bins: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(latents sorted by frequency, each latent's rank in that order, bin edges over the ranks) of one seed."""
    order = np.argsort(np.asarray(freq, dtype=np.float64).reshape(-1), kind="stable")
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    return order, pos, np.linspace(0, len(order), bins + 1).astype(np.int64)


def _random_subset(rng: np.random.Generator, F: int, members: np.ndarray,
                   freq_bins: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``len(members)`` distinct random latents of a seed with F latents; with ``freq_bins`` (the seed's
    `_frequency_bins`), each drawn from the frequency-quantile bin of a member (so the subset fires like the
    candidate)."""
    m = len(members)
    if freq_bins is None:
        return rng.choice(F, m, replace=False)
    order, pos, edges = freq_bins
    member_bin = np.searchsorted(edges, pos[members], side="right") - 1
    picked: list[int] = []
    for b, count in zip(*np.unique(member_bin, return_counts=True)):
        pool = order[edges[b]:edges[b + 1]]
        picked += rng.choice(pool, min(count, len(pool)), replace=False).tolist()
    if len(picked) < m:  # a bin smaller than its share of members: fill from anywhere
        rest = np.setdiff1d(np.arange(F), picked)
        picked += rng.choice(rest, m - len(picked), replace=False).tolist()
    return np.asarray(picked, dtype=np.int64)


def _cos2_chunks(queries: list[np.ndarray], bases: list[np.ndarray], max_entries: int = 2**20):
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


def _winners_dense(bases: list[np.ndarray], owner: np.ndarray, queries: list[np.ndarray], query_owner: np.ndarray,
                   num_seeds: int, pick) -> list[tuple[int, int, int]]:
    """(query, best candidate, seed) for every query and other seed, scoring every pair in chunks."""
    q_ranks = np.array([q.shape[1] for q in queries])
    b_ranks = np.array([b.shape[1] for b in bases])
    cols_of = [np.flatnonzero(owner == s) for s in range(num_seeds)]
    win = []
    for q0, q1, sums in _cos2_chunks(queries, bases):
        sim = sums / pick(q_ranks[q0:q1, None], b_ranks[None, :])
        for s, cols in enumerate(cols_of):
            rows = np.flatnonzero(query_owner[q0:q1] != s)
            if len(cols) and len(rows):
                best = cols[sim[np.ix_(rows, cols)].argmax(axis=1)]
                win += [(q0 + r, c, s) for r, c in zip(rows.tolist(), best.tolist())]
    return win


def _winners_sparse(bases: list[np.ndarray], owner: np.ndarray, queries: list[np.ndarray], query_owner: np.ndarray,
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


def _best_similarity(bases: list[np.ndarray], owner: np.ndarray, queries: list[np.ndarray], query_owner: np.ndarray,
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
        winners = _winners_dense(bases, owner, queries, query_owner, num_seeds, pick)
    else:
        winners = _winners_sparse(bases, owner, queries, query_owner, partners, pick)
    if not winners:
        return best
    win = np.asarray(winners, dtype=np.int64)
    q_ranks = np.array([q.shape[1] for q in queries])
    b_ranks = np.array([b.shape[1] for b in bases])
    theta = principal_angles_pairs(queries + bases, np.stack([win[:, 0], Q + win[:, 1]], 1))
    cos2 = np.where(np.isfinite(theta), np.cos(theta) ** 2, 0.0).sum(axis=1)
    best[win[:, 0], win[:, 2]] = cos2 / pick(q_ranks[win[:, 0]], b_ranks[win[:, 1]])
    return best


def _partners(latent_sets: list[np.ndarray], set_owner: np.ndarray, members: list[np.ndarray], owner: np.ndarray,
              neighbour_index: np.ndarray) -> list[np.ndarray]:
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


def _candidate_pvalue(sim: float, ref: np.ndarray, pvalues: str, tail_fraction: float) -> float:
    """One-sided p-value of a candidate's mean best similarity against its reference null draws."""
    if pvalues == "tail" and np.isfinite(sim):
        return float(tail_pvalues([sim], ref, tail_fraction=tail_fraction)[0])
    return float((1 + np.sum(ref >= sim - 1e-12)) / (1 + len(ref)))


def _columns(fires: ArrayLike, idx: np.ndarray) -> ArrayLike:
    """Columns ``idx`` of a dense or sparse firing matrix (sparse stays sparse)."""
    if sp.issparse(fires):
        return sp.csr_matrix(fires)[:, idx]
    return np.asarray(fires)[:, idx]


def candidate_subspaces(
    decoders: list[ArrayLike],
    sets: list[ArrayLike],
    *,
    fires: list[ArrayLike] | None = None,
    method: str | None = None,
    threshold: float = 0.1,
    min_size: int = 2,
    energy: float = 0.95,
    max_rank: int = 32,
    tau: float = 0.7,
    normalize: str = "min",
    min_score: float = 0.5,
    n_null: int = 1,
    min_null_draws: int = 200,
    freqs: list[ArrayLike] | None = None,
    alpha: float = 0.05,
    null_neighbours: int = 50,
    neighbours: int = 32,
    neighbour_index: np.ndarray | None = None,
    dense_limit: int = 4096,
    pvalues: str = "empirical",
    tail_fraction: float = 0.05,
    seed: int = 0,
) -> dict:
    """Candidate subspaces of ``sets[s]`` (e.g. each seed's unstable latents) and their reproducibility.

    ``fires[s]``: boolean (N, F_s) firing matrix, dense or scipy-sparse (the top-k codes' CSR), of seed s on
    shared held-out activations (needed for the firing affinities; ``method`` defaults to "correlation" when
    given, else "cosine"). ``freqs[s]``: (F_s,)
    firing frequencies for the frequency-matched subset null. ``n_null`` subset (and Haar) draws per candidate,
    more when needed for ``min_null_draws`` in all (p-values need them); each candidate's p-value uses the
    ``null_neighbours`` subset draws nearest to its size. ``neighbours``: top-m cosine neighbours per latent
    kept for the cosine affinities (see :func:`cluster_latents`). ``neighbour_index`` (S, S, F, m): the
    cross-seed top-m neighbour graph (the study's matching step); with more than ``dense_limit`` candidates, each
    candidate (and each subset-null draw) is compared only with the candidates of other seeds that hold a top-m
    neighbour of one of its latents, and each Haar draw with its candidate's partners, so time and memory grow
    linearly with F; below it, with every candidate (exact). Memory O(Q·S + one 2^20-entry chunk) either way.
    ``pvalues``: ``"empirical"`` (share of the reference draws at least as similar, floor 1 / (draws + 1)) or
    ``"tail"`` (the same, with a generalized-Pareto tail fitted to the top ``tail_fraction`` of the reference draws
    beyond the empirical support, :func:`sae_fast.analysis.fdr.tail_pvalues`, so p can fall below the floor and
    pass Benjamini–Hochberg). The raw subset-null draws come back as ``"null_draws"``: ``{"size": (D,) int
    array, "mean_best_similarity": (D,) float array}`` (memory O(D)).
    Returns ``{"candidates": [per-candidate dicts: seed, latents, rank, score, mean_best_similarity,
    null_similarity, p_value, reproducible], "null": {subset null: "score_mean", "reproduced_share", ...},
    "null_haar": {...}, "per_seed": [{"num_set", "num_in_reproducible", "share_in_reproducible",
    "reproducible_latents"}], "params": {...}}``.
    """
    decs = check_decoders(decoders)
    S = len(decs)
    if normalize not in ("max", "min"):
        raise ValueError(f"normalize must be 'max' or 'min', got {normalize!r}")
    if pvalues not in ("empirical", "tail"):
        raise ValueError(f"pvalues must be 'empirical' or 'tail', got {pvalues!r}")
    if len(sets) != S:
        raise ValueError(f"sets must hold one index set per seed ({S}), got {len(sets)}")
    if fires is not None and len(fires) != S:
        raise ValueError(f"fires must hold one firing matrix per seed ({S}), got {len(fires)}")
    method = method or ("correlation" if fires is not None else "cosine")
    d = decs[0].shape[1]
    bases: list[np.ndarray] = []
    owner: list[int] = []
    members: list[np.ndarray] = []
    idx_sets = [index_array(sets[s], len(decs[s]), f"sets[{s}]") for s in range(S)]
    for s in range(S):
        idx = idx_sets[s]
        f = None if fires is None else _columns(fires[s], idx)
        for cl in cluster_latents(decs[s][idx], fires=f, method=method, threshold=threshold, min_size=min_size,
                                  neighbours=neighbours):
            bases.append(candidate_basis(decs[s][idx[cl]], energy=energy, max_rank=max_rank))
            owner.append(s)
            members.append(idx[cl])
    owner_arr = np.asarray(owner, dtype=np.int64)
    params = {"method": method, "threshold": threshold, "min_size": min_size, "energy": energy,
              "max_rank": max_rank, "tau": tau, "normalize": normalize, "min_score": min_score, "alpha": alpha,
              "pvalues": pvalues, "tail_fraction": tail_fraction,
              "null": "random latent subsets of the same size from the same seed"
                      + (", frequency-matched" if freqs is not None else "")}
    out: dict = {"params": params, "candidates": [], "null": {}, "null_haar": {}, "per_seed": [],
                 "null_draws": {"size": np.zeros(0, dtype=np.int64), "mean_best_similarity": np.zeros(0)}}
    if bases:
        use_graph = neighbour_index is not None and len(bases) > dense_limit
        part = _partners(members, owner_arr, members, owner_arr, neighbour_index) if use_graph else None
        best = _best_similarity(bases, owner_arr, bases, owner_arr, S, normalize, part)
        rng = np.random.default_rng([seed, 0x5EED])  # not the bare seed: a caller's data may share it
        n_null = max(n_null, -(-min_null_draws // len(bases)))
        haar_q = [np.linalg.qr(rng.standard_normal((d, b.shape[1])))[0] for b in bases for _ in range(n_null)]
        null_owner = np.repeat(owner_arr, n_null)
        sizes = np.array([len(m) for m in members])
        freq_bins = [None if freqs is None else _frequency_bins(freqs[s]) for s in range(S)]  # once per seed
        sub_lat = [_random_subset(rng, len(decs[owner[c]]), members[c], freq_bins[owner[c]])
                   for c in range(len(bases)) for _ in range(n_null)]
        sub_q = [candidate_basis(decs[o][lat], energy=energy, max_rank=max_rank)
                 for o, lat in zip(null_owner.tolist(), sub_lat)]
        sub_sizes = np.repeat(sizes, n_null)

        def summaries(best_q: np.ndarray) -> np.ndarray:
            rows = []
            for q in range(len(best_q)):
                vals = np.nan_to_num(np.delete(best_q[q], null_owner[q]), nan=0.0)
                rows.append(((vals >= tau).mean() if len(vals) else np.nan, vals.mean() if len(vals) else np.nan))
            return np.asarray(rows)

        haar_part = None if part is None else [part[c] for c in range(len(bases)) for _ in range(n_null)]
        sub_part = None if part is None else _partners(sub_lat, null_owner, members, owner_arr, neighbour_index)
        haar = summaries(_best_similarity(bases, owner_arr, haar_q, null_owner, S, normalize, haar_part))
        sub = summaries(_best_similarity(bases, owner_arr, sub_q, null_owner, S, normalize, sub_part))
        near = {int(m): np.argsort(np.abs(np.log(sub_sizes) - np.log(m)), kind="stable")[:null_neighbours]
                for m in np.unique(sizes)}
        for c in range(len(bases)):
            others = [b for b in range(S) if b != owner[c]]
            vals = np.nan_to_num(best[c, others], nan=0.0)
            score = float((vals >= tau).mean()) if others else float("nan")
            sim = float(vals.mean()) if others else float("nan")
            ref = sub[near[len(members[c])], 1]
            p_value = _candidate_pvalue(sim, ref, pvalues, tail_fraction)
            out["candidates"].append({
                "seed": owner[c], "latents": members[c].tolist(), "size": len(members[c]),
                "rank": int(bases[c].shape[1]), "score": score, "mean_best_similarity": sim,
                "null_similarity": float(ref.mean()), "p_value": p_value,
                "reproducible": bool(score >= min_score and p_value <= alpha),
            })
        for key, arr in (("null", sub), ("null_haar", haar)):
            out[key] = {"score_mean": float(arr[:, 0].mean()),
                        "reproduced_share": float((arr[:, 0] >= min_score).mean()),
                        "mean_best_similarity": float(arr[:, 1].mean()),
                        "mean_best_similarity_q99": float(np.quantile(arr[:, 1], 0.99)),
                        "draws": len(arr)}
        out["null"]["kind"] = params["null"]
        out["null_draws"] = {"size": sub_sizes.astype(np.int64), "mean_best_similarity": sub[:, 1].copy()}
        out["null_haar"]["kind"] = "Haar-random subspaces of the same ranks"
    for s in range(S):
        mine = [c for c in out["candidates"] if c["seed"] == s and c["reproducible"]]
        repro = sorted({int(i) for c in mine for i in c["latents"]})
        n_set = len(idx_sets[s])
        out["per_seed"].append({
            "num_set": n_set,
            "num_candidates": int(sum(c["seed"] == s for c in out["candidates"])),
            "num_in_candidates": int(sum(c["size"] for c in out["candidates"] if c["seed"] == s)),
            "num_in_reproducible": len(repro),
            "share_in_reproducible": len(repro) / n_set if n_set else float("nan"),
            "reproducible_latents": repro,
        })
    scores = [c["score"] for c in out["candidates"]]
    out["score_mean"] = float(np.mean(scores)) if scores else float("nan")
    out["reproduced_share"] = float(np.mean([s >= min_score for s in scores])) if scores else float("nan")
    out["reproducible_share"] = (float(np.mean([c["reproducible"] for c in out["candidates"]]))
                                 if scores else float("nan"))
    best_sims = [c["mean_best_similarity"] for c in out["candidates"]]
    out["mean_best_similarity"] = float(np.mean(best_sims)) if best_sims else float("nan")
    return out
