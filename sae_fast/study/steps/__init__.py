"""The study's steps, one module per analysis, in the order they run (see :mod:`sae_fast.study.step`)."""

from __future__ import annotations

from ..step import Step
from .ambiguity import AmbiguityStep
from .browse import BrowseStep
from .calibration import CalibrationStep
from .candidates import CandidatesStep
from .classifier import ClassifierStep
from .dose_response import DoseResponseStep
from .fdr import FdrStep
from .firing import FiringStep
from .frequency import FrequencyStep
from .geometry import GeometryStep
from .masking import MaskingStep
from .matching import MatchingStep
from .nulls import NullsStep
from .over_training import OverTrainingStep
from .pooling import PoolingStep
from .seed_count import SeedCountStep
from .stability import StabilityStep
from .subspaces import SubspacesStep
from .synthetic import SyntheticStep
from .verdict import VerdictStep


def default_steps(synthetic: bool = True) -> list[Step]:
    """The study's steps in run order (every step after the ones it requires)."""
    steps: list[Step] = [MatchingStep(), StabilityStep(), FiringStep(), FrequencyStep(), MaskingStep(),
                         GeometryStep(), SubspacesStep(), ClassifierStep(), CandidatesStep(), PoolingStep(),
                         BrowseStep()]
    steps += calibrated_steps(tuple(s.name for s in steps))
    return [*steps, SyntheticStep()] if synthetic else steps


def calibrated_steps(available: tuple[str, ...]) -> list[Step]:
    """The calibrated analyses (nulls, dose-response, ambiguity, FDR, seed count, calibration) and the verdict
    table, which reads whichever of ``available`` it uses."""
    verdict_inputs = ("stability", "firing", "nulls", "calibration",
                      *(n for n in ("masking", "classifier", "pooling") if n in available))
    dose_inputs = ("stability", "firing", *(("candidates",) if "candidates" in available else ()))
    fdr_inputs = ("matching", "stability", "firing", *(("candidates",) if "candidates" in available else ()))
    return [NullsStep(), DoseResponseStep(requires=dose_inputs), AmbiguityStep(), FdrStep(requires=fdr_inputs),
            SeedCountStep(),
            CalibrationStep(), OverTrainingStep(), VerdictStep(requires=verdict_inputs)]


__all__ = ["default_steps"]
