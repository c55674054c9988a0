"""Checking the options of a stability run, and the settings a resumed run must share with the saved one."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ..errors import UsageError
from ..matching import FaissIndex
from .result import check_eps, check_theta

# every keyword of FaissIndex (nlist, nprobe, hnsw_m, ef_search, ...) and of the exact sweep (match_many)
INDEX_OPTIONS = tuple(n for n, p in inspect.signature(FaissIndex.__init__).parameters.items()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY)
EXACT_OPTIONS = ("dtype", "candidates", "tol", "block_rows", "block_cols", "kernel")
NO_EFFECT = ("threads",)  # index options that do not change results (left out of the resume check)


def check_options(theta: float, eps: float, recall_sample: int | None, match_kwargs: dict[str, Any]) -> None:
    """UsageError (TypeError for unknown keywords) for options out of range, before any work."""
    check_theta(theta)
    check_eps(eps)
    unknown = sorted(set(match_kwargs) - {*INDEX_OPTIONS, *EXACT_OPTIONS, "index"})
    if unknown:
        raise TypeError(f"stability_scores() got unexpected keyword arguments {unknown}; the exact backend takes "
                        f"{list(EXACT_OPTIONS)}, faiss takes 'index' and {list(INDEX_OPTIONS)}")
    if recall_sample is not None and (not isinstance(recall_sample, int) or recall_sample < 0):
        raise UsageError(f"recall_sample must be a non-negative int or None, got {recall_sample!r}")


def resolve_anchors(anchor: str | int, num_seeds: int) -> list[int]:
    """The anchor seed indices: every seed for ``"all"``, else the one index given."""
    if anchor == "all":
        return list(range(num_seeds))
    if isinstance(anchor, (int, np.integer)) and not isinstance(anchor, bool):
        if not 0 <= int(anchor) < num_seeds:
            raise UsageError(f"anchor must be 'all' or a seed index in [0, {num_seeds}), got {anchor}")
        return [int(anchor)]
    raise UsageError(f"anchor must be 'all' or a seed index, got {anchor!r}")


def run_settings(backend: str, chosen: str, d: int, match_kwargs: dict[str, Any],
                 saved: dict[str, Any] | None) -> dict[str, Any]:
    """What a resumed run must share with the saved one: backend, d and (faiss) the index kind and options.
    ``auto`` with no index options given keeps the saved run's index settings."""
    if chosen != "faiss":
        return {"backend": chosen, "d": d}
    given = {k: v for k, v in match_kwargs.items() if k in (*INDEX_OPTIONS, "index") and v is not None}
    if backend == "auto" and not given and saved is not None and saved.get("backend") == "faiss":
        return dict(saved, d=d)
    kind = given.pop("index", None) or ("ivf" if backend == "auto" else "flat")
    return {"backend": "faiss", "d": d, "index": kind,
            **{k: v for k, v in sorted(given.items()) if k not in NO_EFFECT}}


def backend_options(chosen: str, settings: dict[str, Any], match_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keywords passed on: to match_many for the exact backend; for faiss the index kind (``index``) and
    the keywords of FaissIndex."""
    if chosen == "exact":
        return {k: v for k, v in match_kwargs.items() if k in EXACT_OPTIONS}
    opts = {"index": settings["index"], **{k: v for k, v in settings.items() if k in INDEX_OPTIONS}}
    if "threads" in match_kwargs:
        opts["threads"] = match_kwargs["threads"]
    return opts


def ignored_options(chosen: str, match_kwargs: dict[str, Any]) -> list[str]:
    """The keywords the chosen backend does not use (logged as a warning)."""
    used = EXACT_OPTIONS if chosen == "exact" else (*INDEX_OPTIONS, "index")
    return sorted(k for k in match_kwargs if k not in used)
