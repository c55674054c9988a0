"""Nulls that respect the data (method.md §11): a random-dictionary null for p̂ and PW-MCC, and for subspaces a
frequency-matched null drawn from outside the tested set with a within-seed split-half ceiling.

**Random dictionary.** :func:`spectrum_matched_decoder` replaces a trained decoder D = U S Vᵀ (F × d) by
Q S Vᵀ with Q a Haar-random F × d matrix with orthonormal columns, then unit-normalises the rows. We keep S *and*
V, i.e. the row second moment DᵀD = V S² Vᵀ exactly: the null dictionary is spread over the same directions of
activation space with the same anisotropy as the trained one (which is what two seeds trained on the same data
share without learning the same features), while which rows carry that energy is random, so no latent is a
learned feature. Randomising V as well (a fully rotated spectrum) would give each seed's null its own principal
directions and understate chance matches; shuffling trained rows (permuting coordinates) would break the link to
the data's directions. Two nulls built from two seeds' decoders with independent Q are compared exactly as the
trained decoders are, giving null p̂ and null PW-MCC.

**Subspaces.** :func:`subspace_test` asks whether the top-r subspace of a tested latent set (e.g. each seed's
unstable latents) recurs across seeds more than the top-r subspace of latents **not in the set** with the same
firing frequencies. Each seed's set is subsampled to a common size n (so the set and the null have the same n);
the statistic is the mean over seed pairs of mean cos² of the principal angles, averaged over ``set_draws``
subsamples; the null draws n frequency-matched latents per seed from outside the set (``null_draws`` times; in each
pair the second seed's draw, for the set as for the null, excludes the individual matches of the first's, see
:func:`_null_draw`),
and the ceiling splits each seed's set into two halves and compares their subspaces within the seed (the best a
reproducible subspace can do at this n). ``R = (cross − null) / (ceiling − null)``: 0 at the null, 1 at the
ceiling. The p-value is the share of null draws at least as large as the statistic (with the usual +1).

**The null's sample size.** The outside latents are mostly stable, i.e. the *same* directions in every seed, so
a pair's two null draws come from one finite population and, with the individual matches excluded, are disjoint
samples of it. Disjoint samples of a finite population are anti-correlated (the second holds what the first
lacks: the correlation of their means is about −n / (N − n) for N outside latents), so their top subspaces agree
less than two independent samples' would, while the tested sets of two seeds are close to independent samples.
That biases the null low and the test towards rejecting, the more so the more seed pairs are averaged. Measured on
planted negative controls with 160 outside latents at 8 seeds (:mod:`sae_fast.analysis.calibration`, p <= 0.05):
n = 32 (a fifth of them) rejected 5/24 (mean excess +0.0039), n = 20 7/48 (+0.0026), n = 16 5/48 (+0.0016),
n = 8 (a twentieth) 3/48 (+0.0009): the bias follows n / N. The default n is therefore at most
``max_outside_share`` (1/20) of the smallest outside set, but at least the smallest rank tested (where half the
outside set allows: a small study keeps one rank of its test, with some of that bias; ranks above n are skipped).
The result reports ``outside_share`` = n / (smallest outside set).
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ._common import ArrayLike, check_decoders, index_array, right_singular, single_thread_lapack
from .stability import anchor_scores


def haar_orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) matrix with Haar-distributed orthonormal columns (rows >= cols). Memory: rows × cols floats."""
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


def spectrum_matched_decoder(decoder: ArrayLike, rng: np.random.Generator) -> np.ndarray:
    """A random dictionary with the decoder's singular values and right singular vectors (module docstring).

    ``decoder``: (F, d). Returns (F, d) float64 unit rows. Memory: three F × d float64 arrays.
    """
    D = check_decoders([decoder], "decoder")[0]
    s, v = right_singular(D)  # m = min(F, d) components
    null = haar_orthonormal(rng, D.shape[0], len(s)) @ (s[:, None] * v.T)
    return null / np.maximum(np.linalg.norm(null, axis=1, keepdims=True), 1e-12)


