"""Per-feature stability across seeds (method.md §1) and the one-to-one matching variants (§2).

``stability_scores(decoders)`` takes S decoder matrices (F, d) — in memory, or a directory of saved SAEs read
one at a time from memory-mapped safetensors — and, for each anchor seed and each of its features, finds the
best-matching feature (largest cosine of unit-normalised decoder rows, many-to-one argmax) in every other seed.
It keeps the evidence, ``best_cos`` and ``best_j`` per (anchor, other seed, feature), so that

    p_hat_i(theta) = #{other seeds k : best_cos[k, i] >= theta} / (S - 1)

and the endpoint split (stable: p_hat >= 1 - eps, unstable: p_hat <= eps) cost nothing for any theta and eps.
With ``anchor="all"`` every directed pair is computed, and with the exact backend one sweep over the score
tiles of an unordered pair serves both directions (row and column maxima).

One-to-one variants: :func:`hungarian_match` (scipy's linear_sum_assignment), :func:`mutual_nearest_neighbours`,
:func:`encoder_decoder_match` (Paulo & Belrose), :func:`pw_mcc` (Song et al.), :func:`hungarian_argmax_iou`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import re
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import distributed as dist_utils
from .matching import (
    ArrayLike,
    FaissIndex,
    as_unit_rows,
    choose_backend,
    match,
    match_many,
    resolve_device,
)

log = logging.getLogger(__name__)

SPARSIFY_FILE = "sae.safetensors"
SAELENS_FILE = "sae_weights.safetensors"
DECODER_KEY = "W_dec"
_ARRAYS_FILE = "stability.safetensors"
_META_FILE = "stability.json"
_FORMAT = "sae_fast.stability/1"

UNSTABLE, NEITHER, STABLE = -1, 0, 1
# every keyword of FaissIndex (nlist, nprobe, hnsw_m, ef_search, ...) and of the exact sweep (match_many)
_INDEX_OPTIONS = tuple(n for n, p in inspect.signature(FaissIndex.__init__).parameters.items()
                       if p.kind is inspect.Parameter.KEYWORD_ONLY)
_EXACT_OPTIONS = ("dtype", "candidates", "tol", "block_rows", "block_cols", "kernel")
_NO_EFFECT = ("threads",)  # index options that do not change results (left out of the resume check)
_FINGERPRINT_ROWS = 8


# ----------------------------------------------------------------------------------------------------------
# result


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

    def _anchor_pos(self, anchor: int | None) -> slice | int:
        if anchor is None:
            return slice(None)
        if anchor not in self.anchors:
            raise ValueError(f"seed {anchor} was not an anchor; anchors are {self.anchors}")
        return self.anchors.index(anchor)

    def matched(self, theta: float | None = None, anchor: int | None = None) -> torch.Tensor:
        """(A, S, F) bool (or (S, F) for one ``anchor``): best cosine >= theta in that seed."""
        theta = self.theta if theta is None else theta
        return self.best_cos[self._anchor_pos(anchor)] >= theta  # NaN compares False

    def p_hat(self, theta: float | None = None, anchor: int | None = None) -> torch.Tensor:
        """(A, F) float32 (or (F,) for one ``anchor``): fraction of the S - 1 other seeds with a match >= theta."""
        if not self.complete:
            raise RuntimeError("the run is incomplete; resume it with stability_scores(..., out=...) first")
        return self.matched(theta, anchor).sum(dim=-2).float() / (self.num_seeds - 1)

    def split(self, theta: float | None = None, eps: float | None = None, anchor: int | None = None) -> torch.Tensor:
        """(A, F) int8 (or (F,)): STABLE (1) if p_hat >= 1 - eps, UNSTABLE (-1) if p_hat <= eps, else NEITHER (0)."""
        eps = self.eps if eps is None else eps
        p = self.p_hat(theta, anchor)
        out = torch.zeros(p.shape, dtype=torch.int8)
        out[p >= 1 - eps - 1e-9] = STABLE
        out[p <= eps + 1e-9] = UNSTABLE
        return out

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

    # -- persistence ---------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``path/stability.safetensors`` (best_cos, best_j, done) and ``path/stability.json`` (the
        rest), each atomically (write to a temporary file, then rename). Returns the directory."""
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"best_cos": self.best_cos.contiguous(), "best_j": self.best_j.contiguous(),
                   "done": self.done.to(torch.uint8).contiguous()}
        tmp = out / (_ARRAYS_FILE + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, out / _ARRAYS_FILE)
        meta = {"format": _FORMAT, "anchors": self.anchors, "seeds": self.seeds, "theta": self.theta,
                "eps": self.eps, "absolute": self.absolute, "backend": self.backend, "info": self.info}
        tmp = out / (_META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, out / _META_FILE)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> Stability:
        """Reads what :meth:`save` wrote."""
        from safetensors.torch import load_file

        src = Path(path)
        if not (src / _META_FILE).is_file() or not (src / _ARRAYS_FILE).is_file():
            raise FileNotFoundError(f"{src} holds no saved stability run ({_META_FILE} + {_ARRAYS_FILE})")
        meta = json.loads((src / _META_FILE).read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{src / _META_FILE} has format {meta.get('format')!r}, expected {_FORMAT!r}")
        t = load_file(str(src / _ARRAYS_FILE))
        return cls(t["best_cos"], t["best_j"], t["done"].bool(), list(meta["anchors"]), list(meta["seeds"]),
                   meta["theta"], meta["eps"], meta["absolute"], meta["backend"], meta.get("info", {}))


# ----------------------------------------------------------------------------------------------------------
# seeds: in memory or on disk, loaded one at a time


def _natural_key(text: str) -> list[Any]:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


def find_saved_saes(root: str | os.PathLike, hookpoint: str | None = None) -> list[tuple[str, Path]]:
    """Folders under ``root`` holding a saved SAE (``sae.safetensors``, sparsify layout, or
    ``sae_weights.safetensors``, SAELens), as (name relative to root, weights file), in natural order.

    Only the shallowest such folders count (a trainer's ``checkpoints/step_*/seed*`` below ``seed*/`` are
    ignored), and hidden folders are skipped. With several hookpoints per seed
    (``root/seed/hookpoint/sae.safetensors``) pass ``hookpoint``.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"decoders directory {base} does not exist")
    found: dict[Path, Path] = {}
    for name in (SAELENS_FILE, SPARSIFY_FILE):  # sparsify file wins where a folder has both
        for f in base.rglob(name):
            rel = f.parent.relative_to(base)
            if rel.parts and not any(part.startswith(".") for part in rel.parts):  # skip temp/hidden folders
                found[rel] = f
    if found:  # the shallowest level only: a trainer's output also holds checkpoints/step_*/seed*/ below seed*/
        depth = min(len(rel.parts) for rel in found)
        found = {rel: f for rel, f in found.items() if len(rel.parts) == depth}
    items = sorted(((rel.as_posix(), f) for rel, f in found.items()), key=lambda x: _natural_key(x[0]))
    if hookpoint is not None:
        items = [(n, f) for n, f in items if Path(n).name == hookpoint]
    else:
        leaves = {Path(n).name for n, _ in items if "/" in n}
        if len(leaves) > 1:
            raise ValueError(f"{base} holds SAEs for several hookpoints {sorted(leaves)}; pass hookpoint=")
    if not items:
        raise ValueError(f"no saved SAEs ({SPARSIFY_FILE} or {SAELENS_FILE}) under {base}"
                         + (f" for hookpoint {hookpoint!r}" if hookpoint else ""))
    return items


def load_decoder(path: str | os.PathLike, key: str = DECODER_KEY) -> torch.Tensor:
    """One decoder matrix (F, d) from a saved-SAE folder (``sae.safetensors`` or ``sae_weights.safetensors``),
    a ``.safetensors`` file (tensor ``key``) or a ``.npy`` file."""
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir():
        for name in (SPARSIFY_FILE, SAELENS_FILE):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise FileNotFoundError(f"{path} holds neither {SPARSIFY_FILE} nor {SAELENS_FILE}")
    if not p.is_file():
        raise FileNotFoundError(f"decoder file {p} does not exist")
    if p.suffix == ".npy":
        return torch.from_numpy(np.load(p, mmap_mode="r").copy())
    if p.suffix != ".safetensors":
        raise ValueError(f"decoder file must be .safetensors or .npy (or an SAE folder), got {p}")
    with safe_open(str(p), framework="pt") as h:
        if key not in h.keys():  # noqa: SIM118 - safe_open handles have no __contains__
            raise ValueError(f"{p} has no tensor {key!r} (keys: {sorted(h.keys())})")
        return h.get_tensor(key)


class SeedDecoders:
    """S decoder matrices (F, d), served one at a time as unit-normalised float32 rows on ``device``.

    ``decoders``: a sequence of arrays/tensors, or a directory of saved SAEs (see :func:`find_saved_saes`),
    read with safetensors ``safe_open`` (memory-mapped) only when needed. A small LRU cache holds at most
    ``cache_bytes`` of normalised decoders, so never all seeds are in (GPU) memory at once unless they fit.
    """

    def __init__(self, decoders: str | os.PathLike | Sequence[ArrayLike], device: torch.device,
                 cache_bytes: int | None = None, hookpoint: str | None = None) -> None:
        self.device = device
        self.cache_bytes = default_cache_bytes(device) if cache_bytes is None else int(cache_bytes)
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._arrays: Sequence[ArrayLike] | None = None
        self._files: list[Path] = []
        shapes: list[tuple[int, ...]]
        if isinstance(decoders, (str, os.PathLike)):
            items = find_saved_saes(decoders, hookpoint)
            self.names = [n for n, _ in items]
            self._files = [f for _, f in items]
            shapes = [self._file_shape(f) for f in self._files]
        elif isinstance(decoders, Sequence) and not isinstance(decoders, (bytes, str)):
            self._arrays = decoders
            self.names = [str(i) for i in range(len(decoders))]
            shapes = []
            for i, x in enumerate(decoders):
                if not isinstance(x, (torch.Tensor, np.ndarray)):
                    raise TypeError(f"decoders[{i}] must be a tensor or array of shape (F, d), got {type(x).__name__}")
                shapes.append(tuple(x.shape))
        else:
            raise TypeError("decoders must be a directory of saved SAEs or a sequence of (F, d) arrays/tensors, "
                            f"got {type(decoders).__name__}")
        if len(shapes) < 2:
            raise ValueError(f"stability needs at least 2 seeds, got {len(shapes)}")
        for i, shp in enumerate(shapes):
            if len(shp) != 2:
                raise ValueError(f"decoder of seed {self.names[i]} must have shape (F, d), got {shp}")
        ds = {s[1] for s in shapes}
        if len(ds) > 1:
            raise ValueError(f"all decoders must have the same d (model width), got d = {sorted(ds)} "
                             f"(shapes {dict(zip(self.names, shapes))})")
        fs = {s[0] for s in shapes}
        if len(fs) > 1:
            raise ValueError(f"all decoders must have the same number of features F, got F = {sorted(fs)}")
        self.num_features, self.d = shapes[0]

    def __len__(self) -> int:
        return len(self.names)

    @staticmethod
    def _file_shape(f: Path) -> tuple[int, ...]:
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as h:
            if DECODER_KEY not in h.keys():  # noqa: SIM118 - safe_open handles have no __contains__
                raise ValueError(f"{f} has no tensor {DECODER_KEY!r} (keys: {sorted(h.keys())})")
            return tuple(h.get_slice(DECODER_KEY).get_shape())

    def raw(self, s: int) -> ArrayLike:
        """Seed s's decoder as stored (a CPU tensor read from disk, or the array given)."""
        if self._arrays is not None:
            return self._arrays[s]
        from safetensors import safe_open

        with safe_open(str(self._files[s]), framework="pt") as h:
            return h.get_tensor(DECODER_KEY)

    def fingerprint(self, s: int) -> str:
        """A cheap identity of seed s's decoder: hash of its shape and a few strided rows (read one by one)."""
        step = max(1, self.num_features // _FINGERPRINT_ROWS)
        rows = range(0, self.num_features, step)[:_FINGERPRINT_ROWS]
        h = hashlib.sha256(repr((self.num_features, self.d)).encode())
        if self._arrays is not None:
            x = self._arrays[s]
            picked = list(rows)
            if isinstance(x, torch.Tensor):  # one gather and one copy to the host
                sample = x[torch.tensor(picked, device=x.device)].detach().cpu()
            elif isinstance(x, np.ndarray):  # memmaps included: reads only these rows
                sample = torch.from_numpy(np.ascontiguousarray(x[picked]))
            else:
                sample = torch.stack([torch.as_tensor(np.asarray(x[r])) for r in picked])
            for row in sample:
                h.update(row.to(torch.float32).numpy().tobytes())
        else:
            from safetensors import safe_open

            with safe_open(str(self._files[s]), framework="pt") as f:
                sl = f.get_slice(DECODER_KEY)
                for r in rows:
                    h.update(sl[r:r + 1].to(torch.float32).numpy().tobytes())
        return h.hexdigest()[:16]

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


# ----------------------------------------------------------------------------------------------------------
# the run


def default_cache_bytes(device: torch.device) -> int:
    """Decoder cache of a stability run: half the free memory of a CUDA device (96 seeds of (2^14, 768) take
    4.8 GB), 2 GiB elsewhere (there the decoders given as arrays are in memory already)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return 2**31


class _Job(NamedTuple):
    """One unit of work of a stability run and the directed (anchor, seed) pairs it fills in.

    exact: one sweep of seed ``query``'s rows against the seeds ``others`` stacked (a contiguous run of
    ``block``, whose stacked matrix is built once for all the sweeps that share it); ``both``: the column
    maxima give the other direction too. faiss: ``query`` is the database seed, whose index is built once,
    searched by every anchor in ``pairs``.
    """

    query: int
    others: tuple[int, ...]
    block: tuple[int, ...]
    both: bool
    pairs: tuple[tuple[int, int], ...]


def _jobs(num_seeds: int, anchors: list[int], backend: str, stack: int = 1) -> list[_Job]:
    """The run's jobs in the order they are computed.

    exact, every seed an anchor: the seeds are cut into blocks of ``stack``; for each block J, every seed q
    below J's end is swept once against the seeds of J above q, stacked (one GEMM sweep for up to ``stack``
    unordered pairs, both directions). Each unordered pair is computed exactly once; q runs down and up in
    turn (snake order) so that an LRU decoder cache keeps the seeds the previous block ended with.
    exact, other anchors: each anchor is swept against the other seeds, ``stack`` at a time (one direction).
    faiss: one job per database seed, whose index is built once and searched by every anchor.
    """
    stack = max(1, stack)
    if backend != "exact":
        return [_Job(s, (), (), False, tuple((q, s) for q in anchors if q != s))
                for s in range(num_seeds) if any(q != s for q in anchors)]
    jobs = []
    if sorted(anchors) == list(range(num_seeds)):
        for bi, j0 in enumerate(range(0, num_seeds, stack)):
            block = tuple(range(j0, min(j0 + stack, num_seeds)))
            queries = range(block[-1] - 1, -1, -1) if bi % 2 else range(block[-1])
            for q in queries:
                others = tuple(s for s in block if s > q)
                pairs = tuple((q, s) for s in others) + tuple((s, q) for s in others)
                jobs.append(_Job(q, others, block, True, pairs))
        return jobs
    for q in anchors:
        rest = [s for s in range(num_seeds) if s != q]
        for i in range(0, len(rest), stack):
            block = tuple(rest[i:i + stack])
            jobs.append(_Job(q, block, block, False, tuple((q, s) for s in block)))
    return jobs


def default_stack(num_seeds: int, num_features: int, d: int, cache_bytes: int, max_rows: int = 2**18) -> int:
    """Seeds stacked per exact sweep: as many as fit in ``max_rows`` stacked rows (one large GEMM instead of
    many small ones, with one launch and A read once) and in a quarter of the decoder cache's memory (the
    stacked float32 matrix is held beside the cache), at least 1 and at most S - 1."""
    by_rows = max_rows // max(1, num_features)
    by_memory = cache_bytes // 4 // max(1, num_features * d * 4)
    return max(1, min(num_seeds - 1, by_rows, by_memory))


def _check_compatible(old: Stability, seeds: list[str], anchors: list[int], num_features: int, absolute: bool,
                      where: Path, settings: dict[str, Any] | None = None,
                      fingerprints: list[str] | None = None) -> None:
    """Raises ValueError when the run saved at ``where`` was made with other seeds, anchors, F, absolute, backend
    or index settings, d, or decoders (runs saved before settings/fingerprints were recorded skip those checks)."""
    same = (old.seeds == seeds and old.anchors == anchors and old.num_features == num_features
            and old.absolute == absolute)
    if not same:
        raise ValueError(f"{where} holds a stability run with other settings (seeds, anchors, F or absolute); "
                         "use another out= directory or delete it")
    problems = []
    saved = old.info.get("settings")
    if settings is not None and saved is not None:
        problems += [f"{key}: saved {saved.get(key)!r}, now {settings.get(key)!r}"
                     for key in sorted(set(settings) | set(saved)) if settings.get(key) != saved.get(key)]
    saved_fp = old.info.get("fingerprints")
    if fingerprints is not None and saved_fp is not None:
        changed = [seeds[i] for i, (x, y) in enumerate(zip(saved_fp, fingerprints)) if x != y]
        if changed:
            problems.append(f"decoders of seeds {changed} changed since the run was saved")
    if problems:
        raise ValueError(f"{where} holds a stability run that this call cannot resume: " + "; ".join(problems)
                         + ". Pass the saved settings, use another out= directory or delete it")


def _load_prior(out_dir: Path | None, ckpt_dir: Path | None, world: int, names: list[str], anchors: list[int],
                num_features: int, absolute: bool) -> Stability | None:
    """The saved run to finish or return: the final result in ``out_dir`` (if complete, or in one process), else
    this rank's checkpoint."""
    if out_dir is not None and (out_dir / _META_FILE).is_file():
        old = Stability.load(out_dir)
        _check_compatible(old, names, anchors, num_features, absolute, out_dir)
        if old.complete or world == 1:
            return old
    if world > 1 and ckpt_dir is not None and (ckpt_dir / _META_FILE).is_file():
        old = Stability.load(ckpt_dir)
        _check_compatible(old, names, anchors, num_features, absolute, ckpt_dir)
        return old
    return None


