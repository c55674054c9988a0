"""Writing activation caches: shards written atomically, checked finite and hashed as written
(:func:`save_tensor_cache` for a tensor, :func:`cache_activations` for a model, resumable)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import atomic_write, atomic_write_json
from ..provenance import sha256_file
from .arrays import TensorSource
from .base import CACHE_FORMAT, CACHE_SPEC, DTYPES, MANIFEST, check_rows_finite, dtype_name, scan_rows
from .cache import CachedSource
from .model import ModelSource


class _HashingWriter:
    """A write-only file wrapper that hashes (SHA-256) and counts the bytes passing through it."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.bytes += view.nbytes
        return self.f.write(data)


def _write_shard(path: Path, rows: torch.Tensor, dtype: str, first_row: int = 0) -> dict[str, Any]:
    """Write one shard atomically (a complete .npy file appears under its name, or nothing does) after checking
    its values are finite in the stored dtype; returns its manifest entry with size and SHA-256 of its bytes,
    hashed as they are written. Memory: the shard, once as ``dtype`` and once as a bool mask."""
    tensor = rows.detach().to("cpu", DTYPES[dtype]).contiguous()
    check_rows_finite(tensor, f"cache shard {path}", 0, first_row)
    array = tensor.view(torch.uint16).numpy() if dtype == "bfloat16" else tensor.numpy()
    sink: dict[str, _HashingWriter] = {}

    def write(f: Any) -> None:
        sink["w"] = _HashingWriter(f)
        np.save(sink["w"], array)

    atomic_write(path, write)
    return {"file": path.name, "rows": int(array.shape[0]), "bytes": sink["w"].bytes,
            "sha256": sink["w"].sha.hexdigest()}


