"""Saved SAEs on disk: the one place that finds them under a folder and reads their decoders, verified.

Layouts found by :func:`find_saved_saes` (any depth, symbolic links to folders followed):

* sae_fast / EleutherAI sparsify: ``<root>/seed<N>/sae.safetensors`` (+ ``cfg.json``), or one folder per
  hookpoint ``<root>/<hook>/sae.safetensors``, or ``<root>/seed<N>/<hook>/`` and ``<root>/<hook>/seed<N>/``;
* SAELens: a folder holding ``sae_weights.safetensors`` (+ ``cfg.json``);
* any format added with :func:`register_format` (checked before the built-in ones).

:func:`load_decoder` reads the decoder ``W_dec`` (F, d) memory-mapped (safetensors or ``.npy``) and validates
it: a 2-D floating-point matrix with finite entries. Where a safetensors file carries the SHA-256 of its
tensors (``sae_fast.sha256`` in its header, written by :func:`sae_fast.checkpoint.atomic_save_safetensors`),
the file is streamed once and its tensors checked against it; a changed weight, a truncated file or a file
that is not safetensors raises :class:`~sae_fast.errors.DataError` naming the file. :func:`decoder_identity`
is what identifies a decoder file for reuse (the verified embedded digest, else the SHA-256 of the file).

Memory: finding is O(folders under the root); reading a decoder maps the file (no copy); verifying and hashing
stream the file in 4 MiB pieces (O(1) memory); the finiteness check reads row blocks of at most 2^22 entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .provenance import HASH_CHUNK, sha256_file

SPARSIFY_WEIGHTS = "sae.safetensors"
SAELENS_WEIGHTS = "sae_weights.safetensors"
DICTIONARY_LEARNING_WEIGHTS = "ae.pt"  # beside its config.json; the decoder is stored (d, F)
BUILTIN_FORMATS = ("sparsify", "saelens", "dictionary_learning")
CFG = "cfg.json"
DECODER_KEY = "W_dec"
DIGEST_KEY = "sae_fast.sha256"  # SHA-256 of a file's tensors, in its safetensors header metadata
FINITE_BLOCK = 1 << 22  # entries per block of the finiteness check

# safetensors dtype code -> (numpy dtype to map the bytes as, torch dtype they hold)
SAFETENSORS_DTYPES: dict[str, tuple[Any, torch.dtype]] = {
    "F64": (np.float64, torch.float64), "F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16),
    "BF16": (np.uint16, torch.bfloat16), "I64": (np.int64, torch.int64), "I32": (np.int32, torch.int32),
    "I16": (np.int16, torch.int16), "I8": (np.int8, torch.int8), "U8": (np.uint8, torch.uint8),
    "BOOL": (np.bool_, torch.bool),
}
FLOAT_CODES = ("F64", "F32", "F16", "BF16")


class CheckpointError(DataError):
    """A saved SAE or checkpoint file that is missing, truncated, corrupt or inconsistent (exit 1)."""


class MissingInputError(CheckpointError, FileNotFoundError):
    """A saved SAE, decoder file or run folder that does not exist (also a FileNotFoundError)."""


# ----------------------------------------------------------------------------------------------------------
# formats


@dataclass(frozen=True)
class SaeFormat:
    """A way an SAE is saved: ``detect(file)`` says whether a file is this format's weights file,
    ``read_decoder(file)`` returns its decoder (F, d) (memory-mapped where the format allows)."""

    name: str
    detect: Callable[[Path], bool]
    read_decoder: Callable[[Path], torch.Tensor]


_FORMATS: list[SaeFormat] = []


def register_format(name: str, detect: Callable[[Path], bool],
                    read_decoder: Callable[[Path], torch.Tensor]) -> None:
    """Add (or replace) a saved-SAE format; registered formats are tried before the built-in ones, newest
    first. ``detect`` gets a file path and must be cheap (a name or header check); ``read_decoder`` gets the
    file ``detect`` accepted and returns its decoder (F, d) — reading the file itself (e.g. with
    :func:`memmap_safetensors`), not through :func:`load_decoder`, which dispatches to it."""
    _FORMATS[:] = [f for f in _FORMATS if f.name != name]
    _FORMATS.insert(0, SaeFormat(name, detect, read_decoder))


def unregister_format(name: str) -> None:
    """Remove a registered format (the built-in 'sparsify' and 'saelens' stay)."""
    if name in BUILTIN_FORMATS:
        raise ValueError(f"the built-in format {name!r} cannot be removed")
    _FORMATS[:] = [f for f in _FORMATS if f.name != name]


def formats() -> list[SaeFormat]:
    """The known formats in the order they are tried."""
    return list(_FORMATS)


def format_of(file: Path) -> SaeFormat | None:
    """The first format whose ``detect`` accepts ``file``, or None."""
    return next((f for f in _FORMATS if f.detect(file)), None)


def weights_file(path: str | os.PathLike[str]) -> Path:
    """The weights file of an SAE folder (the first file a format accepts; sparsify before SAELens), or
    ``path`` itself when it is a file. DataError if there is none."""
    p = Path(path)
    if p.is_dir():
        files = sorted(c for c in p.iterdir() if c.is_file())
        for fmt in _FORMATS:
            hit = next((c for c in files if fmt.detect(c)), None)
            if hit is not None:
                return hit
        raise CheckpointError(f"{p} holds no saved SAE ({SPARSIFY_WEIGHTS}, {SAELENS_WEIGHTS}, "
                              f"{DICTIONARY_LEARNING_WEIGHTS} + config.json, or a registered format)")
    if not p.is_file():
        raise MissingInputError(f"decoder file {p} does not exist")
    return p


# ----------------------------------------------------------------------------------------------------------
# finding saved SAEs


def natural_key(text: str) -> list[Any]:
    """Sort key putting seed2 before seed10."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


