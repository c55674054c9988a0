"""The study's report: a self-contained HTML page (PNG plots embedded as base64) and a markdown twin.

Every number comes from ``results.json`` (or, for plots, ``arrays.npz``) in the study folder, and every table
names the JSON path of its numbers, so each figure can be traced to a saved artifact. A number a table asks for
that results.json lacks is an error (:class:`~sae_fast.study.typed.MissingResultError`, naming the path and the
step), never a silently dropped row: rows of optional results (a refit, a splice, a set) are asked for only when
the step's typed result says they exist; a stored null shows as "–". The figures are drawn in
:mod:`.figures` (``make_figures`` stays importable from here); dotted-path look-ups live in :mod:`.lookup`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import lookup
from .figures import make_figures
from .lookup import format_value as _fmt
from .lookup import get_path as _get
from .lookup import require as _need
from .typed import MissingResultError

Block = tuple[str, Any]  # ("h2", text) | ("p", text) | ("table", (header, rows, source)) | ("fig", (name, png))


def _table(results: dict, rows: list[tuple[str, str]], header: tuple[str, str] = ("quantity", "value")) -> Block:
    """Rows of (label, JSON path); the value is looked up and the path shown as its source. A path not in the
    results raises :class:`MissingResultError`; stored nulls show as "–"."""
    body = [(label, _fmt(_need(results, path)), path) for label, path in rows]
    return ("table", ((*header, "source (results.json)"), body))


def _columns(results: dict, prefixes: list[str], columns: list[tuple[str, str]]) -> Block:
    """One row per JSON prefix, one column per (header, key): cell = value at ``prefix.key``. The last column
    names the prefix; each header ends with its key in brackets so every cell stays traceable."""
    return lookup.columns(results, prefixes, columns)


def _lm_loss_blocks(results: dict) -> list[Block]:
    """The next-token loss with the (masked) reconstruction spliced in, or why it is not reported."""
    lm = _need(results, "lm_loss")
    if "masks" not in lm:  # the skipped variant
        return [("p", "Language-model loss with the masked reconstruction spliced in: not computed — "
                      + html.escape(str(lm.get("skipped", "no reason recorded"))) + ".")]
    model, hook = html.escape(str(lm.get("model", "the model"))), html.escape(str(lm.get("hook")))
    B: list[Block] = [("p", f"Next-token loss of {model} with the SAE's reconstruction spliced in at {hook} on "
                            "every real, non-special token (the tokens the SAE is trained on), latents masked after "
                            "encoding as above; mean cross-entropy in nats per predicted token, padding excluded. "
                            "Mask 'none' is the unmasked reconstruction; Δ vs clean = loss − clean loss; Δ vs "
                            "reconstruction = loss − the unmasked reconstruction's loss.")]
    B.append(_table(results, [("texts", "lm_loss.num_texts"), ("predicted tokens", "lm_loss.num_tokens"),
                              ("clean loss (no splice)", "lm_loss.clean")]))
    B.append(_columns(results, [f"lm_loss.masks.{name}" for name in lm["masks"]], [
        ("mask", "name"), ("latents masked", "size"), ("loss", "loss"), ("Δ vs clean", "delta_vs_clean"),
        ("Δ vs reconstruction", "delta_vs_recon")]))
    return B


def _section_header(results: dict, figs: dict[str, bytes], snippets: dict | None) -> list[Block]:
    """The title, the run's description and the main settings."""
    B: list[Block] = [("h1", "Seed-dependence study")]
    src = results.get("source", {})
    B.append(("p", f"{src.get('num_seeds', '?')} seeds ({', '.join(map(str, src.get('seeds', [])))}); "
                   f"{src.get('architecture', 'topk')} SAEs, d = {src.get('d')}, F = {src.get('num_latents')}, "
                   f"k = {src.get('k') if src.get('k') is not None else 'none (not a TopK SAE)'}; "
                   f"{src.get('kind', '')}. "
                   f"Held-out tokens: {src.get('eval_tokens')}. Method: Gerasimov et al. (2026) as restated in "
                   "docs/method.md; choices the paper leaves open are parameters (results.json → config)."))
    rows = [("theta", "config.theta"), ("eps", "config.eps"), ("anchor seed", "config.anchor")]
    if "stability" in results:  # the stability step ran
        rows.append(("p̂ resolution (1 / comparisons)", "stability.p_hat_resolution"))
    B.append(_table(results, rows))
    topk_only = results.get("topk_only") or {}
    if topk_only:
        B.append(("p", "Parts that assume a TopK SAE (a fixed k), not computed for these seeds (results.json → "
                       "topk_only): " + " ".join(f"{html.escape(k)}: {html.escape(v)}." for k, v in topk_only.items())
                  + " Every other analysis reads the seeds' own sparse codes."))
    return B


