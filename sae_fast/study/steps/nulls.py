"""Step ``nulls``: p̂ and PW-MCC against a random dictionary with the trained spectrum, and the cross-seed subspace
test of the study's set against frequency-matched latents from outside it, with a split-half ceiling, R and a
seed-bootstrap interval of the excess (:mod:`sae_fast.analysis.nulls`).

Memory: O(S·F·d) decoders twice (trained and null); PW-MCC holds an F × F cost matrix per pair, so it is skipped
above ``pw_mcc_max_latents``. Artifacts: ``section.json`` (results.json → nulls), ``arrays.npz`` (excess_pairs
(ranks, P), pairs (P, 2)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypedDict

import numpy as np

from ...analysis.bootstrap import pair_bootstrap
from ...analysis.nulls import MAX_OUTSIDE_SHARE, random_dictionary_null, subspace_test
from ..step import Block, Context
from .section import Section, SectionStep
from .subspaces import seed_sets
from .traceable import columns, new_figure, png


@dataclass(frozen=True)
class NullsOptions:
    dictionary_draws: int = 1
    """random dictionaries per seed"""
    pw_mcc_max_latents: int = 4096
    """PW-MCC (Hungarian, dense F × F per pair) only up to this F"""
    max_n: int = 128
    """largest common subsample size of the subspace test"""
    max_outside_share: float = MAX_OUTSIDE_SHARE
    """the subsample is at most this share of the smallest outside set (disjoint null draws of a small shared
    population are anti-correlated: :mod:`sae_fast.analysis.nulls`)"""
    null_draws: int = 20
    """frequency-matched outside draws of the subspace test"""
    n_boot: int = 1000
    """seed-bootstrap resamples"""


class DictionaryStats(TypedDict):
    """Mean p̂ and PW-MCC (null when PW-MCC was skipped: F above ``pw_mcc_max_latents``)."""

    p_hat_mean: float | None
    pw_mcc: float | None


class RandomDictionary(TypedDict):
    trained: DictionaryStats
    null: DictionaryStats


class SubspaceExcess(TypedDict):
    """One rank of the subspace test with the seed-bootstrap interval of its excess."""

    cross: float | None
    null: float | None
    null_sd: float | None
    ceiling: float | None
    excess: float | None
    R: float | None
    p_value: float | None
    excess_lo: float | None
    excess_hi: float | None


class NullsBase(TypedDict):
    random_dictionary: RandomDictionary
    set: str
    subspace: dict[str, SubspaceExcess]


class NullsTested(NullsBase):
    """The subspace test ran at a common n per seed."""

    n: int
    outside_share: float
    """n / the smallest outside set: above 1/20 the null is biased low (:mod:`sae_fast.analysis.nulls`)"""


class NullsSkipped(NullsBase):
    """The subspace test could not run (too few latents in the set or outside it): why, ``subspace`` empty."""

    subspace_skipped: str


class NullsEntries(TypedDict):
    nulls: NullsTested | NullsSkipped


class NullsStep(SectionStep):
    name: ClassVar[str] = "nulls"
    requires = ("stability", "firing")
    setting_names = ("theta", "eps", "absolute", "subspace_set", "ranks", "exclude_dead", "seed")
    entries_type = NullsEntries

    def __init__(self, options: NullsOptions | None = None) -> None:
        self.options = options or NullsOptions()

    def settings(self, cfg: Any) -> dict[str, Any]:
        return {**super().settings(cfg), **asdict(self.options)}

    def compute(self, ctx: Context) -> Section:
        cfg, opt = ctx.cfg, self.options
        labels, freq = ctx.result("stability").labels, ctx.result("firing").freq
        decoders = ctx.inputs.seeds.decoders()
        F = labels.shape[1]
        p_hat = ctx.result("stability").p_hat  # the trained decoders' p̂ (every anchor): not recomputed
        rd = random_dictionary_null(decoders, draws=opt.dictionary_draws, theta=cfg.theta,
                                    pw_mcc=opt.pw_mcc_max_latents >= F, seed=cfg.seed, absolute=cfg.absolute,
                                    trained_p_hat=float(p_hat.mean()))
        live = freq > 0 if cfg.exclude_dead else np.ones(labels.shape, dtype=bool)
        sets = seed_sets(labels, live, cfg.subspace_set)
        entry: dict[str, Any] = {"random_dictionary": rd, "set": cfg.subspace_set, "subspace": {}}
        arrays: dict[str, np.ndarray] = {}
        try:
            sub = subspace_test(decoders, sets, freqs=list(freq), allowed=list(live), ranks=cfg.ranks,
                                max_n=opt.max_n, max_outside_share=opt.max_outside_share,
                                null_draws=opt.null_draws, seed=cfg.seed)
        except ValueError as err:  # too few latents in the set or outside it
            entry["subspace_skipped"] = str(err)
            return Section({"nulls": entry})
        entry["n"], entry["outside_share"] = sub["n"], sub["outside_share"]
        for r, t in sub["ranks"].items():
            ci = pair_bootstrap(t["excess_pairs"], sub["pairs"], num_seeds=len(decoders), n_boot=opt.n_boot,
                                seed=cfg.seed)
            entry["subspace"][r] = {**{k: t[k] for k in ("cross", "null", "null_sd", "ceiling", "excess", "R",
                                                         "p_value")}, "excess_lo": ci.lo, "excess_hi": ci.hi}
            arrays[f"excess_pairs_r{r}"] = np.asarray(t["excess_pairs"])
        arrays["pairs"] = np.asarray(sub["pairs"])
        return Section({"nulls": entry}, arrays)

    def render(self, result: Section, ctx: Context) -> list[Block]:
        e, res = result.entries["nulls"], ctx.report_results
        blocks: list[Block] = [("h2", "Nulls: random dictionary and frequency-matched outside latents"), (
            "p", "Random dictionary: each decoder's singular values and right singular vectors with random rows "
                 "(row second moment kept, no learned feature). Subspaces: the set's top-r subspaces across seeds "
                 "against frequency-matched latents from outside the set (individual matches excluded), with the "
                 "within-seed split-half ceiling; R = (cross − null) / (ceiling − null); 95 % interval over seeds."),
            columns(res, ["nulls.random_dictionary.trained", "nulls.random_dictionary.null"],
                    [("mean p̂", "p_hat_mean"), ("PW-MCC", "pw_mcc")])]
        if "subspace_skipped" in e:
            return [*blocks, ("p", f"Subspace test skipped: {e['subspace_skipped']}")]
        share = float(e["outside_share"])
        blocks.append(("p", f"Each null draw takes n = {e['n']} latents, {share:.1%} of the smallest outside set "
                            "(results.json → nulls.outside_share)."
                       + (" <b>Caution</b>: above 5 %, disjoint draws of a small shared outside population bias the "
                          "null low and the test towards rejecting (bench/RESULTS.md, \"recalibrated\")."
                          if share > MAX_OUTSIDE_SHARE + 1e-9 else "")))
        blocks.append(columns(res, [f"nulls.subspace.{r}" for r in e["subspace"]],
                              [("cross-seed cos²", "cross"), ("outside null", "null"), ("ceiling", "ceiling"),
                               ("excess", "excess"), ("CI low", "excess_lo"), ("CI high", "excess_hi"), ("R", "R"),
                               ("p", "p_value")]))
        if e["subspace"]:
            fig, ax = new_figure()
            ranks = [int(r) for r in e["subspace"]]
            for key, style in (("cross", "o-"), ("null", "s--"), ("ceiling", "^:")):
                ax.plot(ranks, [e["subspace"][r][key] for r in e["subspace"]], style, label=key)
            ax.set_xlabel("rank r")
            ax.set_ylabel("mean cos²")
            ax.set_title(f"{e['set']} latents at n = {e['n']} per seed")
            ax.legend()
            ctx.figures["nulls_subspace"] = png(fig)
            blocks.append(("fig", ("nulls_subspace", ctx.figures["nulls_subspace"])))
        return blocks
