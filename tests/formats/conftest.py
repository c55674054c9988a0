"""The real SAELens and dictionary_learning, imported without their heavy package trees.

Both are installed with ``pip install --no-deps`` (see .ci/run). Only the submodules holding the SAE classes
are imported: their package ``__init__`` files pull training stacks (datasets, nnsight, wandb, ...). SAELens'
SAE base class takes two names from transformer_lens (``HookPoint``, ``HookedRootModule``); where
transformer_lens is not installed they are stood in for while SAELens imports: a hook point is the identity
without hooks, and ``setup`` only registers hooks. Where a package is missing the tests skip, except under
CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types
from typing import Any

import pytest
from torch import nn

SAELENS_VERSION = "6.54.12"
INSTALL = "pip install --no-deps sae-lens==6.54.12 dictionary-learning==0.1.0 requests"


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not installed, and CI must run the real-package tests ({INSTALL})")
    pytest.skip(f"{what} is not installed ({INSTALL})")


def _bare_package(name: str, path: str) -> None:
    """Register ``name`` as a package without running its __init__ (its submodules import normally)."""
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [path]
        sys.modules[name] = pkg


class _HookPoint(nn.Module):
    def forward(self, x: Any) -> Any:
        return x


class _HookedRootModule(nn.Module):
    def setup(self) -> None:
        pass


def _transformer_lens_stand_ins() -> dict[str, types.ModuleType]:
    root, hooks, hooked = (types.ModuleType(n) for n in (
        "transformer_lens", "transformer_lens.hook_points", "transformer_lens.HookedTransformer"))
    root.__path__ = []
    hooks.HookPoint = _HookPoint
    hooked.HookedRootModule = _HookedRootModule
    return {m.__name__: m for m in (root, hooks, hooked)}


_SAE_MODULES = ("topk_sae", "standard_sae", "jumprelu_sae", "gated_sae", "batchtopk_sae",
                "matryoshka_batchtopk_sae")


@pytest.fixture(scope="session")
def saelens() -> types.SimpleNamespace:
    """SAELens' SAE classes (``saelens.sae.SAE``, ``saelens.topk_sae.TopKSAE``, ...), registered as its
    package __init__ registers them."""
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or spec.submodule_search_locations is None:
        _missing(f"sae-lens {SAELENS_VERSION}")
    _bare_package("sae_lens", next(iter(spec.submodule_search_locations)))
    sys.modules["sae_lens"].__version__ = SAELENS_VERSION
    sys.modules["sae_lens"].logger = logging.getLogger("sae_lens")
    stand_ins = {} if importlib.util.find_spec("transformer_lens") else _transformer_lens_stand_ins()
    added = [name for name in stand_ins if name not in sys.modules]
    sys.modules.update({name: stand_ins[name] for name in added})
    try:
        ns = types.SimpleNamespace(sae=importlib.import_module("sae_lens.saes.sae"),
                                   registry=importlib.import_module("sae_lens.registry"),
                                   **{m: importlib.import_module(f"sae_lens.saes.{m}") for m in _SAE_MODULES})
    except ImportError as exc:
        _missing(f"{exc.name} (imported by sae-lens)")
    finally:
        for name in added:  # the SAELens modules keep their references; nothing else sees the stand-ins
            sys.modules.pop(name, None)
    _register(ns)
    return ns


def _register(sl: types.SimpleNamespace) -> None:
    inference = {"standard": (sl.standard_sae.StandardSAE, sl.standard_sae.StandardSAEConfig),
                 "gated": (sl.gated_sae.GatedSAE, sl.gated_sae.GatedSAEConfig),
                 "topk": (sl.topk_sae.TopKSAE, sl.topk_sae.TopKSAEConfig),
                 "jumprelu": (sl.jumprelu_sae.JumpReLUSAE, sl.jumprelu_sae.JumpReLUSAEConfig)}
    training = {"topk": (sl.topk_sae.TopKTrainingSAE, sl.topk_sae.TopKTrainingSAEConfig),
                "batchtopk": (sl.batchtopk_sae.BatchTopKTrainingSAE, sl.batchtopk_sae.BatchTopKTrainingSAEConfig),
                "matryoshka_batchtopk": (sl.matryoshka_batchtopk_sae.MatryoshkaBatchTopKTrainingSAE,
                                         sl.matryoshka_batchtopk_sae.MatryoshkaBatchTopKTrainingSAEConfig)}
    for arch, (cls, cfg) in inference.items():
        if arch not in sl.registry.SAE_CLASS_REGISTRY:
            sl.registry.register_sae_class(arch, cls, cfg)
    for arch, (cls, cfg) in training.items():
        if arch not in sl.registry.SAE_TRAINING_CLASS_REGISTRY:
            sl.registry.register_sae_training_class(arch, cls, cfg)


@pytest.fixture(scope="session")
def dictionary_learning() -> types.SimpleNamespace:
    """dictionary_learning's SAE classes: ``dictionary`` (AutoEncoder, AutoEncoderNew, GatedAutoEncoder,
    JumpReluAutoEncoder), ``top_k``, ``batch_top_k``, ``matryoshka`` (the trainers' modules holding the rest)."""
    spec = importlib.util.find_spec("dictionary_learning")
    if spec is None or spec.submodule_search_locations is None:
        _missing("dictionary-learning 0.1.0")
    base = next(iter(spec.submodule_search_locations))
    _bare_package("dictionary_learning", base)
    _bare_package("dictionary_learning.trainers", os.path.join(base, "trainers"))
    return types.SimpleNamespace(
        dictionary=importlib.import_module("dictionary_learning.dictionary"),
        top_k=importlib.import_module("dictionary_learning.trainers.top_k"),
        batch_top_k=importlib.import_module("dictionary_learning.trainers.batch_top_k"),
        matryoshka=importlib.import_module("dictionary_learning.trainers.matryoshka_batch_top_k"))
