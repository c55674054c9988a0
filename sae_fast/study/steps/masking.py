"""Step ``masking``: ΔEV when the anchor's stable / unstable / matched random latents are zeroed after encoding,
the ΔEV sweep over mask sizes, and (with a model) the spliced embedding distortion or next-token loss.

The ΔEV contrasts (n stable vs ratio·n unstable, each against its random and frequency-matched draws,
:func:`~sae_fast.analysis.masking.masking_contrasts`) are also measured per seed, on ``masking_seeds`` seeds (the
anchor first, then the next seeds; default all), each seed with its own labels and firing frequencies: the
anchor's come from its full result, the others' from a contrast-only masking (half the masks). They are saved as
``masking.per_seed`` and give the contrasts their seed-bootstrap interval (:mod:`.intervals`, the verdict).

The held-out rows are encoded batch by batch on ``--device``: O(N·d) rows + O(batch·F) pre-activations, one SAE on
the device at a time. Artifacts: ``section.json`` (results.json → masking, masking_sweep, splice, lm_loss).
"""

from __future__ import annotations

from typing import Any, ClassVar, NotRequired, TypedDict

import torch
from tqdm.auto import tqdm

from ...analysis import masking as mask_mod
from ...analysis.masking import MaskingResult, MaskingSweep
from ..step import Block, Context
from .section import Section, SectionStep
from .traceable import columns


class SeedContrasts(TypedDict):
    """One masked seed: its n, ΔEV of its n stable / ratio·n unstable latents and the ΔEV contrasts (NaN, stored
    as null, where a set was empty)."""

    seed: int
    name: str
    n: int
    delta_ev: dict[str, float | None]
    stable_vs_unstable: float | None
    stable_vs_random: float | None
    stable_vs_freqmatched: float | None
    unstable_vs_random: float | None
    unstable_vs_freqmatched: float | None


class MaskingEntry(MaskingResult):
    per_seed: list[SeedContrasts]


class LmLossMask(TypedDict):
    name: str
    size: int
    loss: float
    delta_vs_clean: float
    delta_vs_recon: float


class LmLoss(TypedDict):
    """The next-token loss with the reconstruction spliced in (:func:`~sae_fast.analysis.splice.lm_loss_study`)."""

    model: str
    hook: str
    num_texts: int
    num_tokens: int
    clean: float
    masks: dict[str, LmLossMask]


class LmLossSkipped(TypedDict):
    """Why the next-token loss was not computed (no causal LM, splice_texts = 0, ...)."""

    skipped: str


class Splice(TypedDict):
    """The embedding distortion per mask (:func:`~sae_fast.analysis.splice.splice_study`)."""

    distortion: dict[str, float | None]
    sizes: dict[str, int]


class MaskingEntries(TypedDict):
    """``splice`` only when an embedding model (all-MiniLM) gave the held-out rows."""

    masking: MaskingEntry
    masking_sweep: MaskingSweep
    lm_loss: LmLoss | LmLossSkipped
    splice: NotRequired[Splice]


def _splices(ctx: Context, labels: Any) -> dict[str, Any]:
    """The splice analyses the inputs allow: embedding distortion (MiniLM) or next-token loss (a causal LM)."""
    cfg, inp, sae = ctx.cfg, ctx.inputs, ctx.inputs.seeds.saes[ctx.cfg.anchor]
    out: dict[str, Any] = {}
    why = inp.why_no_lm
    texts = inp.held.texts
    if texts and cfg.splice_texts > 0 and inp.embedded_layer is not None:
        from ...activations import load_embedded_model
        from ...analysis.splice import splice_study

        minilm, tokenizer = load_embedded_model("cpu", inp.embedded_model_path)
        out["splice"] = splice_study(minilm, tokenizer, texts[: cfg.splice_texts], inp.embedded_layer, sae, labels,
                                     ratio=cfg.ratio, seed=cfg.seed)
    src = inp.model_src
    if src is not None and cfg.splice_texts > 0:
        from ...analysis.splice import lm_loss_study, splice_study

        texts = src.texts[: cfg.splice_texts]
        if src.hook.module is None and not src.hook.layer:  # layer 0: the embeddings are no block's output
            why = "the hook point is the embeddings (layer 0), which cannot be spliced: pass --layer >= 1 or --module"
        elif inp.model_spec.path == "embedded":  # no LM head (why says so): the embedding distortion instead
            if src.hook.layer:
                out["splice"] = splice_study(src.model, src.tokenizer, texts, src.hook.layer, sae, labels,
                                             ratio=cfg.ratio, seed=cfg.seed)
            else:
                why = ("all-MiniLM-L6-v2 has no LM head, and the embedding distortion is computed for a --layer "
                       "hook point only, not for --module")
        elif why is None:
            out["lm_loss"] = {"model": src.model_name, **lm_loss_study(
                src.model, src.tokenizer, texts, sae, labels, layer=src.hook.layer, module=src.hook.module,
                ratio=cfg.ratio, seed=cfg.seed, max_length=src.max_length, progress=ctx.progress)}
    if "lm_loss" not in out:
        out["lm_loss"] = {"skipped": why if cfg.splice_texts > 0 else "splice_texts = 0"}
    return out


