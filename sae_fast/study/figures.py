"""The study report's figures: one PNG (bytes) per analysis, drawn from ``results.json`` and ``arrays.npz``.

Each ``_fig_*`` function draws one figure, or returns None when its analysis is absent from the results.
Memory: each figure holds O(bins + F) values for one seed's arrays (``freq``, ``labels``), nothing larger.
matplotlib is imported inside the functions: it is only needed when a report is drawn.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from .lookup import get_path as _get


def _png(fig: Any) -> bytes:
    """The figure as PNG bytes (110 dpi, tight box); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _fig_stability(results: dict, arrays: dict[str, np.ndarray], plt: Any) -> bytes | None:
    """Histograms of the anchor seed's p̂ and of the best cross-seed cosines."""
    st = results.get("stability", {}).get("anchor", {})
    if "p_hat_hist" not in st:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    h = st["p_hat_hist"]
    axes[0].stairs(h["counts"], h["edges"], fill=True)
    axes[0].set(xlabel="p̂ (anchor seed)", ylabel="features", title="stability p̂")
    if "best_cos_hist" in st:
        h = st["best_cos_hist"]
        axes[1].stairs(h["counts"], h["edges"], fill=True)
        axes[1].axvline(results["config"]["theta"], color="k", ls="--", lw=1)
        axes[1].set(xlabel="best cross-seed cosine", ylabel="(feature, seed) pairs", title="best cosines")
    return _png(fig)


def _fig_masking(results: dict, arrays: dict[str, np.ndarray], plt: Any) -> bytes | None:
    """ΔEV of masking each set after encoding, beside random sets of the same size."""
    m = results.get("masking")
    if not m:
        return None
    names = [n for n in ("stable", "unstable", "stable_n", f"unstable_{m['ratio']}n") if n in m["delta_ev"]]
    fig, ax = plt.subplots(figsize=(7, 3))
    xs = np.arange(len(names))
    ax.bar(xs - 0.27, [m["delta_ev"][n] for n in names], 0.27, label="masked set")
    for off, kind in ((0.0, "random_like"), (0.27, "freqmatched_like")):
        vals = [_get(m, f"random.{kind}_{n}.delta_ev_mean") for n in names]
        errs = [_get(m, f"random.{kind}_{n}.delta_ev_std") for n in names]
        if any(v is not None for v in vals):
            ax.bar(xs + off, [v or 0 for v in vals], 0.27, yerr=[e or 0 for e in errs],
                   label=kind.replace("_like", " random, same size"))
    ax.set_xticks(xs, [f"{n}\n({m['sizes'][n]})" for n in names])
    ax.set(ylabel="ΔEV (EV_full − EV_masked)", title="masking after encoding")
    ax.legend(fontsize=7)
    return _png(fig)


def _fig_masking_sweep(results: dict, arrays: dict[str, np.ndarray], plt: Any) -> bytes | None:
    """ΔEV against the number of latents masked, one curve per group."""
    sw = results.get("masking_sweep", {}).get("curves")
    if not sw:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, rows in sw.items():
        rows = sorted(rows, key=lambda r: r["size"])
        ax.plot([r["size"] for r in rows], [r["delta_ev"] for r in rows], "o-", label=name)
    ax.set(xlabel="latents masked", ylabel="ΔEV", title="ΔEV vs mask size (random subsets of each group)")
    ax.legend(fontsize=7)
    return _png(fig)


def _fig_frequency(results: dict, arrays: dict[str, np.ndarray], plt: Any) -> bytes | None:
    """The anchor seed's firing frequencies, one histogram per label (stable / unstable / neither)."""
    if "freq" not in arrays or "labels" not in arrays:
        return None
    a0 = results["config"]["anchor"]
    f, lab = arrays["freq"][a0], arrays["labels"][a0]
    fig, ax = plt.subplots(figsize=(5, 3))
    lo = np.log10(np.maximum(f, 1e-7))
    bins = np.linspace(lo.min(), max(lo.max(), lo.min() + 1e-3), 40)
    for value, name in ((1, "stable"), (-1, "unstable"), (0, "neither")):
        if (lab == value).any():
            ax.hist(lo[lab == value], bins=bins, histtype="step", label=name)
    ax.set(xlabel="log10 firing frequency (1e-7 = dead)", ylabel="latents", title="activation frequency")
    ax.legend(fontsize=7)
    return _png(fig)


