"""Step ``stability``: p̂ of every latent of every seed (anchor = each seed in turn) and the endpoint split.

The best cosines come from :func:`sae_fast.stability_scores` (exact backend, every directed pair, on ``--device``),
the same computation as ``sae-fast stability``: under torchrun ``sae-fast study`` has every rank compute its share
of the seed pairs first (:func:`study_scores`), and a run killed mid-way resumes at the next unfinished pair from
its checkpoint in ``<out>/stability_pairs/<signed|absolute>/`` (kept outside the step folder, which is emptied
before the step runs; its decoders are verified by hash before it is reused). The scores hold no θ, so θ and ε
change only the split here and the steps downstream. Also saved as a :class:`sae_fast.Stability` run in this folder
(``stability.json`` + ``stability.safetensors``, seeds named as in the run), readable by ``Stability.load``. The
matching step's top-1 neighbours are the same numbers (tests/study/test_stability_route.py).

Memory: O(S·F·d) decoders + one tile + O(S²·F) for the best cosines. Artifacts: ``arrays.npz`` (p_hat (S, F),
labels (S, F), best_cos (S, S, F)), ``section.json`` (results.json → stability), the Stability files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, TypedDict

import numpy as np
import torch

from ...analysis import stability as stab_mod
from ...analysis._common import STABLE, UNSTABLE
from ...analysis.stability import CosSummary, StabilitySummary, SweepRow
from ...stability import Stability, stability_scores
from ..config import StudyConfig
from ..step import Context
from .section import Section, SectionStep


class StabilityResult(Section):
    """p̂ (S, F), labels (S, F; 1 stable, -1 unstable, 0 neither), best cosines (S, S, F; NaN on the diagonal)."""

    @property
    def p_hat(self) -> np.ndarray:
        return self.array("p_hat")

    @property
    def labels(self) -> np.ndarray:
        return self.array("labels")

    @property
    def best_cos(self) -> np.ndarray:
        return self.array("best_cos")


class StabilityEntry(TypedDict):
    """results.json → stability: the anchor's split (with its best cosines), every anchor's, and the θ/ε sweep."""

    anchor: CosSummary
    all_anchors: StabilitySummary
    per_anchor_share_stable: list[float]
    per_anchor_share_unstable: list[float]
    sweep: list[SweepRow]
    p_hat_resolution: float


class StabilityEntries(TypedDict):
    stability: StabilityEntry


PAIRS_DIR = "stability_pairs"
"""the folder (in the study's output folder) of the stability run the step computes and resumes"""


def pairs_dir(out: Path, absolute: bool) -> Path:
    """Where the step's :func:`stability_scores` run lives: one per cosine kind (signed or absolute)."""
    return out / PAIRS_DIR / ("absolute" if absolute else "signed")


def study_scores(decoders: list[torch.Tensor], cfg: StudyConfig, out: Path, device: torch.device | str | None,
                 progress: bool, distributed: bool = False) -> Stability:
    """The study's :func:`stability_scores` run over the seeds' decoders, saved in (and resumed from)
    :func:`pairs_dir`. With ``distributed`` (every rank of a process group calling it with the same decoders),
    the ranks split the pairs; the step itself then finds the finished run and computes nothing."""
    return stability_scores(decoders, theta=cfg.theta, eps=cfg.eps, anchor="all", backend="exact",
                            absolute=cfg.absolute, device=device, out=pairs_dir(out, cfg.absolute),
                            progress=progress, distributed=distributed)


class StabilityStep(SectionStep):
    name: ClassVar[str] = "stability"
    requires = ()
    setting_names = ("theta", "eps", "absolute", "anchor")
    result_type = StabilityResult
    entries_type = StabilityEntries

    def compute(self, ctx: Context) -> StabilityResult:
        cfg = ctx.cfg
        S = len(ctx.inputs.seeds.names)
        scores = study_scores(ctx.inputs.seeds.decoders(), cfg, ctx.out, ctx.device, ctx.progress)
        stab = dataclasses.replace(scores, seeds=list(ctx.inputs.seeds.names))
        stab.save(ctx.dir(self.name))
        best_cos = stab.best_cos.numpy().astype(np.float32)
        p_hat = stab.p_hat().numpy().astype(np.float64)
        labels = np.stack([stab_mod.split(p, cfg.eps) for p in p_hat])
        a0 = cfg.anchor
        others = [b for b in range(S) if b != a0]
        summary = {
            "anchor": stab_mod.summarize(p_hat[a0], best_cos[a0, others], eps=cfg.eps),
            "all_anchors": stab_mod.summarize(p_hat, eps=cfg.eps),
            "per_anchor_share_stable": [float((lab == STABLE).mean()) for lab in labels],
            "per_anchor_share_unstable": [float((lab == UNSTABLE).mean()) for lab in labels],
            "sweep": stab_mod.theta_eps_sweep(best_cos[a0, others]),
            "p_hat_resolution": 1.0 / (S - 1),
        }
        return StabilityResult({"stability": summary}, {"p_hat": p_hat, "labels": labels, "best_cos": best_cos})