def _walk(base: Path) -> list[tuple[Path, Path]]:
    """(folder relative to base, weights file) for every non-hidden folder holding a saved SAE, not looking
    below one; symbolic links to folders are followed, each real folder visited once (a link cycle ends there)."""
    seen: set[tuple[int, int]] = set()
    found = []
    for top, dirs, files in os.walk(base, followlinks=True):
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(top).relative_to(base)
        if not rel.parts:
            continue
        for fmt in _FORMATS:
            hit = next((Path(top) / f for f in sorted(files) if fmt.detect(Path(top) / f)), None)
            if hit is not None:
                found.append((rel, hit))
                dirs[:] = []  # anything below (a trainer's checkpoints/) is deeper, so never counted
                break
    return found


_SEED_PART = re.compile(r"^seed[_-]?\d+$", re.IGNORECASE)


def _hook_of(rel: Path) -> str:
    """The hookpoint part of a seed folder's relative path: '' for one level; the parts that are not
    ``seed<N>`` for deeper ones (``seed3/layers.4`` and ``layers.4/seed3`` give 'layers.4'); else the last part."""
    if len(rel.parts) == 1:
        return ""
    rest = [p for p in rel.parts if not _SEED_PART.match(p)]
    if len(rest) < len(rel.parts):
        return "/".join(rest)
    return rel.parts[-1]


def find_saved_saes(root: str | os.PathLike[str], hookpoint: str | None = None) -> list[tuple[str, Path]]:
    """Folders under ``root`` holding a saved SAE, as (name relative to root, weights file), in natural order.

    Only the shallowest such folders count (a trainer's ``checkpoints/step_*/seed*`` below ``seed*/`` are
    ignored), hidden folders are skipped and symbolic links to folders are followed. With several hookpoints
    (``seed<N>/<hook>/`` or ``<hook>/seed<N>/``) pass ``hookpoint``. DataError when nothing is found.
    """
    base = Path(root)
    if not base.is_dir():
        if base.exists():
            raise DataError(f"decoders directory {base} is a file, not a folder of saved SAEs")
        raise MissingInputError(f"decoders directory {base} does not exist")
    found = _walk(base)
    if found:  # the shallowest level only
        depth = min(len(rel.parts) for rel, _ in found)
        found = [(rel, f) for rel, f in found if len(rel.parts) == depth]
    items = sorted(((rel, f) for rel, f in found), key=lambda x: natural_key(x[0].as_posix()))
    hooks = sorted({_hook_of(rel) for rel, _ in items})
    if hookpoint is not None:
        items = [(rel, f) for rel, f in items if _hook_of(rel) == hookpoint]
    elif len(hooks) > 1:
        raise DataError(f"{base} holds SAEs for several hookpoints {hooks}; pass hookpoint=")
    if not items:
        raise DataError(f"no saved SAEs ({SPARSIFY_WEIGHTS} or {SAELENS_WEIGHTS}) under {base}"
                        + (f" for hookpoint {hookpoint!r}" if hookpoint else ""))
    return [(rel.as_posix(), f) for rel, f in items]