def _fig_subspaces(results: dict, arrays: dict[str, np.ndarray], plt: Any) -> bytes | None:
    """Mean cos² of cross-seed top-r subspaces against r, for the sets, random subsets and Haar subspaces."""
    sub = results.get("subspaces", {}).get("ranks")
    if not sub:
        return None
    rs = sorted(sub, key=int)
    fig, ax = plt.subplots(figsize=(5, 3))
    for key, label in (("set", results["subspaces"]["set"] + " (full set)"), ("stable", "stable (full set)"),
                       ("random_subset", "random subsets, same size"), ("haar", "Haar-random")):
        vals = [_get(sub[r], f"{key}.mean_cos2") for r in rs]
        if any(v is not None for v in vals):
            ax.plot([int(r) for r in rs], [np.nan if v is None else v for v in vals], "o-", label=label)
    matched = results["subspaces"].get("matched", {})
    for name, m in matched.items():
        for key, style in (("set", "s--"), ("random", "x:")):
            vals = [_get(m, f"ranks.{r}.{key}.mean_cos2") for r in rs]
            if any(v is not None for v in vals):
                ax.plot([int(r) for r in rs], [np.nan if v is None else v for v in vals], style,
                        label=f"{name if key == 'set' else 'random'}, n = {m['n']}" + (f" ({name})" if key ==
                                                                                        "random" else ""))
    ax.set(xlabel="rank r", ylabel="mean cos² across seed pairs", title="cross-seed top-r subspaces")
    ax.legend(fontsize=7)
    return _png(fig)


def _fig_candidates(results: dict, arrays: dict[str, np.ndarray], plt: Any) -> bytes | None:
    """The candidates' mean best similarity in the other seeds, with the nulls' 99th percentiles."""
    c = results.get("candidates", {}).get("candidates")
    if not c:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist([x["mean_best_similarity"] for x in c], bins=20, range=(0, 1), label="candidates")
    for key, style, label in (("null", "--", "random latent subsets (same seed, size), 99th pct"),
                              ("null_haar", ":", "Haar-random subspaces, 99th pct")):
        null = _get(results, f"candidates.{key}.mean_best_similarity_q99")
        if null is not None:
            ax.axvline(null, color="k", ls=style, lw=1, label=label)
    ax.set(xlabel="mean best similarity in the other seeds", ylabel="candidates", title="candidate subspaces")
    ax.legend(fontsize=7)
    return _png(fig)


def _fig_synthetic(results: dict, arrays: dict[str, np.ndarray], plt: Any) -> bytes | None:
    """The synthetic check: latent-level p̂ and subspace-level recovery of planted groups."""
    syn = results.get("synthetic")
    if not syn:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    axes[0].bar(["isolated", "grouped"], [syn["p_hat_isolated"] or 0, syn["p_hat_grouped"] or 0])
    axes[0].set(ylabel="mean p̂ of latents", title="latent-level stability", ylim=(0, 1.05))
    axes[1].bar(["group vs truth", "group across seeds", "random (r/d)"],
                [syn["group_mean_cos2"] or 0, syn["group_cross_seed_mean_cos2"] or 0, syn["haar_mean_cos2"]])
    axes[1].set(ylabel="mean cos²", title="subspace-level recovery", ylim=(0, 1.05))
    axes[1].tick_params(axis="x", labelsize=7)
    return _png(fig)


FIGURES: dict[str, Callable[[dict, dict[str, np.ndarray], Any], bytes | None]] = {
    "stability": _fig_stability, "masking": _fig_masking, "masking_sweep": _fig_masking_sweep,
    "frequency": _fig_frequency, "subspaces": _fig_subspaces, "candidates": _fig_candidates,
    "synthetic": _fig_synthetic,
}
"""the drawing function of each figure, by figure name, in report order"""


def make_figures(results: dict, arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """The report's figures (PNG bytes by name) from results.json and arrays.npz; absent analyses are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, bytes] = {}
    for name, draw in FIGURES.items():
        png = draw(results, arrays, plt)
        if png is not None:
            figs[name] = png
    return figs