def _run_settings(backend: str, chosen: str, d: int, match_kwargs: dict[str, Any],
                  saved: dict[str, Any] | None) -> dict[str, Any]:
    """What a resumed run must share with the saved one: backend, d and (faiss) the index kind and options.
    ``auto`` with no index options given keeps the saved run's index settings."""
    if chosen != "faiss":
        return {"backend": chosen, "d": d}
    given = {k: v for k, v in match_kwargs.items() if k in (*_INDEX_OPTIONS, "index") and v is not None}
    if backend == "auto" and not given and saved is not None and saved.get("backend") == "faiss":
        return dict(saved, d=d)
    kind = given.pop("index", None) or ("ivf" if backend == "auto" else "flat")
    return {"backend": "faiss", "d": d, "index": kind,
            **{k: v for k, v in sorted(given.items()) if k not in _NO_EFFECT}}


def _agree_stack(stack: int | None, saved: int | None, default: int, use_dist: bool) -> int:
    """Seeds per exact sweep, the same on every rank (they must cut the same job list): the one given, else the
    saved run's, else the default (the smallest over ranks: free GPU memory differs)."""
    if stack is not None:
        if not isinstance(stack, (int, np.integer)) or isinstance(stack, bool) or stack < 1:
            raise ValueError(f"stack must be a positive int (seeds per exact sweep), got {stack!r}")
        return int(stack)
    if not use_dist:
        return int(saved) if saved else default
    votes = dist_utils.all_gather_objects((int(saved) if saved else None, default))
    kept = [v[0] for v in votes if v[0] is not None]
    return kept[0] if kept else min(v[1] for v in votes)


