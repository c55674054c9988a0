"""Step ``stability``: p̂ of every latent of every seed (anchor = each seed in turn) and the endpoint split.

Read from the matching step's graph (the top-1 neighour in each other seed is the best cosine), so θ and ε
change only this step and the ones downstream. Also saved as a :class:`sae_fast.Stability` run in this folder
(``stability.json`` + ``stability.safetensors``), readable by ``Stability.load``.

Memory: O(S²·F) for the best cosines. Artifacts: ``arrays.npz`` (p_hat (S, F), labels (S, F), best_cos
(S, S, F)), ``section.json`` (results.json → stability), the Stability files.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ...analysis import stability as stab_mod
from ...analysis._common import STABLE, UNSTABLE
from ...stability import Stability
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


class StabilityStep(SectionStep):
    name: ClassVar[str] = "stability"
    requires = ("matching",)
    setting_names = ("theta", "eps", "absolute", "anchor")
    result_type = StabilityResult

    def compute(self, ctx: Context) -> StabilityResult:
        cfg, nb = ctx.cfg, ctx.result("matching")
        S = nb.index.shape[0]
        best_cos = nb.cos[..., 0].copy()
        best_j = nb.index[..., 0].copy()
        eye = np.eye(S, dtype=bool)
        best_cos[eye], best_j[eye] = np.nan, -1
        stab = Stability(torch.from_numpy(best_cos), torch.from_numpy(best_j), torch.from_numpy(~eye),
                         list(range(S)), list(ctx.inputs.seeds.names), cfg.theta, cfg.eps, cfg.absolute,
                         "exact top-m neighbour graph (study matching step)", {})
        stab.save(ctx.dir(self.name))
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
