"""The study's steps, one module per analysis, in the order they run (see :mod:`sae_fast.study.step`)."""

from __future__ import annotations

from ..step import Step
from .candidates import CandidatesStep
from .classifier import ClassifierStep
from .firing import FiringStep
from .frequency import FrequencyStep
from .geometry import GeometryStep
from .masking import MaskingStep
from .matching import MatchingStep
from .pooling import PoolingStep
from .stability import StabilityStep
from .subspaces import SubspacesStep
from .synthetic import SyntheticStep


def default_steps(synthetic: bool = True) -> list[Step]:
    """The study's steps in run order (every step after the ones it requires)."""
    steps: list[Step] = [MatchingStep(), StabilityStep(), FiringStep(), FrequencyStep(), MaskingStep(),
                         GeometryStep(), SubspacesStep(), ClassifierStep(), CandidatesStep(), PoolingStep()]
    return [*steps, SyntheticStep()] if synthetic else steps


__all__ = ["default_steps"]