# ----------------------------------------------------------------------------------------------------------
# safetensors: header, verification, decoder


def read_safetensors_header(file: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the offset where its data begins; DataError naming the file
    when it is truncated or not a safetensors file."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{file} is truncated or not a safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"{file} is truncated or not a safetensors file: its header claims {n} bytes, "
                            f"the file has {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{file} is not a safetensors file (its header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{file} is not a safetensors file (its header is not a JSON object)")
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    try:
        needed = 8 + n + max((int(v["data_offsets"][1]) for v in entries.values()), default=0)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{file} has a corrupt safetensors header ({exc!r})") from exc
    if size < needed:
        raise CheckpointError(f"{file} is truncated: {size} bytes, its header needs {needed}")
    return header, 8 + n


def _stream(f: Any, begin: int, end: int, update: Callable[[bytes], None], chunk: int = HASH_CHUNK) -> None:
    f.seek(begin)
    left = end - begin
    while left > 0:
        block = f.read(min(chunk, left))
        if not block:
            raise CheckpointError(f"{f.name} ended early")
        update(block)
        left -= len(block)


def verify_safetensors(file: Path) -> str | None:
    """Checks a safetensors file's tensors against the SHA-256 in its header (streamed, O(1) memory) and
    returns that digest; None when the file carries none. DataError naming the file on a mismatch.

    The digest is :func:`sae_fast.checkpoint.tensors_digest`: over each tensor in name order, its name, torch
    dtype, shape and bytes."""
    header, start = read_safetensors_header(file)
    expected = (header.get("__metadata__") or {}).get(DIGEST_KEY)
    if expected is None:
        return None
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for name in sorted(k for k in header if k != "__metadata__"):
            entry = header[name]
            code = entry.get("dtype")
            if code not in SAFETENSORS_DTYPES:
                raise CheckpointError(f"{file}: tensor {name} has dtype {code!r}, which cannot be verified")
            shape = tuple(int(s) for s in entry["shape"])
            h.update(f"{name}|{SAFETENSORS_DTYPES[code][1]}|{shape}|".encode())
            begin, end = (int(o) for o in entry["data_offsets"])
            _stream(f, start + begin, start + end, h.update)
    if h.hexdigest() != expected:
        raise CheckpointError(f"{file} is corrupt: its tensors do not match the SHA-256 in its header "
                        "(a weight was changed after it was saved)")
    return expected


def decoder_identity(path: str | os.PathLike[str]) -> str:
    """What identifies a saved decoder: the verified embedded tensor digest of a safetensors file that has
    one (``tensors:<sha256>``), else the SHA-256 of the whole file (``file:<sha256>``). Streams the file once."""
    file = weights_file(path)
    if file.suffix == ".safetensors":
        digest = verify_safetensors(file)
        if digest is not None:
            return f"tensors:{digest}"
    return f"file:{sha256_file(file)}"


