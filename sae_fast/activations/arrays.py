"""Activations already in memory (:class:`TensorSource`) or in one ``.npy``/``.safetensors`` file
(:class:`ArraySource`, memory-mapped)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DataError
from .base import FiniteSource, check_finite, dtype_name, scan_rows, to_torch


class TensorSource(FiniteSource):
    """Activations held in memory: a float tensor (N, d)."""

    def __init__(self, activations: torch.Tensor, *, check: bool = True) -> None:
        if not isinstance(activations, torch.Tensor):
            raise TypeError(f"activations must be a torch.Tensor of shape (N, d), got {type(activations).__name__}")
        if activations.dim() != 2 or activations.shape[0] == 0 or activations.shape[1] == 0:
            raise ValueError(f"activations must have shape (N, d) with N, d > 0, got {tuple(activations.shape)}")
        if not activations.is_floating_point():
            raise TypeError(f"activations must be floating point, got {activations.dtype}")
        if check:
            check_finite(activations, "the activations tensor")
        self.activations = activations
        self.d_in = int(activations.shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.activations.shape[0])

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        return self.activations[torch.from_numpy(rows.astype(np.int64)).to(self.activations.device)]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dtype": dtype_name(self.activations.dtype)}

    def fingerprint(self) -> dict[str, Any]:
        """The description plus a SHA-256 of up to 64 evenly strided rows (cheap for any N)."""
        n = self.num_tokens
        rows = torch.linspace(0, n - 1, min(n, 64)).round().long().unique().to(self.activations.device)
        sample = self.activations[rows].detach().to("cpu", torch.float32).contiguous()
        digest = hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:16]
        return {**super().fingerprint(), "sample_sha256": digest}


_SAFETENSORS_DTYPES: dict[str, tuple[str, Any]] = {"F32": ("float32", np.float32), "F16": ("float16", np.float16),
                                                   "BF16": ("bfloat16", np.uint16)}


def _map_npy(path: Path) -> tuple[np.ndarray, str]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"activations file {path} is not a readable .npy file: {exc}") from exc
    names = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}
    if array.dtype not in names:
        raise DataError(f"activations file {path} holds {array.dtype}; expected float32 or float16")
    return array, names[array.dtype]


def _map_safetensors(path: Path, key: str | None) -> tuple[np.ndarray, str]:
    """Memory-map one tensor of a .safetensors file (the format: 8-byte header length, JSON header, raw data).
    The safetensors library reads whole tensors or contiguous slices; training needs random rows, hence a map."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n <= 0 or 8 + n > size:
                raise ValueError("the header is cut off")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"activations file {path} is not a readable .safetensors file: {exc}") from exc
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if key is None:
        key = "activations" if "activations" in tensors or len(tensors) != 1 else next(iter(tensors), None)
    if key not in tensors:
        raise DataError(f"activations file {path} has no tensor {key!r} (tensors: {sorted(tensors)}); "
                        "name it 'activations' or keep one tensor in the file")
    info = tensors[key]
    if info.get("dtype") not in _SAFETENSORS_DTYPES:
        raise DataError(f"activations file {path}: tensor {key!r} is {info.get('dtype')}; expected F32, F16 or BF16")
    name, storage = _SAFETENSORS_DTYPES[info["dtype"]]
    shape, (begin, end) = tuple(int(x) for x in info["shape"]), info["data_offsets"]
    if end - begin != int(np.prod(shape)) * np.dtype(storage).itemsize or 8 + n + end > size:
        raise DataError(f"activations file {path} is truncated or corrupt: tensor {key!r} of shape {shape} needs "
                        f"bytes {8 + n + begin}..{8 + n + end}, the file has {size}")
    if len(shape) != 2:
        raise DataError(f"activations file {path}: tensor {key!r} has shape {shape}; expected (N, d)")
    return np.memmap(path, dtype=storage, mode="r", offset=8 + n + begin, shape=shape), name


def map_activations_file(path: Path, key: str | None = None) -> tuple[np.ndarray, str]:
    """(array (N, d) memory-mapped read-only, its dtype name) of a ``.npy`` or ``.safetensors`` file of
    activations (float32, float16, or bfloat16 held as uint16 bits: read rows with :func:`to_torch`).
    DataError naming the file for another suffix, dtype or shape, or a truncated file. Memory: O(1)."""
    if path.suffix == ".npy":
        array, name = _map_npy(path)
    elif path.suffix == ".safetensors":
        array, name = _map_safetensors(path, key)
    else:
        raise DataError(f"activations file {path} must be a .npy or .safetensors file")
    if array.ndim != 2 or 0 in array.shape:
        raise DataError(f"activations file {path} holds shape {array.shape}; expected (N, d), N, d > 0")
    return array, name


class ArraySource(FiniteSource):
    """Activations (N, d) in one ``.npy`` or ``.safetensors`` file, read memory-mapped (memory O(batch)).

    Opening reads the file once (streamed, memory O(4 MiB)): every row is checked finite (a bad one is named by
    its row) and the data is hashed, so a resumed training run sees a changed file as other data. A
    ``.safetensors`` file holds one tensor, or names it ``activations`` (or pass ``key``); float32, float16 and
    bfloat16 are read as stored.
    """

    def __init__(self, path: str | os.PathLike[str], *, key: str | None = None, progress: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"activations file {self.path} does not exist" if not self.path.exists()
                            else f"activations file {self.path} is not a file")
        self.array, self.dtype_name = map_activations_file(self.path, key)
        self.d_in = int(self.array.shape[1])
        sha = hashlib.sha256()
        with tqdm(total=self.array.nbytes, unit="B", unit_scale=True, desc=f"checking {self.path.name}",
                  disable=not progress, delay=1.0) as bar:
            scan_rows(self.array, self.dtype_name, f"activations file {self.path}", None, sha, bar)
        self.sha256 = sha.hexdigest()

    @property
    def num_tokens(self) -> int:
        return int(self.array.shape[0])

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.d_in), dtype=self.array.dtype)
        out[order] = self.array[rows[order]]  # sorted reads from the memory map
        return to_torch(out, self.dtype_name)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path), "dtype": self.dtype_name}

    def fingerprint(self) -> dict[str, Any]:
        """The description (without the path) plus the SHA-256 of the data."""
        return {**super().fingerprint(), "data_sha256": self.sha256[:16]}


def open_activations_file(path: str | os.PathLike[str], *, key: str | None = None,
                          progress: bool = False) -> ArraySource:
    """Training activations from a ``.npy`` or ``.safetensors`` file of shape (N, d): see :class:`ArraySource`."""
    return ArraySource(path, key=key, progress=progress)
