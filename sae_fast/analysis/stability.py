"""Stability summaries (method.md §1): p̂ per feature, the stable / unstable / neither split, histograms.

The scores themselves come from :func:`sae_fast.stability_scores`; :func:`anchor_scores` lays them out per
anchor (p̂ as float64, best cosines over the other seeds only) for the study when it is handed plain decoder
matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from ..stability.result import NEITHER, STABLE, UNSTABLE, split_labels
from ..stability.run import stability_scores
from ._common import ArrayLike, as_numpy, check_decoders


@dataclass
class AnchorScores:
    """Cross-seed evidence for every anchor seed.

    p_hat[a, i]: share of the other seeds holding a feature with cosine >= theta to feature i of seed a.
    best_cos[a, k, i]: the best cosine of feature i of anchor a in the k-th other seed (others in order).
    """

    p_hat: np.ndarray  # (A, F) float64
    best_cos: np.ndarray  # (A, S - 1, F) float32
    anchors: np.ndarray  # (A,) seed index of each anchor
    theta: float

    def matched(self) -> list[list[np.ndarray]]:
        """``[a][b]``: (F,) bool, feature i of seed a has a feature of seed b at cosine >= theta (the matches p̂
        counts; all False for b == a), for :func:`sae_fast.analysis.candidates.candidate_subspaces` ``matched``.
        Needs every seed as an anchor. Memory O(S²·F) bools."""
        S = self.best_cos.shape[1] + 1
        if sorted(self.anchors.tolist()) != list(range(S)):
            raise ValueError(f"matched() needs every seed as an anchor, got anchors {self.anchors.tolist()}")
        out: list[list[np.ndarray]] = [[] for _ in range(S)]
        for i, a in enumerate(self.anchors.tolist()):
            hit = iter(self.best_cos[i] >= self.theta)  # the other seeds in order (NaN: no match)
            out[a] = [np.zeros(self.best_cos.shape[2], dtype=bool) if b == a else next(hit) for b in range(S)]
        return out


def anchor_scores(
    decoders: list[ArrayLike],
    *,
    theta: float = 0.7,
    anchors: list[int] | None = None,
    signed: bool = True,
    block: int = 4096,
) -> AnchorScores:
    """Exact p̂ (many-to-one argmax rule) of every feature of every anchor against all other seeds, computed by
    :func:`sae_fast.stability_scores` (exact backend, on the CPU, in one process) and laid out per anchor.

    ``decoders``: S matrices (F, d) (rows need not be unit). ``anchors``: seed indices (default all).
    ``signed=False`` uses |cos|. ``block``: rows per score tile, so no F x F matrix is held.
    Memory: the S decoders as float32 plus best_cos (A, S - 1, F).
    """
    decs = [d.astype(np.float32) for d in check_decoders(decoders)]
    S = len(decs)
    if S < 2:
        raise ValueError(f"decoders must hold at least 2 seeds, got {S}")
    if not 0.0 < theta <= 1.0:
        raise ValueError(f"theta must be in (0, 1], got {theta}")
    anchors = list(range(S)) if anchors is None else [int(a) for a in anchors]
    for a in anchors:
        if not 0 <= a < S:
            raise ValueError(f"anchor {a} outside [0, {S})")
    F = decs[anchors[0]].shape[0]
    if any(dec.shape[0] != F for dec in decs):
        raise ValueError("all decoders must have the same number of latents")
    kw = {"theta": theta, "absolute": not signed, "backend": "exact", "device": "cpu", "progress": False,
          "distributed": False, "block_rows": block}
    runs = ([stability_scores(decs, anchor="all", **kw)] if anchors == list(range(S))
            else [stability_scores(decs, anchor=a, **kw) for a in anchors])
    best = np.concatenate([r.best_cos.numpy() for r in runs])  # (A, S, F), NaN at each anchor's own seed
    p_hat = np.concatenate([r.matched(theta).sum(dim=-2).double().numpy() for r in runs]) / (S - 1)
    best = np.stack([np.delete(best[i], a, axis=0) for i, a in enumerate(anchors)])
    return AnchorScores(p_hat=p_hat, best_cos=best, anchors=np.asarray(anchors), theta=float(theta))


def split(p_hat: ArrayLike, eps: float = 0.05) -> np.ndarray:
    """Endpoint split per feature: STABLE 1 (p̂ >= 1 - eps), UNSTABLE -1 (p̂ <= eps), NEITHER 0 (dropped);
    :func:`sae_fast.stability.split_labels` on a numpy copy."""
    return split_labels(as_numpy(p_hat, "p_hat"), eps)


class Histogram(TypedDict):
    counts: list[int]
    edges: list[float]


class StabilitySummary(TypedDict):
    """:func:`summarize` of p̂ alone."""

    num_features: int
    eps: float
    num_stable: int
    num_unstable: int
    num_neither: int
    share_stable: float
    share_unstable: float
    share_neither: float
    p_hat_mean: float
    p_hat_median: float
    p_hat_hist: Histogram


class CosSummary(StabilitySummary):
    """:func:`summarize` given the best cosines too."""

    best_cos_mean: float
    best_cos_hist: Histogram


class SweepRow(TypedDict):
    theta: float
    eps: float
    share_stable: float
    share_unstable: float


def summarize(p_hat: ArrayLike, best_cos: ArrayLike | None = None, *, eps: float = 0.05,
              bins: int = 20) -> StabilitySummary | CosSummary:
    """Shares of stable / unstable / neither, p̂ mean and histograms (counts and edges) of p̂ and best cosines.

    ``p_hat`` (F,) for one anchor (or (A, F) for several: the split statistics then pool all anchors).
    ``best_cos`` optional, any shape: every stored best cosine goes into its histogram.
    """
    p = as_numpy(p_hat, "p_hat").reshape(-1)
    if p.size == 0:
        raise ValueError("p_hat must not be empty")
    labels = split(p, eps)
    counts, edges = np.histogram(p, bins=bins, range=(0.0, 1.0))
    out = {
        "num_features": int(p.size),
        "eps": float(eps),
        "num_stable": int((labels == STABLE).sum()),
        "num_unstable": int((labels == UNSTABLE).sum()),
        "num_neither": int((labels == NEITHER).sum()),
        "share_stable": float((labels == STABLE).mean()),
        "share_unstable": float((labels == UNSTABLE).mean()),
        "share_neither": float((labels == NEITHER).mean()),
        "p_hat_mean": float(p.mean()),
        "p_hat_median": float(np.median(p)),
        "p_hat_hist": {"counts": counts.tolist(), "edges": edges.tolist()},
    }
    if best_cos is not None:
        c = as_numpy(best_cos, "best_cos").reshape(-1)
        ccounts, cedges = np.histogram(c, bins=2 * bins, range=(min(-1.0, float(c.min())), 1.0))
        out["best_cos_mean"] = float(c.mean())
        out["best_cos_hist"] = {"counts": ccounts.tolist(), "edges": cedges.tolist()}
    return out


def theta_eps_sweep(
    best_cos: ArrayLike, thetas: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9), eps_values: tuple[float, ...] = (
        0.02, 0.05, 0.1)
) -> list[SweepRow]:
    """Shares stable/unstable for a grid of theta and eps, from stored best cosines (S-1, F) of one anchor."""
    c = as_numpy(best_cos, "best_cos", ndim=2)
    rows = []
    for theta in thetas:
        p = (c >= theta).mean(axis=0)
        for eps in eps_values:
            lab = split(p, eps)
            rows.append({"theta": float(theta), "eps": float(eps), "share_stable": float((lab == STABLE).mean()),
                         "share_unstable": float((lab == UNSTABLE).mean())})
    return rows
