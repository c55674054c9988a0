"""The result of a stability run (:class:`Stability`), its files, and the endpoint split with its labels.

The split (method.md §1): a feature is STABLE when p_hat >= 1 - eps, UNSTABLE when p_hat <= eps, NEITHER
otherwise. :func:`split_labels` is the one implementation, used by :meth:`Stability.split` and by
:func:`sae_fast.analysis.stability.split`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .. import validate
from ..checkpoint import atomic_write_json, fsync_dir, load_safetensors
from ..errors import DataError, UsageError
from ..runs import MissingInputError

ARRAYS_FILE = "stability.safetensors"
META_FILE = "stability.json"
FORMAT = "sae_fast.stability/1"

UNSTABLE, NEITHER, STABLE = -1, 0, 1
# p_hat is a multiple of 1 / (S - 1); the slack absorbs float32 rounding of it (gaps are >= 1e-3 for S <= 1000)
SPLIT_SLACK = 1e-6


def check_eps(eps: float) -> float:
    """``eps`` as a float in [0, 0.5) (the stable and unstable ends must not overlap), else UsageError."""
    return validate.eps(eps)


def check_theta(theta: float) -> float:
    """``theta`` as a float cosine in [-1, 1], else UsageError."""
    return validate.theta(theta)


def split_labels(p_hat: Any, eps: float = 0.05) -> Any:
    """Endpoint split of p_hat (numpy array or torch tensor, any shape): int8 labels of the same kind,
    STABLE (1) where p_hat >= 1 - eps, UNSTABLE (-1) where p_hat <= eps, NEITHER (0) elsewhere.
    Memory: one int8 array of p_hat's shape."""
    eps = check_eps(eps)
    if isinstance(p_hat, torch.Tensor):
        p = p_hat.detach()
        bad = bool(((p < 0) | (p > 1) | p.isnan()).any())
        out = torch.full(p.shape, NEITHER, dtype=torch.int8, device=p.device)
    else:
        p = np.asarray(p_hat, dtype=np.float64)
        bad = bool(((p < 0) | (p > 1) | np.isnan(p)).any())
        out = np.full(p.shape, NEITHER, dtype=np.int8)
    if bad:
        raise DataError("p_hat must lie in [0, 1] (a share of seeds)")
    out[p >= 1.0 - eps - SPLIT_SLACK] = STABLE
    out[p <= eps + SPLIT_SLACK] = UNSTABLE
    return out


