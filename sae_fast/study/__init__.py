"""The seed-dependence study as a resumable pipeline of steps (one module per analysis under ``steps/``).

``sae_fast.study(run_dir, activations=..., out_dir=...)`` runs it; the step contract is in :mod:`.step`, the
settings in :mod:`.config`, the inputs in :mod:`.inputs`, the runner in :mod:`.runner`.

The package module itself is callable (``sae_fast.study(...)`` is ``sae_fast.study.study(...)``), so the
function and the package share the name without one shadowing the other.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .config import EmbeddedDefault, StudyConfig, StudyModel
from .step import Block, Context, Step, StepError


def study(*args: Any, **kwargs: Any) -> Any:
    """Run the study; see :func:`sae_fast.study.runner.study` for the parameters."""
    from .runner import study as run_study

    return run_study(*args, **kwargs)


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return study(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Block", "Context", "EmbeddedDefault", "Step", "StepError", "StudyConfig", "StudyModel", "study"]
