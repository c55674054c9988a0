"""Bring your own SAEs: reading (and writing) the folders of sparsify, SAELens and dictionary_learning.

Each format module has ``detect(folder) -> name | None``, ``describe(folder) -> (architecture, F, d)``
(config only, cheap), ``read_decoder(folder) -> W_dec (F, d)`` (memory-mapped where the file allows; all
``stability`` needs) and ``load(folder, device=, dtype=, k=)`` (the whole SAE, a
:class:`~.protocol.SparseCoder`). :func:`detect`, :func:`load` and :func:`read_decoder` dispatch on the
folder's files; :func:`check_consistent` refuses seeds whose architecture, F or d differ.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import CheckpointError
from . import dictionary_learning, saelens, sparsify
from .architectures import GatedSAE, ThresholdSAE
from .protocol import SparseCoder, architecture_of, as_args, reconstruct, to_sparse

# Tried in this order: a folder holding sparsify's and SAELens' weights both is read as sparsify.
FORMATS: dict[str, ModuleType] = {"sparsify": sparsify, "saelens": saelens,
                                  "dictionary_learning": dictionary_learning}

__all__ = ["FORMATS", "GatedSAE", "SparseCoder", "ThresholdSAE", "architecture_of", "as_args", "check_consistent",
           "describe", "detect", "load", "read_decoder", "reconstruct", "register_with", "to_sparse"]


def detect(folder: str | os.PathLike[str]) -> str | None:
    """The name of the format of the SAE in ``folder`` (a key of FORMATS), or None if it holds none."""
    for name, module in FORMATS.items():
        if module.detect(folder):
            return name
    return None


def register_with(register: Callable[[str, Callable[..., Any], Callable[..., Any]], Any]) -> None:
    """Call ``register(name, detect, read_decoder)`` for each format, in FORMATS' order (e.g. with a
    registry of seed-folder readers such as ``register_format``)."""
    for name, module in FORMATS.items():
        register(name, module.detect, module.read_decoder)


def _module(folder: str | os.PathLike[str]) -> ModuleType:
    path = Path(folder)
    if not path.is_dir():
        raise CheckpointError(f"SAE folder {path} does not exist (or is not a folder)")
    name = detect(path)
    if name is None:
        raise CheckpointError(f"{path} holds no SAE: expected {sparsify.WEIGHTS} (sparsify), {saelens.WEIGHTS} "
                              f"(SAELens) or {dictionary_learning.WEIGHTS} (dictionary_learning)")
    return FORMATS[name]


def describe(folder: str | os.PathLike[str]) -> tuple[str, int, int]:
    """(architecture, F, d) of the SAE in ``folder``, from its config."""
    return _module(folder).describe(folder)


def read_decoder(folder: str | os.PathLike[str]) -> Tensor:
    """W_dec (F, d) of the SAE in ``folder``, any format and architecture. Memory: O(1) (memory-mapped)."""
    return _module(folder).read_decoder(folder)


def load(folder: str | os.PathLike[str], *, device: torch.device | str | None = None,
         dtype: torch.dtype | None = None, k: int | None = None) -> Any:
    """The SAE in ``folder``: a TopKSAE for TopK SAEs, else a ThresholdSAE or GatedSAE."""
    return _module(folder).load(folder, device=device, dtype=dtype, k=k)


def check_consistent(folders: Sequence[str | os.PathLike[str]]) -> tuple[str, int, int]:
    """(architecture, F, d) shared by the SAEs in ``folders``; CheckpointError naming the folders that differ.

    Reads configs only (dictionary_learning: the memory-mapped state dict's shapes).
    """
    if not folders:
        raise CheckpointError("no SAE folders given")
    infos = [(Path(f), describe(f)) for f in folders]
    first_folder, first = infos[0]
    odd = [(folder, info) for folder, info in infos if info != first]
    if odd:
        listed = "; ".join(f"{folder}: {info[0]} F={info[1]} d={info[2]}" for folder, info in odd[:5])
        raise CheckpointError(f"the seeds' SAEs differ: {first_folder} is {first[0]} with F={first[1]} "
                              f"d={first[2]}, but {listed}" + (f" (and {len(odd) - 5} more)" if len(odd) > 5 else ""))
    return first
