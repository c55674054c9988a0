"""Masking ablation (method.md §3.1): explained variance after zeroing feature sets.

A set of latents is *masked* by zeroing their values in the code after encoding (after the TopK selection,
or in a ReLU / JumpReLU / gated SAE's sparse code; no re-selection), then decoding. ``EV = 1 - FVU`` with
``FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` on held-out activations. Sets compared: all stable,
all unstable, random sets of the same sizes, random sets matched in activation frequency, and the paper's
comparison of ``n`` stable versus ``ratio * n`` unstable features (``ratio = 4`` by default), each against
random sets of the same size.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch

from ..batching import batches, check_activations
from ._common import STABLE, UNSTABLE, ArrayLike, index_array
from .codes import SparseCoder, as_args, mask_code


def num_latents_of(sae: SparseCoder) -> int:
    """The dictionary size of an SAE-like object (attribute ``num_latents``, else the decoder's rows)."""
    for name in ("num_latents", "F"):
        if hasattr(sae, name):
            return int(getattr(sae, name))
    for name in ("W_dec", "decoder"):
        if hasattr(sae, name):
            w = getattr(sae, name)
            w = w.weight if hasattr(w, "weight") else w
            return int(w.shape[0])
    raise TypeError("sae must expose num_latents (or a W_dec of shape (num_latents, d))")


@torch.no_grad()
def masked_fvu(
    sae: SparseCoder, x: ArrayLike, masks: dict[str, ArrayLike], *, batch_size: int = 4096
) -> dict[str, float]:
    """FVU of the SAE on x with each named latent set zeroed after encoding; key "none" is the full SAE.

    All masks are evaluated in one pass over x (one encode per batch); any architecture (:mod:`.codes`).
    Memory: O(F) per mask plus one batch's encoding, O(batch_size·F).
    """
    xt = check_activations(x)
    F = num_latents_of(sae)
    device = xt.device
    mask_rows = {}
    for name, idx in masks.items():
        m = torch.zeros(F, dtype=torch.bool, device=device)
        m[torch.as_tensor(index_array(idx, F, f"masks[{name!r}]"), device=device)] = True
        mask_rows[name] = m
    mean = xt.double().mean(dim=0)
    total = float(((xt.double() - mean) ** 2).sum())
    if total <= 0:
        raise ValueError("activations have zero variance; FVU is undefined")
    err = {name: 0.0 for name in ["none", *mask_rows]}
    for xb in batches(xt, batch_size):
        code = sae.encode(xb)
        xd = xb.double()
        err["none"] += float(((sae.decode(*as_args(code)).double() - xd) ** 2).sum())
        for name, m in mask_rows.items():
            decoded = sae.decode(*as_args(mask_code(code, m)))
            err[name] += float(((decoded.double() - xd) ** 2).sum())
    return {name: e / total for name, e in err.items()}


def _frequency_matched(pool: np.ndarray, target: np.ndarray, freq: np.ndarray, rng: np.random.Generator,
                       bins: int = 20) -> np.ndarray:
    """A random subset of ``pool`` minus ``target``, of the target's size, with the target's frequency profile.

    Frequencies are cut into ``bins`` quantile bins (of the candidates); as many candidates as there are
    targets in each bin are drawn from it without replacement; a bin short of candidates is topped up with the
    remaining candidates closest in frequency to the target set's median (random among ties).
    """
    cand = np.setdiff1d(pool, target)
    if len(cand) < len(target):
        cand = np.asarray(pool)
    edges = np.unique(np.quantile(freq[cand], np.linspace(0, 1, bins + 1)[1:-1]))
    cand_bin = np.searchsorted(edges, freq[cand], side="right")
    want = np.bincount(np.searchsorted(edges, freq[target], side="right"), minlength=len(edges) + 1)
    chosen: list[np.ndarray] = []
    for b, count in enumerate(want):
        members = cand[cand_bin == b]
        chosen.append(rng.choice(members, min(count, len(members)), replace=False))
    picked = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    short = len(target) - len(picked)
    if short > 0:
        rest = np.setdiff1d(cand, picked)
        closeness = np.abs(freq[rest] - np.median(freq[target]))
        picked = np.concatenate([picked, rest[np.lexsort((rng.random(len(rest)), closeness))[:short]]])
    return picked.astype(np.int64)


class RandomDraws(TypedDict):
    """ΔEV of the random (or frequency-matched) same-size draws of one masked set."""

    delta_ev_mean: float
    delta_ev_std: float
    draws: int


class MaskingResult(TypedDict):
    """:func:`masking_study`: per masked set name (stable, unstable, stable_n, unstable_<ratio>n; the last two
    only when n > 0, the first two not with ``contrast_only``) its size, EV and ΔEV; ``random`` per
    ``<random_like|freqmatched_like>_<set>`` (frequency-matched draws only when ``freq`` is given)."""

    ev_full: float
    fvu_full: float
    n: int
    ratio: int
    sizes: dict[str, int]
    ev: dict[str, float]
    delta_ev: dict[str, float]
    random: dict[str, RandomDraws]


class SweepPoint(TypedDict):
    size: int
    delta_ev: float


class MaskingSweep(TypedDict):
    """:func:`delta_ev_sweep`: per group (stable, unstable, all) ΔEV at each mask size."""

    ev_full: float
    curves: dict[str, list[SweepPoint]]


def masking_study(
    sae: SparseCoder,
    x: ArrayLike,
    labels: ArrayLike,
    *,
    freq: ArrayLike | None = None,
    ratio: int = 4,
    n_random: int = 5,
    seed: int = 0,
    batch_size: int = 4096,
    contrast_only: bool = False,
) -> MaskingResult:
    """EV and ΔEV after masking stable, unstable and matched random sets (see the module docstring).

    Parameters
    ----------
    sae, x: the SAE and its held-out activations (N, d), streamed in batches of ``batch_size`` rows.
    labels: (F,) STABLE 1, UNSTABLE -1, NEITHER 0 (from ``analysis.stability.split``).
    freq: (F,) firing frequencies; when given, frequency-matched random sets are added.
    ratio, n_random, seed: ``n`` stable versus ``ratio * n`` unstable; random draws per set; their seed.
    contrast_only: mask only the n-vs-ratio·n sets and their random draws (not all stable / all unstable):
        what :func:`masking_contrasts` reads, at half the masks.

    Returns
    -------
    A dict of plain numbers: ``ev`` per set name, ``delta_ev`` = EV_full - EV_masked, set sizes, and random-set
    means and standard deviations over ``n_random`` draws. Memory: as :func:`masked_fvu`, O(F) per mask.
    """
    F = num_latents_of(sae)
    lab = np.asarray(labels).reshape(-1)
    if lab.shape != (F,):
        raise ValueError(f"labels must have shape ({F},), got {lab.shape}")
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    rng = np.random.default_rng(seed)
    stable = np.flatnonzero(lab == STABLE)
    unstable = np.flatnonzero(lab == UNSTABLE)
    n = int(min(len(stable), len(unstable) // ratio))
    everyone = np.arange(F)
    masks: dict[str, np.ndarray] = {} if contrast_only else {"stable": stable, "unstable": unstable}
    if n > 0:
        masks["stable_n"] = rng.choice(stable, n, replace=False)
        masks[f"unstable_{ratio}n"] = rng.choice(unstable, ratio * n, replace=False)
    f = None if freq is None else np.asarray(freq, dtype=np.float64).reshape(-1)
    if f is not None and f.shape != (F,):
        raise ValueError(f"freq must have shape ({F},), got {f.shape}")
    base = list(masks)  # the random draws below are made for these sets only
    for r in range(n_random):
        for name in base:
            size = len(masks[name])
            if size == 0:
                continue
            masks[f"random_like_{name}/{r}"] = rng.choice(everyone, size, replace=False)
            if f is not None:
                masks[f"freqmatched_like_{name}/{r}"] = _frequency_matched(everyone, masks[name], f, rng)
    fvu = masked_fvu(sae, x, masks, batch_size=batch_size)
    ev = {name: 1.0 - v for name, v in fvu.items()}
    out: dict = {
        "ev_full": ev["none"],
        "fvu_full": fvu["none"],
        "n": n,
        "ratio": ratio,
        "sizes": {name: len(idx) for name, idx in masks.items() if "/" not in name},
        "ev": {},
        "delta_ev": {},
        "random": {},
    }
    for name in masks:
        if "/" in name:
            continue
        out["ev"][name] = ev[name]
        out["delta_ev"][name] = ev["none"] - ev[name]
        for kind in ("random_like", "freqmatched_like"):
            draws = [ev["none"] - ev[k] for k in ev if k.startswith(f"{kind}_{name}/")]
            if draws:
                out["random"][f"{kind}_{name}"] = {"delta_ev_mean": float(np.mean(draws)),
                                                    "delta_ev_std": float(np.std(draws)), "draws": len(draws)}
    return out


CONTRASTS = ("stable_vs_unstable", "stable_vs_random", "stable_vs_freqmatched", "unstable_vs_random",
             "unstable_vs_freqmatched")
"""the ΔEV contrasts of :func:`masking_contrasts`"""


def masking_contrasts(result: dict) -> dict[str, float]:
    """The ΔEV contrasts of a :func:`masking_study` result (NaN where a set was empty or not drawn).

    ``stable_vs_unstable``: ΔEV(n stable) − ΔEV(ratio·n unstable); ``<set>_vs_random`` / ``<set>_vs_freqmatched``:
    ΔEV of that set minus the mean ΔEV of its random / frequency-matched same-size draws. Memory: O(1).
    """
    dev, rnd = result["delta_ev"], result["random"]
    sets = {"stable": "stable_n", "unstable": f"unstable_{result['ratio']}n"}
    nan = float("nan")
    out = {"stable_vs_unstable": dev.get(sets["stable"], nan) - dev.get(sets["unstable"], nan)}
    for short, name in sets.items():
        for kind in ("random", "freqmatched"):
            draws = rnd.get(f"{kind}_like_{name}")
            out[f"{short}_vs_{kind}"] = dev.get(name, nan) - draws["delta_ev_mean"] if draws else nan
    return {k: float(v) for k, v in out.items()}


def delta_ev_sweep(
    sae: SparseCoder,
    x: ArrayLike,
    labels: ArrayLike,
    sizes: tuple[int, ...] | None = None,
    *,
    seed: int = 0,
    batch_size: int = 4096,
) -> MaskingSweep:
    """ΔEV after masking random subsets of size m of the stable set, the unstable set and all latents, per m."""
    F = num_latents_of(sae)
    lab = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    groups = {"stable": np.flatnonzero(lab == STABLE), "unstable": np.flatnonzero(lab == UNSTABLE), "all": np.arange(F)}
    biggest = max(len(groups["stable"]), len(groups["unstable"]))
    if sizes is None:
        sizes = tuple(sorted({max(1, int(biggest * f)) for f in (0.05, 0.1, 0.25, 0.5, 1.0)}))
    masks = {}
    for name, idx in groups.items():
        for m in sizes:
            if 0 < m <= len(idx):
                masks[f"{name}/{m}"] = rng.choice(idx, m, replace=False)
    fvu = masked_fvu(sae, x, masks, batch_size=batch_size)
    rows = {name: [] for name in groups}
    for key, v in fvu.items():
        if key == "none":
            continue
        name, m = key.split("/")
        rows[name].append({"size": int(m), "delta_ev": v - fvu["none"]})
    return {"ev_full": 1 - fvu["none"], "curves": rows}