def _section_stability(results: dict, figs: dict[str, bytes], snippets: dict | None) -> list[Block]:
    """Section 1: stability."""
    B: list[Block] = []
    B.append(("h2", "1. Stability"))
    B.append(_table(results, [
        ("share stable (anchor)", "stability.anchor.share_stable"),
        ("share unstable (anchor)", "stability.anchor.share_unstable"),
        ("share neither (anchor)", "stability.anchor.share_neither"),
        ("mean p̂ (anchor)", "stability.anchor.p_hat_mean"),
        ("share stable (all anchors)", "stability.all_anchors.share_stable"),
        ("share unstable (all anchors)", "stability.all_anchors.share_unstable"),
        ("mean best cosine", "stability.anchor.best_cos_mean"),
    ]))
    if "stability" in figs:
        B.append(("fig", ("stability", figs["stability"])))
    return B


def _section_masking(results: dict, figs: dict[str, bytes], snippets: dict | None) -> list[Block]:
    """Section 2: masking, splices and the LM loss."""
    B: list[Block] = []
    B.append(("h2", "2. Function: masking"))
    B.append(("p", "Latents are zeroed in the code after encoding (after the TopK selection for TopK SAEs; no "
                   "re-selection); EV = 1 − FVU on held-out activations; ΔEV = EV_full − EV_masked. Random sets "
                   "have the same size (and, for 'freqmatched', the same firing-frequency profile)."))
    m = _need(results, "masking")
    rows = [("EV of the full SAE", "masking.ev_full"), ("FVU of the full SAE", "masking.fvu_full"),
            ("n: stable latents masked in the n-vs-ratio·n comparison", "masking.n"),
            ("ratio: unstable latents masked = ratio × n", "masking.ratio")]
    for name in m["delta_ev"]:
        rows.append((f"ΔEV masking {name} ({_fmt(_get(m, f'sizes.{name}'))} latents)", f"masking.delta_ev.{name}"))
        for kind in ("random_like", "freqmatched_like"):
            if f"{kind}_{name}" in m["random"]:  # the draws made for this set
                rows.append((f"   {kind.replace('_like', '')} same-size ΔEV (mean)",
                             f"masking.random.{kind}_{name}.delta_ev_mean"))
    B.append(_table(results, rows))
    for key in ("masking", "masking_sweep"):
        if key in figs:
            B.append(("fig", (key, figs[key])))
    B.extend(_lm_loss_blocks(results))
    sp = results.get("splice")
    if sp:
        B.append(("p", "Embedding distortion: the reconstruction is spliced in after the hooked block of the "
                       "sentence-embedding model and the distortion 1 − cos of its mean-pooled sentence embedding "
                       "is measured (0 = unchanged)."))
        B.append(_table(results, [(f"embedding distortion, {'reconstruction only' if k == 'none' else 'masking ' + k}"
                                   f" ({_fmt(_get(sp, f'sizes.{k}'))} latents)" if k != "none" else
                                   "embedding distortion, unmasked reconstruction", f"splice.distortion.{k}")
                                  for k in sp["distortion"]]))
    return B


