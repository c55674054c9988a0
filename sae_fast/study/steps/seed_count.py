"""Step ``seed_count``: how many seeds the labels need: agreement of labels from S' = 2 … S seeds with the full
run's, next to the hypergeometric (subsampling) and binomial (fresh seeds) predictions, and the seed count the
binomial model needs for a target agreement (:mod:`sae_fast.analysis.seed_count`).

Memory: the (S, S−1, F) match indicators (bool). Artifacts: ``section.json`` (results.json → seed_count).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from ...analysis.seed_count import label_probabilities, recommend_seeds, seed_count_curve
from ..step import Block, Context
from .section import Section, SectionStep
from .traceable import columns, new_figure, png


@dataclass(frozen=True)
class SeedCountOptions:
    draws: int = 5
    """random seed subsets per S'"""
    target: float = 0.9
    """label agreement the recommendation asks for"""


class SeedCountStep(SectionStep):
    name: ClassVar[str] = "seed_count"
    requires = ("stability",)
    setting_names = ("theta", "eps", "seed")

    def __init__(self, options: SeedCountOptions | None = None) -> None:
        self.options = options or SeedCountOptions()

    def settings(self, cfg: Any) -> dict[str, Any]:
        return {**super().settings(cfg), **asdict(self.options)}

    def compute(self, ctx: Context) -> Section:
        cfg, opt = ctx.cfg, self.options
        stab = ctx.result("stability")
        best = stab.array("best_cos")  # (S, S, F), NaN on the diagonal
        S = best.shape[0]
        matched = np.stack([np.delete(best[a], a, axis=0) >= cfg.theta for a in range(S)])
        curve = seed_count_curve(matched, eps=cfg.eps, draws=opt.draws, seed=cfg.seed)
        rec = recommend_seeds(np.clip(stab.p_hat, 0, 1), eps=cfg.eps, target=opt.target)
        noise = [{"q": q, "comparisons": n, "p_unstable": float(label_probabilities(q, n, cfg.eps)[1])}
                 for q in (0.05, 0.1, 0.2) for n in sorted({S - 1, 15, 31, 95})]
        return Section({"seed_count": {"curve": curve, "recommendation": rec, "p_unstable_label": noise}})

    def render(self, result: Section, ctx: Context) -> list[Block]:
        e, res = result.entries["seed_count"], ctx.report_results
        rec = e["recommendation"]
        need = rec["num_seeds"] or f"more than {max(int(k) for k in rec['agreement_at'])}"
        fig, ax = new_figure()
        xs = [r["num_seeds"] for r in e["curve"]]
        ax.plot(xs, [r["agreement"] for r in e["curve"]], "o-", label="measured")
        ax.plot(xs, [r["predicted_hypergeometric"] for r in e["curve"]], "s--", label="hypergeometric")
        ax.plot(xs, [r["predicted_binomial"] for r in e["curve"]], "^:", label="binomial")
        ax.set_xlabel("seeds used")
        ax.set_ylabel("label agreement with all seeds")
        ax.legend()
        ctx.figures["seed_count"] = png(fig)
        return [("h2", "How many seeds are enough"),
                ("p", f"Labels from fewer seeds against the labels from all of them. If each latent's true match rate "
                      f"were its p̂ here, {need} seeds would give labels agreeing with the limit labels for "
                      f"{rec['target']:.0%} of latents."),
                columns(res, [f"seed_count.curve.{i}" for i in range(len(e["curve"]))],
                        [("seeds", "num_seeds"), ("agreement", "agreement"), ("sd", "agreement_sd"),
                         ("hypergeometric", "predicted_hypergeometric"), ("binomial", "predicted_binomial"),
                         ("share stable", "share_stable"), ("share unstable", "share_unstable")]),
                ("h3", "Probability of the 'unstable' label for a latent matched at rate q"),
                columns(res, [f"seed_count.p_unstable_label.{i}" for i in range(len(e["p_unstable_label"]))],
                        [("q", "q"), ("comparisons", "comparisons"), ("P(unstable)", "p_unstable")]),
                ("fig", ("seed_count", ctx.figures["seed_count"]))]
