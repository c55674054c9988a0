"""Reading an on-disk activation cache: :class:`CachedSource` (shards memory-mapped, checked against the
manifest, verifiable against the SHA-256 recorded when each shard was written)."""

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
from ..provenance import sha256_file
from .base import (
    CACHE_FORMAT,
    CACHE_SPEC,
    MANIFEST,
    NUMPY_STORAGE,
    FiniteSource,
    NonFiniteActivationsError,
    dtype_name,
    scan_rows,
    to_torch,
)


class CachedSource(FiniteSource):
    """Activations cached on disk by :func:`cache_activations` or :func:`save_tensor_cache`, read memory-mapped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            hint = " (caching was interrupted: run it again to resume)" if (self.path / CACHE_SPEC).is_file() else ""
            raise FileNotFoundError(f"no activation cache at {self.path}: {MANIFEST} is missing{hint}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"activation cache manifest {manifest_path} is corrupt: {exc}") from exc
        if manifest.get("format") != CACHE_FORMAT:
            raise ValueError(f"{manifest_path} is not a sae_fast activation cache (format {manifest.get('format')!r})")
        self.manifest: dict[str, Any] = manifest
        self.dtype_name = dtype_name(manifest["dtype"])
        self.d_in = int(manifest["d_in"])
        self._shards = [self._open_shard(shard) for shard in manifest["shards"]]
        self._offsets = np.cumsum([0] + [a.shape[0] for a in self._shards], dtype=np.int64)
        if int(self._offsets[-1]) != int(manifest["num_tokens"]):
            raise DataError(f"{manifest_path}: shards hold {int(self._offsets[-1])} rows, manifest says "
                            f"{manifest['num_tokens']}")

    def _open_shard(self, shard: dict[str, Any]) -> np.ndarray:
        """Memory-map one shard after checking its size (when recorded), shape and dtype against the manifest."""
        file = self.path / shard["file"]
        size = file.stat().st_size if file.is_file() else None
        if size is not None and "bytes" in shard and size != int(shard["bytes"]):
            raise DataError(f"activation cache shard {file} is missing or corrupt: it has {size} bytes, the manifest "
                            f"records {shard['bytes']} (changed or truncated after caching)")
        try:
            array = np.load(file, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"activation cache shard {file} is missing or corrupt: {exc}") from exc
        expected = (int(shard["rows"]), self.d_in)
        if array.shape != expected or array.dtype != np.dtype(NUMPY_STORAGE[self.dtype_name]):
            raise DataError(f"activation cache shard {file} has shape {array.shape} and dtype {array.dtype}, "
                            f"the manifest says {expected} {self.dtype_name}")
        return array

    @property
    def hashed(self) -> bool:
        """Whether the manifest records every shard's SHA-256 (caches written before that do not)."""
        return all("sha256" in shard for shard in self.manifest["shards"])

    def verify(self, progress: bool = False) -> dict[str, Any]:
        """Re-read every shard (streamed, memory O(4 MiB)) and check it is the data that was cached.

        A shard with a recorded SHA-256 must still have it (DataError naming the shard otherwise). A cache
        whose manifest predates the hashes cannot be checked for identity: its shards are scanned for NaN/inf
        instead (NonFiniteActivationsError naming shard, row and row of the cache). Returns what was checked.
        Time: one read of the cache.
        """
        checked = {"shards": len(self._shards), "sha256_checked": 0, "finite_scanned": 0}
        total = sum(os.path.getsize(self.path / shard["file"]) for shard in self.manifest["shards"])
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"verifying {self.path.name}",
                  disable=not progress, delay=1.0) as bar:
            for i, shard in enumerate(self.manifest["shards"]):
                file = self.path / shard["file"]
                if "sha256" in shard:
                    if sha256_file(file) != shard["sha256"]:
                        raise DataError(f"activation cache shard {file} was changed after caching: its SHA-256 "
                                        "differs from the one recorded in the manifest when it was written; "
                                        "re-create the cache")
                    checked["sha256_checked"] += 1
                if "sha256" not in shard or not self.manifest.get("finite"):
                    scan_rows(self._shards[i], self.dtype_name, f"cache shard {file}", int(self._offsets[i]))
                    checked["finite_scanned"] += 1
                bar.update(file.stat().st_size)
        return checked

    def check_same_data(self, saved: dict[str, Any], where: str) -> None:
        """DataError naming the first shard whose content differs from the fingerprint ``saved`` (recorded by
        ``where``, e.g. a training checkpoint). Fingerprints without shard hashes (older caches) are not compared
        here: their manifest hash is the whole identity."""
        old, now = saved.get("shard_sha256"), self.fingerprint().get("shard_sha256")
        if old is None or now is None:
            return
        files = [shard["file"] for shard in self.manifest["shards"]]
        if len(old) != len(now):
            raise DataError(f"{where} was made on a cache of {len(old)} shards; {self.path} has {len(now)}")
        for file, a, b in zip(files, old, now):
            if a != b:
                raise DataError(f"{where} was made on other data: shard {self.path / file} differs from the shard "
                                f"{file} it was trained on (SHA-256 {b} now, {a} then)")

    @property
    def num_tokens(self) -> int:
        return int(self._offsets[-1])

    def _to_tensor(self, array: np.ndarray) -> torch.Tensor:
        return to_torch(array, self.dtype_name)

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        shard_of = np.searchsorted(self._offsets, sorted_rows, side="right") - 1
        parts = []
        for shard in np.unique(shard_of):
            local = sorted_rows[shard_of == shard] - self._offsets[shard]
            parts.append(self._shards[shard][local])  # sorted reads from the memory map
        gathered = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if not self.manifest.get("finite"):  # a cache older than the check at write: named by its cache row
            self._check_gathered(self._to_tensor(gathered), sorted_rows, shard_of)
        out = np.empty_like(gathered)
        out[order] = gathered  # back to the permutation's order
        return self._to_tensor(out)

    def _check_gathered(self, rows: torch.Tensor, cache_rows: np.ndarray, shard_of: np.ndarray) -> None:
        """NonFiniteActivationsError naming shard, row and cache row of the first bad row read (O(batch))."""
        finite = torch.isfinite(rows).all(dim=1)
        if bool(finite.all()):
            return
        i = int((~finite).nonzero()[0])
        shard, row = int(shard_of[i]), int(cache_rows[i])
        file = self.path / self.manifest["shards"][shard]["file"]
        raise NonFiniteActivationsError(f"non-finite activations in cache shard {file}: row "
                                        f"{row - int(self._offsets[shard])} (row {row} of the cache) holds NaN or inf")

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows [start, stop) in cache order, as one tensor; like a slice, ``stop`` past the end reads to the end."""
        if start < 0 or (stop is not None and stop < 0):
            raise ValueError(f"start and stop must be >= 0, got start={start}, stop={stop}")
        stop = self.num_tokens if stop is None else min(stop, self.num_tokens)
        if start >= stop:
            return self._to_tensor(np.empty((0, self.d_in), dtype=self._shards[0].dtype))
        return self._gather(np.arange(start, stop))

    def describe(self) -> dict[str, Any]:
        keys = ("model", "hook", "dtype", "num_tokens", "num_texts", "max_length")
        return {**super().describe(), "path": str(self.path), **{k: self.manifest.get(k) for k in keys}}

    def fingerprint(self) -> dict[str, Any]:
        """The description (without the path) plus a SHA-256 of the manifest and, when the manifest records
        them, the first 16 hex digits of each shard's SHA-256 (so another cache of the same shape differs)."""
        manifest = hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:16]
        out = {**super().fingerprint(), "manifest_sha256": manifest}
        if self.hashed:
            out["shard_sha256"] = [shard["sha256"][:16] for shard in self.manifest["shards"]]
        return out



def open_source(path: str | os.PathLike[str]) -> CachedSource:
    """Open an activation cache directory (alias of ``CachedSource(path)``)."""
    return CachedSource(path)