def _section_frequency(results: dict, figs: dict[str, bytes], snippets: dict | None) -> list[Block]:
    """Section 3: firing frequency and snippets."""
    B: list[Block] = []
    B.append(("h2", "3. Activation statistics"))
    B.append(_table(results, [
        ("mean firing frequency, stable (% of tokens)", "frequency.anchor.stable.mean_percent"),
        ("mean firing frequency, unstable (% of tokens)", "frequency.anchor.unstable.mean_percent"),
        ("median firing frequency, stable (% of tokens)", "frequency.anchor.stable.median_percent"),
        ("median firing frequency, unstable (% of tokens)", "frequency.anchor.unstable.median_percent"),
        ("mean firing frequency, all latents (% of tokens)", "frequency.anchor.all.mean_percent"),
        ("k / F (%)", "frequency.k_over_F_percent"),
        ("dead share (never fires on held-out), unstable", "frequency.anchor.unstable.dead_share"),
        ("dead share, all", "frequency.anchor.all.dead_share"),
    ]))
    B.append(("p", "Paper (GPT-2 small, [S1]): ≈0.44 % of tokens for stable vs ≈0.18 % for unstable features "
                   "(k / F = 0.39 % there)."))
    if "frequency" in figs:
        B.append(("fig", ("frequency", figs["frequency"])))
    if results.get("snippets_skipped"):
        B.append(("p", "Top-activating snippets: not computed — " + html.escape(results["snippets_skipped"]) + "."))
    if snippets:
        B.append(("h3", "Top-activating snippets (snippets.json)"))
        for group in ("stable", "unstable"):
            for item in snippets.get(group, []):
                ex = " · ".join(e["text"] for e in item["examples"][:3])
                B.append(("p", f"<b>{group} latent {item['latent']}</b> (p̂ {item['p_hat']:.2f}, fires on "
                               f"{100 * item['freq']:.3g} % of tokens): {html.escape(ex)}"))
    return B


def _section_geometry(results: dict, figs: dict[str, bytes], snippets: dict | None) -> list[Block]:
    """Section 4: effective rank."""
    B: list[Block] = []
    B.append(("h2", "4. Geometry"))
    er = _need(results, "effective_rank")
    B.append(("p", f"Normalised entropy effective rank ER/d of unit decoder rows, each set subsampled to n = "
                   f"{er.get('n')} latents (d = {er.get('d')}). Paper (GPT-2, [S1]): ≈0.80 stable vs ≈0.60 unstable."
                   + (f" Caution: n < d here, so ER/d cannot exceed n/d = {er['n'] / er['d']:.3g}; compare "
                      "ER/min(n, d) of each set with that of random latents at the same n (and its spread) "
                      "instead. More seeds or longer training give larger stable sets."
                      if er.get("n") and er.get("d") and er["n"] < er["d"] else "")))
    er_rows = []
    for key, label in (("effective_rank", "ER"), ("effective_rank_pr", "participation ratio")):
        block = _need(results, key)
        for name in [*block["sets"], "random"]:  # the sets measured, then the random baseline
            path = f"{key}.sets.{name}" if name != "random" else f"{key}.random"
            what = name if name != "random" else "random latents, same n"
            er_rows += [(f"{label}/d {what}", f"{path}.er_over_d_mean"),
                        (f"{label}/min(n, d) {what} (mean)", f"{path}.er_over_min_nd_mean"),
                        (f"{label}/min(n, d) {what} (std over subsamples)", f"{path}.er_over_min_nd_std")]
    B.append(_table(results, er_rows))
    return B


def _section_subspaces(results: dict, figs: dict[str, bytes], snippets: dict | None) -> list[Block]:
    """Cross-seed subspaces."""
    B: list[Block] = []
    sub = _need(results, "subspaces")
    B.append(("h3", f"Cross-seed reproducibility of the {sub.get('set', '')} subspace"))
    rows = []
    for r in sorted(sub["ranks"], key=int):
        for key in ("set", "stable", "random_subset", "haar"):
            if key in sub["ranks"][r]:  # stable / random_subset only where they were measured
                rows.append((f"r = {r}: mean cos², {key}", f"subspaces.ranks.{r}.{key}.mean_cos2"))
        rows.append((f"r = {r}: energy captured, {sub.get('set')}", f"subspaces.ranks.{r}.set.energy"))
    B.append(_table(results, rows))
    matched = sub["matched"]
    if matched:
        B.append(("p", "Matched null: each seed's set and, as the null, random live latents of the same seed are "
                       "subsampled to a common n (at most F/4), several times; mean ± spread over the draws and "
                       "z = (set − random) / √(spread_set² + spread_random²)."))
        mrows = []
        for name, m in matched.items():
            mrows.append((f"{name}: common n", f"subspaces.matched.{name}.n"))
            mrows.append((f"{name}: draws", f"subspaces.matched.{name}.draws"))
            mrows.append((f"{name}: share of F in the set (mean over seeds)", f"subspaces.matched.{name}.share_of_F"))
            for r in sorted(m["ranks"], key=int):
                base = f"subspaces.matched.{name}.ranks.{r}"
                mrows += [(f"{name}, r = {r}: mean cos², set", f"{base}.set.mean_cos2"),
                          (f"{name}, r = {r}: spread over draws, set", f"{base}.set.mean_cos2_spread"),
                          (f"{name}, r = {r}: mean cos², random latents", f"{base}.random.mean_cos2"),
                          (f"{name}, r = {r}: spread over draws, random", f"{base}.random.mean_cos2_spread"),
                          (f"{name}, r = {r}: z-score (mean cos²)", f"{base}.z_mean_cos2")]
        B.append(_table(results, mrows))
    for name in sub["large_sets"]:
        B.append(("p", f"<b>Warning</b>: the {name} set holds more than half of the latents, so a random subset of "
                       "its size is nearly the same set; trust the matched (subsampled) comparison above, not the "
                       "full-set one."))
    if "subspaces" in figs:
        B.append(("fig", ("subspaces", figs["subspaces"])))
    return B


