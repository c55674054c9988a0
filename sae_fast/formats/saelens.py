"""SAELens 6.x folders: ``cfg.json`` + ``sae_weights.safetensors``, every architecture it saves for inference.

Weights: ``W_enc`` (d, F) (transposed), ``W_dec`` (F, d), ``b_dec`` (d,), and per architecture ``b_enc`` (F,)
(topk, standard), ``b_enc`` + ``threshold`` (F,) (jumprelu; BatchTopK and Matryoshka BatchTopK are saved as
jumprelu by ``save_inference_model``), ``b_gate``, ``b_mag``, ``r_mag`` (F,) (gated). cfg.json fields read:
``architecture``, ``d_in``, ``d_sae``, ``k``, ``rescale_acts_by_decoder_norm``, ``apply_b_dec_to_input``,
``normalize_activations``, ``reshape_activations`` (and SAELens < 6's ``activation_fn_str``/``activation_fn_kwargs``).

* ``rescale_acts_by_decoder_norm``: the decoder norms are folded into the encoder (exact up to rounding).
* ``apply_b_dec_to_input=False``: the encoder sees x itself (``b_pre`` = 0; TopK folds W_enc b_dec into b_enc).
* ``normalize_activations='expected_average_only_in'``: the scaling factor in the folder's
  ``activation_scaler.json`` (a SAELens training checkpoint) is folded in as SAELens'
  ``fold_activation_norm_scaling_factor`` does; without one the SAE is refused, as are ``constant_norm_rescale``,
  ``layer_norm``, ``covariance_whitening`` and ``reshape_activations='hook_z'`` (only the decoder is read then).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_json,
    load_safetensors,
)
from .architectures import GatedSAE, ThresholdSAE
from .build import fold_decoder_norms, topk_sae
from .files import check_tensors, memmap_decoder, positive_int, read_json

WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"
SCALER = "activation_scaler.json"
NAME = "saelens"
# SAELens architecture -> ours; the last two are training checkpoints (only their decoder is read).
ARCHITECTURES = {"topk": "topk", "standard": "relu", "jumprelu": "jumprelu", "gated": "gated",
                 "batchtopk": "batchtopk", "matryoshka_batchtopk": "matryoshka_batchtopk"}
_INFERENCE = ("topk", "relu", "jumprelu", "gated")

__all__ = ["ARCHITECTURES", "describe", "detect", "load", "read_decoder", "write"]


def detect(folder: str | Path) -> str | None:
    """``'saelens'`` if ``folder`` holds ``sae_weights.safetensors``, else None."""
    return NAME if (Path(folder) / WEIGHTS).is_file() else None


def _architecture(cfg: Mapping[str, Any], file: Path) -> str:
    arch = cfg.get("architecture", "standard")
    old_fn = cfg.get("activation_fn_str", cfg.get("activation_fn"))
    if arch == "standard" and old_fn == "topk":
        return "topk"  # SAELens < 6 stored TopK as standard + activation_fn topk
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{file}: field 'architecture' is {arch!r}; sae_fast reads SAELens architectures "
                              f"{sorted(ARCHITECTURES)} (transcoders and other kinds are not SAEs of one space)")
    if arch == "standard" and old_fn not in (None, "relu"):
        raise CheckpointError(f"{file}: field 'activation_fn' is {old_fn!r}; a standard SAE must use relu")
    return ARCHITECTURES[arch]


def describe(folder: str | Path) -> tuple[str, int, int]:
    """(architecture, F, d) from ``cfg.json`` alone (cheap)."""
    file = Path(folder) / CFG
    cfg = read_json(file)
    return _architecture(cfg, file), positive_int(cfg, "d_sae", file), positive_int(cfg, "d_in", file)


def read_decoder(folder: str | Path) -> Tensor:
    """W_dec (F, d), memory-mapped and read-only, checked against cfg.json's d_sae and d_in. Memory: O(1)."""
    folder = Path(folder)
    _, f, d = describe(folder)
    return memmap_decoder(folder / WEIGHTS, (f, d), folder / CFG, f"(d_sae={f}, d_in={d}) ")


