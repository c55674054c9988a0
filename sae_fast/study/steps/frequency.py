"""Step ``frequency``: firing frequency of stable vs unstable latents (anchor seed) and top-activating snippets.

Frequencies come from the firing step's codes. Snippets (when a model gave the held-out rows their token
strings) re-encode the rows that carry tokens in batches, O(batch·F). Artifacts: ``section.json``
(results.json → frequency, snippets_file / snippets_skipped), ``snippets.json`` and, when the held-out rows
themselves carry tokens, ``top_snippets.json`` (every anchor latent's top ``snippet_top`` snippets from the
firing codes, O(F·T), for the browser).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, NotRequired, TypedDict

from ...analysis import frequency as freq_mod
from ...analysis.codes import fixed_k, topk_only_note
from ...analysis.frequency import GroupComparison
from ...browse.study import TOP_SNIPPETS, top_snippets
from ...browse.table import code_stats
from ...checkpoint import atomic_write_json
from ..step import Context
from .section import Section, SectionStep

NO_TOKENS = ("the held-out activations come without their tokens (an array or file); pass the model they come "
             "from (--model, with --layer or --module) for top-activating snippets")


class FrequencyEntry(TypedDict):
    """results.json → frequency: the anchor's sets compared, and the mean-rate baseline k/F (None without a
    fixed k, which ``topk_only`` then explains)."""

    anchor: GroupComparison
    k_over_F: float | None
    k_over_F_percent: float | None
    topk_only: NotRequired[str]


class FrequencyEntries(TypedDict):
    """``snippets_skipped`` only when the held-out rows come without tokens (it says so)."""

    frequency: FrequencyEntry
    snippets_file: str | None
    snippets_skipped: NotRequired[str]


def k_over_f_baseline(sae: Any) -> dict[str, Any]:
    """The mean-rate baseline k/F of a TopK SAE; for another architecture (no fixed k) None and the note saying
    so (``topk_only``)."""
    k = fixed_k(sae)
    if k is None:
        return {"k_over_F": None, "k_over_F_percent": None,
                "topk_only": topk_only_note(sae, "the k/F firing baseline")}
    return {"k_over_F": k / sae.num_latents, "k_over_F_percent": 100 * k / sae.num_latents}


class FrequencyStep(SectionStep):
    name: ClassVar[str] = "frequency"
    requires = ("stability", "firing")
    setting_names = ("anchor", "snippet_latents", "snippet_top", "seed")
    entries_type = FrequencyEntries

    def compute(self, ctx: Context) -> Section:
        cfg, a0 = ctx.cfg, ctx.cfg.anchor
        labels, p_hat = ctx.result("stability").labels, ctx.result("stability").p_hat
        freq = ctx.result("firing").freq
        sae = ctx.inputs.seeds.saes[a0]
        entries: dict[str, Any] = {"frequency": {"anchor": freq_mod.compare_groups(freq[a0], labels[a0]),
                                                 **k_over_f_baseline(sae)}}
        snippets: dict[str, Any] = {}
        sn = ctx.inputs.snippets
        if sn is not None and sn.tokens is not None and sn.where is not None:
            x_sn = sn.tensor()
            chosen = freq_mod.sample_latents(labels[a0], freq[a0], cfg.snippet_latents, seed=cfg.seed)
            for group, lats in chosen.items():
                rows, vals = freq_mod.top_activations(sae, x_sn, lats, n_top=cfg.snippet_top,
                                                      batch_size=cfg.batch_size)
                snippets[group] = [
                    {"latent": int(lat), "p_hat": float(p_hat[a0, lat]), "freq": float(freq[a0][lat]),
                     "examples": [{"activation": float(v),
                                   "text": freq_mod.snippet(sn.tokens[sn.where[r, 0]], int(sn.where[r, 1]))}
                                  for r, v in zip(rows[i], vals[i]) if r >= 0]}
                    for i, lat in enumerate(lats)]
        else:
            entries["snippets_skipped"] = NO_TOKENS
        atomic_write_json(ctx.dir(self.name) / "snippets.json", snippets)
        if sn is not None and sn is ctx.inputs.held and sn.tokens is not None and sn.where is not None:
            top_rows = code_stats(ctx.result("firing").codes[a0], bins=1, top=cfg.snippet_top)["top_rows"]
            atomic_write_json(ctx.dir(self.name) / TOP_SNIPPETS, top_snippets(top_rows, sn.tokens, sn.where))
        entries["snippets_file"] = "snippets.json" if snippets else None
        return Section(entries)

    def snippets(self, ctx: Context) -> dict[str, Any]:
        """The saved snippets (empty when there were no tokens)."""
        return json.loads((ctx.out / self.name / "snippets.json").read_text())
