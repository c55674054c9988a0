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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

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
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {**(metadata or {}), DIGEST_KEY: tensors_digest(cpu)}
    data = safetensors_bytes(cpu, metadata=meta)
    return atomic_write(path, lambda f: f.write(data))


def load_safetensors(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning truncation, corruption and checksum mismatch into CheckpointError."""
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
    from .formats.files import read_json  # imported here: the format readers import this module

    file = Path(path) / CFG
    if not file.is_file():
        raise CheckpointError(f"{Path(path)} is not an SAE checkpoint: {CFG} is missing")
    return read_json(file)


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
