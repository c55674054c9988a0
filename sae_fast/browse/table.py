"""The per-latent table behind the browser and the exports.

Memory: O(F·P) for P partners per latent, O(F·B) for B histogram bins, O(F·T) for T top activations; the
activation pass streams the held-out rows in batches and holds one batch's (rows × k) codes at a time, never a
dense (N × F) array.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..analysis.codes import positive_entries
from ..errors import DataError, UsageError

LABEL_NAMES = {1: "stable", 0: "neither", -1: "unstable"}


@dataclass
class LatentTable:
    """What is known of each latent of one seed. F latents, P partners per latent (one per other seed).

    p_hat (F,) float32; label (F,) int8 (1 stable, 0 neither, -1 unstable); partner_seed, partner_latent
    (F, P) int32 and partner_cos (F, P) float32, best first (-1 / NaN where missing); frequency (F,) float32
    (NaN unknown); candidate (F,) int64 (-1 none); hist_counts (F, B) int64 over hist_edges (F, B + 1) float32;
    top_rows / top_values (F, T) (-1 / NaN where fewer); snippets: latent -> list of strings.
    """

    seed: str
    seeds: list[str]
    theta: float
    eps: float
    p_hat: np.ndarray
    label: np.ndarray
    partner_seed: np.ndarray
    partner_latent: np.ndarray
    partner_cos: np.ndarray
    frequency: np.ndarray | None = None
    candidate: np.ndarray | None = None
    hist_counts: np.ndarray | None = None
    hist_edges: np.ndarray | None = None
    top_rows: np.ndarray | None = None
    top_values: np.ndarray | None = None
    snippets: dict[int, list[str]] = field(default_factory=dict)

    @property
    def num_latents(self) -> int:
        return int(self.p_hat.shape[0])

    def candidate_members(self) -> dict[int, list[int]]:
        """Candidate id -> the latents of this seed in it (empty when no candidates are known)."""
        if self.candidate is None:
            return {}
        ids = self.candidate
        order = np.argsort(ids, kind="stable")
        keys, starts = np.unique(ids[order], return_index=True)
        groups = np.split(order, starts[1:])
        return {int(k): g.tolist() for k, g in zip(keys, groups) if k >= 0}


def _anchor_index(stability: Any, seed: str | int | None) -> int:
    """The seed index of `seed` (a name, an index, or None for the first anchor); it must be an anchor."""
    if seed is None:
        return int(stability.anchors[0])
    if isinstance(seed, str) and seed in stability.seeds:
        a = stability.seeds.index(seed)
    elif isinstance(seed, int) or str(seed).isdigit():
        a = int(seed)
    else:
        raise UsageError(f"--seed {seed!r} is neither a seed name {stability.seeds} nor an index")
    if a not in stability.anchors:
        raise UsageError(f"--seed {seed!r} was not an anchor of the stability run (anchors: "
                         f"{[stability.seeds[i] for i in stability.anchors]}); rerun `sae-fast stability --anchor all`")
    return a


def latent_table(stability: Any, seed: str | int | None = None, *, theta: float | None = None,
                 eps: float | None = None) -> LatentTable:
    """The table of one anchor seed of a complete :class:`sae_fast.stability.Stability` run.

    Memory: O(F·S) for the partners of the F latents among the S - 1 other seeds.
    """
    if not stability.complete:
        raise DataError("the stability run is incomplete; resume it with `sae-fast stability DIR` first")
    a = _anchor_index(stability, seed)
    theta = stability.theta if theta is None else theta
    eps = stability.eps if eps is None else eps
    pos = stability.anchors.index(a)
    cos = stability.best_cos[pos].float().numpy().T  # (F, S)
    idx = stability.best_j[pos].numpy().T
    others = [s for s in range(stability.num_seeds) if s != a]
    cos, idx = cos[:, others], idx[:, others]
    order = np.argsort(-np.nan_to_num(cos, nan=-np.inf), axis=1, kind="stable")
    seeds_of = np.broadcast_to(np.asarray(others, dtype=np.int32), cos.shape)
    return LatentTable(
        seed=stability.seeds[a], seeds=list(stability.seeds), theta=float(theta), eps=float(eps),
        p_hat=stability.p_hat(theta, anchor=a).numpy().astype(np.float32),
        label=stability.split(theta, eps, anchor=a).numpy().astype(np.int8),
        partner_seed=np.take_along_axis(seeds_of, order, 1).astype(np.int32),
        partner_latent=np.take_along_axis(idx, order, 1).astype(np.int32),
        partner_cos=np.take_along_axis(cos, order, 1).astype(np.float32),
    )


def _merge_top(best_v: torch.Tensor, best_r: torch.Tensor, lat: torch.Tensor, val: torch.Tensor,
               row: torch.Tensor) -> None:
    """Merge (latent, value, row) entries into the per-latent top-T arrays (F, T), in place.

    Sorts the union of the kept entries and the new ones by (latent, -value, row) and keeps the first T of each
    latent. Memory O(F·T + entries)."""
    F, T = best_v.shape
    keep = torch.isfinite(best_v)
    all_lat = torch.cat([torch.arange(F).repeat_interleave(T)[keep.reshape(-1)], lat])
    all_val = torch.cat([best_v[keep], val])
    all_row = torch.cat([best_r[keep], row])
    order = np.lexsort((all_row.numpy(), -all_val.numpy(), all_lat.numpy()))
    s_lat, s_val, s_row = all_lat[order], all_val[order], all_row[order]
    first = torch.searchsorted(s_lat, s_lat, right=False)
    rank = torch.arange(len(s_lat)) - first
    take = rank < T
    best_v.fill_(-float("inf"))
    best_r.fill_(-1)
    best_v[s_lat[take], rank[take]] = s_val[take]
    best_r[s_lat[take], rank[take]] = s_row[take]


def _codes(sae: Any, batch: torch.Tensor, offset: int, num_latents: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positive activations of one batch as flat (value, latent, global row) vectors; any SparseCoder's
    code (TopK's (values, indices) or a sparse (N, F) tensor)."""
    with torch.no_grad():
        rows, latents, values = positive_entries(sae.encode(batch), num_latents)
    return values.detach().float().cpu(), latents.cpu(), rows.cpu() + offset