def _section_classifier(results: dict, figs: dict[str, bytes], snippets: dict | None) -> list[Block]:
    """The stability classifier."""
    B: list[Block] = []
    B.append(("h3", "Stability classifier (logistic regression on decoder rows, train on one seed, test on others)"))
    clf = _need(results, "classifier")
    if not clf["pairs"]:
        B.append(("p", "Not measured: no seed's labels had both classes to train on (results.json → "
                       "classifier.pairs is empty)."))
        return B
    rows = [("F1 stable class", "classifier.mean.f1_stable"), ("F1 unstable class", "classifier.mean.f1_unstable"),
            ("balanced accuracy", "classifier.mean.balanced_accuracy"),
            ("majority-class accuracy", "classifier.mean.majority_accuracy")]
    if "projection_balanced_accuracy" in clf["mean"]:  # the baseline needs an unstable subspace of rank >= 1
        rows.append(("projection-energy baseline, balanced accuracy", "classifier.mean.projection_balanced_accuracy"))
    B.append(_table(results, rows))
    B.append(("p", "Paper ([S1]): F1 ≈ 0.67–0.73 (positive class unconfirmed, both given)."))
    return B


def _section_candidates(results: dict, figs: dict[str, bytes], snippets: dict | None) -> list[Block]:
    """Candidate subspaces."""
    B: list[Block] = []
    B.append(("h3", "Candidate subspaces (beyond the paper)"))
    a0 = int(_need(results, "config.anchor"))
    cands = _need(results, "candidates.candidates")
    rows = [(f"candidates of the anchor (seed {a0})", f"candidates.per_seed.{a0}.num_candidates"),
            ("mean reproducibility score", "candidates.score_mean"),
            ("share of candidates reproduced (score >= min_score)", "candidates.reproduced_share"),
            ("share reproduced and beating the subset null (p <= alpha)", "candidates.reproducible_share"),
            ("mean best similarity in another seed (mean over candidates)", "candidates.mean_best_similarity")]
    if cands:  # the nulls are drawn for the candidates: none without them
        rows += [("subset null (random latents, same seed and size): mean score", "candidates.null.score_mean"),
                 ("subset null: mean best similarity", "candidates.null.mean_best_similarity"),
                 ("subset null: its 99th percentile", "candidates.null.mean_best_similarity_q99"),
                 ("Haar null (random subspaces, same ranks): mean score", "candidates.null_haar.score_mean"),
                 ("Haar null: mean best similarity", "candidates.null_haar.mean_best_similarity")]
    rows += [(f"anchor (seed {a0}): share of the set in a reproducible subspace",
              f"candidates.per_seed.{a0}.share_in_reproducible"), ("clustering affinity", "candidates.params.method")]
    B.append(_table(results, rows))
    if cands:
        def num(value: object, missing: float) -> float:  # None and NaN (no other seed to compare) sort last
            v = float(value) if isinstance(value, (int, float)) else math.nan
            return missing if math.isnan(v) else v

        top = sorted(range(len(cands)), key=lambda c: (-num(cands[c].get("score"), -1.0),
                                                       num(cands[c].get("p_value"), 2.0),
                                                       -num(cands[c].get("mean_best_similarity"), -1.0)))[:10]
        B.append(("p", "Top candidates (arrays.npz → candidate_id / candidate_score give the candidate of every "
                       "(seed, latent)): the latents listed are unstable one by one but span a subspace that "
                       "recurs in other seeds when the score is high and p (against random latent subsets of the "
                       "same seed and size) is small."))
        B.append(_columns(results, [f"candidates.candidates.{c}" for c in top], [
            ("seed", "seed"), ("latents", "latents"), ("rank", "rank"), ("score", "score"),
            ("mean best similarity", "mean_best_similarity"), ("subset null", "null_similarity"),
            ("p", "p_value")]))
    if "candidates" in figs:
        B.append(("fig", ("candidates", figs["candidates"])))
    return B


