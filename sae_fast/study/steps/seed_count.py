"""Step ``seed_count``: how many seeds the labels need: agreement of labels from S' = 2 … S seeds with the full
run's, next to the hypergeometric (subsampling) and binomial (fresh seeds) predictions, and the seed count the
binomial model needs for a target agreement (:mod:`sae_fast.analysis.seed_count`). Next to it, on whole random
subsets of S' seeds (labels from the subset's own comparisons), cheap variants of the downstream numbers:
classifier F1 of the unstable class (``max_pairs`` seed pairs) and the cross-seed subspace excess over the
frequency-matched outside null (rank ``subspace_rank``, ``subspace_null_draws`` draws, ``subspace_max_n`` latents).

Memory: the (S, S−1, F) match indicators (bool) + one subset's (S', F) labels and its analyses. Artifacts:
``section.json`` (results.json → seed_count).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypedDict

import numpy as np

from ...analysis.classifier import cross_seed_classifier
from ...analysis.nulls import subspace_test
from ...analysis.seed_count import (
    AgreementRow,
    Recommendation,
    SubsetRow,
    label_probabilities,
    recommend_seeds,
    seed_count_curve,
    seed_subset_curve,
)
from ...errors import UsageError
from ..step import Block, Context
from .section import Section, SectionStep
from .subspaces import seed_sets
from .traceable import columns, new_figure, png


@dataclass(frozen=True)
class SeedCountOptions:
    draws: int = 5
    """random seed subsets per S'"""
    target: float = 0.9
    """label agreement the recommendation asks for"""
    subset_metrics: tuple[str, ...] = ("f1", "subspace_excess")
    """numbers recomputed per seed subset: "f1" (classifier F1 of the unstable class) and
    "subspace_excess"; () skips them"""
    subset_draws: int = 1
    """random seed subsets per S' for those numbers"""
    max_pairs: int = 2
    """(train, test) seed pairs of the classifier per subset"""
    subspace_rank: int = 0
    """rank of the subspace excess (0: the smallest of the study's ranks)"""
    subspace_null_draws: int = 5
    """frequency-matched outside draws of the subspace excess per subset"""
    subspace_max_n: int = 64
    """largest common subsample size of the subspace excess"""

    def __post_init__(self) -> None:
        unknown = set(self.subset_metrics) - {"f1", "subspace_excess"}
        if unknown:
            raise UsageError(f"SeedCountOptions.subset_metrics: unknown {sorted(unknown)}; expected 'f1', "
                             "'subspace_excess'")


class LabelNoise(TypedDict):
    q: float
    comparisons: int
    p_unstable: float


class SeedCountEntry(TypedDict):
    """``subsets`` is empty when ``subset_metrics`` is ()."""

    curve: list[AgreementRow]
    recommendation: Recommendation
    p_unstable_label: list[LabelNoise]
    subsets: list[SubsetRow]
    subset_metrics: list[str]


class SeedCountEntries(TypedDict):
    seed_count: SeedCountEntry


def _metrics(ctx: Context, opt: SeedCountOptions) -> dict:
    """The per-subset callbacks (seed ids, labels) -> float of ``opt.subset_metrics``."""
    cfg, decoders, freq = ctx.cfg, ctx.inputs.seeds.decoders(), ctx.result("firing").freq
    rank = opt.subspace_rank or min(cfg.ranks)

    def f1(seeds: np.ndarray, labels: np.ndarray) -> float:
        res = cross_seed_classifier([decoders[s] for s in seeds], list(labels), max_pairs=opt.max_pairs,
                                    seed=cfg.seed)
        return res["mean"].get("f1_unstable", float("nan"))

    def excess(seeds: np.ndarray, labels: np.ndarray) -> float:
        live = freq[seeds] > 0 if cfg.exclude_dead else np.ones(labels.shape, dtype=bool)
        try:
            sub = subspace_test([decoders[s] for s in seeds], seed_sets(labels, live, cfg.subspace_set),
                                freqs=list(freq[seeds]), allowed=list(live), ranks=(rank,), max_n=opt.subspace_max_n,
                                null_draws=opt.subspace_null_draws, seed=cfg.seed)
        except ValueError:  # too few latents in the set or outside it at this subset
            return float("nan")
        return sub["ranks"][rank]["excess"] if rank in sub["ranks"] else float("nan")

    fns = {"f1": f1, "subspace_excess": excess}
    return {name: fns[name] for name in opt.subset_metrics}


class SeedCountStep(SectionStep):
    name: ClassVar[str] = "seed_count"
    requires = ("stability", "firing")
    setting_names = ("theta", "eps", "seed")
    entries_type = SeedCountEntries

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
        subsets = seed_subset_curve(best, _metrics(ctx, opt), theta=cfg.theta, eps=cfg.eps, draws=opt.subset_draws,
                                    seed=cfg.seed) if opt.subset_metrics else []
        return Section({"seed_count": {"curve": curve, "recommendation": rec, "p_unstable_label": noise,
                                       "subsets": subsets, "subset_metrics": list(opt.subset_metrics)}})

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
                *_subset_blocks(e, res),
                ("h3", "Probability of the 'unstable' label for a latent matched at rate q"),
                columns(res, [f"seed_count.p_unstable_label.{i}" for i in range(len(e["p_unstable_label"]))],
                        [("q", "q"), ("comparisons", "comparisons"), ("P(unstable)", "p_unstable")]),
                ("fig", ("seed_count", ctx.figures["seed_count"]))]


def _subset_blocks(e: dict, res: dict) -> list[Block]:
    if not e.get("subsets"):
        return []
    cols = [("seeds", "num_seeds"), ("subsets", "draws")]
    for name in e["subset_metrics"]:
        cols += [(name.replace("_", " "), name), ("sd", f"{name}_sd")]
    return [("h3", "Downstream numbers from fewer seeds"),
            ("p", "Random subsets of S' seeds, labels from the subset's own comparisons: the classifier F1 of the "
                  "unstable class and the subspace excess over the frequency-matched outside null (cheap variants; "
                  "SeedCountOptions sets their sizes)."),
            columns(res, [f"seed_count.subsets.{i}" for i in range(len(e["subsets"]))], cols)]