class _Sigterm:
    """While active (main thread only), SIGTERM raises KeyboardInterrupt so the run checkpoints before it dies;
    the previous handler is restored on exit."""

    def __enter__(self) -> _Sigterm:
        self.prev: Any = None
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            self.prev = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")

    def __exit__(self, *exc: object) -> None:
        if self.active:
            signal.signal(signal.SIGTERM, self.prev if self.prev is not None else signal.SIG_DFL)


def stability_scores(
    decoders: str | os.PathLike | Sequence[ArrayLike],
    *,
    theta: float = 0.7,
    anchor: str | int = "all",
    backend: str = "auto",
    eps: float = 0.05,
    absolute: bool = False,
    device: torch.device | str | None = None,
    out: str | os.PathLike | None = None,
    save_every: float = 60.0,
    progress: bool = True,
    hookpoint: str | None = None,
    cache_bytes: int | None = None,
    distributed: bool = True,
    recall_sample: int | None = None,
    stack: int | None = None,
    **match_kwargs: Any,
) -> Stability:
    """Stability of every anchor feature across S seeds (method.md §1): best decoder cosine per other seed.

    decoders: S decoder matrices (F, d) (arrays/tensors), or a directory of saved SAEs (subfolders with
        ``sae.safetensors`` or ``sae_weights.safetensors`` holding ``W_dec`` (F, d)), read one at a time.
    theta, eps: defaults of the returned :class:`Stability` (its p_hat/split accept any other value).
    anchor: ``"all"`` (every seed is an anchor; every directed pair) or one seed index.
    backend: ``auto`` | ``exact`` | ``faiss`` (see :func:`sae_fast.matching.choose_backend`; ``auto`` decides on
        the size of one pair, 2 F^2 d, and picks an IVF index when it picks faiss). ``match_kwargs``: for the
        exact backend ``dtype``, ``candidates``, ``tol``, ``block_rows``, ``block_cols``, ``kernel``; for faiss
        ``index`` (kind) and every :class:`~sae_fast.matching.FaissIndex` keyword (``nlist``, ``nprobe``,
        ``hnsw_m``, ``ef_construction``, ``ef_search``, ``graph_degree``, ``itopk_size``, ``use_gpu``,
        ``threads``, ``seed``); anything else raises TypeError. ``absolute``: match on |cos|.
    out: a directory; the result is saved there, progress is checkpointed every ``save_every`` seconds and
        when interrupted (an exception, Ctrl-C or SIGTERM), and a run found there is resumed at the next
        unfinished pair. Resuming checks the backend, index settings, d and a fingerprint of every decoder.
    recall_sample: with an approximate faiss index, recall@1 against exact float32 on this many random anchor
        rows per pair (default min(1000, F); 0 disables); the mean goes to ``info["recall_at_1"]``.
    cache_bytes: memory for normalised decoders kept between pairs (default: half the free GPU memory on CUDA,
        2 GiB elsewhere).
    stack: exact backend, seeds stacked into one sweep against an anchor (:func:`sae_fast.matching.match_many`:
        few large GEMMs instead of S^2/2 small ones); default: the saved run's, else :func:`default_stack`,
        lowered until every rank has work. Results do not depend on it.
    progress: a tqdm bar per pair. distributed: when torch.distributed is initialised, ranks split the pairs
        and the results are gathered on every rank (rank-private checkpoints go to ``out/rank{r}of{w}``).
    """
    if not -1.0 <= theta <= 1.0:
        raise ValueError(f"theta must be a cosine in [-1, 1], got {theta}")
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"eps must be in [0, 0.5), got {eps}")
    unknown = sorted(set(match_kwargs) - {*_INDEX_OPTIONS, *_EXACT_OPTIONS, "index"})
    if unknown:
        raise TypeError(f"stability_scores() got unexpected keyword arguments {unknown}; the exact backend takes "
                        f"{list(_EXACT_OPTIONS)}, faiss takes 'index' and {list(_INDEX_OPTIONS)}")
    if recall_sample is not None and (not isinstance(recall_sample, int) or recall_sample < 0):
        raise ValueError(f"recall_sample must be a non-negative int or None, got {recall_sample!r}")
    dev = resolve_device(device)
    seeds = SeedDecoders(decoders, dev, cache_bytes=cache_bytes, hookpoint=hookpoint)
    num_seeds, num_features = len(seeds), seeds.num_features
    if anchor == "all":
        anchors = list(range(num_seeds))
    elif isinstance(anchor, (int, np.integer)) and not isinstance(anchor, bool):
        if not 0 <= int(anchor) < num_seeds:
            raise ValueError(f"anchor must be 'all' or a seed index in [0, {num_seeds}), got {anchor}")
        anchors = [int(anchor)]
    else:
        raise ValueError(f"anchor must be 'all' or a seed index, got {anchor!r}")
    use_dist = distributed and dist_utils.get_world_size() > 1
    rank, world = (dist_utils.get_rank(), dist_utils.get_world_size()) if use_dist else (0, 1)

    out_dir = Path(out) if out is not None else None
    ckpt_dir = out_dir if (out_dir is None or world == 1) else out_dir / f"rank{rank}of{world}"
    prior = _load_prior(out_dir, ckpt_dir, world, seeds.names, anchors, num_features, absolute)
    saved = prior.info.get("settings") if prior is not None else None
    if backend == "auto" and prior is not None:  # a resumed run keeps the backend it started with
        # (runs saved before settings were recorded could only have been exact under "auto")
        chosen, reason = (saved or {}).get("backend", "exact"), "auto: the saved run's backend"
    else:
        chosen, reason = choose_backend(backend, dev, False, 2.0 * num_features**2 * seeds.d)
    settings = _run_settings(backend, chosen, seeds.d, match_kwargs, saved)
    # only a saved run can be resumed, so only then are the decoders fingerprinted
    fingerprints = [seeds.fingerprint(s) for s in range(num_seeds)] if out_dir is not None else None
    if prior is not None:
        _check_compatible(prior, seeds.names, anchors, num_features, absolute,
                          out_dir if ckpt_dir is None or prior.complete else ckpt_dir, settings, fingerprints)
        prior.theta, prior.eps = theta, eps
        if prior.complete:
            return prior
    ignored = sorted(k for k in match_kwargs if k not in (_EXACT_OPTIONS if chosen == "exact" else
                                                          (*_INDEX_OPTIONS, "index")))
    if ignored:
        log.warning("stability_scores: backend %s ignores %s", chosen, ignored)
    if prior is not None:
        state = prior
    else:
        shape = (len(anchors), num_seeds, num_features)
        state = Stability(torch.full(shape, math.nan), torch.full(shape, -1, dtype=torch.int32),
                          torch.zeros(shape[:2], dtype=torch.bool), anchors, seeds.names, theta, eps, absolute)
    state.info.update(settings=settings, fingerprints=fingerprints, picked_reason=reason)
    pos = {a: i for i, a in enumerate(anchors)}

    default = default_stack(num_seeds, num_features, seeds.d, seeds.cache_bytes)
    stack = _agree_stack(stack, state.info.get("stack"), default, use_dist)
    jobs = _jobs(num_seeds, anchors, chosen, stack=stack)
    while chosen == "exact" and len(jobs) < world and stack > 1:  # every rank gets work
        stack -= 1
        jobs = _jobs(num_seeds, anchors, chosen, stack=stack)
    exact_kwargs = {k: v for k, v in match_kwargs.items() if k in _EXACT_OPTIONS}
    index_opts = {k: v for k, v in settings.items() if k in _INDEX_OPTIONS}
    if "threads" in match_kwargs:
        index_opts["threads"] = match_kwargs["threads"]
    if chosen == "exact":
        state.info["stack"] = stack
    mine = dist_utils.shard(jobs, rank, world) if use_dist else jobs
    if use_dist:  # pairs a checkpoint holds that another rank owns under this split: that rank computes them
        owned = torch.zeros_like(state.done)
        for job in mine:
            for q, s in job.pairs:
                owned[pos[q], s] = True
        stale = state.done & ~owned
        state.done &= owned
        state.best_cos[stale] = math.nan
        state.best_j[stale] = -1
    todo = [job for job in mine if not all(bool(state.done[pos[q], s]) for q, s in job.pairs)]

    from tqdm.auto import tqdm

    total = sum(len(j.pairs) for j in mine)
    bar = tqdm(total=total, initial=sum(int(state.done[pos[q], s]) for j in mine for q, s in j.pairs),
               desc="stability pairs", unit="pair", disable=not progress or rank != 0)
    last_save = time.monotonic()
    t_start = time.perf_counter()
    index_cache: tuple[int, FaissIndex] | None = None
    stacked: tuple[tuple[int, ...], torch.Tensor] | None = None
    recalls: list[float] = []
    backend_desc = state.backend

    def checkpoint(force: bool = False) -> None:
        nonlocal last_save
        if ckpt_dir is not None and (force or time.monotonic() - last_save >= save_every):
            state.backend = backend_desc
            state.save(ckpt_dir)
            last_save = time.monotonic()

    try:
        with _Sigterm():
            for job in todo:
                if chosen == "exact":
                    if stacked is None or stacked[0] != job.block:
                        stacked = None  # free the previous block's matrix before building the next
                        rows = [seeds.get(s) for s in job.block]  # one seed: the cached tensor itself, no copy
                        stacked = (job.block, torch.cat(rows) if len(rows) > 1 else rows[0])
                        del rows
                    first = job.block.index(job.others[0])
                    rows = stacked[1][first * num_features:(first + len(job.others)) * num_features]
                    ms = match_many(seeds.get(job.query), rows, segment=num_features, both=job.both,
                                    absolute=absolute, device=dev, normalize=False, **exact_kwargs)
                    rescored = ms[0].info.get("rescored_rows", 0) + ms[0].info.get("rescored_cols", 0)
                    state.info["rescored"] = state.info.get("rescored", 0) + rescored  # near ties redone in fp32
                    new = sum(not bool(state.done[pos[q], s]) for q, s in job.pairs)
                    for s, m in zip(job.others, ms):
                        _store(state, pos, job.query, s, m.cos_ab[:, 0], m.index_ab[:, 0])
                        if job.both:
                            _store(state, pos, s, job.query, m.cos_ba[:, 0], m.index_ba[:, 0])
                    if job is todo[0]:  # the first sweep is the widest: its tiles describe the run
                        backend_desc = f"{ms[0].backend}, up to {stack} seeds stacked per sweep"
                    bar.update(new)
                    bar.set_postfix_str(f"{seeds.names[job.query]} <-> {len(job.others)} seeds")
                    checkpoint()
                    continue
                s = job.query
                if index_cache is None or index_cache[0] != s:
                    index_cache = None  # free the previous index first
                    index_cache = (s, FaissIndex(seeds.get(s).cpu(), settings["index"], **index_opts))
                for q, _ in job.pairs:
                    if bool(state.done[pos[q], s]):
                        continue
                    m = match(seeds.get(q), None, backend="faiss", absolute=absolute, index_b=index_cache[1],
                              recall_sample=recall_sample)
                    _store(state, pos, q, s, m.cos_ab[:, 0], m.index_ab[:, 0])
                    if "recall_at_1" in m.info:
                        recalls.append(m.info["recall_at_1"])
                        state.info["recall_rows_per_pair"] = m.info["recall_rows"]
                    backend_desc = m.backend
                    bar.update(1)
                    bar.set_postfix_str(f"{seeds.names[q]} -> {seeds.names[s]}")
                    checkpoint()
    except BaseException:
        checkpoint(force=True)
        raise
    finally:
        bar.close()
    state.backend = backend_desc
    state.info["seconds"] = state.info.get("seconds", 0.0) + time.perf_counter() - t_start
    if recalls:  # pooled with the pairs of earlier (interrupted) sessions
        n_old = state.info.get("recall_pairs", 0)
        mean_old = state.info.get("recall_at_1", 0.0)
        state.info["recall_at_1"] = float((mean_old * n_old + np.sum(recalls)) / (n_old + len(recalls)))
        state.info["recall_pairs"] = n_old + len(recalls)
    if use_dist:
        if ckpt_dir is not None:
            state.save(ckpt_dir)
        state = _gather(state)
    if out_dir is not None and (not use_dist or rank == 0):
        state.save(out_dir)
    return state