def _pooling_rows(pool: dict) -> list[tuple[str, str]]:
    """The pooling table's rows: those of a refit, a fine-tuning or a saved pool only when the typed result holds
    them (``refit_steps`` / ``finetune_steps`` > 0 with training rows; a save folder)."""
    pooled, base = pool["pooled"], pool["pooled_base"]
    refit, tuned = "ev_refit" in pooled, "finetune" in pooled
    rows = [("pool seeds / held-out seeds", "pooling.num_pool_seeds"), ("held-out seeds", "pooling.num_heldout_seeds"),
            ("unique features in the pool", "pooling.num_unique_features"),
            ("EV single seed (mean)", "pooling.single_ev_mean")]
    rows += [("EV base seed after the same encoder refit (control)", "pooling.single_refit.ev_refit")] if refit else []
    rows += [("EV pooled, ranked by recurrence", "pooling.pooled.ev")]
    rows += [("… after encoder refit", "pooling.pooled.ev_refit")] if refit else []
    rows += [("EV pooled, base seed + recurring features", "pooling.pooled_base.ev")]
    rows += [("… after encoder refit", "pooling.pooled_base.ev_refit")] if refit else []
    rows += [("… latents taken from other seeds", "pooling.pooled_base.latents_from_other_seeds")]
    if tuned:
        rows += [("EV after fine-tuning every parameter: base seed (control)", "pooling.single_refit.finetune.ev"),
                 ("… ranked pool", "pooling.pooled.finetune.ev"), ("… base pool", "pooling.pooled_base.finetune.ev"),
                 ("mean p̂ after that fine-tuning: base seed (control)", "pooling.single_refit.finetune.p_hat_mean"),
                 ("… ranked pool", "pooling.pooled.finetune.p_hat_mean"),
                 ("… base pool", "pooling.pooled_base.finetune.p_hat_mean")]
    rows += [("mean p̂ vs held-out seeds, single (mean)", "pooling.single_p_hat_mean_mean"),
             ("mean p̂ vs held-out seeds, pooled ranked", "pooling.pooled.p_hat_mean"),
             ("mean p̂ vs held-out seeds, pooled base", "pooling.pooled_base.p_hat_mean"),
             ("share stable vs held-out, single (mean)", "pooling.single_share_stable_mean"),
             ("share stable vs held-out, pooled ranked", "pooling.pooled.share_stable"),
             ("share stable vs held-out, pooled base", "pooling.pooled_base.share_stable")]
    rows += [("base pool saved (sparsify layout) at", "pooling.pooled_base.saved.path")] if "saved" in base else []
    rows += [("ranked pool saved at", "pooling.pooled.saved.path")] if "saved" in pooled else []
    return rows


def _section_pooling(results: dict, figs: dict[str, bytes], snippets: dict | None) -> list[Block]:
    """Section 5: pooling."""
    B: list[Block] = []
    B.append(("h2", "5. Pooling unique features across seeds"))
    pool = _need(results, "pooling")
    if "skipped" in pool:  # the skipped variant
        B.append(("p", "Skipped: " + html.escape(pool["skipped"])))
        return B
    B.append(_table(results, _pooling_rows(pool)))
    refit = "single_refit" in pool
    B.append(("p", f"Ranked: the target size of unique features by {pool['ranked_by']} "
                   "(frequencies measured on training rows, not on the rows EV is scored on), from all pool "
                   "seeds. Base: the base seed's dictionary in which every feature recurring in other pool "
                   "seeds but not in the base replaces the base latent nearest to it (with two pool seeds: the "
                   "base seed itself). "
                   + ("The base seed gets the same encoder refit and fine-tuning as the control. " if refit else
                      "No refit or fine-tuning was run: the pools are scored as built. ")
                   + "Stability is measured against seeds not used to build the pool. "
                   + html.escape(pool["note"])))
    return B


