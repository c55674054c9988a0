"""Saving and loading SAEs: atomic writes, checksummed safetensors, and :func:`load_sae` / :func:`save_sae`.

:func:`load_sae` detects the folder's format and hands it to :mod:`sae_fast.formats`: EleutherAI sparsify
(``sae.safetensors`` + ``cfg.json``, the layout sae_fast trains into), SAELens (``sae_weights.safetensors`` +
``cfg.json``) or dictionary_learning (``ae.pt`` + ``config.json``), every architecture those save (TopK loads
as a ``TopKSAE``; ReLU, JumpReLU, gated, BatchTopK and Matryoshka as the modules of
:mod:`sae_fast.formats.architectures`). :func:`save_sae` writes a TopK SAE in any of the three; our own
facts (seed, tokens seen, ...) go under the config's extra key ``sae_fast``, which the other tools ignore.
Each format's fields and tensors are described in its module of :mod:`sae_fast.formats`.

Every file is written atomically (temp file in the same folder, fsync, rename, fsync of the folder), so a
crash leaves the old file or the new one, never half of one. Our safetensors files carry a SHA-256 of
their tensors in the header metadata; a truncated, corrupt or inconsistent checkpoint raises
:class:`CheckpointError` saying what is wrong, and is never loaded silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .errors import DataError

SPARSIFY_WEIGHTS = "sae.safetensors"
SAELENS_WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"
_DIGEST_KEY = "sae_fast.sha256"
_SAFETENSORS_DTYPES: dict[str, tuple[Any, torch.dtype | None]] = {
    "F32": (np.float32, None), "F16": (np.float16, None), "BF16": (np.uint16, torch.bfloat16),
    "F64": (np.float64, None),
}

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


class CheckpointError(DataError):
    """A checkpoint is missing, truncated, corrupt or inconsistent with its config (a DataError, so a ValueError)."""


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
    meta = {**(metadata or {}), _DIGEST_KEY: tensors_digest(cpu)}
    data = save(cpu, metadata=meta)
    return atomic_write(path, lambda f: f.write(data))


def load_safetensors(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning truncation, corruption and checksum mismatch into CheckpointError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    _check_safetensors_size(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {exc}") from exc
    expected = metadata.get(_DIGEST_KEY)
    if expected is not None and tensors_digest(tensors) != expected:
        raise CheckpointError(f"checkpoint file {path} is corrupt: its tensors do not match the SHA-256 in its header")
    return {k: v.to(device) for k, v in tensors.items()}


def _read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its data begins."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"checkpoint file {path} is truncated ({size} bytes, no safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"checkpoint file {path} is truncated: header says {n} bytes, file has {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"checkpoint file {path} has a corrupt safetensors header: {exc}") from exc
    return header, 8 + n


def _check_safetensors_size(path: Path) -> None:
    header, start = _read_safetensors_header(path)
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    needed = start + max(ends, default=0)
    size = path.stat().st_size
    if size < needed:
        raise CheckpointError(f"checkpoint file {path} is truncated: {size} bytes, its header needs {needed}")


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
    """'sparsify', 'saelens' or 'dictionary_learning': the format of the SAE in a checkpoint folder."""
    from . import formats  # imported here: the format readers import this module

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"SAE checkpoint folder {path} does not exist")
    name = formats.detect(path)
    if name is None:
        raise CheckpointError(f"{path} holds neither {SPARSIFY_WEIGHTS} (sparsify), {SAELENS_WEIGHTS} (SAELens) "
                              "nor ae.pt (dictionary_learning)")
    return name


def save_sae(sae: torch.nn.Module, path: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None,
             format: str = "sparsify") -> Path:
    """Save an SAE to the folder ``path`` (created) and return the folder.

    ``format='sparsify'`` (default) writes ``sae.safetensors`` + ``cfg.json`` that EleutherAI sparsify's
    ``SparseCoder.load_from_disk`` reads; ``'saelens'`` writes SAELens' ``topk`` layout
    (``SAE.load_from_disk``); ``'dictionary_learning'`` writes ``ae.pt`` + ``config.json`` as its
    ``AutoEncoderTopK``. The other architectures (ThresholdSAE, GatedSAE) are written as SAELens' ``standard``,
    ``jumprelu`` or ``gated``. ``metadata`` (JSON-able) is stored under the config's ``sae_fast`` key. Weights are
    written first, then the config, each atomically.
    """
    from . import formats  # imported here: the format readers import this module

    if format not in formats.FORMATS:
        raise ValueError(f"format must be one of {sorted(formats.FORMATS)}, got {format!r}")
    other = isinstance(sae, (formats.ThresholdSAE, formats.GatedSAE))
    if other and format != "saelens":
        raise ValueError(f"a {sae.architecture!r} SAE is written in format='saelens' only, not {format!r}")
    for name in ("W_enc", "W_dec", "b_dec") if other else ("W_enc", "b_enc", "W_dec", "b_dec", "k"):
        if not hasattr(sae, name):
            raise TypeError(f"sae must be a TopKSAE (with W_enc, b_enc, W_dec, b_dec, k); it lacks {name}")
    extra = json.loads(json.dumps(dict(metadata or {})))  # fails early if not JSON-able
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    formats.FORMATS[format].write(sae, path, extra)
    return path


def load_sae(path: str | os.PathLike[str], *, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None, k: int | None = None) -> Any:
    """Load the SAE in a folder saved by sae_fast, sparsify, SAELens or dictionary_learning (detected).

    TopK SAEs load as a ``TopKSAE`` (sae_fast's kernels); other architectures (ReLU, JumpReLU, gated,
    BatchTopK and Matryoshka at inference) as modules of :mod:`sae_fast.formats.architectures`; all satisfy
    :class:`sae_fast.formats.SparseCoder`. ``dtype`` defaults to the stored one. ``k`` is needed only for
    SAELens TopK SAEs whose cfg has no k (for sparsify it overrides the stored k, with a warning).
    Raises :class:`CheckpointError` (a DataError) naming the file, field and expectation for anything
    missing, truncated, corrupt, unknown, or a config that contradicts its weights.
    """
    from . import formats  # imported here: the format readers import this module

    detect_format(path)
    return formats.load(path, device=device, dtype=dtype, k=k)


def load_decoder(path: str | os.PathLike[str]) -> torch.Tensor:
    """The decoder W_dec (F, d) of a checkpoint folder (either layout), memory-mapped and read-only.

    Nothing is read into memory until used, so dozens of large decoders can be opened at once for matching.
    The returned tensor shares memory with the file: do not write to it.
    """
    path = Path(path)
    kind = detect_format(path)
    file = path / (SPARSIFY_WEIGHTS if kind == "sparsify" else SAELENS_WEIGHTS)
    header, start = _read_safetensors_header(file)
    _check_safetensors_size(file)
    entry = header.get("W_dec")
    if entry is None:
        raise CheckpointError(f"{file} has no W_dec tensor")
    np_dtype, torch_view = _SAFETENSORS_DTYPES.get(entry["dtype"], (None, None))
    if np_dtype is None:
        raise CheckpointError(f"{file}: W_dec has unsupported dtype {entry['dtype']}")
    shape = tuple(int(s) for s in entry["shape"])
    if len(shape) != 2:
        raise CheckpointError(f"{file}: W_dec must be 2-D (F, d), got shape {shape}")
    begin, end = (int(o) for o in entry["data_offsets"])
    if end - begin != int(np.prod(shape)) * np.dtype(np_dtype).itemsize:
        raise CheckpointError(f"{file}: W_dec's byte range does not match its shape {shape}")
    array = np.memmap(file, dtype=np_dtype, mode="r", offset=start + begin, shape=shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that the array is not writable
        tensor = torch.from_numpy(array)
    return tensor.view(torch_view) if torch_view is not None else tensor
