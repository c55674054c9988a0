"""Step ``pooling``: unique features pooled across half of the seeds (two ways), scored on EV and on p̂ against
the held-out seeds, next to the single seeds, with the same encoder refit / fine-tuning for the base seed.

The links between pool seeds are top-1 matches found in tiles (never (F, F) cosines). Memory: O(S·F·d) SAEs +
O(N·d) held-out rows + refit rows O(max_refit_tokens·d) + O(batch·F) per encode. Artifacts: ``section.json``
(results.json → pooling) and the pooled SAEs in ``pooled/<fill>/`` (sparsify layout). The pooled SAE is a TopK
SAE with the seeds' k: for seeds of another architecture the step is skipped and says so (``topk_only``).
"""

from __future__ import annotations

from typing import ClassVar, NotRequired, TypedDict

from ...analysis import frequency as freq_mod
from ...analysis import pooling as pool_mod
from ...analysis.codes import topk_only_note
from ...analysis.pooling import PoolingResult
from ..step import Context
from .section import Section, SectionStep


class PoolingRun(PoolingResult):
    """The pooling study and a note on which rows it refit on and scored on."""

    note: str


class PoolingSkipped(TypedDict):
    """Too few seeds to pool, or seeds without a fixed k (``topk_only`` then says so)."""

    skipped: str
    topk_only: NotRequired[str]


class PoolingEntries(TypedDict):
    pooling: PoolingRun | PoolingSkipped


class PoolingStep(SectionStep):
    name: ClassVar[str] = "pooling"
    setting_names = ("theta", "eps", "absolute", "pool_seeds", "pool_min_recurrence", "refit_steps", "finetune_steps",
                     "refit_batch_size", "max_refit_tokens", "max_eval_tokens", "seed")
    entries_type = PoolingEntries

    def compute(self, ctx: Context) -> Section:
        cfg, saes = ctx.cfg, ctx.inputs.seeds.saes
        S = len(saes)
        n_pool = cfg.pool_seeds if cfg.pool_seeds is not None else max(2, S // 2)
        if S - n_pool < 1 or n_pool < 2:
            return Section({"pooling": {"skipped": f"needs >= 2 pool seeds and >= 1 held-out seed (have {S} seeds)"}})
        not_topk = topk_only_note(saes[0], "pooling (a TopK SAE of the pooled decoder rows, its encoder refit)")
        if not_topk is not None:
            return Section({"pooling": {"skipped": not_topk, "topk_only": not_topk}})
        x = ctx.inputs.held.tensor()
        do_refit = cfg.refit_steps > 0 or cfg.finetune_steps > 0
        refit = ctx.inputs.refit
        if refit is not None:
            x_train, x_eval = refit.tensor(cfg.max_refit_tokens if do_refit else cfg.max_eval_tokens), x
            note = (f"{'refit on' if do_refit else 'no refit; ranking frequencies from'} {x_train.shape[0]} training "
                    f"activations; EV on all {x.shape[0]} held-out rows for the pools and the single seeds alike")
        elif do_refit:
            x_train, x_eval = x[: x.shape[0] // 2], x[x.shape[0] // 2:]
            note = ("refit and ranking frequencies use the first half of the held-out activations; EV is measured "
                    "on the second half for the pools and the single seeds alike")
        else:
            x_train, x_eval = None, x
            note = (f"no refit; the pool is ranked by recurrence, then component size (no training rows for "
                    f"frequencies); EV on all {x.shape[0]} held-out rows for the pools and the single seeds alike")
        # the ranking's frequencies come from the training rows, never from the rows EV is measured on
        pool_freqs = None if x_train is None else [
            freq_mod.firing_frequency(s, x_train[: cfg.max_eval_tokens], batch_size=cfg.batch_size)
            for s in saes[:n_pool]]
        decoders = ctx.inputs.seeds.decoders()
        res = pool_mod.pooling_study(
            saes[:n_pool], decoders[n_pool:], x_eval, x_train=x_train if do_refit else None, theta=cfg.theta,
            eps=cfg.eps, absolute=cfg.absolute, freqs=pool_freqs, refit_steps=cfg.refit_steps,
            finetune_steps=cfg.finetune_steps, refit_batch_size=cfg.refit_batch_size,
            min_recurrence=cfg.pool_min_recurrence, batch_size=cfg.batch_size,
            save_dir=ctx.dir(self.name) / "pooled", progress=ctx.progress)
        res["note"] = note
        return Section({"pooling": res})
