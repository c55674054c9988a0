"""Activation statistics (method.md §3.2): firing frequency per latent and top-activating snippets.

``freq_i`` is the share of tokens on which latent i has a positive value in the SAE's code (for a TopK SAE:
among the top-k with a positive value; any architecture, see :mod:`.codes`). The paper reports ≈0.44 % for
stable vs ≈0.18 % for unstable features (GPT-2 small, [S1]); for a TopK SAE the mean over all latents is at
most k / F.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch

from ..batching import batches, check_activations
from ._common import NEITHER, STABLE, UNSTABLE, ArrayLike
from .codes import SparseCoder, positive_entries
from .masking import num_latents_of


@torch.no_grad()
def firing_frequency(sae: SparseCoder, x: ArrayLike, *, batch_size: int = 4096) -> np.ndarray:
    """(F,) float64 share of rows of x on which each latent has a positive value (any architecture).

    Memory: O(F) plus one batch's encoding, O(batch_size·F)."""
    xt = check_activations(x)
    F = num_latents_of(sae)
    counts = torch.zeros(F, dtype=torch.float64)
    for xb in batches(xt, batch_size):
        _, active, _ = positive_entries(sae.encode(xb), F)
        counts += torch.bincount(active.cpu(), minlength=F).double()
    return (counts / xt.shape[0]).numpy()


class GroupFrequency(TypedDict):
    """Firing frequency of one set of latents (None where the set is empty)."""

    count: int
    mean: float | None
    median: float | None
    dead_share: float | None
    mean_percent: float | None
    median_percent: float | None


class GroupComparison(TypedDict):
    all: GroupFrequency
    stable: GroupFrequency
    unstable: GroupFrequency
    neither: GroupFrequency


def compare_groups(freq: ArrayLike, labels: ArrayLike) -> GroupComparison:
    """Mean and median firing frequency (share, and ``*_percent``) of the stable (1) and unstable (-1) sets and of
    all latents."""
    f = np.asarray(freq, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1)
    if f.shape != lab.shape:
        raise ValueError(f"freq {f.shape} and labels {lab.shape} must have the same shape")
    out = {}
    for name, sel in (("all", np.ones_like(lab, dtype=bool)), ("stable", lab == STABLE), ("unstable", lab == UNSTABLE),
                      ("neither", lab == NEITHER)):
        vals = f[sel]
        out[name] = {
            "count": int(sel.sum()),
            "mean": float(vals.mean()) if vals.size else float("nan"),
            "median": float(np.median(vals)) if vals.size else float("nan"),
            "dead_share": float((vals == 0).mean()) if vals.size else float("nan"),
        }
        out[name]["mean_percent"] = 100 * out[name]["mean"]  # the paper quotes % of tokens
        out[name]["median_percent"] = 100 * out[name]["median"]
    return out


@torch.no_grad()
def top_activations(
    sae: SparseCoder, x: ArrayLike, latents: ArrayLike, *, n_top: int = 5, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of x with the largest activation of each requested latent.

    Returns ``rows`` (L, n_top) int64 (-1 where the latent fired on fewer rows) and ``values`` (L, n_top).
    Any architecture. Memory: O(L·(n_top + batch_size)) plus one batch's encoding, O(batch_size·F).
    """
    xt = check_activations(x)
    F = num_latents_of(sae)
    lat = torch.as_tensor(np.asarray(latents, dtype=np.int64).reshape(-1))
    if lat.numel() and (int(lat.min()) < 0 or int(lat.max()) >= F):
        raise ValueError(f"latents must lie in [0, {F})")
    L = lat.numel()
    best_v = torch.full((L, n_top), -float("inf"), dtype=torch.float64)
    best_r = torch.full((L, n_top), -1, dtype=torch.int64)
    lookup = torch.full((F,), -1, dtype=torch.int64)
    lookup[lat] = torch.arange(L)
    offset = 0
    for xb in batches(xt, batch_size):
        rows, active, values = (t.cpu() for t in positive_entries(sae.encode(xb), F))
        slot = lookup[active]
        hit = slot >= 0
        if bool(hit.any()):
            dense = torch.full((xb.shape[0], L), -float("inf"), dtype=torch.float64)
            dense[rows[hit], slot[hit]] = values[hit].double()
            cand_v = torch.cat([best_v, dense.T], dim=1)
            cand_r = torch.cat([best_r, (torch.arange(xb.shape[0]) + offset).expand(L, -1)], dim=1)
            best_v, pos = cand_v.topk(n_top, dim=1)
            best_r = cand_r.gather(1, pos)
        offset += xb.shape[0]
    best_r[~torch.isfinite(best_v)] = -1
    return best_r.numpy(), np.where(np.isfinite(best_v.numpy()), best_v.numpy(), np.nan)


def snippet(tokens: Sequence[str], position: int, width: int = 8) -> str:
    """Text around one token: up to ``width`` tokens either side, the token itself in [[double brackets]]."""
    left = " ".join(tokens[max(0, position - width) : position])
    right = " ".join(tokens[position + 1 : position + 1 + width])
    return f"{left} [[{tokens[position]}]] {right}".strip().replace(" ##", "")


def sample_latents(labels: ArrayLike, freq: ArrayLike, per_group: int = 6, seed: int = 0) -> dict[str, list[int]]:
    """A few latents per group (stable / unstable) among those that fire, for showing snippets."""
    lab = np.asarray(labels).reshape(-1)
    f = np.asarray(freq).reshape(-1)
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in (("stable", STABLE), ("unstable", UNSTABLE)):
        pool = np.flatnonzero((lab == value) & (f > 0))
        out[name] = sorted(rng.choice(pool, min(per_group, len(pool)), replace=False).tolist()) if len(pool) else []
    return out
