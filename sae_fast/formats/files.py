"""Checks shared by the format readers: JSON config files, config fields and the tensors a file must hold.

Every failure is a :class:`~sae_fast.checkpoint.CheckpointError` (a ``DataError``) naming the file, the
field or tensor, and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError
from ..runs import DECODER_KEY, memmap_safetensors

__all__ = ["check_tensors", "memmap_decoder", "positive_int", "read_json"]


def read_json(file: Path) -> dict[str, Any]:
    """The JSON object in ``file``; CheckpointError if it is missing, not JSON, or not an object."""
    if not file.is_file():
        raise CheckpointError(f"{file} is missing")
    try:
        obj = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file} must hold a JSON object, got {type(obj).__name__}")
    return obj


def positive_int(cfg: Mapping[str, Any], key: str, file: Path) -> int:
    """``cfg[key]`` if it is a positive int, else CheckpointError naming ``file`` and ``key``."""
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"{file}: field {key!r} must be a positive int, got {value!r}")
    return value


def check_tensors(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], file: Path, *,
                  what: str, optional: Iterable[str] = ()) -> None:
    """``tensors`` holds exactly the keys of ``shapes`` (plus any of ``optional``), with those shapes, finite.

    ``what`` names where the shapes come from (e.g. "cfg.json's architecture 'jumprelu'") for the message.
    """
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise CheckpointError(f"{file} lacks tensors {missing} that {what} needs (it has {sorted(tensors)})")
    extra = sorted(set(tensors) - set(shapes) - set(optional))
    if extra:
        raise CheckpointError(f"{file} holds tensors {extra} that {what} does not use: the file is not the "
                              "architecture its config names")
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(f"{file}: tensor {key!r} has shape {tuple(tensors[key].shape)}, {what} "
                                  f"implies {shape}")
        if tensors[key].is_floating_point() and not bool(torch.isfinite(tensors[key]).all()):
            raise CheckpointError(f"{file}: tensor {key!r} holds NaN or inf values")


def memmap_decoder(weights: Path, shape: tuple[int, int], cfg_file: Path, implied: str = "") -> torch.Tensor:
    """``W_dec`` of the safetensors file ``weights``, memory-mapped and read-only (unverified:
    :func:`sae_fast.runs.load_decoder` verifies), checked to have the (F, d) ``shape`` that ``cfg_file``
    implies (``implied``: the fields it came from, for the message). Memory: O(1)."""
    w_dec = memmap_safetensors(weights, DECODER_KEY)
    if tuple(w_dec.shape) != tuple(shape):
        raise CheckpointError(f"{weights}: W_dec has shape {tuple(w_dec.shape)}, {cfg_file} {implied}"
                              f"implies {tuple(shape)}")
    return w_dec
