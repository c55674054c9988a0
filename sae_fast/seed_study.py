"""The seed-dependence study's earlier module name: the study now lives in :mod:`sae_fast.study` (a pipeline of
steps); this module re-exports its public names so that older imports keep working."""

from __future__ import annotations

from .study.config import EmbeddedDefault, StudyConfig, StudyModel
from .study.embedded import EMBEDDED_CONFIG_FILE, check_embedded_reuse, train_embedded_default
from .study.inputs import HeldOut, find_seeds, load_seeds, open_study_model
from .study.runner import study
from .study.steps.synthetic import synthetic_section

__all__ = ["EMBEDDED_CONFIG_FILE", "EmbeddedDefault", "HeldOut", "StudyConfig", "StudyModel", "check_embedded_reuse",
           "find_seeds", "load_seeds", "open_study_model", "study", "synthetic_section", "train_embedded_default"]
