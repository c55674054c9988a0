"""Saving and loading TopK SAEs: EleutherAI sparsify's layout (ours) and SAELens' (read and write).

sparsify layout (what :func:`save_sae` writes): a folder with

* ``sae.safetensors``: ``encoder.weight`` (F, d), ``encoder.bias`` (F,), ``W_dec`` (F, d), ``b_dec`` (d,);
* ``cfg.json``: sparsify's ``SparseCoderConfig`` fields (``activation``, ``expansion_factor``,
  ``normalize_decoder``, ``num_latents``, ``k``, ``multi_topk``, ``skip_connection``, ``transcode``) plus
  ``d_in``; our own facts (seed, tokens seen, ...) go under the extra key ``sae_fast``, which sparsify's
  loader ignores.

SAELens layout: ``sae_weights.safetensors`` with ``W_enc`` (d, F) (transposed), ``b_enc``, ``W_dec`` (F, d),
``b_dec``, and a ``cfg.json`` with ``d_in``, ``d_sae``, ``architecture`` and ``k`` (or, in older versions,
``activation_fn_kwargs.k``). :func:`load_sae` detects which layout a folder holds.

Every file is written atomically (temp file in the same folder, fsync, rename, fsync of the folder), so a
crash leaves the old file or the new one, never half of one. Our safetensors files carry a SHA-256 of
their tensors in the header metadata; a truncated, corrupt or inconsistent checkpoint raises
:class:`CheckpointError` saying what is wrong, and is never loaded silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from .runs import (
    CFG,
    DIGEST_KEY,
    SAELENS_WEIGHTS,
    SPARSIFY_WEIGHTS,
    CheckpointError,
    load_decoder,
    verify_safetensors,
)

__all__ = [
    "CheckpointError",
    "atomic_write",
    "atomic_write_json",
    "detect_format",
    "load_decoder",
    "load_sae",
    "read_cfg",
    "save_sae",
]


# ----------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames inside it are durable (best effort on filesystems without it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temp file in the same folder, then fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    return atomic_write(path, lambda f: f.write(data))


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (in sorted name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str],
                            metadata: Mapping[str, str] | None = None) -> Path:
    """Save ``tensors`` as safetensors at ``path`` atomically, with a SHA-256 of the tensors in the metadata."""
    from safetensors.torch import save

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {**(metadata or {}), DIGEST_KEY: tensors_digest(cpu)}
    data = save(cpu, metadata=meta)
    return atomic_write(path, lambda f: f.write(data))


def load_safetensors(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning truncation, corruption and checksum mismatch into CheckpointError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    verify_safetensors(path)  # header, size and the SHA-256 of its tensors where stored, streamed (O(4 MiB))
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {exc}") from exc
    return {k: v.to(device) for k, v in tensors.items()}


# ----------------------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------------------


def read_cfg(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``cfg.json`` of a checkpoint folder, as a dict (CheckpointError if missing or not JSON)."""
    file = Path(path) / CFG
    if not file.is_file():
        raise CheckpointError(f"{Path(path)} is not an SAE checkpoint: {CFG} is missing")
    try:
        cfg = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} is corrupt (not JSON): {exc}") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{file} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def detect_format(path: str | os.PathLike[str]) -> str:
    """'sparsify' (sae.safetensors) or 'saelens' (sae_weights.safetensors) for a checkpoint folder."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"SAE checkpoint folder {path} does not exist")
    if (path / SPARSIFY_WEIGHTS).is_file():
        return "sparsify"
    if (path / SAELENS_WEIGHTS).is_file():
        return "saelens"
    raise CheckpointError(f"{path} holds neither {SPARSIFY_WEIGHTS} (sparsify) nor {SAELENS_WEIGHTS} (SAELens)")


def _sparsify_cfg(d_in: int, num_latents: int, k: int, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "activation": "topk",
        "expansion_factor": max(1, num_latents // d_in),
        "normalize_decoder": True,
        "num_latents": num_latents,
        "k": k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": d_in,
        "sae_fast": dict(extra),
    }


def _saelens_cfg(d_in: int, num_latents: int, k: int, dtype: torch.dtype, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "architecture": "topk",
        "d_in": d_in,
        "d_sae": num_latents,
        "k": k,
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {},
        "sae_fast": dict(extra),
    }


def save_sae(sae: torch.nn.Module, path: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None,
             format: str = "sparsify") -> Path:
    """Save a :class:`~sae_fast.sae.TopKSAE` to the folder ``path`` (created) and return the folder.

    ``format='sparsify'`` (default) writes ``sae.safetensors`` + ``cfg.json`` that EleutherAI sparsify's
    ``SparseCoder.load_from_disk`` reads; ``format='saelens'`` writes SAELens' layout. ``metadata`` (JSON-able)
    is stored under ``cfg.json["sae_fast"]``. Weights are written first, then cfg.json, each atomically.
    """
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "k"):
        if not hasattr(sae, name):
            raise TypeError(f"sae must be a TopKSAE (with W_enc, b_enc, W_dec, b_dec, k); it lacks {name}")
    num_latents, d_in = (int(s) for s in sae.W_dec.shape)
    extra = json.loads(json.dumps(dict(metadata or {})))  # fails early if not JSON-able
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if format == "sparsify":
        tensors = {"encoder.weight": sae.W_enc, "encoder.bias": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
        atomic_save_safetensors(tensors, path / SPARSIFY_WEIGHTS, {"format": "pt"})
        atomic_write_json(path / CFG, _sparsify_cfg(d_in, num_latents, int(sae.k), extra))
    elif format == "saelens":
        tensors = {"W_enc": sae.W_enc.detach().t(), "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
        atomic_save_safetensors(tensors, path / SAELENS_WEIGHTS, {"format": "pt"})
        atomic_write_json(path / CFG, _saelens_cfg(d_in, num_latents, int(sae.k), sae.W_dec.dtype, extra))
    else:
        raise ValueError(f"format must be 'sparsify' or 'saelens', got {format!r}")
    return path


def _expect(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], file: Path) -> None:
    missing = [k for k in shapes if k not in tensors]
    if missing:
        raise CheckpointError(f"{file} lacks tensors {missing} (has {sorted(tensors)})")
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(f"{file}: {key} has shape {tuple(tensors[key].shape)}, cfg.json implies {shape}")
    for key in shapes:
        if not bool(torch.isfinite(tensors[key]).all()):
            raise CheckpointError(f"{file}: {key} holds NaN or inf values")


def _cfg_int(cfg: Mapping[str, Any], key: str, file: Path) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"{file}: {key} must be a positive int, got {value!r}")
    return value


def _saelens_k(cfg: Mapping[str, Any], k: int | None, file: Path) -> int:
    found = cfg.get("k")
    if found is None:
        found = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if found is None:
        if k is None:
            raise CheckpointError(f"{file} is not a TopK SAE (architecture {cfg.get('architecture')!r}, no k); "
                                  "pass k= to load it as one")
        return k
    return int(found)


def load_sae(path: str | os.PathLike[str], *, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None, k: int | None = None) -> Any:
    """Load a TopK SAE saved by sae_fast, EleutherAI sparsify or SAELens (detected) as a ``TopKSAE``.

    ``dtype`` defaults to the stored one. ``k`` is needed only for SAELens SAEs whose cfg has no k.
    SAELens SAEs saved with ``apply_b_dec_to_input=False`` are converted exactly (b_enc absorbs W_enc b_dec).
    Raises :class:`CheckpointError` for anything missing, truncated, corrupt or inconsistent.
    """
    from .sae import TopKSAE

    path = Path(path)
    kind = detect_format(path)
    cfg = read_cfg(path)
    cfg_file = path / CFG
    if kind == "sparsify":
        file = path / SPARSIFY_WEIGHTS
        d_in = _cfg_int(cfg, "d_in", cfg_file)
        tensors = load_safetensors(file)
        if "encoder.weight" not in tensors:
            raise CheckpointError(f"{file} lacks encoder.weight (has {sorted(tensors)})")
        num_latents = int(cfg.get("num_latents") or 0) or d_in * int(cfg.get("expansion_factor", 32))
        if cfg.get("activation", "topk") != "topk":
            raise CheckpointError(f"{cfg_file}: activation {cfg.get('activation')!r} is not supported (only topk)")
        if cfg.get("skip_connection") or cfg.get("transcode") or "W_skip" in tensors:
            raise CheckpointError(f"{cfg_file}: skip connections and transcoders are not supported")
        k_stored = _cfg_int(cfg, "k", cfg_file)
        _expect(tensors, {"encoder.weight": (num_latents, d_in), "encoder.bias": (num_latents,),
                          "W_dec": (num_latents, d_in), "b_dec": (d_in,)}, file)
        w_enc, b_enc = tensors["encoder.weight"], tensors["encoder.bias"]
        w_dec, b_dec = tensors["W_dec"], tensors["b_dec"]
    else:
        file = path / SAELENS_WEIGHTS
        d_in = _cfg_int(cfg, "d_in", cfg_file)
        num_latents = _cfg_int(cfg, "d_sae", cfg_file)
        k_stored = _saelens_k(cfg, k, cfg_file)
        if cfg.get("normalize_activations", "none") not in ("none", None):
            raise CheckpointError(f"{cfg_file}: normalize_activations={cfg['normalize_activations']!r} is not "
                                  "supported (fold the scaling into the weights first)")
        tensors = load_safetensors(file)
        _expect(tensors, {"W_enc": (d_in, num_latents), "b_enc": (num_latents,), "W_dec": (num_latents, d_in),
                          "b_dec": (d_in,)}, file)
        w_enc, b_enc = tensors["W_enc"].t().contiguous(), tensors["b_enc"]
        w_dec, b_dec = tensors["W_dec"], tensors["b_dec"]
        if cfg.get("apply_b_dec_to_input", True) is False:  # encoder sees x, not x - b_dec
            b_enc = (b_enc.double() + w_enc.double() @ b_dec.double()).to(b_enc.dtype)
    if k is not None and k != k_stored and kind == "sparsify":
        warnings.warn(f"{path}: using k={k} instead of the stored k={k_stored}", stacklevel=2)
        k_stored = k
    if not 0 < k_stored <= num_latents:
        raise CheckpointError(f"{cfg_file}: k={k_stored} must be in 1..{num_latents}")
    dtype = dtype or w_dec.dtype
    sae = TopKSAE(d_in, num_latents, k_stored, dtype=dtype, device=device, seed=0)
    with torch.no_grad():
        for name, value in (("W_enc", w_enc), ("b_enc", b_enc), ("W_dec", w_dec), ("b_dec", b_dec)):
            getattr(sae, name).copy_(value.to(dtype))
    sae.checkpoint_cfg = cfg  # type: ignore[attr-defined]  # the raw cfg.json, for callers who want seed etc.
    return sae