def _section_synthetic(results: dict, figs: dict[str, bytes], snippets: dict | None) -> list[Block]:
    """Section 6: synthetic ground truth."""
    B: list[Block] = []
    if "synthetic" in results:
        B.append(("h2", "6. Synthetic ground truth"))
        B.append(("p", "Isolated sparse features plus groups living in shared low-rank subspaces with no preferred "
                       "basis (sae_fast.synthetic; config in results.json → synthetic.config)."))
        B.append(_table(results, [
            ("isolated features recovered (cos >= 0.9)", "synthetic.isolated_recovered_share"),
            ("isolated features: activation MCC (Hungarian-matched mean correlation)", "synthetic.isolated_mcc"),
            ("mean p̂ of isolated latents", "synthetic.p_hat_isolated"),
            ("mean p̂ of grouped latents", "synthetic.p_hat_grouped"),
            ("group subspace vs truth, mean cos²", "synthetic.group_mean_cos2"),
            ("group subspace across seeds, mean cos²", "synthetic.group_cross_seed_mean_cos2"),
            ("median largest principal angle (rad)", "synthetic.group_max_angle_median"),
            ("random baseline mean cos² (r/d)", "synthetic.haar_mean_cos2"),
            ("no assignment: group energy in the top span of the non-stable latents",
             "synthetic.nonstable_span.group_energy"),
            ("… isolated-feature energy in that span", "synthetic.nonstable_span.isolated_energy"),
            ("… random span of the same rank", "synthetic.nonstable_span.haar"),
            ("candidate subspaces: mean reproducibility score", "synthetic.candidates.score_mean"),
            ("candidate subspaces: mean best similarity", "synthetic.candidates.mean_best_similarity"),
            ("… subset null (random latents, same seed and size)",
             "synthetic.candidates.null_subset_mean_best_similarity"),
            ("candidate subspaces: subset null score", "synthetic.candidates.null_subset_score_mean"),
            ("candidate subspaces: Haar null score", "synthetic.candidates.null_haar_score_mean"),
            ("non-stable grouped latents in a reproducible candidate",
             "synthetic.candidates.nonstable_grouped_in_reproducible"),
            ("non-stable other latents in a reproducible candidate",
             "synthetic.candidates.nonstable_other_in_reproducible"),
        ]))
        if "synthetic" in figs:
            B.append(("fig", ("synthetic", figs["synthetic"])))
    return B


def _section_timings(results: dict, figs: dict[str, bytes], snippets: dict | None) -> list[Block]:
    """Timings of the steps."""
    B: list[Block] = []
    B.append(("h2", "Timings (seconds)"))
    B.append(_table(results, [(k, f"timings_seconds.{k}") for k in results.get("timings_seconds", {})]))
    return B


SECTIONS: dict[str, Callable[[dict, dict[str, bytes], dict | None], list[Block]]] = {
    "stability": _section_stability, "masking": _section_masking, "frequency": _section_frequency,
    "geometry": _section_geometry, "subspaces": _section_subspaces, "classifier": _section_classifier,
    "candidates": _section_candidates, "pooling": _section_pooling, "synthetic": _section_synthetic,
}
"""the report section of each study step, by step name, in report order"""


def render_section(step: str, render: Callable[[], list[Block]]) -> list[Block]:
    """``render()``, the report section of study step ``step``; a result it lacks raises a
    :class:`MissingResultError` that names the step and the JSON path."""
    try:
        return render()
    except MissingResultError as err:
        raise MissingResultError(f"the report section of study step {step!r} needs a result that is missing: {err} "
                                 f"(rerun the study with --redo {step})", err.path) from err


def ran_steps(results: dict) -> list[str]:
    """The steps whose results are in ``results`` (those with a timing: the steps that ran or were reused)."""
    return list(results.get("timings_seconds", {}))