def random_dictionary_null(
    decoders: list[ArrayLike],
    *,
    draws: int = 5,
    theta: float = 0.7,
    pw_mcc: bool = True,
    seed: int = 0,
    absolute: bool = False,
    trained_p_hat: float | None = None,
) -> dict:
    """p̂ and PW-MCC of spectrum-matched random dictionaries, next to the trained decoders' values.

    Parameters
    ----------
    decoders: S trained decoders (F, d) of one study.
    draws: independent null dictionaries per seed.
    theta: the match threshold of p̂.
    pw_mcc: also the Hungarian mean matched cosine (dense F × F per pair: only for F up to a few thousand).
    seed: seed of the random dictionaries.
    absolute: match on |cos| (as the study's stability step does with ``absolute``).
    trained_p_hat: the trained decoders' mean p̂ (every anchor) when already known, e.g. from the study's
        stability step: it is not recomputed then (unless ``pw_mcc`` needs the trained pairs anyway), which halves
        the work (every directed seed pair is one F × F sweep).

    Returns
    -------
    ``{"trained": {"p_hat_mean", "pw_mcc"}, "null": {"p_hat_mean", "p_hat_mean_draws", "pw_mcc",
    "pw_mcc_draws", "kind"}}``. Memory: the S decoders twice, plus an F × F block per pair for PW-MCC.
    """
    decs = check_decoders(decoders)
    if len(decs) < 2:
        raise UsageError("decoders must hold at least 2 seeds")
    if draws < 1:
        raise UsageError(f"draws must be >= 1, got {draws}")
    rng = np.random.default_rng([seed, 0x4E11])

    def measure(ds: list[np.ndarray]) -> tuple[float, float]:
        p = float(anchor_scores(ds, theta=theta, signed=not absolute).p_hat.mean())
        if not pw_mcc:
            return p, float("nan")
        from ..stability import pw_mcc as pw

        vals = [pw(ds[a], ds[b]) for a in range(len(ds)) for b in range(a + 1, len(ds))]
        return p, float(np.mean(vals))

    trained = measure(decs) if trained_p_hat is None or pw_mcc else (float(trained_p_hat), float("nan"))
    null = [measure([spectrum_matched_decoder(D, rng) for D in decs]) for _ in range(draws)]
    p_null, m_null = np.array(null).T
    return {"trained": {"p_hat_mean": trained[0], "pw_mcc": trained[1]},
            "null": {"p_hat_mean": float(p_null.mean()), "p_hat_mean_draws": p_null.tolist(),
                     "pw_mcc": float(m_null.mean()), "pw_mcc_draws": m_null.tolist(),
                     "kind": "random decoders with each trained decoder's singular values and right singular "
                             "vectors (row second moment kept), rows at random"}}


