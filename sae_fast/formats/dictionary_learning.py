"""dictionary_learning folders (``trainer_<i>/``): ``ae.pt`` (a torch state dict) + ``config.json``.

``config.json["trainer"]["dict_class"]`` names the architecture; its decoder is stored (d, F) as
``decoder.weight`` (an ``nn.Linear``) except in ``JumpReluAutoEncoder`` and ``MatryoshkaBatchTopKSAE``, which
keep ``W_dec`` (F, d) and ``W_enc`` (d, F). What each class computes at inference, and what it loads as:

* ``AutoEncoder``: relu(encoder(x − bias)), decoder(f) + bias -> ThresholdSAE ``'relu'``;
* ``AutoEncoderNew``: relu(encoder(x)), decoder(f) (with its bias) -> ThresholdSAE ``'relu'``;
* ``AutoEncoderTopK``: top-k of relu(encoder(x − b_dec)) -> TopKSAE (the kernels);
* ``BatchTopKSAE``, ``MatryoshkaBatchTopKSAE``: relu(pre) · [relu(pre) > threshold] with one learnt
  threshold (plain relu while it is still −1) -> ThresholdSAE ``'batchtopk'`` / ``'matryoshka_batchtopk'``;
* ``JumpReluAutoEncoder``: relu(pre · [pre > threshold]), no b_dec on the input -> ThresholdSAE ``'jumprelu'``;
* ``GatedAutoEncoder`` -> GatedSAE.

The weights are read as saved: ``AutoEncoder.from_pretrained`` by default also rescales the decoder to unit
norm (and the encoder by the inverse), which leaves reconstructions unchanged but scales each latent's values
by its decoder norm; ``from_pretrained(..., normalize_decoder=False)`` matches sae_fast's codes exactly.
The activations' ``norm_factor`` of a run trained with ``normalize_activations`` is already folded into the
saved weights by dictionary_learning, so nothing is rescaled here.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import CheckpointError, atomic_write, atomic_write_json
from .architectures import GatedSAE, ThresholdSAE
from .build import topk_sae
from .files import check_tensors, read_json

WEIGHTS = "ae.pt"
CFG = "config.json"
NAME = "dictionary_learning"
# dict_class -> (our architecture, layout): "linear" = nn.Linear encoder/decoder, "param" = W_enc (d, F).
CLASSES = {"AutoEncoder": ("relu", "linear"), "AutoEncoderNew": ("relu", "linear"),
           "AutoEncoderTopK": ("topk", "linear"), "BatchTopKSAE": ("batchtopk", "linear"),
           "MatryoshkaBatchTopKSAE": ("matryoshka_batchtopk", "param"), "JumpReluAutoEncoder": ("jumprelu", "param"),
           "GatedAutoEncoder": ("gated", "linear")}

__all__ = ["CLASSES", "describe", "detect", "load", "read_decoder", "write"]


def detect(folder: str | Path) -> str | None:
    """``'dictionary_learning'`` if ``folder`` holds ``ae.pt``, else None."""
    return NAME if (Path(folder) / WEIGHTS).is_file() else None


def _trainer(folder: Path) -> tuple[dict[str, Any], str]:
    file = folder / CFG
    trainer = read_json(file).get("trainer")
    if not isinstance(trainer, dict):
        raise CheckpointError(f"{file}: field 'trainer' must be an object (dictionary_learning's config.json)")
    dict_class = trainer.get("dict_class")
    if dict_class not in CLASSES:
        raise CheckpointError(f"{file}: field 'trainer.dict_class' is {dict_class!r}; sae_fast reads "
                              f"{sorted(CLASSES)}")
    return trainer, dict_class


def _state(folder: Path, mmap: bool = False) -> dict[str, Tensor]:
    file = folder / WEIGHTS
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{file} is not a torch state dict (or is truncated): {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{file} must hold a state dict of tensors, got {type(state).__name__}")
    return state


def _decoder_key(dict_class: str) -> str:
    return "W_dec" if CLASSES[dict_class][1] == "param" else "decoder.weight"


def _shape_of(state: Mapping[str, Tensor], dict_class: str, file: Path) -> tuple[int, int]:
    key = _decoder_key(dict_class)
    if key not in state or state[key].dim() != 2:
        raise CheckpointError(f"{file}: a {dict_class} keeps its decoder as a 2-D tensor {key!r}; "
                              f"it has {sorted(state)}")
    rows, cols = (int(s) for s in state[key].shape)
    return (rows, cols) if key == "W_dec" else (cols, rows)  # decoder.weight is (d, F)


def _check_cfg(trainer: Mapping[str, Any], f: int, d: int, file: Path) -> None:
    for key, value in (("dict_size", f), ("activation_dim", d)):
        if key in trainer and trainer[key] != value:
            raise CheckpointError(f"{file}: field 'trainer.{key}' is {trainer[key]!r} but {WEIGHTS}'s decoder "
                                  f"implies {value}")


def describe(folder: str | Path) -> tuple[str, int, int]:
    """(architecture, F, d): the class from ``config.json``, the shape from ``ae.pt`` (memory-mapped)."""
    folder = Path(folder)
    trainer, dict_class = _trainer(folder)
    f, d = _shape_of(_state(folder, mmap=True), dict_class, folder / WEIGHTS)
    _check_cfg(trainer, f, d, folder / CFG)
    return CLASSES[dict_class][0], f, d


def read_decoder(folder: str | Path) -> Tensor:
    """W_dec (F, d) (a transposed view where the file stores (d, F)), memory-mapped. Memory: O(1)."""
    folder = Path(folder)
    trainer, dict_class = _trainer(folder)
    state = _state(folder, mmap=True)
    f, d = _shape_of(state, dict_class, folder / WEIGHTS)
    _check_cfg(trainer, f, d, folder / CFG)
    w = state[_decoder_key(dict_class)]
    return w if w.shape == (f, d) else w.t()


def _shapes(dict_class: str, f: int, d: int) -> dict[str, tuple[int, ...]]:
    if dict_class in ("MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder"):
        shapes: dict[str, tuple[int, ...]] = {"W_enc": (d, f), "b_enc": (f,), "W_dec": (f, d), "b_dec": (d,)}
        if dict_class == "JumpReluAutoEncoder":
            return {**shapes, "threshold": (f,)}
        return {**shapes, "k": (), "threshold": (), "group_sizes": (-1,)}
    if dict_class == "GatedAutoEncoder":
        return {"decoder_bias": (d,), "encoder.weight": (f, d), "r_mag": (f,), "gate_bias": (f,),
                "mag_bias": (f,), "decoder.weight": (d, f)}
    shapes = {"encoder.weight": (f, d), "encoder.bias": (f,), "decoder.weight": (d, f)}
    if dict_class == "AutoEncoder":
        return {**shapes, "bias": (d,)}
    if dict_class == "AutoEncoderNew":
        return {**shapes, "decoder.bias": (d,)}
    return {**shapes, "b_dec": (d,), "k": (), "threshold": ()}  # AutoEncoderTopK, BatchTopKSAE


def _read_state(folder: Path, dict_class: str, f: int, d: int) -> dict[str, Tensor]:
    file = folder / WEIGHTS
    state = _state(folder)
    shapes = _shapes(dict_class, f, d)
    if "group_sizes" in state:
        shapes["group_sizes"] = tuple(state["group_sizes"].shape)
    check_tensors(state, shapes, file, what=f"{folder / CFG}'s dict_class {dict_class!r}")
    if "group_sizes" in state and int(state["group_sizes"].sum()) != f:
        raise CheckpointError(f"{file}: group_sizes sum to {int(state['group_sizes'].sum())}, not dict_size {f}")
    return state


def _k(trainer: Mapping[str, Any], state: Mapping[str, Tensor], k: int | None, file: Path) -> int:
    stored = int(state["k"])
    if trainer.get("k", stored) != stored:
        raise CheckpointError(f"{file}: field 'trainer.k' is {trainer['k']!r} but {WEIGHTS} stores k={stored}")
    if k is not None and k != stored:
        raise CheckpointError(f"{file}: k={k} was given but the SAE stores k={stored}")
    return stored


def _build(s: Mapping[str, Tensor], dict_class: str, dtype: torch.dtype | None, device: Any) -> Any:
    kw: dict[str, Any] = {"dtype": dtype, "device": device}
    if dict_class == "GatedAutoEncoder":
        return GatedSAE(s["encoder.weight"], s["gate_bias"], s["mag_bias"], s["r_mag"], s["decoder.weight"].t(),
                        s["decoder_bias"], s["decoder_bias"], **kw)
    arch = CLASSES[dict_class][0]
    if dict_class in ("MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder"):
        w_enc, b_enc, w_dec, b_dec = s["W_enc"].t(), s["b_enc"], s["W_dec"], s["b_dec"]
        b_pre = torch.zeros_like(b_dec) if dict_class == "JumpReluAutoEncoder" else b_dec
    else:
        w_enc, b_enc, w_dec = s["encoder.weight"], s["encoder.bias"], s["decoder.weight"].t()
        b_dec = s["bias"] if dict_class == "AutoEncoder" else s.get("decoder.bias", s.get("b_dec"))
        b_pre = torch.zeros_like(b_dec) if dict_class == "AutoEncoderNew" else b_dec
    threshold = s["threshold"] if dict_class == "JumpReluAutoEncoder" else torch.zeros(())
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        threshold = s["threshold"].clamp_min(0)  # relu(pre) > t  is  pre > max(t, 0)
    return ThresholdSAE(w_enc, b_enc, w_dec, b_dec, threshold.to(w_dec.dtype), b_pre, architecture=arch, **kw)


def load(folder: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
         k: int | None = None) -> Any:
    """The SAE in a dictionary_learning folder (TopKSAE for AutoEncoderTopK). Memory: the weights, once."""
    folder = Path(folder)
    trainer, dict_class = _trainer(folder)
    f, d = _shape_of(_state(folder, mmap=True), dict_class, folder / WEIGHTS)
    _check_cfg(trainer, f, d, folder / CFG)
    state = _read_state(folder, dict_class, f, d)
    if dict_class == "AutoEncoderTopK":
        return topk_sae(state["encoder.weight"], state["encoder.bias"], state["decoder.weight"].t(),
                        state["b_dec"], _k(trainer, state, k, folder / CFG), cfg={"trainer": trainer},
                        file=folder / CFG, dtype=dtype, device=device)
    if k is not None:
        raise CheckpointError(f"{folder / CFG}: k={k} was given but the SAE is a {dict_class}, not TopK")
    sae = _build(state, dict_class, dtype, device)
    sae.checkpoint_cfg = {"trainer": trainer}
    return sae


def write(sae: Any, folder: Path, extra: Mapping[str, Any]) -> None:
    """Write a TopKSAE as dictionary_learning's ``AutoEncoderTopK`` (``ae.pt`` + ``config.json``), which its
    ``AutoEncoderTopK.from_pretrained`` and ``utils.load_dictionary`` read."""
    num_latents, d_in = (int(s) for s in sae.W_dec.shape)
    state = {"k": torch.tensor(int(sae.k), dtype=torch.int), "threshold": torch.tensor(-1.0),
             "decoder.weight": sae.W_dec.detach().t().contiguous().cpu(),
             "encoder.weight": sae.W_enc.detach().cpu().clone(), "encoder.bias": sae.b_enc.detach().cpu().clone(),
             "b_dec": sae.b_dec.detach().cpu().clone()}
    atomic_write(folder / WEIGHTS, lambda fh: torch.save(state, fh))
    atomic_write_json(folder / CFG, {"trainer": {
        "trainer_class": "TopKTrainer", "dict_class": "AutoEncoderTopK", "activation_dim": d_in,
        "dict_size": num_latents, "k": int(sae.k), "sae_fast": dict(extra)}})