def _k(cfg: Mapping[str, Any], k: int | None, file: Path) -> int:
    found = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if found is None:
        if k is None:
            raise CheckpointError(f"{file}: a TopK SAE without field 'k'; pass k= to load it")
        return k
    if not isinstance(found, int) or isinstance(found, bool) or found <= 0:
        raise CheckpointError(f"{file}: field 'k' must be a positive int, got {found!r}")
    return found


def _scaling_factor(folder: Path, cfg: Mapping[str, Any], file: Path) -> float | None:
    """The factor the weights expect activations to be multiplied by, or None for none."""
    mode = cfg.get("normalize_activations", "none")
    if mode in ("none", None, False):
        return None
    if mode not in ("expected_average_only_in", True):
        raise CheckpointError(f"{file}: field 'normalize_activations' is {mode!r}; sae_fast reads 'none' and "
                              "'expected_average_only_in' (fold the normalisation into the weights first)")
    scaler = folder / SCALER
    factor = read_json(scaler).get("scaling_factor") if scaler.is_file() else None
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor > 0:
        raise CheckpointError(
            f"{file}: field 'normalize_activations' is {mode!r}, so the weights expect activations multiplied "
            f"by a factor, but {scaler} records no positive 'scaling_factor'; fold it in with SAELens' "
            "sae.fold_activation_norm_scaling_factor(factor) and save again")
    return float(factor)


def _shapes(arch: str, f: int, d: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"W_enc": (d, f), "W_dec": (f, d), "b_dec": (d,)}
    if arch == "gated":
        return {**shapes, "b_gate": (f,), "b_mag": (f,), "r_mag": (f,)}
    shapes["b_enc"] = (f,)
    return {**shapes, "threshold": (f,)} if arch == "jumprelu" else shapes


def _read_weights(folder: Path, cfg: Mapping[str, Any], arch: str, f: int, d: int) -> dict[str, Tensor]:
    file, what = folder / WEIGHTS, f"{folder / CFG}'s architecture {cfg.get('architecture', 'standard')!r}"
    tensors = load_safetensors(file)
    if arch == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()  # a JumpReLU training checkpoint
    check_tensors(tensors, _shapes(arch, f, d), file, what=what)
    factor = _scaling_factor(folder, cfg, folder / CFG)
    if factor is not None:  # SAELens' fold_activation_norm_scaling_factor
        tensors["W_enc"] = tensors["W_enc"] * factor
        tensors["W_dec"], tensors["b_dec"] = tensors["W_dec"] / factor, tensors["b_dec"] / factor
    return tensors


def _check_loadable(cfg: Mapping[str, Any], arch: str, file: Path) -> None:
    if arch not in _INFERENCE:
        raise CheckpointError(f"{file}: architecture {cfg.get('architecture')!r} is a SAELens training "
                              "checkpoint; save it with save_inference_model (a jumprelu SAE) to load it")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise CheckpointError(f"{file}: field 'reshape_activations' is {cfg['reshape_activations']!r}; "
                              "sae_fast encodes flat activations only ('none')")
    if cfg.get("finetuning_scaling_factor"):
        raise CheckpointError(f"{file}: field 'finetuning_scaling_factor' is set; fold it into W_dec first")


