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
   p̂. With ``matched`` (the study's default), a candidate's similarity in seed b leaves out its latents that recur
   one by one in seed b: a shared rare feature is a feature, not a reproduced span. **Null** (``"null"``): the
   same procedure (basis, matching) applied to random latent subsets of the same size drawn from the same seed
   (frequency-matched when ``freqs`` are given). Decoder rows are far from isotropic (random subsets of real
   decoders share much of their span across seeds), so this null, not a
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

from ._common import ArrayLike, check_decoders, index_array, right_singular
from .affinity import (  # the first two are re-exported: they were defined here
    coactivation_affinity,  # noqa: F401
    correlation_affinity,  # noqa: F401
    cosine_neighbour_affinity,
    sparse_firing_affinity,
)
from .clustering import average_linkage
from .fdr import tail_pvalues
from .subspace_similarity import best_beyond_matches as _best_beyond_matches
from .subspace_similarity import best_similarity as _best_similarity
from .subspace_similarity import candidate_partners as _partners
from .subspace_similarity import cos2_chunks as _cos2_chunks  # noqa: F401  (tests import it from here)


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


def _check_candidate_inputs(decoders: list[ArrayLike], sets: list[ArrayLike], fires: list[ArrayLike] | None,
                            normalize: str, pvalues: str) -> list[np.ndarray]:
    """The checked decoders of :func:`candidate_subspaces`; a clear error for a bad option or count."""
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
    return decs


def _find_clusters(decs: list[np.ndarray], idx_sets: list[np.ndarray], fires: list[ArrayLike] | None, *,
                   method: str, threshold: float, min_size: int, neighbours: int) -> list[tuple[int, np.ndarray]]:
    """(seed, member latents) of every cluster of each seed's set, seed by seed. Memory: that of
    :func:`cluster_latents` on one seed's set."""
    clusters: list[tuple[int, np.ndarray]] = []
    for s in range(len(decs)):
        idx = idx_sets[s]
        f = None if fires is None else _columns(fires[s], idx)
        clusters += [(s, idx[cl]) for cl in cluster_latents(decs[s][idx], fires=f, method=method,
                                                             threshold=threshold, min_size=min_size,
                                                             neighbours=neighbours)]
    return clusters


def _cluster_bases(decs: list[np.ndarray], clusters: list[tuple[int, ArrayLike]], *, energy: float,
                   max_rank: int) -> tuple[list[np.ndarray], list[int], list[np.ndarray]]:
    """(bases, owning seed, member latents) of clusters given as ``(seed, latent indices)`` (found by
    :func:`_find_clusters`, or earlier, e.g. by the study's candidates step). Memory: the (d, r) bases."""
    bases: list[np.ndarray] = []
    owner: list[int] = []
    members: list[np.ndarray] = []
    for c, (s, latents) in enumerate(clusters):
        if not 0 <= int(s) < len(decs):
            raise ValueError(f"clusters[{c}] names seed {s}, outside [0, {len(decs)})")
        lat = index_array(latents, len(decs[int(s)]), f"clusters[{c}] latents")
        bases.append(candidate_basis(decs[int(s)][lat], energy=energy, max_rank=max_rank))
        owner.append(int(s))
        members.append(lat)
    return bases, owner, members


def _null_summaries(decs: list[np.ndarray], bases: list[np.ndarray], owner: np.ndarray, members: list[np.ndarray],
                    part: list[np.ndarray] | None, neighbour_index: np.ndarray | None,
                    freqs: list[ArrayLike] | None, *, n_null: int, normalize: str, tau: float, energy: float,
                    max_rank: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two nulls, ``n_null`` draws per candidate: Haar-random subspaces of its rank and random latent
    subsets of its size from its seed (frequency-matched with ``freqs``). Returns (Haar (D, 2), subset (D, 2))
    rows of (share of other seeds reproduced at ``tau``, mean best similarity), and the (D,) subset sizes.
    Memory O(D·(d·r + S)) for the D draws' bases and scores, plus one similarity chunk."""
    S, d = len(decs), decs[0].shape[1]
    rng = np.random.default_rng([seed, 0x5EED])  # not the bare seed: a caller's data may share it
    haar_q = [np.linalg.qr(rng.standard_normal((d, b.shape[1])))[0] for b in bases for _ in range(n_null)]
    null_owner = np.repeat(owner, n_null)
    sizes = np.array([len(m) for m in members])
    freq_bins = [None if freqs is None else _frequency_bins(freqs[s]) for s in range(S)]  # once per seed
    sub_lat = [_random_subset(rng, len(decs[owner[c]]), members[c], freq_bins[owner[c]])
               for c in range(len(bases)) for _ in range(n_null)]
    sub_q = [candidate_basis(decs[o][lat], energy=energy, max_rank=max_rank)
             for o, lat in zip(null_owner.tolist(), sub_lat)]

    def summaries(best_q: np.ndarray) -> np.ndarray:
        rows = []
        for q in range(len(best_q)):
            vals = np.nan_to_num(np.delete(best_q[q], null_owner[q]), nan=0.0)
            rows.append(((vals >= tau).mean() if len(vals) else np.nan, vals.mean() if len(vals) else np.nan))
        return np.asarray(rows)

    haar_part = None if part is None else [part[c] for c in range(len(bases)) for _ in range(n_null)]
    sub_part = None if part is None else _partners(sub_lat, null_owner, members, owner, neighbour_index)
    haar = summaries(_best_similarity(bases, owner, haar_q, null_owner, S, normalize, haar_part))
    sub = summaries(_best_similarity(bases, owner, sub_q, null_owner, S, normalize, sub_part))
    return haar, sub, np.repeat(sizes, n_null)


def _candidate_row(best_c: np.ndarray, seed_c: int, members_c: np.ndarray, basis_c: np.ndarray, ref: np.ndarray,
                   *, tau: float, min_score: float, alpha: float, pvalues: str, tail_fraction: float) -> dict:
    """One candidate's result from its (S,) best similarities in each seed and its reference null draws."""
    others = [b for b in range(len(best_c)) if b != seed_c]
    vals = np.nan_to_num(best_c[others], nan=0.0)
    score = float((vals >= tau).mean()) if others else float("nan")
    sim = float(vals.mean()) if others else float("nan")
    p_value = _candidate_pvalue(sim, ref, pvalues, tail_fraction)
    return {
        "seed": seed_c, "latents": members_c.tolist(), "size": len(members_c),
        "rank": int(basis_c.shape[1]), "score": score, "mean_best_similarity": sim,
        "null_similarity": float(ref.mean()), "p_value": p_value,
        "reproducible": bool(score >= min_score and p_value <= alpha),
    }


def _null_totals(arr: np.ndarray, min_score: float) -> dict:
    """Summary of one null's (D, 2) draws (score, mean best similarity)."""
    return {"score_mean": float(arr[:, 0].mean()),
            "reproduced_share": float((arr[:, 0] >= min_score).mean()),
            "mean_best_similarity": float(arr[:, 1].mean()),
            "mean_best_similarity_q99": float(np.quantile(arr[:, 1], 0.99)),
            "draws": len(arr)}


def _per_seed(candidates: list[dict], s: int, n_set: int) -> dict:
    """Seed ``s``'s counts: its set, its candidates and the latents in its reproducible candidates."""
    mine = [c for c in candidates if c["seed"] == s and c["reproducible"]]
    repro = sorted({int(i) for c in mine for i in c["latents"]})
    return {
        "num_set": n_set,
        "num_candidates": int(sum(c["seed"] == s for c in candidates)),
        "num_in_candidates": int(sum(c["size"] for c in candidates if c["seed"] == s)),
        "num_in_reproducible": len(repro),
        "share_in_reproducible": len(repro) / n_set if n_set else float("nan"),
        "reproducible_latents": repro,
    }


def _overall(candidates: list[dict], min_score: float) -> dict:
    """Means over all candidates: score, share reproduced at ``min_score``, share reproducible, best similarity."""
    scores = [c["score"] for c in candidates]
    out = {"score_mean": float(np.mean(scores)) if scores else float("nan"),
           "reproduced_share": float(np.mean([s >= min_score for s in scores])) if scores else float("nan"),
           "reproducible_share": (float(np.mean([c["reproducible"] for c in candidates]))
                                  if scores else float("nan"))}
    best_sims = [c["mean_best_similarity"] for c in candidates]
    out["mean_best_similarity"] = float(np.mean(best_sims)) if best_sims else float("nan")
    return out


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
    clusters: list[tuple[int, ArrayLike]] | None = None,
    matched: list[list[np.ndarray]] | None = None,
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
    array, "mean_best_similarity": (D,) float array}`` (memory O(D)). ``clusters``: the candidates as found before,
    ``(seed, latent indices)`` each in the order of an earlier result's ``candidates`` (the same ``sets``, method
    and thresholds): the clustering is skipped and only the bases, similarities and nulls are computed.
    ``matched`` (``[a][b]``: (F_a,) bool, e.g. :meth:`sae_fast.analysis.stability.AnchorScores.matched`): a
    candidate's similarity in seed b leaves out its latents that recur one by one in seed b (re-scored from the
    rest, 0 when none is left), so a candidate of rare features that two seeds share scores as the span beyond
    them; on planted negative controls whose unstable latents are drawn from one pool (so pairs of seeds share a
    few directions) every false discovery was such a candidate. The subset null is not re-scored (its draws are
    mostly stable latents, which no other seed's candidate holds). None: no exclusion.
    Returns ``{"candidates": [per-candidate dicts: seed, latents, rank, score, mean_best_similarity,
    null_similarity, p_value, reproducible], "null": {subset null: "score_mean", "reproduced_share", ...},
    "null_haar": {...}, "per_seed": [{"num_set", "num_in_reproducible", "share_in_reproducible",
    "reproducible_latents"}], "params": {...}}``.
    """
    decs = _check_candidate_inputs(decoders, sets, fires, normalize, pvalues)
    S = len(decs)
    method = method or ("correlation" if fires is not None else "cosine")
    idx_sets = [index_array(sets[s], len(decs[s]), f"sets[{s}]") for s in range(S)]
    if clusters is None:
        clusters = _find_clusters(decs, idx_sets, fires, method=method, threshold=threshold, min_size=min_size,
                                  neighbours=neighbours)
    bases, owner, members = _cluster_bases(decs, clusters, energy=energy, max_rank=max_rank)
    owner_arr = np.asarray(owner, dtype=np.int64)
    params = {"method": method, "threshold": threshold, "min_size": min_size, "energy": energy,
              "max_rank": max_rank, "tau": tau, "normalize": normalize, "min_score": min_score, "alpha": alpha,
              "pvalues": pvalues, "tail_fraction": tail_fraction,
              "beyond_individual_matches": matched is not None,
              "null": "random latent subsets of the same size from the same seed"
                      + (", frequency-matched" if freqs is not None else "")}
    out: dict = {"params": params, "candidates": [], "null": {}, "null_haar": {}, "per_seed": [],
                 "null_draws": {"size": np.zeros(0, dtype=np.int64), "mean_best_similarity": np.zeros(0)}}
    if bases:
        use_graph = neighbour_index is not None and len(bases) > dense_limit
        part = _partners(members, owner_arr, members, owner_arr, neighbour_index) if use_graph else None
        best = _best_similarity(bases, owner_arr, bases, owner_arr, S, normalize, part)
        if matched is not None:
            best = _best_beyond_matches(best, owner_arr, members, decs, bases, owner_arr, matched, normalize,
                                        lambda rows: candidate_basis(rows, energy=energy, max_rank=max_rank))
        n_null = max(n_null, -(-min_null_draws // len(bases)))
        haar, sub, sub_sizes = _null_summaries(
            decs, bases, owner_arr, members, part, neighbour_index, freqs, n_null=n_null, normalize=normalize,
            tau=tau, energy=energy, max_rank=max_rank, seed=seed)
        sizes = np.array([len(m) for m in members])
        near = {int(m): np.argsort(np.abs(np.log(sub_sizes) - np.log(m)), kind="stable")[:null_neighbours]
                for m in np.unique(sizes)}
        for c in range(len(bases)):
            ref = sub[near[len(members[c])], 1]
            out["candidates"].append(_candidate_row(best[c], owner[c], members[c], bases[c], ref, tau=tau,
                                                    min_score=min_score, alpha=alpha, pvalues=pvalues,
                                                    tail_fraction=tail_fraction))
        for key, arr in (("null", sub), ("null_haar", haar)):
            out[key] = _null_totals(arr, min_score)
        out["null"]["kind"] = params["null"]
        out["null_draws"] = {"size": sub_sizes.astype(np.int64), "mean_best_similarity": sub[:, 1].copy()}
        out["null_haar"]["kind"] = "Haar-random subspaces of the same ranks"
    out["per_seed"] = [_per_seed(out["candidates"], s, len(idx_sets[s])) for s in range(S)]
    out.update(_overall(out["candidates"], min_score))
    return out
