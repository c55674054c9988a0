"""Stability over training (method.md §11): p̂ and the endpoint labels at every kept checkpoint of a multi-seed
run, the label transitions between consecutive checkpoints, and each latent's cosine to its own initialisation
against its final p̂.

A latent that is unstable at the end *and* still close to its initialisation is under-trained (it has not moved
far enough to meet a partner); one that moved far and is still unstable is the candidate for basis ambiguity.
The trainer keeps the snapshots with ``history="log"`` (steps 0, 1, 2, 4, … and the last) in
``<run>/seed<s>/history/step<N>/``; :func:`find_history` lists them and :func:`load_history` reads the decoders.

Memory: S decoders per checkpoint, one checkpoint at a time plus the initial and the previous one
(O(S·F·d)); p̂ by blocked GEMMs (no F × F matrix).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ..errors import DataError
from ._common import NEITHER, STABLE, UNSTABLE, ArrayLike, check_decoders
from .stability import anchor_scores, split

LABELS = (STABLE, NEITHER, UNSTABLE)
LABEL_NAMES = ("stable", "neither", "unstable")


def find_history(run_dir: str | Path) -> dict[int, list[Path]]:
    """{step: [snapshot folder of each seed]} for the steps every seed kept, seeds in numeric order.

    Raises DataError naming the folder when there are fewer than 2 seeds or no common step.
    """
    root = Path(run_dir)
    seeds = sorted((p for p in root.glob("seed*") if re.fullmatch(r"seed\d+", p.name) and p.is_dir()),
                   key=lambda p: int(p.name[4:]))
    steps: list[dict[int, Path]] = []
    for s in seeds:
        kept = {int(m.group(1)): p for p in (s / "history").glob("step*")
                if (m := re.fullmatch(r"step(\d+)", p.name)) and p.is_dir()}
        steps.append(kept)
    if len(seeds) < 2:
        raise DataError(f"{root}: expected at least 2 seed folders seed<s>/ with history/step<N>/ snapshots "
                        f"(train with history='log'), found {len(seeds)}")
    common = sorted(set.intersection(*(set(k) for k in steps)))
    if not common:
        raise DataError(f"{root}: no training step is kept by every seed in seed<s>/history/step<N>/ "
                        f"(train with history='log')")
    return {n: [k[n] for k in steps] for n in common}


def seed_history(folders: list[Path]) -> dict[int, list[Path]]:
    """{step: [snapshot folder of each seed]} for the steps that every one of the seed ``folders`` kept in
    ``<folder>/history/step<N>/`` ({} when some seed kept none or no step is common to all)."""
    kept = []
    for folder in folders:
        hist = Path(folder) / "history"
        kept.append({int(m.group(1)): p for p in (hist.glob("step*") if hist.is_dir() else [])
                     if (m := re.fullmatch(r"step(\d+)", p.name)) and p.is_dir()})
    common = sorted(set.intersection(*(set(k) for k in kept))) if kept else []
    return {n: [k[n] for k in kept] for n in common}


def load_history(history: dict[int, list[Path]]) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(step, decoders of every seed) in step order, one checkpoint at a time."""
    from ..checkpoint import load_decoder

    for step in sorted(history):
        yield step, [load_decoder(p).float().numpy().copy() for p in history[step]]


def transitions(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(3, 3) counts of latents going from label LABELS[i] to LABELS[j] (rows: before)."""
    out = np.zeros((3, 3), dtype=np.int64)
    for i, a in enumerate(LABELS):
        for j, b in enumerate(LABELS):
            out[i, j] = int(np.sum((before == a) & (after == b)))
    return out


def over_training(
    checkpoints: Iterator[tuple[int, list[ArrayLike]]],
    *,
    theta: float = 0.7,
    eps: float = 0.05,
    moved_below: float = 0.9,
) -> dict:
    """p̂, labels and transitions over training, and cosine to initialisation vs final p̂.

    Parameters
    ----------
    checkpoints: (step, S decoders (F, d)) in increasing step order; the first is the initialisation.
    theta, eps: match threshold and endpoint split.
    moved_below: a latent whose final decoder has cosine < moved_below to its initial one has "moved".

    Returns
    -------
    ``{"steps": [...], "per_step": [{"step", "p_hat_mean", "share_stable", "share_unstable",
    "share_neither"}], "transitions": [{"from", "to", "counts" (3×3, rows/cols stable, neither, unstable)}],
    "final": {"spearman_cos_init_vs_p_hat", "quadrants": {...}}, "cos_to_init": (S, F), "p_hat": (S, F),
    "labels": (S, F)}`` (the last three for the final checkpoint).
    """
    first = prev_labels = prev_step = None
    out: dict = {"steps": [], "per_step": [], "transitions": [], "theta": theta, "eps": eps}
    p = labels = decs = None
    for step, raw in checkpoints:
        decs = check_decoders(list(raw))
        if first is None:
            first = decs
        elif [d.shape for d in decs] != [d.shape for d in first]:
            raise DataError(f"the decoders at step {step} differ in shape from the first checkpoint's")
        p = anchor_scores(decs, theta=theta).p_hat
        labels = np.stack([split(row, eps) for row in p])
        out["steps"].append(int(step))
        out["per_step"].append({"step": int(step), "p_hat_mean": float(p.mean()),
                                **{f"share_{n}": float((labels == lab).mean()) for lab, n in zip(LABELS, LABEL_NAMES)}})
        if prev_labels is not None:
            out["transitions"].append({"from": prev_step, "to": int(step),
                                       "counts": transitions(prev_labels, labels).tolist()})
        prev_labels, prev_step = labels, int(step)
    if first is None or p is None:
        raise DataError("no checkpoints to analyse")
    cos = np.stack([np.sum(a * b, axis=1) for a, b in zip(first, decs)])  # (S, F) unit rows
    out.update(cos_to_init=cos, p_hat=p, labels=labels)
    moved = cos < moved_below
    quad = {f"{'moved' if mv else 'unmoved'}_{n}": float(np.mean((moved == mv) & (labels == lab)))
            for mv in (True, False) for lab, n in zip(LABELS, LABEL_NAMES)}
    rho = spearmanr(cos.reshape(-1), p.reshape(-1))[0] if len(out["steps"]) > 1 else float("nan")
    out["final"] = {"spearman_cos_init_vs_p_hat": float(rho), "quadrants": quad, "moved_below": moved_below}
    return out
