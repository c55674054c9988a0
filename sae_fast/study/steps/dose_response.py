"""Step ``dose_response``: subspace excess over the frequency-matched outside null per p̂ bin and per firing
frequency bin, at the study's ranks, with seed-bootstrap intervals and the Spearman trend
(:mod:`sae_fast.analysis.dose_response`). When the plan holds the ``candidates`` step (pass it in ``requires``), a
bin's null excludes the members of candidate subspaces outside the bin (a bin's null would otherwise be drawn
from other bins that may hold the same subspace); without it the report states that limitation.

Memory: O(S·F·d) decoders + one n × d subsample per seed at a time. Artifacts: ``section.json``
(results.json → dose_response).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypedDict

from ...analysis.dose_response import Binning, dose_response
from ...analysis.nulls import MAX_OUTSIDE_SHARE
from ..step import Block, Context
from .section import Section, SectionStep
from .traceable import columns, new_figure, png


@dataclass(frozen=True)
class DoseOptions:
    p_hat_edges: tuple[float, ...] = (0.0, 0.05, 0.5, 0.95, 1.0)
    """p̂ bin edges"""
    freq_bins: int = 3
    """firing-frequency quantile bins"""
    max_n: int = 64
    """largest common subsample size"""
    max_outside_share: float = MAX_OUTSIDE_SHARE
    """n is at most this share of each bin's outside pool (:func:`sae_fast.analysis.nulls.subspace_test`)"""
    null_draws: int = 10
    """outside-null draws per bin"""
    n_boot: int = 500
    """seed-bootstrap resamples"""


class DoseEntry(TypedDict):
    p_hat: Binning
    frequency: Binning
    null_excludes: str


class DoseEntries(TypedDict):
    dose_response: DoseEntry


class DoseResponseStep(SectionStep):
    name: ClassVar[str] = "dose_response"
    requires = ("stability", "firing")
    setting_names = ("ranks", "exclude_dead", "seed")
    entries_type = DoseEntries

    def __init__(self, options: DoseOptions | None = None,
                 requires: tuple[str, ...] = ("stability", "firing")) -> None:
        self.options = options or DoseOptions()
        self.requires = requires

    def settings(self, cfg: Any) -> dict[str, Any]:
        return {**super().settings(cfg), **asdict(self.options)}

    def compute(self, ctx: Context) -> Section:
        cfg, opt = ctx.cfg, self.options
        p_hat, freq = ctx.result("stability").p_hat, ctx.result("firing").freq
        alive = freq > 0 if cfg.exclude_dead else None
        decoders = ctx.inputs.seeds.decoders()
        exclude = ctx.result("candidates").array("candidate_id") >= 0 if "candidates" in self.requires else None
        common = dict(ranks=cfg.ranks, alive=alive, exclude_from_null=exclude, max_n=opt.max_n,
                      max_outside_share=opt.max_outside_share,
                      null_draws=opt.null_draws, n_boot=opt.n_boot, seed=cfg.seed)
        out = {"p_hat": dose_response(decoders, p_hat, freq, by="p_hat", edges=opt.p_hat_edges, **common),
               "frequency": dose_response(decoders, p_hat, freq, by="frequency", freq_bins=opt.freq_bins, **common)}
        out["null_excludes"] = "candidate subspace members" if exclude is not None else "nothing"
        return Section({"dose_response": out})

    def render(self, result: Section, ctx: Context) -> list[Block]:
        e, res = result.entries["dose_response"], ctx.report_results
        blocks: list[Block] = [("h2", "Dose-response: subspace excess per p̂ and per frequency bin"), (
            "p", "Cross-seed mean cos² of each bin's latents minus frequency-matched latents from outside the bin, "
                 "at one common n per binning; 95 % seed-bootstrap intervals. The paper's claim predicts more excess "
                 "at low p̂ (a negative Spearman trend of excess over bin centre). "
                 + ("The null excludes the members of candidate subspaces outside the bin, where enough other latents "
                    "remain ('group-free null' per bin)."
                    if e.get("null_excludes") == "candidate subspace members" else
                    "Limitation: the candidates step is not in the plan, so a bin's null may be drawn from other "
                    "bins holding the same subspace, which shrinks the excess."))]
        for by in ("p_hat", "frequency"):
            bins = e[by]["bins"]
            prefixes = [f"dose_response.{by}.bins.{i}.ranks.{r}" for i, b in enumerate(bins) for r in b["ranks"]]
            blocks += [("h3", f"by {by} (n = {e[by]['n']})"),
                       columns(res, [f"dose_response.{by}.bins.{i}" for i in range(len(bins))],
                               [("from", "lo"), ("to", "hi"), ("latents per seed", "sizes"), ("skipped", "skipped"),
                                ("group-free null", "null_excludes_group")]),
                       columns(res, prefixes, [("excess", "excess"), ("CI low", "excess_lo"), ("CI high", "excess_hi"),
                                               ("R", "R"), ("p", "p_value")]),
                       columns(res, [f"dose_response.{by}.trend"],
                               [(f"trend r = {r}", str(r)) for r in e[by]["trend"]])]
        fig, ax = new_figure()
        bins = e["p_hat"]["bins"]
        for r in next((b["ranks"] for b in bins if b["ranks"]), {}):
            pts = [(b["centre"], b["ranks"][r]) for b in bins if r in b["ranks"]]
            ax.errorbar([p[0] for p in pts], [p[1]["excess"] for p in pts],
                        yerr=[[p[1]["excess"] - p[1]["excess_lo"] for p in pts],
                              [p[1]["excess_hi"] - p[1]["excess"] for p in pts]], fmt="o-", capsize=3, label=f"r={r}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("p̂ bin centre")
        ax.set_ylabel("excess cos² over outside null")
        ax.legend()
        ctx.figures["dose_response"] = png(fig)
        return [*blocks, ("fig", ("dose_response", ctx.figures["dose_response"]))]
