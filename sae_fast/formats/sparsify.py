"""EleutherAI sparsify folders (``<hook>/`` or ``<hook>/seed<N>/``): ``cfg.json`` + ``sae.safetensors``.

Weights: ``encoder.weight`` (F, d), ``encoder.bias`` (F,), ``W_dec`` (F, d), ``b_dec`` (d,), and ``W_skip``
(d, d) for SAEs with a skip connection. cfg.json: sparsify's ``SparseCoderConfig`` (``activation``,
``num_latents`` or ``expansion_factor``, ``k``, ``skip_connection``, ``transcode``, ...) plus ``d_in``.
``load`` reads TopK SAEs; a skip connection, a transcoder or the ``groupmax`` activation is refused with the
field named (their decoder is still read by ``read_decoder``, which is all ``stability`` needs). sae_fast's
own extra facts go under ``cfg.json["sae_fast"]``, which sparsify ignores.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import CheckpointError, atomic_save_safetensors, atomic_write_json, load_safetensors
from ..runs import SPARSIFY_WEIGHTS
from .build import topk_sae
from .files import check_tensors, memmap_decoder, positive_int, read_json

WEIGHTS = SPARSIFY_WEIGHTS
CFG = "cfg.json"
NAME = "sparsify"

__all__ = ["describe", "detect", "load", "read_decoder", "write"]


def detect(folder: str | Path) -> str | None:
    """``'sparsify'`` if ``folder`` holds ``sae.safetensors``, else None."""
    return NAME if (Path(folder) / WEIGHTS).is_file() else None


def _num_latents(cfg: Mapping[str, Any], d_in: int, file: Path) -> int:
    if cfg.get("num_latents"):
        return positive_int(cfg, "num_latents", file)
    return d_in * positive_int({"expansion_factor": cfg.get("expansion_factor", 32)}, "expansion_factor", file)


def _architecture(cfg: Mapping[str, Any], file: Path) -> str:
    activation = cfg.get("activation", "topk")
    if activation not in ("topk", "groupmax"):
        raise CheckpointError(f"{file}: field 'activation' is {activation!r}; sparsify writes 'topk' or 'groupmax'")
    arch = str(activation)
    if cfg.get("transcode"):
        arch += "_transcoder"
    if cfg.get("skip_connection"):
        arch += "_skip"
    return arch


def describe(folder: str | Path) -> tuple[str, int, int]:
    """(architecture, F, d) from ``cfg.json`` alone: ``'topk'``, or e.g. ``'topk_transcoder_skip'``."""
    file = Path(folder) / CFG
    cfg = read_json(file)
    d_in = positive_int(cfg, "d_in", file)
    return _architecture(cfg, file), _num_latents(cfg, d_in, file), d_in


def read_decoder(folder: str | Path) -> Tensor:
    """W_dec (F, d), memory-mapped and read-only, checked against cfg.json. Memory: O(1)."""
    folder = Path(folder)
    _, f, d = describe(folder)
    return memmap_decoder(folder / WEIGHTS, (f, d), folder / CFG)


def load(folder: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
         k: int | None = None) -> Any:
    """The TopKSAE in a sparsify folder. ``k`` overrides the stored k (with a warning). Memory: the weights."""
    folder = Path(folder)
    cfg_file, file = folder / CFG, folder / WEIGHTS
    cfg = read_json(cfg_file)
    arch, f, d = describe(folder)
    if arch != "topk":
        raise CheckpointError(f"{cfg_file}: a {arch!r} sparse coder (fields 'activation', 'transcode', "
                              "'skip_connection'); sae_fast loads sparsify TopK SAEs without skip connection")
    k_stored = positive_int(cfg, "k", cfg_file)
    tensors = load_safetensors(file)
    check_tensors(tensors, {"encoder.weight": (f, d), "encoder.bias": (f,), "W_dec": (f, d), "b_dec": (d,)},
                  file, what=f"{cfg_file} (a TopK SAE, no skip connection)")
    if k is not None and k != k_stored:
        warnings.warn(f"{folder}: using k={k} instead of the stored k={k_stored}", stacklevel=3)
        k_stored = k
    return topk_sae(tensors["encoder.weight"], tensors["encoder.bias"], tensors["W_dec"], tensors["b_dec"],
                    k_stored, cfg=cfg, file=cfg_file, dtype=dtype, device=device)


def write(sae: Any, folder: Path, extra: Mapping[str, Any]) -> None:
    """Write a TopKSAE so that sparsify's ``SparseCoder.load_from_disk`` reads it."""
    num_latents, d_in = (int(s) for s in sae.W_dec.shape)
    tensors = {"encoder.weight": sae.W_enc, "encoder.bias": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    atomic_save_safetensors(tensors, folder / WEIGHTS, {"format": "pt"})
    atomic_write_json(folder / CFG, {
        "activation": "topk", "expansion_factor": max(1, num_latents // d_in), "normalize_decoder": True,
        "num_latents": num_latents, "k": int(sae.k), "multi_topk": False, "skip_connection": False,
        "transcode": False, "d_in": d_in, "sae_fast": dict(extra)})