def memmap_safetensors(file: Path, key: str) -> torch.Tensor:
    """Tensor ``key`` (a 2-D floating-point matrix) of a safetensors file, memory-mapped read-only, shape and
    dtype checked, not verified. What a registered format's ``read_decoder`` can use for safetensors files
    (it must not call :func:`load_decoder`, which dispatches back to it)."""
    header, start = read_safetensors_header(file)
    entry = header.get(key)
    if entry is None or key == "__metadata__":
        raise CheckpointError(f"{file} has no tensor {key!r} (has {sorted(k for k in header if k != '__metadata__')})")
    code = entry.get("dtype")
    if code not in FLOAT_CODES:
        raise CheckpointError(f"{file}: {key} has dtype {code!r}; expected a floating-point decoder {FLOAT_CODES}")
    np_dtype, torch_dtype = SAFETENSORS_DTYPES[code]
    shape = tuple(int(s) for s in entry["shape"])
    if len(shape) != 2:
        raise CheckpointError(f"{file}: {key} must be a 2-D matrix (F, d), got shape {shape}")
    begin, end = (int(o) for o in entry["data_offsets"])
    if end - begin != int(np.prod(shape)) * np.dtype(np_dtype).itemsize:
        raise CheckpointError(f"{file}: {key}'s byte range does not match its shape {shape}")
    if 0 in shape:
        return torch.empty(shape, dtype=torch_dtype)
    array = np.memmap(file, dtype=np_dtype, mode="r", offset=start + begin, shape=shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that the array is not writable
        tensor = torch.from_numpy(array)
    return tensor.view(torch_dtype) if np_dtype is np.uint16 else tensor


def _memmap_npy(file: Path) -> torch.Tensor:
    try:
        array = np.load(file, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{file} is not a readable .npy file: {exc}") from exc
    if array.ndim != 2 or array.dtype.kind != "f":
        raise CheckpointError(f"{file} must hold a 2-D floating-point matrix (F, d), got shape {array.shape} "
                        f"dtype {array.dtype}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def check_finite(decoder: torch.Tensor, where: str | os.PathLike[str]) -> None:
    """DataError naming ``where`` and the first bad row when ``decoder`` (F, d) holds NaN or inf; reads row
    blocks of at most ``FINITE_BLOCK`` entries (memory-mapped decoders are not copied whole)."""
    rows = max(1, FINITE_BLOCK // max(1, decoder.shape[1]))
    for r0 in range(0, decoder.shape[0], rows):
        bad = ~torch.isfinite(decoder[r0:r0 + rows]).all(dim=1)
        if bool(bad.any()):
            first = r0 + int(bad.nonzero()[0, 0])
            raise CheckpointError(f"{where}: the decoder holds NaN or inf values (first in row {first})")


def read_decoder(file: Path, key: str = DECODER_KEY) -> torch.Tensor:
    """The decoder (F, d) of a weights file, memory-mapped where possible, without verification."""
    if file.suffix == ".npy":
        return _memmap_npy(file)
    if file.suffix == ".safetensors" and (key != DECODER_KEY or format_of(file) is None):
        return memmap_safetensors(file, key)
    fmt = format_of(file)
    if fmt is None:
        raise CheckpointError(f"{file}: expected an SAE folder, a .safetensors file (tensor {key!r}) or a .npy file")
    dec = fmt.read_decoder(file)
    if dec.ndim != 2 or not dec.is_floating_point():
        raise CheckpointError(f"{file}: the decoder must be a 2-D floating-point matrix (F, d), got shape "
                        f"{tuple(dec.shape)} dtype {dec.dtype}")
    return dec


def load_decoder(path: str | os.PathLike[str], key: str = DECODER_KEY, *, verify: bool = True) -> torch.Tensor:
    """One decoder matrix (F, d), memory-mapped and read-only (do not write to it), validated.

    ``path``: a saved-SAE folder (any known format), a ``.safetensors`` file (tensor ``key``) or a ``.npy``
    file. With ``verify`` a safetensors file carrying a SHA-256 of its tensors is checked against it first
    (streamed). DataError naming the file for anything missing, truncated, corrupt, not 2-D, not floating
    point or not finite. Memory: the mapping, plus O(4 MiB) for verifying and O(2^22) entries for the
    finiteness check.
    """
    file = weights_file(path)
    if verify and file.suffix == ".safetensors":
        verify_safetensors(file)
    dec = read_decoder(file, key)
    check_finite(dec, file)
    return dec


def decoder_shape(path: str | os.PathLike[str], key: str = DECODER_KEY) -> tuple[int, int]:
    """(F, d) of a saved decoder, from the file header where the format has one (nothing else is read)."""
    return tuple(read_decoder(weights_file(path), key).shape)  # type: ignore[return-value]


def _is_sparsify(file: Path) -> bool:
    return file.name == SPARSIFY_WEIGHTS


def _is_saelens(file: Path) -> bool:
    return file.name == SAELENS_WEIGHTS


def _read_key(file: Path) -> torch.Tensor:
    return memmap_safetensors(file, DECODER_KEY)


def _is_dictionary_learning(file: Path) -> bool:
    return file.name == DICTIONARY_LEARNING_WEIGHTS and (file.parent / "config.json").is_file()


def _read_dictionary_learning(file: Path) -> torch.Tensor:
    # imported here: sae_fast.formats imports sae_fast.checkpoint, which imports this module
    from .formats.dictionary_learning import read_decoder as read_dl_decoder

    return read_dl_decoder(file.parent)


# built-in formats, in order of preference where a folder holds both
_FORMATS.extend([SaeFormat("sparsify", _is_sparsify, _read_key), SaeFormat("saelens", _is_saelens, _read_key),
                 SaeFormat("dictionary_learning", _is_dictionary_learning, _read_dictionary_learning)])
