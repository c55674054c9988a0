"""The activation source interface, its dtypes and the finiteness checks every source applies.

Memory: the checks read O(chunk) (~4 MiB, ``HASH_CHUNK``) at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..provenance import HASH_CHUNK

MANIFEST = "manifest.json"
CACHE_SPEC = "cache_spec.json"  # written first: a folder with it but no manifest holds an interrupted cache
CACHE_FORMAT = "sae_fast.activations/1"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# numpy has no bfloat16: such shards hold the raw bits as uint16.
NUMPY_STORAGE: dict[str, Any] = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}

class NonFiniteActivationsError(DataError):
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
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
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


class FiniteSource(ActivationSource):
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


def check_rows_finite(tensor: torch.Tensor, what: str, start: int = 0, cache_start: int | None = None) -> None:
    """NonFiniteActivationsError naming the first bad row of ``tensor``, which holds rows ``start`` on of
    ``what`` (a shard or file) and, for a shard, rows ``cache_start`` on of the whole cache."""
    finite = torch.isfinite(tensor).all(dim=1)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero().flatten()
    row = int(bad[0])
    where = f" (row {cache_start + row} of the cache)" if cache_start is not None else ""
    raise NonFiniteActivationsError(
        f"non-finite activations in {what}: row {start + row}{where} holds NaN or inf "
        f"({bad.numel()} bad rows among rows {start}..{start + tensor.shape[0] - 1}; first: "
        f"{[start + int(r) for r in bad[:5]]})")


def to_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def scan_rows(array: np.ndarray, dtype: str, what: str, cache_start: int | None, sha: Any = None,
               bar: Any = None) -> None:
    """Check every row of ``array`` (memory-mapped) is finite, reading ~4 MiB at a time (memory O(chunk));
    ``cache_start``: the cache row of its first row (a shard), None for a file; ``sha``: also feed the rows'
    bytes, in order, to this hash; ``bar``: a tqdm bar counting bytes."""
    step = max(1, HASH_CHUNK // max(1, array.shape[1] * array.dtype.itemsize))
    for begin in range(0, array.shape[0], step):
        chunk = np.array(array[begin:begin + step])  # a writable copy of ~4 MiB
        if sha is not None:
            sha.update(memoryview(chunk).cast("B"))
        check_rows_finite(to_torch(chunk, dtype), what, begin, None if cache_start is None else cache_start + begin)
        if bar is not None:
            bar.update(chunk.nbytes)
