"""What one seed of a training run owns (SAE, optimizer, dead-latent counters, metrics) and the divergence check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import distributed as dist_utils
from ..optim import make_optimizer
from .config import TrainConfig


@dataclass
class SeedState:
    """Everything one seed owns."""

    seed: int
    sae: Any
    optimizer: torch.optim.Optimizer
    tokens_since_fired: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    metric_steps: int = 0


def seed_optimizer(name: str, params: list[torch.nn.Parameter], lr: float, cfg: TrainConfig,
                   seed: int = 0) -> torch.optim.Optimizer:
    """The optimizer of one SAE; ``seed`` (the SAE's) seeds LowMemoryAdam's stochastic rounding."""
    if name == "signum":
        return make_optimizer(name, params, lr)
    if name == "low_memory_adam":
        return make_optimizer(name, params, lr, betas=cfg.adam_betas, eps=cfg.adam_eps, seed=seed)
    return make_optimizer(name, params, lr, betas=cfg.adam_betas, eps=cfg.adam_eps)


def diverged_error(seeds: list[int], step: int) -> FloatingPointError:
    """The error of a run whose ``seeds`` have non-finite losses or weights at ``step``."""
    return FloatingPointError(
        f"training diverged: seed(s) {seeds} have non-finite losses or weights at step {step}; no checkpoint was "
        "written after it. Check the activations, or start a new run with a lower lr (a resume replays the same "
        "steps with the same settings)"
    )


def check_finite_state(states: list[SeedState], step: int) -> None:
    """FloatingPointError on every rank when a seed's losses since the last log or its weights are not
    finite, so that no checkpoint of a diverged seed is ever written (a few host syncs per call)."""
    mine = [st.seed for st in states
            if not all(bool(torch.isfinite(v).all()) for v in st.metrics.values())
            or not all(bool(torch.isfinite(p).all()) for p in st.sae.parameters())]
    diverged = sorted({s for part in dist_utils.all_gather_objects(mine) for s in part})
    if diverged:
        raise diverged_error(diverged, step)
