"""Provenance of saved work: content hashes and the one check that saved settings match the requested ones.

Used wherever work is reused (caches, checkpoints, stability runs, study steps) so that every "this was made
with other settings" error has the same form: what, where, each differing field with both values, and what
to do about it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

HASH_CHUNK = 1 << 22  # 4 MiB reads: hashing memory is O(chunk), not O(file)


class SettingsMismatch(DataError):
    """Saved work was made with settings other than the requested ones."""


def sha256_file(path: str | os.PathLike[str], chunk: int = HASH_CHUNK) -> str:
    """SHA-256 hex digest of a whole file, read in `chunk`-byte pieces (memory O(chunk))."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def to_jsonable(obj: Any) -> Any:
    """`obj` with numpy/torch scalars and arrays, paths, tuples and sets turned into plain JSON values.

    Non-finite floats become None (JSON has no NaN). Dataclasses are converted field by field.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor, without importing torch
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def settings_digest(settings: Mapping[str, Any]) -> str:
    """A short stable hash of a settings mapping (keys sorted, values made JSON-able)."""
    text = json.dumps(to_jsonable(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(saved: Mapping[str, Any], requested: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """One 'field: saved X, requested Y' line per field whose JSON form differs (missing counts as None)."""
    skip = set(ignore)
    keys = sorted((set(saved) | set(requested)) - skip)
    old, new = to_jsonable(dict(saved)), to_jsonable(dict(requested))
    return [f"{k}: saved {old.get(k)!r}, requested {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def require_same(saved: Mapping[str, Any], requested: Mapping[str, Any], *, what: str, where: str | os.PathLike,
                 hint: str, ignore: Iterable[str] = ()) -> None:
    """Raise :class:`SettingsMismatch` unless ``saved`` and ``requested`` agree on every field not in ``ignore``.

    Parameters
    ----------
    saved, requested : the settings recorded with a result and the ones asked for now (JSON-able values).
    what : what was saved (e.g. "the stability run").
    where : its file or folder.
    hint : what the user can do about it.
    ignore : fields not compared.

    The message reads: "<what> in <where> was made with other settings (<field: saved .., requested ..>; ...);
    <hint>".
    """
    diff = differences(saved, requested, ignore)
    if diff:
        raise SettingsMismatch(f"{what} in {where} was made with other settings ({'; '.join(diff)}); {hint}")
