"""Step ``calibration``: power and false-positive rate of the study's subspace and candidate tests on planted
studies with this run's seed count (:mod:`sae_fast.analysis.calibration`): a sweep of the grouped share (0 is
the negative control: unstable latents with no shared subspace), and the AUC of candidate detection against the
ground truth. Small by default (seconds); ``CalibrationOptions`` sets larger sweeps.

Memory: one planted study at a time (S × F × d floats, F = n_stable + n_unstable). Artifacts: ``section.json``
(results.json → calibration).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, TypedDict

from ...analysis.calibration import CalibrationSettings, PlantedStudy, calibrate, describe
from ..step import Block, Context
from .section import Section, SectionStep
from .traceable import columns, new_figure, png


@dataclass(frozen=True)
class CalibrationOptions:
    shares: tuple[float, ...] = (0.0, 0.5)
    """grouped shares swept (0: negative control)"""
    repeats: int = 2
    """planted studies per share"""
    planted: PlantedStudy = field(default_factory=lambda: PlantedStudy(n_stable=120, n_unstable=48))
    """the planted study (its num_seeds is replaced by the run's)"""
    tests: CalibrationSettings = field(default_factory=lambda: CalibrationSettings(null_draws=20,
                                                                                   candidate_null_draws=300))
    """the tests' settings"""


class CalibrationRow(TypedDict):
    """Rejection rates at one grouped share (the power where it is > 0, the false-positive rate at 0)."""

    grouped_share: float
    num_seeds: int
    repeats: int
    kind: str
    subspace_rejection: float | None
    candidate_rejection: float | None
    candidate_auc: float | None
    subspace_R: float | None


class CalibrationTests(TypedDict):
    """The tests' settings (:class:`~sae_fast.analysis.calibration.CalibrationSettings`)."""

    alpha: float


class CalibrationEntry(TypedDict):
    rows: list[CalibrationRow]
    num_seeds: int
    planted: dict[str, Any]
    tests: CalibrationTests


class CalibrationEntries(TypedDict):
    calibration: CalibrationEntry


class CalibrationStep(SectionStep):
    name: ClassVar[str] = "calibration"
    requires = ("stability",)
    setting_names = ("theta", "eps", "seed")
    entries_type = CalibrationEntries

    def __init__(self, options: CalibrationOptions | None = None) -> None:
        self.options = options or CalibrationOptions()

    def settings(self, cfg: Any) -> dict[str, Any]:
        return {**super().settings(cfg), **asdict(self.options)}

    def compute(self, ctx: Context) -> Section:
        cfg, opt = ctx.cfg, self.options
        S = int(ctx.result("stability").p_hat.shape[0])
        tests = replace(opt.tests, theta=cfg.theta, eps=cfg.eps)
        rows = calibrate(shares=opt.shares, seed_counts=(S,), repeats=opt.repeats, base=opt.planted, settings=tests,
                         seed=cfg.seed, progress=False)
        return Section({"calibration": {"rows": rows, "num_seeds": S, **describe(opt.planted, tests)}})

    def render(self, result: Section, ctx: Context) -> list[Block]:
        e = result.entries["calibration"]
        fig, ax = new_figure()
        xs = [r["grouped_share"] for r in e["rows"]]
        ax.plot(xs, [r["subspace_rejection"] for r in e["rows"]], "o-", label="subspace test")
        ax.plot(xs, [r["candidate_rejection"] for r in e["rows"]], "s--", label="candidate test (BH)")
        ax.axhline(e["tests"]["alpha"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("share of unstable latents in shared subspaces (planted)")
        ax.set_ylabel("rejection rate")
        ax.set_ylim(-0.05, 1.05)
        ax.legend()
        ctx.figures["calibration"] = png(fig)
        return [("h2", f"Calibration on planted studies ({e['num_seeds']} seeds)"),
                ("p", f"{e['rows'][0]['repeats']} planted studies per share; at share 0 the unstable latents have no "
                      "shared subspace, so the rejection rate there is the false-positive rate, elsewhere the power. "
                      "AUC: candidate q-values against the ground truth 'in a shared subspace'."),
                columns(ctx.report_results, [f"calibration.rows.{i}" for i in range(len(e["rows"]))],
                        [("grouped share", "grouped_share"), ("kind", "kind"),
                         ("subspace test rejects", "subspace_rejection"),
                         ("candidate test rejects", "candidate_rejection"), ("AUC", "candidate_auc"),
                         ("R", "subspace_R")]),
                ("fig", ("calibration", ctx.figures["calibration"]))]
