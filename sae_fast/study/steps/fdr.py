"""Step ``fdr``: candidate subspaces with false-discovery control. The candidates are re-scored against a pooled
null of at least ``null_draws`` frequency-matched latent subsets (each candidate contributes draws of its own
size); by default a generalized-Pareto tail fitted to the top ``tail_fraction`` of those draws gives p-values
below their empirical floor 1/(null_draws + 1) (``pvalues="empirical"`` keeps the floor, then at least 10⁴ draws
are needed for BH to pass), so strong candidates survive Benjamini–Hochberg; q-values per candidate and per
latent, discoveries at each FDR level and Storey's estimate of the non-null share
(:mod:`sae_fast.analysis.fdr`).

When the plan holds the candidates step (in ``requires``, the default), its clusters are re-scored, not found
again. Above 4096 candidates, candidates and null draws are scored against the candidates holding one of their top-m
cross-seed neighbours (the matching step's graph), as in the candidates step, so time grows linearly with F.

Memory: that of :func:`sae_fast.analysis.candidates.candidate_subspaces` with ``null_draws`` subset bases of
rank <= max_rank (d × rank floats each). Artifacts: ``section.json`` (results.json → fdr), ``arrays.npz``
(latent_q (S, F); null_size, null_similarity (null_draws,): the raw subset-null draws).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypedDict

import numpy as np

from ...analysis import candidates as cand_mod
from ...analysis.fdr import candidate_fdr
from ...analysis.firing import firing_indicator
from ...errors import UsageError
from ..step import Block, Context
from .section import Section, SectionStep
from .subspaces import seed_sets
from .traceable import columns, new_figure, png


@dataclass(frozen=True)
class FdrOptions:
    null_draws: int = 2_000
    """pooled null subset draws; with ``pvalues="empirical"`` p-values stop at 1 / (null_draws + 1), so BH can pass
    up to ~null_draws · q / 10 candidates at FDR q; 10,000 (the heavy variant) costs ~5× the time"""
    pvalues: str = "tail"
    """"tail": empirical p-values with a generalized-Pareto tail beyond the null's support (resolution below
    1e-4 from 2,000 draws); "empirical": the plain share of draws, floor 1 / (null_draws + 1)"""
    tail_fraction: float = 0.05
    """share of the null draws (its top) that the tail is fitted to"""
    levels: tuple[float, ...] = (0.05, 0.1)
    """FDR levels reported"""
    storey_lambda: float = 0.5
    """Storey's tuning value for the null share"""


class FdrCandidate(TypedDict):
    seed: int
    size: int
    rank: int
    score: float | None
    mean_best_similarity: float | None
    p_value: float | None
    q_value: float | None


class FdrEntry(TypedDict):
    """Benjamini–Hochberg over the candidates (:func:`~sae_fast.analysis.fdr.candidate_fdr`); ``discoveries`` per
    FDR level; ``null_draws`` null when there was no candidate to draw for."""

    tests: int
    discoveries: dict[str, int]
    pi0: float | None
    non_null_share: float | None
    min_p: float | None
    candidates: list[FdrCandidate]
    null_draws: int | None
    levels: list[float]
    pvalues: str


class FdrEntries(TypedDict):
    fdr: FdrEntry