def activation_stats(sae: Any, batches: Iterable[torch.Tensor], num_latents: int, *, bins: int = 20,
                     top: int = 5) -> dict[str, np.ndarray]:
    """Firing frequency, activation histogram and top activations of every latent, streamed over `batches`.

    Two passes over `batches` (it must be re-iterable, e.g. a list or a re-creatable loader): the first finds
    each latent's largest activation, the second bins activations into `bins` equal bins in (0, max] and keeps
    the `top` largest with their global row index. Memory O(F·(bins + top)) plus one batch's codes.

    Returns frequency (F,), hist_counts (F, bins), hist_edges (F, bins + 1), top_rows (F, top), top_values.
    """
    if bins < 1 or top < 0:
        raise UsageError(f"bins must be >= 1 and top >= 0, got bins={bins}, top={top}")
    F = num_latents
    vmax = torch.zeros(F)
    rows = 0
    for xb in batches:
        v, i, _ = _codes(sae, xb, rows, F)
        vmax.scatter_reduce_(0, i, v, "amax")
        rows += xb.shape[0]
    if rows == 0:
        raise DataError("no activation rows to compute latent statistics from")
    counts = torch.zeros(F * bins, dtype=torch.int64)
    best_v = torch.full((F, top), -float("inf"))
    best_r = torch.full((F, top), -1, dtype=torch.int64)
    offset = 0
    for xb in batches:
        v, i, r = _codes(sae, xb, offset, F)
        b = torch.clamp((v / vmax[i].clamp_min(1e-30) * bins).long(), max=bins - 1)
        counts.index_add_(0, i * bins + b, torch.ones_like(b))
        if top:
            _merge_top(best_v, best_r, i, v, r)
        offset += xb.shape[0]
    edges = vmax.unsqueeze(1) * torch.linspace(0, 1, bins + 1).unsqueeze(0)
    hist = counts.reshape(F, bins)
    return {"frequency": (hist.sum(1).double() / rows).float().numpy(), "hist_counts": hist.numpy(),
            "hist_edges": edges.numpy().astype(np.float32), "top_rows": best_r.numpy(),
            "top_values": np.where(np.isfinite(best_v.numpy()), best_v.numpy(), np.nan).astype(np.float32)}


def code_stats(codes: Any, *, bins: int = 20, top: int = 5) -> dict[str, np.ndarray]:
    """Activation histogram and top activations of every latent from saved sparse codes (no re-encoding).

    ``codes`` is an (N, F) scipy sparse matrix of the positive activations (the study's firing codes). The same
    binning as :func:`activation_stats`: ``bins`` equal bins in (0, max] per latent, the ``top`` largest
    activations with their row (ties: lower row first). Memory O(nnz + F·(bins + top)); never dense (N, F).

    Returns frequency (F,), hist_counts (F, bins), hist_edges (F, bins + 1), top_rows (F, top), top_values.
    """
    if bins < 1 or top < 0:
        raise UsageError(f"bins must be >= 1 and top >= 0, got bins={bins}, top={top}")
    N, F = codes.shape
    if N == 0:
        raise DataError("no activation rows to compute latent statistics from")
    csc = codes.tocsc()
    csc.sum_duplicates()
    live = csc.data > 0
    val = csc.data[live].astype(np.float32)
    row = csc.indices[live].astype(np.int64)
    col = np.repeat(np.arange(F, dtype=np.int64), np.diff(csc.indptr))[live]
    vmax = np.zeros(F, dtype=np.float32)
    np.maximum.at(vmax, col, val)
    b = np.minimum((val / np.maximum(vmax[col], 1e-30) * bins).astype(np.int64), bins - 1)
    hist = np.bincount(col * bins + b, minlength=F * bins).reshape(F, bins).astype(np.int64)
    order = np.lexsort((row, -val, col))
    s_col = col[order]
    rank = np.arange(len(order)) - np.searchsorted(s_col, s_col, side="left")
    take = rank < top
    top_rows = np.full((F, top), -1, dtype=np.int64)
    top_values = np.full((F, top), np.nan, dtype=np.float32)
    top_rows[s_col[take], rank[take]] = row[order][take]
    top_values[s_col[take], rank[take]] = val[order][take]
    edges = (vmax[:, None] * np.linspace(0, 1, bins + 1, dtype=np.float32)[None]).astype(np.float32)
    return {"frequency": (hist.sum(1) / N).astype(np.float32), "hist_counts": hist, "hist_edges": edges,
            "top_rows": top_rows, "top_values": top_values}
