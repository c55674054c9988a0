"""Step ``over_training``: stability over training when the run kept snapshots (``TrainConfig(history="log")``,
``<seed folder>/history/step<N>/``): p̂ and the endpoint labels at each kept step, label transitions between
consecutive steps, and each latent's cosine to its initialisation against its final p̂
(:mod:`sae_fast.analysis.over_training`). A run without snapshots (common to every seed, at least two steps)
gives a skipped section that says so.

Memory: S decoders per checkpoint, one checkpoint at a time plus the first and the previous one (O(S·F·d)).
Artifacts: ``section.json`` (results.json → over_training), ``arrays.npz`` (cos_to_init, p_hat, labels (S, F)
at the last kept step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypedDict

import numpy as np

from ...analysis.over_training import LABEL_NAMES, load_history, over_training, seed_history
from ..step import Block, Context
from .section import Section, SectionStep
from .traceable import columns, new_figure, png


@dataclass(frozen=True)
class OverTrainingOptions:
    moved_below: float = 0.9
    """a latent whose last decoder row has cosine below this to its first one has "moved\""""


class StepStability(TypedDict):
    step: int
    p_hat_mean: float | None
    share_stable: float | None
    share_neither: float | None
    share_unstable: float | None


class FinalStability(TypedDict):
    spearman_cos_init_vs_p_hat: float | None
    moved_below: float
    quadrants: dict[str, Any]


class OverTrainingRun(TypedDict):
    """Stability at each kept step (``skipped`` null); transitions and steps as
    :func:`~sae_fast.analysis.over_training.over_training` gives them."""

    skipped: None
    steps: list[int]
    per_step: list[StepStability]
    transitions: list[Any]
    final: FinalStability


class OverTrainingSkipped(TypedDict):
    """No training snapshots common to every seed: why."""

    skipped: str


class OverTrainingEntries(TypedDict):
    over_training: OverTrainingRun | OverTrainingSkipped


class OverTrainingStep(SectionStep):
    name: ClassVar[str] = "over_training"
    setting_names = ("theta", "eps")
    entries_type = OverTrainingEntries

    def __init__(self, options: OverTrainingOptions | None = None) -> None:
        self.options = options or OverTrainingOptions()

    def settings(self, cfg: Any) -> dict[str, Any]:
        return {**super().settings(cfg), **asdict(self.options)}

    def compute(self, ctx: Context) -> Section:
        folders = list(ctx.inputs.seeds.folders)
        history = seed_history(folders)
        if len(history) < 2:
            reason = (f"no training snapshots common to all {len(folders)} seeds in <seed folder>/history/step<N>/ "
                      f"(found {len(history)} common step(s)); train with TrainConfig(history='log') to get them")
            return Section({"over_training": {"skipped": reason}})
        res = over_training(load_history(history), theta=ctx.cfg.theta, eps=ctx.cfg.eps,
                            moved_below=self.options.moved_below)
        arrays = {k: np.asarray(res.pop(k)) for k in ("cos_to_init", "p_hat", "labels")}
        return Section({"over_training": {**res, "skipped": None}}, arrays)

    def render(self, result: Section, ctx: Context) -> list[Block]:
        e, res = result.entries["over_training"], ctx.report_results
        blocks: list[Block] = [("h2", "Stability over training")]
        if e.get("skipped"):
            return [*blocks, ("p", f"Skipped: {e['skipped']}.")]
        blocks += [("p", "p̂ and labels at each kept training step; a latent unstable at the end and still close to "
                         "its initialisation is under-trained, one that moved far and is still unstable is the "
                         "candidate for basis ambiguity."),
                   columns(res, [f"over_training.per_step.{i}" for i in range(len(e["per_step"]))],
                           [("step", "step"), ("p̂ mean", "p_hat_mean"), ("stable", "share_stable"),
                            ("neither", "share_neither"), ("unstable", "share_unstable")]),
                   columns(res, ["over_training.final"], [("Spearman cos(init) vs p̂", "spearman_cos_init_vs_p_hat"),
                                                           ("moved below", "moved_below")]),
                   columns(res, ["over_training.final.quadrants"],
                           [(k.replace("_", " "), k) for k in e["final"]["quadrants"]])]
        fig, ax = new_figure()
        steps = [max(r["step"], 1) for r in e["per_step"]]
        for name in LABEL_NAMES:
            ax.plot(steps, [r[f"share_{name}"] for r in e["per_step"]], "o-", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("training step (step 0 drawn at 1)")
        ax.set_ylabel("share of latents")
        ax.legend()
        ctx.figures["over_training"] = png(fig)
        fig, bx = new_figure()
        bx.scatter(result.array("cos_to_init").ravel(), result.array("p_hat").ravel(), s=3, alpha=0.3)
        bx.set_xlabel("cosine to initialisation")
        bx.set_ylabel("final p̂")
        ctx.figures["over_training_init"] = png(fig)
        return [*blocks, ("fig", ("over_training", ctx.figures["over_training"])),
                ("fig", ("over_training_init", ctx.figures["over_training_init"]))]