def masked_seeds(anchor: int, num_seeds: int, count: int | None) -> list[int]:
    """The seeds whose ΔEV contrasts are measured: the anchor, then the seeds after it (cyclically), ``count`` in
    all (None: every seed)."""
    count = num_seeds if count is None else min(int(count), num_seeds)
    return [(anchor + i) % num_seeds for i in range(count)]


def _per_seed_entry(seed: int, name: str, result: dict) -> dict[str, Any]:
    unstable = f"unstable_{result['ratio']}n"
    return {"seed": seed, "name": name, "n": result["n"],
            "delta_ev": {k: result["delta_ev"].get(k, float("nan")) for k in ("stable_n", unstable)},
            **mask_mod.masking_contrasts(result)}


def per_seed_contrasts(ctx: Context, x: torch.Tensor, anchor_result: dict) -> list[dict[str, Any]]:
    """One entry per masked seed: its n, ΔEV of its n stable / ratio·n unstable latents and the contrasts, each
    seed masked with its own labels and frequencies. Memory: one SAE on the device at a time, O(batch·F)."""
    cfg, seeds = ctx.cfg, ctx.inputs.seeds
    labels, freq = ctx.result("stability").labels, ctx.result("firing").freq
    order = masked_seeds(cfg.anchor, len(seeds.saes), cfg.masking_seeds)
    out = []
    for s in tqdm(order, desc="masking per seed", disable=not ctx.progress, leave=False):
        if s == cfg.anchor:
            out.append(_per_seed_entry(s, seeds.names[s], anchor_result))
            continue
        sae = seeds.saes[s].to(ctx.device)
        try:
            res = mask_mod.masking_study(sae, x, labels[s], freq=freq[s], ratio=cfg.ratio, n_random=cfg.n_random,
                                         seed=cfg.seed + s, batch_size=cfg.batch_size, contrast_only=True)
        finally:
            sae.to("cpu")
        out.append(_per_seed_entry(s, seeds.names[s], res))
    return out


class MaskingStep(SectionStep):
    name: ClassVar[str] = "masking"
    requires = ("stability", "firing")
    setting_names = ("anchor", "ratio", "n_random", "masking_seeds", "seed", "splice_texts", "max_eval_tokens")
    entries_type = MaskingEntries

    def compute(self, ctx: Context) -> Section:
        cfg, a0 = ctx.cfg, ctx.cfg.anchor
        labels, freq = ctx.result("stability").labels[a0], ctx.result("firing").freq[a0]
        sae = ctx.inputs.seeds.saes[a0].to(ctx.device)
        try:
            x = ctx.inputs.held.tensor().to(ctx.device)
            entries = {"masking": mask_mod.masking_study(sae, x, labels, freq=freq, ratio=cfg.ratio,
                                                         n_random=cfg.n_random, seed=cfg.seed,
                                                         batch_size=cfg.batch_size),
                       "masking_sweep": mask_mod.delta_ev_sweep(sae, x, labels, seed=cfg.seed,
                                                                batch_size=cfg.batch_size)}
        finally:
            sae.to("cpu")
        entries["masking"]["per_seed"] = per_seed_contrasts(ctx, x, entries["masking"])
        del x
        entries.update(_splices(ctx, labels))
        return Section(entries)

    def render(self, result: Section, ctx: Context) -> list[Block]:
        """The report's masking section, then the ΔEV contrasts per masked seed."""
        per_seed = result.entries["masking"].get("per_seed", [])
        if not per_seed:
            return super().render(result, ctx)
        cols = [("seed", "name"), ("n", "n"), *((c.replace("_vs_", " − "), c)
                                                for c in mask_mod.CONTRASTS)]
        return [*super().render(result, ctx),
                ("p", "ΔEV contrasts per seed, each seed masked with its own labels and firing frequencies (their "
                      "seed-bootstrap intervals are in the verdict section's table of headline numbers)."),
                columns(ctx.report_results, [f"masking.per_seed.{i}" for i in range(len(per_seed))], cols)]