def _store(state: Stability, pos: dict[int, int], q: int, s: int, cos: torch.Tensor, idx: torch.Tensor) -> None:
    """Records the best match in seed s of every feature of anchor q."""
    p = pos[q]
    state.best_cos[p, s] = cos.float()
    state.best_j[p, s] = idx.to(torch.int32)
    state.done[p, s] = True


def _gather(state: Stability) -> Stability:
    """Merges the ranks' partial results (each pair computed by exactly one rank) on every rank."""
    done = state.done.clone()
    count_mine = done.sum()
    cos = torch.where(done.unsqueeze(-1), state.best_cos, torch.zeros(()))
    j = torch.where(done.unsqueeze(-1), state.best_j, torch.zeros((), dtype=torch.int32))
    count = done.to(torch.int32)
    for t in (cos, j, count):
        dist_utils.all_reduce_sum_(t)
    if int(count.max()) > 1:
        raise RuntimeError("a seed pair was computed by more than one rank")
    done = count > 0
    state.best_cos = torch.where(done.unsqueeze(-1), cos, torch.full((), math.nan))
    state.best_j = torch.where(done.unsqueeze(-1), j, torch.full((), -1, dtype=torch.int32))
    state.done = done
    seconds = dist_utils.all_gather_objects(state.info.get("seconds", 0.0))
    state.info["seconds_per_rank"] = seconds
    state.info["pairs_per_rank"] = dist_utils.all_gather_objects(int(count_mine))
    mine = (state.info.get("recall_at_1"), state.info.get("recall_pairs", 0))
    recall = [r for r in dist_utils.all_gather_objects(mine) if r[0] is not None and r[1]]
    if recall:  # pooled over ranks
        state.info["recall_pairs"] = sum(n for _, n in recall)
        state.info["recall_at_1"] = sum(r * n for r, n in recall) / state.info["recall_pairs"]
    return state


