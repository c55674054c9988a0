"""sae_fast: how sparse autoencoders depend on their training seed, at scale.

Public names are imported lazily so that `import sae_fast` stays cheap and works without the compiled
extension (only principal angles need it) and without optional dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    "principal_angles": ".angles",
    "principal_angles_pairs": ".angles",
    "subspace_similarity": ".angles",
    "random_subspace_angles": ".angles",
    "SubspaceSimilarity": ".angles",
    "TopKSAE": ".sae",
    "ForwardOutput": ".sae",
    "match": ".matching",
    "match_many": ".matching",
    "Match": ".matching",
    "stability_scores": ".stability",
    "Stability": ".stability",
    "train": ".train",
    "Trainer": ".train",
    "TrainConfig": ".train",
    "load_sae": ".checkpoint",
    "save_sae": ".checkpoint",
}
# the study package is itself callable (sae_fast.study(...) runs the study), so the name maps to the package
_MODULES: dict[str, str] = {"study": ".study"}

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(_MODULES[name], __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sae_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
