"""Step ``candidates``: candidate subspaces of each seed's unstable (or non-stable) latents, clustered on a sparse
affinity graph (co-firing pairs from the firing step's top-k codes, or each latent's top-m cosine neighbours),
their cross-seed reproducibility and a frequency-matched latent-subset null.

Memory: O(S·F·d) decoders + the co-firing pairs of the set, at most O(rows·k²) per seed (``coactivation_rows``
rows of the codes), + O(n·m) cosine neighbours; no (n, n) or (N, F) array. Artifacts: ``section.json``
(results.json → candidates), ``arrays.npz`` (candidate_id (S, F): index into candidates, -1 for none;
candidate_score (S, F); null_size, null_similarity (D,): the raw subset-null draws).
"""

from __future__ import annotations

from typing import Any, ClassVar, TypedDict

import numpy as np

from ...analysis import candidates as cand_mod
from ...analysis.firing import firing_indicator
from ..step import Context
from .section import Section, SectionStep
from .subspaces import seed_sets


class Candidate(TypedDict):
    """One candidate subspace (the fdr step re-scores its seed and latents)."""

    seed: int
    latents: list[int]
    size: int
    rank: int
    score: float | None
    mean_best_similarity: float | None
    null_similarity: float | None
    p_value: float | None
    reproducible: bool


class CandidateNull(TypedDict):
    """A null's draws summarised (the subset null, or the Haar null)."""

    score_mean: float | None
    reproduced_share: float | None
    mean_best_similarity: float | None
    mean_best_similarity_q99: float | None
    draws: int
    kind: str


class NoCandidates(TypedDict):
    """A null with no draws: there was no candidate to draw for."""


class SeedCandidates(TypedDict):
    num_set: int
    num_candidates: int
    num_in_candidates: int
    num_in_reproducible: int
    share_in_reproducible: float | None
    reproducible_latents: list[int]


class CandidatesEntry(TypedDict):
    """:func:`~sae_fast.analysis.candidates.candidate_subspaces` (its raw null draws go to the arrays); the nulls
    are empty when there is no candidate."""

    set: str
    params: dict[str, Any]
    candidates: list[Candidate]
    null: CandidateNull | NoCandidates
    null_haar: CandidateNull | NoCandidates
    per_seed: list[SeedCandidates]
    score_mean: float | None
    reproduced_share: float | None
    reproducible_share: float | None
    mean_best_similarity: float | None


class CandidatesEntries(TypedDict):
    candidates: CandidatesEntry


class CandidatesStep(SectionStep):
    name: ClassVar[str] = "candidates"
    requires = ("matching", "stability", "firing")
    setting_names = ("subspace_set", "candidate_method", "candidate_threshold", "candidate_tau", "exclude_dead",
                     "coactivation_rows", "neighbours", "theta", "absolute", "seed")
    entries_type = CandidatesEntries

    def compute(self, ctx: Context) -> Section:
        cfg = ctx.cfg
        labels = ctx.result("stability").labels
        firing = ctx.result("firing")
        live = firing.freq > 0 if cfg.exclude_dead else None
        fires = [firing_indicator(c, cfg.coactivation_rows) for c in firing.codes]
        res = {"set": cfg.subspace_set, **cand_mod.candidate_subspaces(
            ctx.inputs.seeds.decoders(), seed_sets(labels, live, cfg.subspace_set), fires=fires,
            method=cfg.candidate_method, threshold=cfg.candidate_threshold, tau=cfg.candidate_tau,
            freqs=list(firing.freq), neighbours=cfg.neighbours, neighbour_index=ctx.result("matching").index,
            matched=ctx.result("matching").matched(cfg.theta, cfg.absolute),
            seed=cfg.seed)}
        raw = res.pop("null_draws")  # arrays, not results.json
        S, F = labels.shape
        candidate_id = np.full((S, F), -1, dtype=np.int64)
        candidate_score = np.full((S, F), np.nan)
        for c, cand in enumerate(res["candidates"]):
            candidate_id[cand["seed"], cand["latents"]] = c
            candidate_score[cand["seed"], cand["latents"]] = cand["score"]
        return Section({"candidates": res}, {"candidate_id": candidate_id, "candidate_score": candidate_score,
                                             "null_size": raw["size"], "null_similarity": raw["mean_best_similarity"]})