@dataclass
class Stability:
    """Evidence and scores of a stability run.

    best_cos: (A, S, F) float32, for anchor seed ``anchors[a]`` and seed s, the best cosine of each anchor
        feature among the features of seed s (|cos| if ``absolute``); NaN where s is the anchor or the pair
        is not computed yet.
    best_j: (A, S, F) int32, the index of that best feature in seed s; -1 where best_cos is NaN.
    done: (A, S) bool, which (anchor, seed) pairs are computed.
    anchors: seed indices used as anchors; seeds: the seed names (folder names, or "0", "1", ...).
    theta, eps: the defaults used by :meth:`p_hat` and :meth:`split`; any other value can be passed there.
    """

    best_cos: torch.Tensor
    best_j: torch.Tensor
    done: torch.Tensor
    anchors: list[int]
    seeds: list[str]
    theta: float = 0.7
    eps: float = 0.05
    absolute: bool = False
    backend: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_seeds(self) -> int:
        return len(self.seeds)

    @property
    def num_features(self) -> int:
        return self.best_cos.shape[2]

    @property
    def complete(self) -> bool:
        """True when every (anchor, other seed) pair is computed."""
        return int(self.done.sum()) == len(self.anchors) * (self.num_seeds - 1)

    def anchor_position(self, anchor: int | None) -> slice | int:
        """Index into the first axis for ``anchor`` (a seed index), or every anchor for None."""
        if anchor is None:
            return slice(None)
        if anchor not in self.anchors:
            raise UsageError(f"seed {anchor} was not an anchor; anchors are {self.anchors}")
        return self.anchors.index(anchor)

    def matched(self, theta: float | None = None, anchor: int | None = None) -> torch.Tensor:
        """(A, S, F) bool (or (S, F) for one ``anchor``): best cosine >= theta in that seed."""
        theta = self.theta if theta is None else check_theta(theta)
        return self.best_cos[self.anchor_position(anchor)] >= theta  # NaN compares False

    def p_hat(self, theta: float | None = None, anchor: int | None = None) -> torch.Tensor:
        """(A, F) float32 (or (F,) for one ``anchor``): fraction of the S - 1 other seeds with a match >= theta."""
        if not self.complete:
            raise RuntimeError("the run is incomplete; resume it with stability_scores(..., out=...) first")
        return self.matched(theta, anchor).sum(dim=-2).float() / (self.num_seeds - 1)

    def split(self, theta: float | None = None, eps: float | None = None, anchor: int | None = None) -> torch.Tensor:
        """(A, F) int8 (or (F,)): STABLE (1) if p_hat >= 1 - eps, UNSTABLE (-1) if p_hat <= eps, else NEITHER (0)."""
        return split_labels(self.p_hat(theta, anchor), self.eps if eps is None else eps)

    def stable(self, theta: float | None = None, eps: float | None = None, anchor: int | None = None) -> torch.Tensor:
        """Bool mask of stable features (p_hat >= 1 - eps)."""
        return self.split(theta, eps, anchor) == STABLE

    def unstable(self, theta: float | None = None, eps: float | None = None, anchor: int | None = None) -> torch.Tensor:
        """Bool mask of unstable features (p_hat <= eps)."""
        return self.split(theta, eps, anchor) == UNSTABLE

    def summary(self, theta: float | None = None, eps: float | None = None) -> dict[str, Any]:
        """Counts and means for printing: seeds, features, anchors, stable/unstable/neither shares, mean p_hat."""
        lab = self.split(theta, eps)
        n = lab.numel()
        return {
            "seeds": self.num_seeds, "features": self.num_features, "anchors": len(self.anchors),
            "theta": self.theta if theta is None else theta, "eps": self.eps if eps is None else eps,
            "mean_p_hat": float(self.p_hat(theta).mean()),
            "stable": float((lab == STABLE).sum()) / n, "unstable": float((lab == UNSTABLE).sum()) / n,
            "neither": float((lab == NEITHER).sum()) / n, "backend": self.backend,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``path/stability.safetensors`` (best_cos, best_j, done) and ``path/stability.json`` (the
        rest), each atomically. Returns the directory."""
        out = Path(path)
        tensors = {"best_cos": self.best_cos.contiguous(), "best_j": self.best_j.contiguous(),
                   "done": self.done.to(torch.uint8).contiguous()}
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{ARRAYS_FILE}.tmp{os.getpid()}"
        save_file(tensors, str(tmp))  # written from the tensors directly: no in-memory copy of the file
        os.replace(tmp, out / ARRAYS_FILE)
        fsync_dir(out)
        meta = {"format": FORMAT, "anchors": self.anchors, "seeds": self.seeds, "theta": self.theta,
                "eps": self.eps, "absolute": self.absolute, "backend": self.backend, "info": self.info}
        atomic_write_json(out / META_FILE, meta)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> Stability:
        """Reads what :meth:`save` wrote; DataError naming the file when it is truncated or corrupt."""
        src = Path(path)
        if not (src / META_FILE).is_file() or not (src / ARRAYS_FILE).is_file():
            raise MissingInputError(f"{src} holds no saved stability run ({META_FILE} + {ARRAYS_FILE})")
        try:
            meta = json.loads((src / META_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{src / META_FILE} is corrupt (not JSON): {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"{src / META_FILE} is not a stability run (format {FORMAT!r} expected)")
        t = load_safetensors(src / ARRAYS_FILE)
        return cls(t["best_cos"], t["best_j"], t["done"].bool(), list(meta["anchors"]), list(meta["seeds"]),
                   meta["theta"], meta["eps"], meta["absolute"], meta["backend"], meta.get("info", {}))
