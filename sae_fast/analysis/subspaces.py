"""Cross-seed reproducibility of the unstable (and stable) subspace (method.md §4.2, our procedure [D]).

For every seed s, take the latents of a set (e.g. unstable, with s as the anchor), form their unit decoder
rows ``D_s`` (n_s, d) and the top-r right singular vectors ``V_s`` (d, r). For every seed pair the principal
angles between span(V_a) and span(V_b) give mean cos², the largest angle and the energy captured
``||D_b V_a||_F^2 / ||D_b||_F^2``. Null baselines: (i) Haar-random r-subspaces (expected mean cos² = r/d);
(ii) top-r subspaces of random latent subsets of the same size drawn from all latents of each seed (controls
for the anisotropy of decoder rows). r is swept.

When a set holds most of the latents (e.g. "non-stable" with few seeds), a random subset of its size is nearly
the same set and null (ii) is degenerate; :func:`matched_cross_seed_subspaces` therefore subsamples the set and
the random latents to a common n (at most F/4 by default), a few times, and reports mean ± spread over the
draws and a z-score of the set against the random subsets.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

import numpy as np

from ..angles import principal_angles_pairs, random_subspace_angles, subspace_similarity
from ._common import ArrayLike, check_decoders, index_array, right_singular
from .linalg_device import gram


class Similarity(TypedDict):
    """Mean cos² between seeds' top-r subspaces (other statistics may follow)."""

    mean_cos2: float | None


class SetSimilarity(Similarity):
    energy: float | None


class RankSimilarity(TypedDict):
    """One rank: the set, the Haar null, ``random_subset`` only with random subsets drawn (``n_random`` > 0),
    and each reference set by name (the study's step passes ``stable``)."""

    set: SetSimilarity
    haar: Similarity
    random_subset: NotRequired[Similarity]


class SpreadSimilarity(TypedDict):
    mean_cos2: float | None
    mean_cos2_spread: float | None


class MatchedRankSimilarity(TypedDict):
    set: SpreadSimilarity
    random: SpreadSimilarity
    z_mean_cos2: float | None


class MatchedSubspaces(TypedDict):
    """:func:`matched_cross_seed_subspaces`: a set against random latents at a common n; ``ranks`` holds the
    ranks <= min(n, d) only."""

    d: int
    n: int
    draws: int
    set_sizes: list[int]
    share_of_F: float
    ranks: dict[int, MatchedRankSimilarity]


class CrossSeedSubspaces(TypedDict):
    """:func:`cross_seed_subspaces`: ``ranks`` holds the ranks the smallest set (and d) reaches."""

    d: int
    sizes: list[int]
    ranks: dict[int, RankSimilarity]


def top_subspace(rows: np.ndarray, r: int) -> np.ndarray:
    """(d, r) orthonormal basis of the top-r right singular subspace of rows (n, d); needs n >= r."""
    if rows.shape[0] < r:
        raise ValueError(f"need at least r={r} rows for a rank-r subspace, got {rows.shape[0]}")
    return right_singular(rows)[1][:, :r].copy()


def _pair_stats(bases: list[np.ndarray], grams: list[np.ndarray]) -> dict:
    """Summaries over seed pairs; ``grams[s]`` = D_s^T D_s gives the energy ||D_b V_a||^2 / ||D_b||^2 cheaply."""
    S = len(bases)
    pairs = np.array([(a, b) for a in range(S) for b in range(a + 1, S)], dtype=np.int64)
    sim = subspace_similarity(principal_angles_pairs(bases, pairs))
    energy = [float(np.einsum("dr,de,er->", bases[a], grams[b], bases[a]) / np.trace(grams[b]))
              for a in range(S) for b in range(S) if a != b]
    return {
        "mean_cos2": float(np.mean(sim.mean_cos2)),
        "mean_cos2_std": float(np.std(sim.mean_cos2)),
        "largest_angle": float(np.mean(sim.largest_angle)),
        "energy": float(np.mean(energy)),
        "pairs": len(pairs),
    }


def _seed_decoders(decoders: list[ArrayLike], sets: list[ArrayLike]) -> list[np.ndarray]:
    """The checked decoders of at least 2 seeds, with one index set per seed in ``sets``."""
    decs = check_decoders(decoders)
    if len(decs) < 2:
        raise ValueError("need at least 2 seeds")
    if len(sets) != len(decs):
        raise ValueError(f"sets must hold one index set per seed ({len(decs)}), got {len(sets)}")
    return decs


