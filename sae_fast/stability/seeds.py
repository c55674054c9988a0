"""The S decoders of a stability run, in memory or saved on disk, served one at a time through an LRU cache.

Saved decoders are found with :func:`sae_fast.runs.find_saved_saes`, their shapes are checked from the file
headers before anything else is read, then every file is verified once (its embedded SHA-256 where it has
one) and identified by :func:`sae_fast.runs.decoder_identity`, which a resumed run compares with the saved
one. Memory: at most ``cache_bytes`` of normalised float32 decoders, plus the one being normalised.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed as dist_utils
from ..errors import DataError, UsageError
from ..matching import ArrayLike, as_unit_rows
from ..runs import decoder_identity, decoder_shape, find_saved_saes, load_decoder, read_decoder

IDENTITY_ROWS = 4096  # rows per block when hashing an in-memory decoder


def default_cache_bytes(device: torch.device) -> int:
    """Decoder cache of a stability run: half the free memory of a CUDA device (96 seeds of (2^14, 768) take
    4.8 GB), 2 GiB elsewhere (there the decoders given as arrays are in memory already)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return 2**31


def array_identity(x: ArrayLike) -> str:
    """SHA-256 of an in-memory decoder's shape, dtype and bytes, hashed in blocks of ``IDENTITY_ROWS`` rows
    (memory O(block))."""
    h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}|".encode())
    for r0 in range(0, x.shape[0], IDENTITY_ROWS):
        block = x[r0:r0 + IDENTITY_ROWS]
        if isinstance(block, torch.Tensor):
            block = block.detach().cpu().contiguous()
            h.update(block.view(torch.uint8).numpy().tobytes() if block.numel() else b"")
        else:
            h.update(np.ascontiguousarray(block).tobytes())
    return f"array:{h.hexdigest()}"


def check_shapes(labels: list[str], shapes: list[tuple[int, ...]]) -> tuple[int, int]:
    """(F, d) shared by every seed; DataError naming the two seeds (``labels``: folders or argument positions)
    and both shapes where they differ."""
    if len(shapes) < 2:
        raise UsageError(f"stability needs at least 2 seeds, got {len(shapes)}")
    for label, shp in zip(labels, shapes):
        if len(shp) != 2:
            raise DataError(f"the decoder of {label} must have shape (F, d), got {shp}")
    for label, shp in zip(labels[1:], shapes[1:]):
        if shp[1] != shapes[0][1]:
            raise DataError(f"all decoders must have the same d (model width): {labels[0]} has shape "
                            f"{shapes[0]}, {label} has {shp}")
        if shp[0] != shapes[0][0]:
            raise DataError(f"all decoders must have the same number of features F: {labels[0]} has shape "
                            f"{shapes[0]}, {label} has {shp}")
    return shapes[0][0], shapes[0][1]


def verify_file(file: Path) -> str:
    """The file's identity, after checking its embedded SHA-256 (if any) and that its decoder is finite."""
    identity = decoder_identity(file)
    load_decoder(file, verify=False)  # shape, dtype and finiteness, in row blocks
    return identity


def verify_files(files: list[Path], progress: bool, shard: bool) -> list[str]:
    """:func:`verify_file` of every file; with ``shard`` each rank reads its share and the identities (or the
    first error, raised on every rank alike) are exchanged, so no rank is left waiting for another."""
    mine = dist_utils.shard(list(range(len(files)))) if shard else list(range(len(files)))
    ids: dict[int, str] = {}
    error: str | None = None
    try:
        for i in tqdm(mine, desc="verifying seeds", unit="seed", disable=not progress):
            ids[i] = verify_file(files[i])
    except DataError as err:
        if not shard:
            raise
        error = str(err)
    if shard:
        parts = dist_utils.all_gather_objects((ids, error))
        errors = [e for _, e in parts if e is not None]
        if errors:
            raise DataError(errors[0])
        ids = {i: x for part, _ in parts for i, x in part.items()}
    return [ids[i] for i in range(len(files))]


class SeedDecoders:
    """S decoder matrices (F, d), served one at a time as unit-normalised float32 rows on ``device``.

    ``decoders``: a sequence of arrays/tensors, or a directory of saved SAEs (see
    :func:`sae_fast.runs.find_saved_saes`), each verified once here and read memory-mapped only when needed.
    A small LRU cache holds at most ``cache_bytes`` of normalised decoders, so never all seeds are in (GPU)
    memory at once unless they fit. ``progress``: a bar while the saved files are verified; ``shard``: the
    ranks of the process group share that verification (every rank must then construct the seeds).
    """

    def __init__(self, decoders: str | os.PathLike | Sequence[ArrayLike], device: torch.device,
                 cache_bytes: int | None = None, hookpoint: str | None = None, progress: bool = False,
                 shard: bool = False) -> None:
        self.device = device
        self.cache_bytes = default_cache_bytes(device) if cache_bytes is None else int(cache_bytes)
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._arrays: Sequence[ArrayLike] | None = None
        self._files: list[Path] = []
        self._ids: list[str] | None = None
        if isinstance(decoders, (str, os.PathLike)):
            items = find_saved_saes(decoders, hookpoint)
            self.names = [n for n, _ in items]
            self._files = [f for _, f in items]
            self.num_features, self.d = check_shapes([str(f.parent) for f in self._files],
                                                     [decoder_shape(f) for f in self._files])
            self._ids = verify_files(self._files, progress, shard)
        elif isinstance(decoders, Sequence) and not isinstance(decoders, (bytes, str)):
            self._arrays = decoders
            self.names = [str(i) for i in range(len(decoders))]
            for i, x in enumerate(decoders):
                if not isinstance(x, (torch.Tensor, np.ndarray)):
                    raise TypeError(f"decoders[{i}] must be a tensor or array of shape (F, d), got {type(x).__name__}")
            self.num_features, self.d = check_shapes([f"decoders[{i}]" for i in range(len(decoders))],
                                                     [tuple(x.shape) for x in decoders])
        else:
            raise TypeError("decoders must be a directory of saved SAEs or a sequence of (F, d) arrays/tensors, "
                            f"got {type(decoders).__name__}")

    def __len__(self) -> int:
        return len(self.names)

    def raw(self, s: int) -> ArrayLike:
        """Seed s's decoder as stored (memory-mapped from its file, or the array given)."""
        if self._arrays is not None:
            return self._arrays[s]
        return read_decoder(self._files[s])  # verified and checked when the seeds were opened

    def identity(self, s: int) -> str:
        """What identifies seed s's decoder: for a saved file its verified digest or whole-file SHA-256
        (computed when the seeds were opened), for an array the SHA-256 of its bytes (streamed)."""
        if self._ids is not None:
            return self._ids[s]
        return array_identity(self._arrays[s])

    def get(self, s: int) -> torch.Tensor:
        """Seed s's unit-normalised decoder rows, float32 on the device (cached)."""
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        x = as_unit_rows(f"decoder of seed {self.names[s]}", self.raw(s), self.device)
        size = x.numel() * 4
        while self._cache and sum(t.numel() * 4 for t in self._cache.values()) + size > self.cache_bytes:
            self._cache.popitem(last=False)
        if size <= self.cache_bytes:
            self._cache[s] = x
        return x