# ----------------------------------------------------------------------------------------------------------
# one-to-one variants (method.md §2)


def _dense_cos(A: ArrayLike, B: ArrayLike, absolute: bool, max_features: int) -> np.ndarray:
    a, b = as_unit_rows("A", A, "cpu"), as_unit_rows("B", B, "cpu")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"A and B must have the same d, got A {tuple(a.shape)} and B {tuple(b.shape)}")
    if max(a.shape[0], b.shape[0]) > max_features:
        raise ValueError(f"Hungarian matching needs a dense F_A x F_B matrix; F = {max(a.shape[0], b.shape[0])} "
                         f"exceeds max_features = {max_features} (raise it if you have the memory and time)")
    c = (a @ b.T).numpy().astype(np.float64)
    return np.abs(c) if absolute else c


def hungarian_match(A: ArrayLike, B: ArrayLike, *, absolute: bool = False,
                    max_features: int = 2**15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of the rows of A and B maximising the summed cosine (Hungarian / LAPJV via
    ``scipy.optimize.linear_sum_assignment``). Returns (rows of A, their partners in B, cosines), min(F_A, F_B)
    pairs. Dense: O(F^2) memory and up to O(F^3) time, so limited to ``max_features`` rows."""
    from scipy.optimize import linear_sum_assignment

    c = _dense_cos(A, B, absolute, max_features)
    rows, cols = linear_sum_assignment(c, maximize=True)
    return rows, cols, c[rows, cols].astype(np.float32)


def hungarian_argmax_iou(A: ArrayLike, B: ArrayLike, *, theta: float = 0.7, absolute: bool = False,
                         max_features: int = 2**15) -> float:
    """Agreement of the two rules on which features of A are matched: IoU of {i : max_j cos(i, j) >= theta}
    (many-to-one argmax) and {i : cos(i, hungarian(i)) >= theta}. 1.0 when both sets are empty."""
    c = _dense_cos(A, B, absolute, max_features)
    argmax_set = c.max(axis=1) >= theta
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(c, maximize=True)
    hung_set = np.zeros(c.shape[0], dtype=bool)
    hung_set[rows] = c[rows, cols] >= theta
    union = int((argmax_set | hung_set).sum())
    return 1.0 if union == 0 else int((argmax_set & hung_set).sum()) / union


def mutual_nearest_neighbours(A: ArrayLike, B: ArrayLike, *, theta: float | None = None, absolute: bool = False,
                              **match_kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j) where j is i's best row in B and i is j's best row in A (a partial 1:1 matching from one
    exact sweep, row and column maxima together), optionally only those with cosine >= theta.
    Returns (rows of A, rows of B, cosines)."""
    m = match(A, B, both=True, absolute=absolute, **match_kwargs)
    keep = m.mutual(theta).numpy()
    rows = np.nonzero(keep)[0]
    return rows, m.index_ab[rows, 0].numpy(), m.cos_ab[rows, 0].numpy()


def encoder_decoder_match(enc_A: ArrayLike, dec_A: ArrayLike, enc_B: ArrayLike, dec_B: ArrayLike, *,
                          theta: float = 0.7, absolute: bool = False,
                          max_features: int = 2**15) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The shared-feature rule of Paulo & Belrose (2025): Hungarian matching separately on encoder rows and on
    decoder rows; feature i of A is shared with feature j of B when both matchings pick j for i and both the
    encoder and the decoder cosines are >= theta. Encoders are given as (F, d) rows (feature directions; transpose
    SAELens's (d, F) ``W_enc``): each SAE's encoder and decoder must have one shape, and both SAEs one d.
    Returns (rows of A, partners in B, encoder cosines, decoder cosines)."""
    shapes = {name: tuple(getattr(x, "shape", ())) for name, x in
              (("enc_A", enc_A), ("dec_A", dec_A), ("enc_B", enc_B), ("dec_B", dec_B))}
    for enc, dec in (("enc_A", "dec_A"), ("enc_B", "dec_B")):
        if shapes[enc] != shapes[dec]:
            hint = (f"; {enc} looks like SAELens's (d, F) W_enc: pass W_enc.T"
                    if len(shapes[dec]) == 2 and shapes[enc] == shapes[dec][::-1] else "")
            raise ValueError(f"{enc} and {dec} must both have shape (F, d), got {enc} {shapes[enc]} and {dec} "
                             f"{shapes[dec]}{hint}")
    if len(shapes["dec_A"]) == 2 and len(shapes["dec_B"]) == 2 and shapes["dec_A"][1] != shapes["dec_B"][1]:
        raise ValueError(f"both SAEs must have the same d, got dec_A {shapes['dec_A']} and dec_B {shapes['dec_B']}")
    r_e, c_e, cos_e = hungarian_match(enc_A, enc_B, absolute=absolute, max_features=max_features)
    r_d, c_d, cos_d = hungarian_match(dec_A, dec_B, absolute=absolute, max_features=max_features)
    n = max(int(r_e.max(initial=-1)), int(r_d.max(initial=-1))) + 1
    part_e, part_d = np.full(n, -1), np.full(n, -1)
    ce, cd = np.full(n, -np.inf, np.float32), np.full(n, -np.inf, np.float32)
    part_e[r_e], ce[r_e] = c_e, cos_e
    part_d[r_d], cd[r_d] = c_d, cos_d
    rows = np.nonzero((part_e == part_d) & (part_e >= 0) & (ce >= theta) & (cd >= theta))[0]
    return rows, part_d[rows], ce[rows], cd[rows]


def pw_mcc(A: ArrayLike, B: ArrayLike, *, absolute: bool = False, max_features: int = 2**15) -> float:
    """Pairwise dictionary mean correlation coefficient (Song et al. 2025): the mean cosine of the
    Hungarian-matched decoder rows of two SAEs (signed unless ``absolute``). A per-pair summary in [-1, 1]."""
    _, _, cos = hungarian_match(A, B, absolute=absolute, max_features=max_features)
    return float(np.mean(cos, dtype=np.float64))