def frequency_matched_outside(
    rng: np.random.Generator,
    freq: np.ndarray,
    tested: np.ndarray,
    n: int,
    *,
    bins: int = 10,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """n latent indices **not** in ``tested`` whose frequencies follow those of n random tested latents.

    Frequency bins are quantiles of ``freq`` over all allowed latents; each of n tested latents drawn at random
    is replaced by a random outside latent of its bin (without replacement; a bin that runs out falls back to
    the nearest bins). ``allowed``: (F,) bool, latents that may be drawn at all (e.g. live ones).
    """
    F = len(freq)
    ok = np.ones(F, dtype=bool) if allowed is None else allowed.astype(bool)
    tested_idx = np.flatnonzero(tested & ok)
    outside = np.flatnonzero(~tested & ok)
    if len(outside) < n or len(tested_idx) == 0:
        raise UsageError(f"need at least n={n} latents outside the tested set and one inside, got "
                         f"{len(outside)} outside and {len(tested_idx)} inside")
    edges = np.unique(np.quantile(freq[ok], np.linspace(0, 1, bins + 1)))
    bin_of = lambda idx: np.clip(np.searchsorted(edges, freq[idx], side="right") - 1, 0, max(len(edges) - 2, 0))
    want = np.bincount(bin_of(rng.choice(tested_idx, n, replace=len(tested_idx) < n)), minlength=len(edges))
    out_bin = bin_of(outside)
    pools = [rng.permutation(outside[out_bin == b]) for b in range(len(edges))]
    used = np.zeros(len(pools), dtype=np.int64)
    picked: list[np.ndarray] = []
    for b in np.flatnonzero(want):
        need = int(want[b])
        for c in sorted(range(len(pools)), key=lambda c: (abs(c - b), c)):
            take = min(need, len(pools[c]) - used[c])
            picked.append(pools[c][used[c]:used[c] + take])
            used[c] += take
            need -= take
            if need == 0:
                break
    picked = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return np.asarray(picked, dtype=np.int64)


def _top(rows: np.ndarray, r: int) -> np.ndarray:
    """(d, r) top right singular vectors of rows (n, d) (:func:`right_singular`: numpy, or torch on the study's
    device)."""
    return right_singular(rows)[1][:, :r]


def _pair_cos2(bases: list[np.ndarray], pairs: np.ndarray) -> np.ndarray:
    """(P,) mean cos² of the principal angles = ||V_aᵀ V_b||_F² / r for each pair."""
    r = bases[0].shape[1]
    return np.array([np.sum((bases[a].T @ bases[b]) ** 2) / r for a, b in pairs])


def _seed_pairs(S: int) -> np.ndarray:
    return np.array([(a, b) for a in range(S) for b in range(a + 1, S)], dtype=np.int64).reshape(-1, 2)


def _draw_cos2(decs: list[np.ndarray], idx: list[np.ndarray], n: int, ranks: list[int], pairs: np.ndarray,
               rng: np.random.Generator, theta: float | None) -> np.ndarray:
    """(len(ranks), P) cross-seed mean cos² of one subsample of the sets (``idx[s]``: set of seed s), with the
    same exclusion of individual matches as the null (:func:`_null_draw`)."""
    picks = [rng.choice(i, n, replace=False) for i in idx]
    tops = [_top(decs[s][picks[s]], max(ranks)) for s in range(len(decs))]
    out = np.zeros((len(ranks), len(pairs)))
    for p, (a, b) in enumerate(pairs):
        vb = tops[b]
        if theta is not None:
            free = idx[b][(decs[b][idx[b]] @ decs[a][picks[a]].T).max(axis=1) < theta]
            if len(free) >= n:
                vb = _top(decs[b][rng.choice(free, n, replace=False)], max(ranks))
        out[:, p] = [np.sum((tops[a][:, :r].T @ vb[:, :r]) ** 2) / r for r in ranks]
    return out


def _split_half(decs: list[np.ndarray], idx: list[np.ndarray], half: int, ranks: list[int],
                rng: np.random.Generator) -> np.ndarray:
    """(len(ranks), S) within-seed cos² between the top-r subspaces of two disjoint halves of each seed's set."""
    out = np.zeros((len(ranks), len(decs)))
    for s, members in enumerate(idx):
        perm = rng.permutation(members)
        a, b = _top(decs[s][perm[:half]], max(ranks)), _top(decs[s][perm[half:2 * half]], max(ranks))
        out[:, s] = [np.sum((a[:, :r].T @ b[:, :r]) ** 2) / r for r in ranks]
    return out


def _null_draw(decs: list[np.ndarray], masks: list[np.ndarray], ok: list[np.ndarray], fq: list[np.ndarray], n: int,
               ranks: list[int], pairs: np.ndarray, rng: np.random.Generator, bins: int,
               theta: float | None) -> np.ndarray:
    """(len(ranks), P) cross-seed cos² of one null draw: per pair (a, b), n frequency-matched latents outside the
    set in seed a, and n in seed b **excluding** the individual matches (cos >= theta) of seed a's draw.

    Without the exclusion, outside latents that are stable recur one by one, so two seeds' random subsets of them
    share directions whenever the outside pool is small compared with n, and the null measures member overlap
    rather than the span of latents that do not reproduce individually, which is what the tested set is.
    Memory: an F_b × n cosine block per pair.
    """
    picks = [frequency_matched_outside(rng, fq[s], masks[s], n, bins=bins, allowed=ok[s]) for s in range(len(decs))]
    tops = [_top(decs[s][picks[s]], max(ranks)) for s in range(len(decs))]
    out = np.zeros((len(ranks), len(pairs)))
    for p, (a, b) in enumerate(pairs):
        vb = tops[b]
        if theta is not None:
            free = ok[b] & ((decs[b] @ decs[a][picks[a]].T).max(axis=1) < theta)
            if int((free & ~masks[b]).sum()) >= n:
                vb = _top(decs[b][frequency_matched_outside(rng, fq[b], masks[b], n, bins=bins, allowed=free)],
                          max(ranks))
        out[:, p] = [np.sum((tops[a][:, :r].T @ vb[:, :r]) ** 2) / r for r in ranks]
    return out


def _set_masks(decs: list[np.ndarray], sets: list[ArrayLike],
               allowed: list[ArrayLike] | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per seed, the (F_s,) bool mask of the tested set (within ``allowed``) and the ``allowed`` mask."""
    masks, ok = [], []
    for s in range(len(decs)):
        m = np.zeros(len(decs[s]), dtype=bool)
        m[index_array(sets[s], len(decs[s]), f"sets[{s}]")] = True
        a = np.ones(len(decs[s]), dtype=bool) if allowed is None else np.asarray(allowed[s], dtype=bool)
        masks.append(m & a)
        ok.append(a)
    return masks, ok


MAX_OUTSIDE_SHARE = 0.05
"""default largest share of the smallest outside set that one null draw takes (module docstring)"""


def null_sample_cap(smallest_out: int, max_outside_share: float = MAX_OUTSIDE_SHARE, floor: int = 0) -> int:
    """The largest default subsample n for an outside set of ``smallest_out`` latents (module docstring): that
    share of it, but at least ``floor`` (the smallest rank tested) where half the outside set allows, so a small
    study keeps one rank of its test at the cost of some of the bias the share avoids (larger ranks are skipped)."""
    return max(int(smallest_out * max_outside_share), min(floor, smallest_out // 2))


def _common_n(masks: list[np.ndarray], ok: list[np.ndarray], n: int | None, max_n: int, theta: float | None,
              max_outside_share: float, min_rank: int) -> tuple[int, int]:
    """The subsample size of :func:`subspace_test` (given or default) and the smallest outside set; a UsageError
    when n does not fit."""
    smallest_out = min(int((a & ~m).sum()) for m, a in zip(masks, ok))
    smallest_set = min(int(m.sum()) for m in masks)
    # disjoint draws of a finite outside population bias the null low (module docstring)
    out_cap = null_sample_cap(smallest_out, max_outside_share, min_rank) if theta is not None else smallest_out
    n = int(n if n is not None else min(smallest_set // 2, out_cap, max_n))
    if n < 2 or 2 * n > smallest_set or n > smallest_out:
        raise UsageError(f"n={n} must be >= 2, at most half of every set (smallest {smallest_set}: the split-half "
                         f"ceiling needs two disjoint halves of n) and fit outside it (smallest {smallest_out})")
    return n, smallest_out


def _rank_result(cross: np.ndarray, nulls: np.ndarray, ceiling: np.ndarray) -> dict:
    """One rank's result from the (P,) set cos², the (draws, P) null cos² and the (P,) split-half ceiling."""
    null_draws = len(nulls)
    c, nl, ceil = cross.mean(), nulls.mean(), ceiling.mean()
    draw_means = nulls.mean(axis=1)
    return {
        "cross": float(c), "cross_pairs": cross, "null": float(nl), "null_pairs": nulls.mean(axis=0),
        "null_sd": float(draw_means.std(ddof=1)) if null_draws > 1 else float("nan"),
        "ceiling": float(ceil), "excess": float(c - nl), "excess_pairs": cross - nulls.mean(axis=0),
        "R": float((c - nl) / (ceil - nl)) if abs(ceil - nl) > 1e-12 else float("nan"),
        "p_value": float((1 + np.sum(draw_means >= c - 1e-12)) / (1 + null_draws)),
    }


def subspace_test(
    decoders: list[ArrayLike],
    sets: list[ArrayLike],
    *,
    freqs: list[ArrayLike] | None = None,
    allowed: list[ArrayLike] | None = None,
    ranks: tuple[int, ...] = (8, 16, 32),
    n: int | None = None,
    max_n: int = 512,
    max_outside_share: float = MAX_OUTSIDE_SHARE,
    set_draws: int = 5,
    null_draws: int = 100,
    ceiling_draws: int = 5,
    freq_bins: int = 10,
    theta: float | None = 0.7,
    seed: int = 0,
) -> dict:
    """Cross-seed subspace reproducibility of ``sets`` against a frequency-matched outside null (module docstring).

    Parameters
    ----------
    decoders: S decoders (F_s, d).
    sets: per seed, the tested latents (indices or (F_s,) bool mask).
    freqs: per seed, (F_s,) firing frequencies for the frequency match (None: outside latents drawn uniformly).
    allowed: per seed, (F_s,) bool latents that may enter the set or the null (e.g. live latents).
    ranks: subspace ranks r; ranks above n or d are skipped.
    n: common subsample size of the set, the null and each split half (default: min(half the smallest set,
        ``max_outside_share`` of the smallest outside set (all of it when theta is None), max_n)); with fewer
        than n unmatched outside latents left in a pair, that pair's null draw falls back to no exclusion.
    max_outside_share: with theta, the default n is at most this share of the smallest outside set, so that the
        two disjoint null draws of a pair stay nearly independent (module docstring, "The null's sample size").
    set_draws, null_draws, ceiling_draws: subsamples of the set, null draws, split-half draws.
    freq_bins: quantile bins of the frequency match.
    theta: in each pair (a, b), seed b's latents (set and null alike) exclude the cos >= theta matches of seed
        a's drawn latents, so both measure shared span beyond individual matches (None: no exclusion); see
        :func:`_null_draw`.
    seed: seed of all draws.

    Returns
    -------
    ``{"n", "outside_share": n / smallest outside set, "pairs": (P, 2), "ranks": {r: {"cross", "cross_pairs",
    "null", "null_pairs", "null_sd", "ceiling", "excess", "excess_pairs", "R", "p_value"}}}``; ``*_pairs`` are
    per seed pair (for :func:`sae_fast.analysis.bootstrap.pair_bootstrap`). Memory: one n × d subsample per seed
    at a time, plus null_draws × P floats; time ~ (set_draws + null_draws) × S SVDs of n × d.
    """
    decs = check_decoders(decoders)
    S = len(decs)
    if S < 2 or len(sets) != S:
        raise UsageError(f"need at least 2 seeds and one set per seed, got {S} decoders and {len(sets)} sets")
    if min(set_draws, null_draws, ceiling_draws) < 1:
        raise UsageError("set_draws, null_draws and ceiling_draws must be >= 1")
    masks, ok = _set_masks(decs, sets, allowed)
    idx = [np.flatnonzero(m) for m in masks]
    if not 0.0 < max_outside_share <= 0.5:
        raise UsageError(f"max_outside_share must be in (0, 0.5], got {max_outside_share}")
    n, smallest_out = _common_n(masks, ok, n, max_n, theta, max_outside_share, min(ranks, default=0))
    d = decs[0].shape[1]
    half = n
    rk = [int(r) for r in ranks if 1 <= r <= min(n, d)]
    pairs = _seed_pairs(S)
    out: dict = {"n": n, "half": half, "pairs": pairs, "ranks": {}, "outside_share": n / max(smallest_out, 1)}
    if not rk:
        return out
    rng = np.random.default_rng([seed, 0x5B7E])
    fq = [np.zeros(len(D)) if freqs is None else np.asarray(freqs[s], dtype=np.float64) for s, D in enumerate(decs)]
    with single_thread_lapack():
        cross = np.mean([_draw_cos2(decs, idx, n, rk, pairs, rng, theta) for _ in range(set_draws)], axis=0)
        nulls = np.stack([_null_draw(decs, masks, ok, fq, n, rk, pairs, rng, freq_bins, theta)
                          for _ in range(null_draws)])  # (draws, ranks, P)
        ceiling = np.mean([_split_half(decs, idx, half, rk, rng) for _ in range(ceiling_draws)], axis=0)
    for j, r in enumerate(rk):
        out["ranks"][r] = _rank_result(cross[j], nulls[:, j], ceiling[j])
    return out
