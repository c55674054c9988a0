"""Step ``subspaces``: cross-seed reproducibility of the top-r subspaces of each seed's unstable (or non-stable)
latents, against the stable latents and a Haar null (full sets), and at matched sizes against random live
latents of the same seed (z-scores).

Memory: O(S·F·d) unit decoders (float64) + O(d²) per Gram matrix. Artifacts: ``section.json``
(results.json → subspaces).
"""

from __future__ import annotations

from typing import ClassVar, TypedDict

import numpy as np

from ...analysis import subspaces as sub_mod
from ...analysis._common import STABLE, UNSTABLE
from ...analysis.subspaces import CrossSeedSubspaces, MatchedSubspaces
from ..step import Context
from .section import Section, SectionStep


class SubspacesEntry(CrossSeedSubspaces):
    """The study's set across seeds; ``matched``: each kind whose every seed has >= 2 latents."""

    set: str
    matched: dict[str, MatchedSubspaces]
    large_sets: list[str]


class SubspacesEntries(TypedDict):
    subspaces: SubspacesEntry


def seed_sets(labels: np.ndarray, alive: np.ndarray | None, kind: str) -> list[np.ndarray]:
    """Per seed, the boolean mask of its ``kind`` latents ('stable', 'unstable' or 'nonstable'), live only when
    ``alive`` (S, F) is given."""
    masks = {"stable": labels == STABLE, "unstable": labels == UNSTABLE, "nonstable": labels != STABLE}[kind]
    return [m & alive[s] if alive is not None else m for s, m in enumerate(masks)]


class SubspacesStep(SectionStep):
    name: ClassVar[str] = "subspaces"
    requires = ("stability", "firing")
    setting_names = ("subspace_set", "ranks", "subspace_draws", "exclude_dead", "seed")
    entries_type = SubspacesEntries

    def compute(self, ctx: Context) -> Section:
        cfg = ctx.cfg
        labels = ctx.result("stability").labels
        alive = ctx.result("firing").freq > 0
        live = alive if cfg.exclude_dead else None
        decoders = ctx.inputs.seeds.decoders()
        sub = {"set": cfg.subspace_set, **sub_mod.cross_seed_subspaces(
            decoders, seed_sets(labels, live, cfg.subspace_set), ranks=cfg.ranks, n_random=0,
            reference_sets={"stable": seed_sets(labels, live, "stable")}, seed=cfg.seed)}
        matched = {}
        for kind in ("unstable", "nonstable", "stable"):
            kind_sets = seed_sets(labels, live, kind)
            if min(int(np.sum(m)) for m in kind_sets) >= 2:
                matched[kind] = sub_mod.matched_cross_seed_subspaces(
                    decoders, kind_sets, ranks=cfg.ranks, max_fraction=0.25, draws=cfg.subspace_draws,
                    random_from=list(alive) if cfg.exclude_dead else None, seed=cfg.seed)
        sub["matched"] = matched
        F = labels.shape[1]
        sub["large_sets"] = [k for k in ("unstable", "nonstable")
                             if float(np.mean([np.sum(m) for m in seed_sets(labels, live, k)])) > F / 2]
        return Section({"subspaces": sub})