def cross_seed_subspaces(
    decoders: list[ArrayLike],
    sets: list[ArrayLike],
    *,
    ranks: tuple[int, ...] = (8, 16, 32, 64),
    n_random: int = 5,
    reference_sets: dict[str, list[ArrayLike]] | None = None,
    seed: int = 0,
) -> CrossSeedSubspaces:
    """Principal-angle reproducibility of ``sets[s]`` (latent indices or masks of seed s) across seeds.

    ``reference_sets`` (e.g. {"stable": [...]}) are treated the same way for comparison. Ranks larger than
    the smallest set or than d are skipped. Returns ``{"d", "sizes", "ranks": {r: {"set", "random_subset",
    "haar", <reference names>}}}`` where each entry holds mean cos², largest angle and (except "haar")
    energy, averaged over seed pairs (and over ``n_random`` draws for random subsets).
    """
    decs = _seed_decoders(decoders, sets)
    S = len(decs)
    d = decs[0].shape[1]
    rows = [decs[s][index_array(sets[s], len(decs[s]), f"sets[{s}]")] for s in range(S)]
    refs = {name: [decs[s][index_array(v[s], len(decs[s]), f"{name}[{s}]")] for s in range(S)]
            for name, v in (reference_sets or {}).items()}
    rng = np.random.default_rng(seed)
    smallest = min(len(r) for r in rows)
    out: dict = {"d": d, "sizes": [len(r) for r in rows], "ranks": {}}
    ranks = [int(r) for r in ranks if 1 <= r <= min(smallest, d)]
    if not ranks:
        return out
    vecs = [right_singular(x)[1] for x in rows]  # one decomposition per set, sliced per rank
    row_grams = [gram(x) for x in rows]
    random_draws = []
    for _ in range(n_random):
        subs = [decs[s][rng.choice(len(decs[s]), len(rows[s]), replace=False)] for s in range(S)]
        random_draws.append(([gram(x) for x in subs], [right_singular(x)[1] for x in subs]))
    ref_vecs = {name: [right_singular(x)[1] if len(x) else None for x in ref_rows] for name, ref_rows in refs.items()}
    ref_grams = {name: [gram(x) for x in ref_rows] for name, ref_rows in refs.items()}
    for r in ranks:
        entry = {"set": _pair_stats([v[:, :r] for v in vecs], row_grams)}
        draws = [_pair_stats([v[:, :r] for v in vs], subs) for subs, vs in random_draws]
        if draws:
            entry["random_subset"] = {key: float(np.mean([dr[key] for dr in draws])) for key in draws[0]}
        haar = subspace_similarity(random_subspace_angles(d, r, r, 64, seed=seed))
        entry["haar"] = {"mean_cos2": float(haar.mean_cos2.mean()), "largest_angle": float(haar.largest_angle.mean()),
                         "expected_mean_cos2": r / d}
        for name, ref_rows in refs.items():
            if min(len(x) for x in ref_rows) >= r:
                entry[name] = _pair_stats([v[:, :r] for v in ref_vecs[name]], ref_grams[name])
        out["ranks"][int(r)] = entry
    return out


def _draw_stats(decs: list[np.ndarray], picks: list[np.ndarray], ranks: list[int]) -> dict[int, dict]:
    """Pair statistics at every rank for one draw (``picks[s]``: row indices of seed s)."""
    rows = [decs[s][picks[s]] for s in range(len(decs))]
    vecs = [right_singular(x)[1] for x in rows]
    grams = [gram(x) for x in rows]
    return {r: _pair_stats([v[:, :r] for v in vecs], grams) for r in ranks}


def matched_cross_seed_subspaces(
    decoders: list[ArrayLike],
    sets: list[ArrayLike],
    *,
    ranks: tuple[int, ...] = (8, 16, 32, 64),
    n: int | None = None,
    max_fraction: float = 0.25,
    draws: int = 3,
    random_from: list[ArrayLike] | None = None,
    seed: int = 0,
) -> MatchedSubspaces:
    """Cross-seed reproducibility of ``sets[s]`` against random latents at a common size n.

    Each draw subsamples every seed's set to n latents and, as the null, n latents of ``random_from[s]`` (default:
    all latents); n defaults to ``min(smallest set, max_fraction * F)``. Returns ``{"n", "draws", "set_sizes",
    "share_of_F", "ranks": {r: {"set": {mean_cos2, mean_cos2_spread, energy, ...}, "random": {...},
    "z_mean_cos2", "z_energy"}}}``: means over draws, ``*_spread`` the std over draws (ddof 1), and
    ``z = (set − random) / sqrt(spread_set² + spread_random²)`` (NaN with a single draw).
    """
    decs = _seed_decoders(decoders, sets)
    S = len(decs)
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    d = decs[0].shape[1]
    idx = [index_array(sets[s], len(decs[s]), f"sets[{s}]") for s in range(S)]
    pools = [np.arange(len(decs[s])) if random_from is None else
             index_array(random_from[s], len(decs[s]), f"random_from[{s}]") for s in range(S)]
    F = min(len(x) for x in decs)
    if n is None:
        n = min(min(len(i) for i in idx), int(max_fraction * F))
    n = int(min(n, min(len(i) for i in idx), min(len(p) for p in pools)))
    out: dict = {"d": d, "n": n, "draws": draws, "set_sizes": [len(i) for i in idx],
                 "share_of_F": float(np.mean([len(idx[s]) / len(decs[s]) for s in range(S)])), "ranks": {}}
    rk = [int(r) for r in ranks if 1 <= r <= min(n, d)]
    if not rk:
        return out
    rng = np.random.default_rng([seed, 0x5B5])
    set_draws, rand_draws = [], []
    for _ in range(draws):
        set_draws.append(_draw_stats(decs, [rng.choice(i, n, replace=False) for i in idx], rk))
        rand_draws.append(_draw_stats(decs, [rng.choice(p, n, replace=False) for p in pools], rk))

    def agg(ds: list[dict]) -> dict:
        res = {}
        for key in ("mean_cos2", "largest_angle", "energy"):
            vals = np.array([dr[key] for dr in ds])
            res[key] = float(vals.mean())
            res[f"{key}_spread"] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        return res

    for r in rk:
        a, b = agg([dr[r] for dr in set_draws]), agg([dr[r] for dr in rand_draws])
        entry = {"set": a, "random": b, "haar_mean_cos2": r / d}
        for key in ("mean_cos2", "energy"):
            spread = np.hypot(a[f"{key}_spread"], b[f"{key}_spread"])
            ok = np.isfinite(spread) and spread > 0
            entry[f"z_{key}"] = float((a[key] - b[key]) / spread) if ok else float("nan")
        out["ranks"][r] = entry
    return out
