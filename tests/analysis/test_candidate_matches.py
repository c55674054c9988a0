"""Candidates are scored on their span beyond latents that recur one by one in the other seed
(`candidate_subspaces(matched=...)`, `AnchorScores.matched`)."""

from __future__ import annotations

import numpy as np

from sae_fast.analysis.candidates import candidate_subspaces
from sae_fast.analysis.stability import anchor_scores


def _rotation_without_matches(rng: np.random.Generator, r: int) -> np.ndarray:
    """An r × r rotation whose entries all stay below 0.7 in absolute value (no basis vector kept)."""
    while True:
        q = np.linalg.qr(rng.standard_normal((r, r)))[0]
        if np.abs(q).max() < 0.7:
            return q


def _seeds(rng: np.random.Generator, d: int = 24, F: int = 30):
    """3 seeds of random latents. Seeds 0 and 1 share two rare features one by one (rows 0, 1 and 5, 6: the same
    directions) and a 3-dim subspace spanned by different bases (rows 2-4 and 7-9: no latent matched)."""
    decs = [rng.standard_normal((F, d)) for _ in range(3)]
    shared = rng.standard_normal((2, d))
    span = np.linalg.qr(rng.standard_normal((d, 3)))[0].T  # (3, d)
    decs[0][[0, 1]], decs[1][[5, 6]] = shared, shared
    decs[0][2:5], decs[1][7:10] = span, _rotation_without_matches(rng, 3) @ span
    return [D / np.linalg.norm(D, axis=1, keepdims=True) for D in decs]


def test_matched_finds_the_shared_rows_only():
    decs = _seeds(np.random.default_rng(0))
    m = anchor_scores(decs, theta=0.7).matched()
    assert m[0][1][[0, 1]].all() and m[1][0][[5, 6]].all() and not m[0][0].any()
    assert not m[0][1][2:5].any() and not m[1][0][7:10].any()  # the shared span has no latent matched
    assert not m[0][2][:10].any()


def test_candidates_score_the_span_beyond_individual_matches():
    decs = _seeds(np.random.default_rng(0))
    clusters = [(0, [0, 1]), (0, [2, 3, 4]), (1, [5, 6]), (1, [7, 8, 9])]
    kw = dict(clusters=clusters, energy=0.999, min_null_draws=20, seed=0)
    plain = candidate_subspaces(decs, [np.ones(30, bool)] * 3, **kw)["candidates"]
    beyond = candidate_subspaces(decs, [np.ones(30, bool)] * 3, matched=anchor_scores(decs, theta=0.7).matched(),
                                 **kw)["candidates"]
    # the two shared features: the same span in seed 1 (similarity 1) without the exclusion, nothing beyond them
    assert plain[0]["mean_best_similarity"] > 0.45 and beyond[0]["mean_best_similarity"] < 0.2
    # the shared subspace with different bases: no latent is excluded, its similarity is unchanged
    assert beyond[1]["mean_best_similarity"] == plain[1]["mean_best_similarity"] > 0.45
    assert beyond[3]["mean_best_similarity"] == plain[3]["mean_best_similarity"]
