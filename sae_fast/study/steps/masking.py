"""Step ``masking``: ΔEV when the anchor's stable / unstable / matched random latents are zeroed after encoding,
the ΔEV sweep over mask sizes, and (with a model) the spliced embedding distortion or next-token loss.

The held-out rows are encoded batch by batch on ``--device``: O(N·d) rows + O(batch·F) pre-activations.
Artifacts: ``section.json`` (results.json → masking, masking_sweep, splice, lm_loss).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ...analysis import masking as mask_mod
from ..step import Context
from .section import Section, SectionStep


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


class MaskingStep(SectionStep):
    name: ClassVar[str] = "masking"
    requires = ("stability", "firing")
    setting_names = ("anchor", "ratio", "n_random", "seed", "splice_texts", "max_eval_tokens")

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
        del x
        entries.update(_splices(ctx, labels))
        return Section(entries)