def header_blocks(results: dict) -> list[Block]:
    """The report's title, the run's description and the main settings."""
    return _section_header(results, {}, None)


def timing_blocks(results: dict) -> list[Block]:
    """The steps' timings, the report's last section."""
    return _section_timings(results, {}, None)


def build_blocks(results: dict, figs: dict[str, bytes], snippets: dict | None = None, *,
                 sections: list[str] | None = None, opening: list[Block] | None = None) -> list[Block]:
    """The report's content: the header, ``opening`` (e.g. a verdict table), then the ``sections`` in report
    order (default: the sections of the steps that ran, :func:`ran_steps`), then the timings. A number a section
    asks for that ``results`` lacks raises :class:`MissingResultError` naming its step and JSON path."""
    if sections is None:
        sections = ran_steps(results)
    B = _section_header(results, figs, snippets) + list(opening or [])
    for name in SECTIONS:
        if name in sections:
            B += render_section(name, lambda name=name: SECTIONS[name](results, figs, snippets))
    return B + _section_timings(results, figs, snippets)


def _md(blocks: list[Block]) -> str:
    out = []
    for kind, val in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + val)
        elif kind == "p":
            out.append(html.unescape(val.replace("<b>", "**").replace("</b>", "**")))
        elif kind == "table":
            header, rows = val
            out.append("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
            cell = lambda i, c, n: f"`{c}`" if i == n - 1 else str(c)
            out[-1] += "".join("\n| " + " | ".join(cell(i, c, len(r)) for i, c in enumerate(r)) + " |" for r in rows)
        elif kind == "fig":
            out.append(f"![{val[0]}](figures/{val[0]}.png)")
    return "\n\n".join(out) + "\n"


def _html(blocks: list[Block]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>sae_fast study</title><style>"
             "body{font-family:sans-serif;max-width:980px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
             "font-size:90%}td:last-child{font-family:monospace;color:#666}</style></head><body>"]
    for kind, val in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(val)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{val}</p>")
        elif kind == "table":
            header, rows = val
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
                         + "</table>")
        elif kind == "fig":
            b64 = base64.b64encode(val[1]).decode("ascii")
            parts.append(f"<p><img alt='{val[0]}' src='data:image/png;base64,{b64}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(study_dir: str | os.PathLike, *, sections: list[str] | None = None,
                 opening: list[Block] | None = None) -> dict[str, Path]:
    """Reads ``results.json`` (and ``arrays.npz``, ``snippets.json`` if present) in ``study_dir``; writes
    ``figures/*.png``, ``report.md`` and a self-contained ``report.html``. ``sections``: the steps whose sections
    are shown (default: those with results; a result one of them lacks raises :class:`MissingResultError`);
    ``opening``: blocks shown first (a verdict table). Returns the paths."""
    base = Path(study_dir)
    if not (base / "results.json").is_file():
        raise FileNotFoundError(f"{base} holds no results.json (run the study first)")
    results = json.loads((base / "results.json").read_text())
    arrays: dict[str, np.ndarray] = {}
    if (base / "arrays.npz").is_file():
        with np.load(base / "arrays.npz") as z:
            arrays = {k: z[k] for k in z.files}
    snippets = json.loads((base / "snippets.json").read_text()) if (base / "snippets.json").is_file() else None
    figs = make_figures(results, arrays)
    blocks = build_blocks(results, figs, snippets, sections=sections, opening=opening)
    return write_blocks(base, blocks, figs)


def write_blocks(study_dir: str | os.PathLike, blocks: list[Block], figs: dict[str, bytes]) -> dict[str, Path]:
    """Write ``figures/*.png``, ``report.md`` and a self-contained ``report.html`` from report blocks, atomically."""
    from ..checkpoint import atomic_write

    base = Path(study_dir)
    (base / "figures").mkdir(exist_ok=True)
    for name, png in figs.items():
        atomic_write(base / "figures" / f"{name}.png", lambda f, png=png: f.write(png))
    atomic_write(base / "report.md", lambda f: f.write(_md(blocks).encode()))
    atomic_write(base / "report.html", lambda f: f.write(_html(blocks).encode()))
    return {"html": base / "report.html", "markdown": base / "report.md", "figures": base / "figures"}
