"""Step ``matching``: the sparse cross-seed neighbour graph, every latent's top-m latents in every other seed.

For each pair of seeds (a, b), a < b, one tiled sweep of ``W_dec[a] @ W_dec[b].T`` keeps the top ``neighbours``
cosines both ways (:func:`sae_fast.match`, exact; on ``--device``). Stability (top-1), pooling and the
one-to-one assignment read this graph; its fingerprint does not include θ, so changing θ reuses it.

Memory: O(S·F·d) decoders (one pair on the device at a time) + one tile + the graph O(S²·F·m).
Artifacts: ``arrays.npz`` with ``index`` (S, S, F, m) int32 (-1 on the diagonal) and ``cos`` float32.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from tqdm.auto import tqdm

from ...matching import match
from ..step import Context
from .section import NoEntries, Section, SectionStep


class Neighbours(Section):
    """``index``/``cos`` (S, S, F, m): for latent i of seed a, its m nearest latents of seed b, best first."""

    @property
    def index(self) -> np.ndarray:
        return self.array("index")

    @property
    def cos(self) -> np.ndarray:
        return self.array("cos")

    def matched(self, theta: float, absolute: bool = False) -> list[list[np.ndarray]]:
        """``[a][b]``: (F,) bool, latent i of seed a has a latent of seed b at cosine >= theta (its top-1
        neighbour's; ``|cos|`` with ``absolute``); all False for b == a. Memory O(S²·F)."""
        top = self.cos[:, :, :, 0]
        top = np.abs(top) if absolute else top
        S = top.shape[0]
        return [[np.zeros(top.shape[2], dtype=bool) if a == b else np.nan_to_num(top[a, b], nan=-1.0) >= theta
                 for b in range(S)] for a in range(S)]


class MatchingStep(SectionStep):
    name: ClassVar[str] = "matching"
    setting_names = ("neighbours", "absolute")
    result_type = Neighbours
    entries_type = NoEntries  # arrays only

    def compute(self, ctx: Context) -> Neighbours:
        decs = ctx.inputs.seeds.decoders()
        S, F = len(decs), decs[0].shape[0]
        m = min(ctx.cfg.neighbours, F)
        index = np.full((S, S, F, m), -1, dtype=np.int32)
        cos = np.full((S, S, F, m), np.nan, dtype=np.float32)
        pairs = [(a, b) for a in range(S) for b in range(a + 1, S)]
        for a, b in tqdm(pairs, desc="matching", disable=not ctx.progress, leave=False):
            res = match(decs[a], decs[b], k=m, both=True, backend="exact", absolute=ctx.cfg.absolute,
                        device=ctx.device)
            index[a, b], cos[a, b] = res.index_ab.cpu().numpy(), res.cos_ab.cpu().numpy()
            index[b, a], cos[b, a] = res.index_ba.cpu().numpy(), res.cos_ba.cpu().numpy()
        return Neighbours({}, {"index": index, "cos": cos})

    def render(self, result: Section, ctx: Context) -> list:
        return []