def _shard_entry(path: Path, dtype: str, first_row: int) -> dict[str, Any]:
    """The manifest entry of a shard already on disk (written by an interrupted run): checked finite, hashed."""
    array = np.load(path, mmap_mode="r")
    scan_rows(array, dtype, f"cache shard {path}", first_row)
    return {"file": path.name, "rows": int(array.shape[0]), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def _remove_stale_temp_files(path: Path) -> None:
    """Delete temp files (``.<name>.tmp<pid>``) left by a writer that was killed mid-write."""
    for tmp in path.glob(".*.tmp*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(path / MANIFEST, manifest)


def save_tensor_cache(activations: torch.Tensor, path: str | os.PathLike[str], *, dtype: str | torch.dtype = "float32",
                      shard_tokens: int = 1 << 20, model: str = "tensor", hook: str = "") -> CachedSource:
    """Write an in-memory tensor (N, d) as an activation cache at ``path`` and open it.

    Each shard is checked finite in the stored ``dtype`` (NonFiniteActivationsError naming shard and row) and
    hashed as it is written. Memory: one shard at a time, on top of the tensor.
    """
    source = TensorSource(activations, check=False)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    name = dtype_name(dtype)
    if shard_tokens <= 0:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    shards = []
    for i, begin in enumerate(range(0, source.num_tokens, shard_tokens)):
        rows = activations[begin:begin + shard_tokens]
        shards.append(_write_shard(out / f"shard_{i:05d}.npy", rows, name, first_row=begin))
    _write_manifest(out, {"format": CACHE_FORMAT, "model": model, "hook": hook, "dtype": name, "d_in": source.d_in,
                          "num_tokens": source.num_tokens, "shards": shards, "complete": True, "finite": True})
    return CachedSource(out)





def _texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def cache_spec(*, model: str, hook: str, dtype: str | torch.dtype, max_length: int, texts: Sequence[str],
               texts_per_shard: int = 2048, max_tokens: int | None = None, d_in: int | None = None) -> dict[str, Any]:
    """The settings that define a cache made by :func:`cache_activations`, as stored in its files.

    Parameters
    ----------
    model, hook : the model's name and the hook point's name.
    dtype, max_length, texts_per_shard, max_tokens : as for :func:`cache_activations` / ``ModelSource``.
    texts : the texts (recorded by their count and a SHA-256 of them).
    d_in : the width, or None when not known yet (the key is then left out).

    Returns
    -------
    A JSON-able dict compared key by key by :func:`open_matching_cache`.
    """
    spec = {"format": CACHE_FORMAT, "model": model, "hook": hook, "dtype": dtype_name(dtype), "d_in": d_in,
            "max_length": max_length, "num_texts": len(texts), "texts_sha256": _texts_digest(texts),
            "texts_per_shard": texts_per_shard, "max_tokens": max_tokens}
    return spec if d_in is not None else {k: v for k, v in spec.items() if k != "d_in"}


def open_matching_cache(path: str | os.PathLike[str], spec: dict[str, Any]) -> CachedSource | None:
    """The complete cache at ``path`` if it was made with ``spec`` (compared key by key), None if there is
    none yet; ValueError naming the differences if the folder holds a cache (finished or not) made otherwise."""
    out = Path(path)
    if (out / MANIFEST).is_file():
        cached = CachedSource(out)
        old = {k: cached.manifest.get(k) for k in spec}
        if old != spec:
            raise ValueError(f"{out} already holds a cache made with different settings: {_diff(old, spec)}; "
                             "use another folder or delete it")
        return cached
    if (out / CACHE_SPEC).is_file():
        try:
            saved = json.loads((out / CACHE_SPEC).read_text())
        except json.JSONDecodeError:
            saved = {}
        old = {k: saved.get(k) for k in spec}
        if old != spec:
            raise ValueError(f"{out} holds an unfinished cache made with different settings: {_diff(old, spec)}; "
                             "delete it or use another folder")
    return None


def _shard_rows(source: ModelSource, order: range, limit: int | None, bar: Any) -> torch.Tensor:
    """The activations of the texts ``order`` (at most ``limit`` rows; None: all), counted on ``bar`` in texts
    (no limit) or rows. Memory: the shard's rows."""
    parts: list[torch.Tensor] = []
    got = 0
    for n_texts, acts in source.iter_text_batches(order):
        if limit is not None:
            acts = acts[:limit - got]
        parts.append(acts)
        got += acts.shape[0]
        bar.update(n_texts if limit is None else acts.shape[0])
        if limit is not None and got >= limit:
            break
    return torch.cat(parts)


def cache_activations(source: ModelSource, path: str | os.PathLike[str], *, max_tokens: int | None = None,
                      dtype: str | torch.dtype = "float32", texts_per_shard: int = 2048,
                      progress: bool = True) -> CachedSource:
    """Run ``source``'s model once over its texts and cache the activations at ``path``.

    Shards of ``texts_per_shard`` texts are written atomically (temp file, fsync, rename), so an
    interrupted run resumes where it stopped when called again with the same arguments (temp files a
    killed run left behind are removed); different arguments on an existing cache raise ValueError.
    Every shard is checked for NaN/inf as it is written (NonFiniteActivationsError naming shard, row and row of
    the cache). The manifest is written last and records model, hook, dtype, token count and each shard's size
    and SHA-256.

    Parameters
    ----------
    source : the model and texts (:class:`~sae_fast.activations.ModelSource`).
    path : the cache folder (created).
    max_tokens : cap on the number of vectors (the last shard is cut); None: every real token.
    dtype : stored dtype, ``float32``, ``float16`` or ``bfloat16``.
    texts_per_shard : texts per shard file.
    progress : a tqdm bar counting tokens, or texts when ``max_tokens`` is None.

    Returns
    -------
    The finished cache, opened (:class:`~sae_fast.activations.CachedSource`).

    Memory: one shard's activations (texts_per_shard texts x tokens x d) at a time.
    """
    if not isinstance(source, ModelSource):
        raise TypeError(f"source must be a ModelSource, got {type(source).__name__} "
                        "(use save_tensor_cache for tensors)")
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive or None, got {max_tokens}")
    if texts_per_shard <= 0:
        raise ValueError(f"texts_per_shard must be positive, got {texts_per_shard}")
    name = dtype_name(dtype)
    out = Path(path)
    spec = cache_spec(model=source.model_name, hook=source.hook.name, dtype=name, d_in=source.d_in,
                      max_length=source.max_length, texts=source.texts, texts_per_shard=texts_per_shard,
                      max_tokens=max_tokens)
    cached = open_matching_cache(out, spec)
    if cached is not None:
        return cached
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(out)
    if not (out / CACHE_SPEC).is_file():
        atomic_write_json(out / CACHE_SPEC, spec)

    n_shards = -(-len(source.texts) // texts_per_shard)
    shards: list[dict[str, Any]] = []
    total = 0
    by_texts = max_tokens is None
    bar = tqdm(total=len(source.texts) if by_texts else max_tokens, unit="text" if by_texts else "tok",
               unit_scale=not by_texts, desc=f"caching {source.hook.name}", disable=not progress)
    try:
        for i in range(n_shards):
            if max_tokens is not None and total >= max_tokens:
                break
            file = f"shard_{i:05d}.npy"
            order = range(i * texts_per_shard, min((i + 1) * texts_per_shard, len(source.texts)))
            if (out / file).is_file():  # written by an earlier, interrupted run: checked and hashed again
                entry = _shard_entry(out / file, name, total)
                bar.update(len(order) if by_texts else entry["rows"])
            else:
                rows = _shard_rows(source, order, None if by_texts else max_tokens - total, bar)
                entry = _write_shard(out / file, rows, name, first_row=total)
            shards.append(entry)
            total += entry["rows"]
    finally:
        bar.close()
    if total == 0:
        raise ValueError(f"no real tokens in the {len(source.texts)} texts: nothing to cache")
    _write_manifest(out, {**spec, "num_tokens": total, "shards": shards, "complete": True, "finite": True})
    return CachedSource(out)


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k))
