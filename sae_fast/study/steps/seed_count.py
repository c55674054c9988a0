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
from .figures import new_figure, png
from .section import Section, SectionStep


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
        noise = {f"q={q}": {f"N={n}": float(label_probabilities(q, n, cfg.eps)[1]) for n in (S - 1, 15, 31, 95)}
                 for q in (0.05, 0.1, 0.2)}
        return Section({"seed_count": {"curve": curve, "recommendation": rec, "p_unstable_label": noise}})

    def render(self, result: Section, ctx: Context) -> list[Block]:
        e = result.entries["seed_count"]
        rec = e["recommendation"]
        need = rec["num_seeds"] or f"more than {max(int(k) for k in rec['agreement_at'])}"
        rows = [[str(r["num_seeds"]), f"{r['agreement']:.3f} ± {r['agreement_sd']:.3f}",
                 f"{r['predicted_hypergeometric']:.3f}", f"{r['predicted_binomial']:.3f}", f"{r['share_stable']:.3f}",
                 f"{r['share_unstable']:.3f}"] for r in e["curve"]]
        noise = [[q, *(f"{v:.3f}" for v in row.values())] for q, row in e["p_unstable_label"].items()]
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
                      f"were its p̂ here, {need} seeds would "
                      f"give labels agreeing with the limit labels for {rec['target']:.0%} of latents."),
                ("table", (["seeds", "agreement", "hypergeometric", "binomial", "share stable", "share unstable"],
                           rows)),
                ("h3", "Probability of the 'unstable' label for a latent matched at rate q"),
                ("table", (["q", *next(iter(e["p_unstable_label"].values())).keys()], noise)),
                ("fig", ("seed_count", ctx.figures["seed_count"]))]