def load(folder: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
         k: int | None = None) -> Any:
    """The SAE in a SAELens folder: a TopKSAE for topk, else a ThresholdSAE or GatedSAE.

    ``k`` is used only for a TopK SAE whose cfg has none. Memory: the weights, once (plus a float64 copy of
    W_enc while decoder norms are folded).
    """
    folder = Path(folder)
    cfg_file = folder / CFG
    cfg = read_json(cfg_file)
    arch, f, d = describe(folder)
    _check_loadable(cfg, arch, cfg_file)
    if k is not None and arch != "topk":
        raise CheckpointError(f"{cfg_file}: k={k} was given but the SAE is {arch!r}, not TopK")
    t = _read_weights(folder, cfg, arch, f, d)
    w_enc, w_dec, b_dec = t["W_enc"].t(), t["W_dec"], t["b_dec"]
    applies_b_dec = cfg.get("apply_b_dec_to_input", True) is not False
    b_pre = b_dec if applies_b_dec else torch.zeros_like(b_dec)
    if arch == "gated":
        sae: Any = GatedSAE(w_enc, t["b_gate"], t["b_mag"], t["r_mag"], w_dec, b_dec, b_pre, dtype=dtype,
                            device=device)
    elif arch == "topk":
        b_enc = t["b_enc"]
        if cfg.get("rescale_acts_by_decoder_norm", False):
            w_enc, b_enc, w_dec = fold_decoder_norms(w_enc, b_enc, w_dec)
        if not applies_b_dec:  # TopKSAE always subtracts b_dec: b_enc absorbs W_enc b_dec
            b_enc = (b_enc.double() + w_enc.double() @ b_dec.double()).to(b_enc.dtype)
        return topk_sae(w_enc, b_enc, w_dec, b_dec, _k(cfg, k, cfg_file), cfg=cfg, file=cfg_file, dtype=dtype,
                        device=device)
    else:
        threshold = t["threshold"] if arch == "jumprelu" else torch.zeros(f, dtype=w_dec.dtype)
        sae = ThresholdSAE(w_enc, t["b_enc"], w_dec, b_dec, threshold, b_pre, architecture=arch, dtype=dtype,
                           device=device)
    sae.checkpoint_cfg = cfg
    return sae


def _inference_tensors(sae: Any) -> tuple[str, dict[str, Tensor]]:
    """SAELens' architecture name and tensors for a ThresholdSAE or GatedSAE."""
    if isinstance(sae, GatedSAE):
        return "gated", {"W_enc": sae.W_enc.detach().t(), "b_gate": sae.b_gate, "b_mag": sae.b_mag,
                         "r_mag": sae.r_mag, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    tensors = {"W_enc": sae.W_enc.detach().t(), "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.architecture == "relu":
        return "standard", tensors
    return "jumprelu", {**tensors, "threshold": sae.threshold}


def _applies_b_dec(sae: Any) -> bool:
    if torch.equal(sae.b_pre, sae.b_dec):
        return True
    if not bool(sae.b_pre.any()):
        return False
    raise ValueError("SAELens subtracts either b_dec or nothing from the input; this SAE's b_pre is neither")


def write(sae: Any, folder: Path, extra: Mapping[str, Any]) -> None:
    """Write an SAE as SAELens does for inference (``SAE.load_from_disk`` reads it back with the same
    outputs): a TopKSAE as ``topk``; a ThresholdSAE as ``standard`` (relu) or ``jumprelu`` (the others,
    BatchTopK-style thresholds included); a GatedSAE as ``gated``."""
    num_latents, d_in = (int(s) for s in sae.W_dec.shape)
    cfg: dict[str, Any] = {"d_in": d_in, "d_sae": num_latents}
    if isinstance(sae, (ThresholdSAE, GatedSAE)):
        cfg["architecture"], tensors = _inference_tensors(sae)
        cfg["apply_b_dec_to_input"] = _applies_b_dec(sae)
    else:
        tensors = {"W_enc": sae.W_enc.detach().t(), "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
        cfg.update(architecture="topk", k=int(sae.k), rescale_acts_by_decoder_norm=False, apply_b_dec_to_input=True)
    atomic_save_safetensors(tensors, folder / WEIGHTS, {"format": "pt"})
    atomic_write_json(folder / CFG, {
        **cfg, "dtype": str(sae.W_dec.dtype).removeprefix("torch."), "device": "cpu",
        "normalize_activations": "none", "reshape_activations": "none", "metadata": {}, "sae_fast": dict(extra)})