class FdrStep(SectionStep):
    name: ClassVar[str] = "fdr"
    entries_type = FdrEntries

    setting_names = ("subspace_set", "candidate_method", "candidate_threshold", "candidate_tau", "exclude_dead",
                     "coactivation_rows", "neighbours", "theta", "absolute", "seed")

    def __init__(self, options: FdrOptions | None = None,
                 requires: tuple[str, ...] = ("matching", "stability", "firing", "candidates")) -> None:
        self.options = options or FdrOptions()
        self.requires = requires
        if self.options.pvalues not in ("tail", "empirical"):
            raise UsageError(f"FdrOptions.pvalues must be 'tail' or 'empirical', got {self.options.pvalues!r}")
        if not 0.0 < self.options.tail_fraction < 1.0:
            raise UsageError(f"FdrOptions.tail_fraction must be in (0, 1), got {self.options.tail_fraction}")

    def settings(self, cfg: Any) -> dict[str, Any]:
        return {**super().settings(cfg), **asdict(self.options)}

    def compute(self, ctx: Context) -> Section:
        cfg, opt = ctx.cfg, self.options
        labels = ctx.result("stability").labels
        firing = ctx.result("firing")
        live = firing.freq > 0 if cfg.exclude_dead else None
        fires = [firing_indicator(c, cfg.coactivation_rows) for c in firing.codes]
        clusters = None
        if "candidates" in self.requires:  # the same clusters: not found again
            clusters = [(c["seed"], c["latents"]) for c in ctx.result("candidates").entries["candidates"]["candidates"]]
        res = cand_mod.candidate_subspaces(
            ctx.inputs.seeds.decoders(), seed_sets(labels, live, cfg.subspace_set), fires=fires,
            method=cfg.candidate_method, threshold=cfg.candidate_threshold, tau=cfg.candidate_tau,
            freqs=list(firing.freq), neighbours=cfg.neighbours, neighbour_index=ctx.result("matching").index,
            matched=ctx.result("matching").matched(cfg.theta, cfg.absolute),
            min_null_draws=opt.null_draws,
            null_neighbours=2**62, pvalues=opt.pvalues, tail_fraction=opt.tail_fraction, clusters=clusters,
            seed=cfg.seed)  # all draws
        S, F = labels.shape
        summary = candidate_fdr(res, [F] * S, levels=opt.levels, lam=opt.storey_lambda)
        latent_q = np.stack(summary.pop("latent_q"))
        keep = ("seed", "size", "rank", "score", "mean_best_similarity", "p_value", "q_value")
        cands = [{k: c[k] for k in keep} for c in res["candidates"]]
        entry = {**{k: v for k, v in summary.items() if k != "q"}, "candidates": cands,
                 "null_draws": res.get("null", {}).get("draws"), "levels": list(opt.levels), "pvalues": opt.pvalues}
        raw = res["null_draws"]
        return Section({"fdr": entry}, {"latent_q": latent_q, "null_size": raw["size"],
                                        "null_similarity": raw["mean_best_similarity"]})

    def render(self, result: Section, ctx: Context) -> list[Block]:
        e, res = result.entries["fdr"], ctx.report_results
        blocks: list[Block] = [("h2", "Candidate subspaces with false-discovery control"), (
            "p", "Candidates against a pooled null of frequency-matched latent subsets; Benjamini–Hochberg q-values "
                 f"({'fitted-tail' if e.get('pvalues') == 'tail' else 'empirical'} p-values; discoveries at each "
                 "level in results.json → fdr.discoveries) and Storey's non-null share."),
            columns(res, ["fdr"], [("candidates", "tests"), ("null draws", "null_draws"), ("smallest p", "min_p"),
                                   ("π0", "pi0"), ("non-null share", "non_null_share")])]
        if e["candidates"]:
            top = sorted(range(len(e["candidates"])), key=lambda i: e["candidates"][i]["q_value"])[:10]
            blocks.append(columns(res, [f"fdr.candidates.{i}" for i in top],
                                  [("seed", "seed"), ("size", "size"), ("rank", "rank"), ("score", "score"),
                                   ("p", "p_value"), ("q", "q_value")]))
            fig, ax = new_figure()
            ax.hist([c["p_value"] for c in e["candidates"]], bins=20, range=(0, 1))
            ax.set_xlabel("candidate p-value")
            ax.set_ylabel("candidates")
            ctx.figures["fdr_pvalues"] = png(fig)
            blocks.append(("fig", ("fdr_pvalues", ctx.figures["fdr_pvalues"])))
        return blocks
