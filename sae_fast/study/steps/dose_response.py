"""Step ``dose_response``: subspace excess over the frequency-matched outside null per p̂ bin and per firing
frequency bin, at the study's ranks, with seed-bootstrap intervals and the Spearman trend
(:mod:`sae_fast.analysis.dose_response`).

Memory: O(S·F·d) decoders + one n × d subsample per seed at a time. Artifacts: ``section.json``
(results.json → dose_response).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ...analysis.dose_response import dose_response
from ..step import Block, Context
from .figures import new_figure, png
from .section import Section, SectionStep


@dataclass(frozen=True)
class DoseOptions:
    p_hat_edges: tuple[float, ...] = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
    """p̂ bin edges"""
    freq_bins: int = 4
    """firing-frequency quantile bins"""
    max_n: int = 128
    """largest common subsample size"""
    null_draws: int = 20
    """outside-null draws per bin"""
    n_boot: int = 500
    """seed-bootstrap resamples"""


class DoseResponseStep(SectionStep):
    name: ClassVar[str] = "dose_response"
    requires = ("stability", "firing")
    setting_names = ("ranks", "exclude_dead", "seed")

    def __init__(self, options: DoseOptions | None = None) -> None:
        self.options = options or DoseOptions()

    def settings(self, cfg: Any) -> dict[str, Any]:
        return {**super().settings(cfg), **asdict(self.options)}

    def compute(self, ctx: Context) -> Section:
        cfg, opt = ctx.cfg, self.options
        p_hat, freq = ctx.result("stability").p_hat, ctx.result("firing").freq
        alive = freq > 0 if cfg.exclude_dead else None
        decoders = ctx.inputs.seeds.decoders()
        common = dict(ranks=cfg.ranks, alive=alive, max_n=opt.max_n, null_draws=opt.null_draws, n_boot=opt.n_boot,
                      seed=cfg.seed)
        out = {"p_hat": dose_response(decoders, p_hat, freq, by="p_hat", edges=opt.p_hat_edges, **common),
               "frequency": dose_response(decoders, p_hat, freq, by="frequency", freq_bins=opt.freq_bins, **common)}
        return Section({"dose_response": out})

    def render(self, result: Section, ctx: Context) -> list[Block]:
        e = result.entries["dose_response"]
        blocks: list[Block] = [("h2", "Dose-response: subspace excess per p̂ and per frequency bin"), (
            "p", "Cross-seed mean cos² of each bin's latents minus frequency-matched latents from outside the bin, "
                 "at one common n per binning; 95 % seed-bootstrap intervals. The paper's claim predicts more excess "
                 "at low p̂ (a negative trend).")]
        for by in ("p_hat", "frequency"):
            res = e[by]
            rows = []
            for b in res["bins"]:
                for r, t in b["ranks"].items():
                    rows.append([f"[{b['lo']:.3g}, {b['hi']:.3g}]", str(min(b["sizes"])), str(r),
                                 f"{t['excess']:.4f} [{t['excess_lo']:.4f}, {t['excess_hi']:.4f}]", f"{t['R']:.3f}"])
                if b["skipped"]:
                    rows.append([f"[{b['lo']:.3g}, {b['hi']:.3g}]", str(min(b["sizes"])), "–", "too few latents", "–"])
            trend = ", ".join(f"r = {r}: {v:.2f}" for r, v in res["trend"].items())
            blocks += [("h3", f"by {by} (n = {res['n']}; Spearman trend {trend})"),
                       ("table", (["bin", "latents (smallest seed)", "r", "excess (95 % CI)", "R"], rows))]
        fig, ax = new_figure()
        for r in next(iter(b["ranks"] for b in e["p_hat"]["bins"] if b["ranks"]), {}):
            pts = [(b["centre"], b["ranks"][r]) for b in e["p_hat"]["bins"] if r in b["ranks"]]
            xs = [p[0] for p in pts]
            ax.errorbar(xs, [p[1]["excess"] for p in pts],
                        yerr=[[p[1]["excess"] - p[1]["excess_lo"] for p in pts],
                              [p[1]["excess_hi"] - p[1]["excess"] for p in pts]], fmt="o-", capsize=3, label=f"r={r}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("p̂ bin centre")
        ax.set_ylabel("excess cos² over outside null")
        ax.legend()
        ctx.figures["dose_response"] = png(fig)
        return [*blocks, ("fig", ("dose_response", ctx.figures["dose_response"]))]
