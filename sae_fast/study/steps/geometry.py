"""Step ``geometry``: effective rank (entropy and participation ratio) of the anchor's stable, unstable,
non-stable and all (live) latents' unit decoder rows, each subsampled to a common n, with a random baseline.

Memory: O(F·d) for the anchor's decoder (float64) + O(n·d) per subsample. Artifacts: ``section.json``
(results.json → effective_rank, effective_rank_pr).
"""

from __future__ import annotations

from typing import ClassVar, TypedDict

import numpy as np

from ...analysis import effective_rank as er_mod
from ...analysis._common import STABLE, UNSTABLE
from ...analysis.effective_rank import MatchedRank
from ..step import Context
from .section import Section, SectionStep


class GeometryEntries(TypedDict):
    """Entropy (``effective_rank``) and participation-ratio effective ranks of the stable, unstable, nonstable and
    all sets, and the random baseline."""

    effective_rank: MatchedRank
    effective_rank_pr: MatchedRank


class GeometryStep(SectionStep):
    name: ClassVar[str] = "geometry"
    requires = ("stability", "firing")
    setting_names = ("anchor", "exclude_dead", "seed")
    entries_type = GeometryEntries

    def compute(self, ctx: Context) -> Section:
        cfg, a0 = ctx.cfg, ctx.cfg.anchor
        lab = ctx.result("stability").labels[a0]
        alive = ctx.result("firing").freq[a0] > 0
        sets = {"stable": lab == STABLE, "unstable": lab == UNSTABLE, "nonstable": lab != STABLE,
                "all": np.ones_like(lab, dtype=bool)}
        if cfg.exclude_dead:
            sets = {k: v & alive for k, v in sets.items()}
        rand_from = alive if cfg.exclude_dead else None
        dec = ctx.inputs.seeds.decoders()[a0]
        return Section({
            "effective_rank": er_mod.matched_effective_rank(dec, sets, random_from=rand_from, seed=cfg.seed),
            "effective_rank_pr": er_mod.matched_effective_rank(dec, sets, kind="participation", random_from=rand_from,
                                                               seed=cfg.seed)})
