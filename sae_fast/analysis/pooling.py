"""Pooling unique features across seeds (method.md §6; the algorithm is our reading [D]).

1. Gather the unit decoder rows of the pool seeds. Link two features of different seeds when they are
   mutual nearest neighbours with cosine >= theta (``link="mutual"``, default) or when either is the
   other's argmax with cosine >= theta (``link="argmax"``). Connected components are the **unique
   features**; the **recurrence** of one is the number of distinct seeds among its members.
2. Keep ``target_size`` components. ``fill="rank"``: ranked by recurrence, then by the representative's
   firing frequency (when given, measured on training rows, not on the evaluation rows; else by component
   size); the representative is the medoid member (highest
   mean cosine to the other members). ``fill="base"``: the base seed's dictionary in which every feature that
   recurs in >= ``min_recurrence`` seeds but not in the base replaces the base's non-recurring latent nearest
   to it (the one most likely covering the same direction). The "rank" pool is the more stable, but it is a
   frequency-ranked mix of the seeds' non-recurring latents, which overlap one another, and it costs EV; the
   "base" pool keeps most of the EV for a smaller gain (bench/RESULTS.md, pooling). The representative's
   encoder row, encoder bias and decoder row make the pooled SAE's latent.
   The pooled ``b_dec`` is the mean of the pool seeds' ``b_dec`` (the base seed's own with ``fill="base"``); each
   encoder bias is shifted so that the latent's pre-activation is exactly the one it had in its own SAE.
3. Optionally refit the encoder and biases with the decoder frozen, and/or fine-tune every parameter briefly
   from the pool (the base seed gets the same, as the control: either alone raises a trained seed's EV a little,
   and the fine-tune its p̂ too).
4. Evaluate the pooled SAE's EV on held-out activations, and its stability p̂ against **held-out seeds**
   (not used to build the pool), both next to a single pool seed's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np
import torch

from ..train.step import update
from ._common import ArrayLike, unit_rows


@dataclass
class Pool:
    """Unique cross-seed features. ``members[c]`` lists (seed, latent) pairs of component c."""

    members: list[list[tuple[int, int]]]
    recurrence: np.ndarray  # (C,) distinct seeds per component
    representative: np.ndarray  # (C, 2) (seed, latent) of each component's medoid
    order: np.ndarray  # component indices ranked (recurrence, then frequency / size)
    component_of: list[np.ndarray]  # per seed, (F,) the component of each latent


def pool_features(
    decoders: list[ArrayLike],
    *,
    theta: float = 0.7,
    link: str = "mutual",
    freqs: list[ArrayLike] | None = None,
    absolute: bool = False,
) -> Pool:
    """Unique features across seeds: components of the cross-seed cosine graph (module docstring, step 1-2).
    ``absolute``: link on |cos| (a feature and its negation are one feature).

    Memory: O(S·F·d) for the unit decoders plus O(S·F) for the links (each pair's top-1 matches are found in
    tiles, never as an (F, F) matrix); a component's medoid uses its members' (c, c) cosines."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from ..matching import match

    if link not in ("mutual", "argmax"):
        raise ValueError(f"link must be 'mutual' or 'argmax', got {link!r}")
    decs = [unit_rows(d, f"decoders[{i}]") for i, d in enumerate(decoders)]
    S = len(decs)
    if S < 1:
        raise ValueError("decoders must be non-empty")
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in decs])])
    rows_i, rows_j = [], []
    for a in range(S):
        for b in range(a + 1, S):  # top-1 both ways, in tiles: O(F) memory, never the (F, F) cosines
            res = match(decs[a], decs[b], k=1, both=True, backend="exact", absolute=absolute, device="cpu")
            ja, ib = res.index_ab[:, 0].numpy(), res.index_ba[:, 0].numpy()
            ia, jb = np.arange(len(decs[a])), np.arange(len(decs[b]))
            ok_a = res.cos_ab[:, 0].numpy() >= theta
            if link == "mutual":
                keep = ok_a & (ib[ja] == ia)
                rows_i.append(offsets[a] + ia[keep])
                rows_j.append(offsets[b] + ja[keep])
            else:
                ok_b = res.cos_ba[:, 0].numpy() >= theta
                rows_i += [offsets[a] + ia[ok_a], offsets[a] + ib[ok_b]]
                rows_j += [offsets[b] + ja[ok_a], offsets[b] + jb[ok_b]]
    n = int(offsets[-1])
    i = np.concatenate(rows_i) if rows_i else np.zeros(0, dtype=np.int64)
    j = np.concatenate(rows_j) if rows_j else np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    ncomp, comp = connected_components(graph, directed=False)
    seed_of = np.searchsorted(offsets, np.arange(n), side="right") - 1
    latent_of = np.arange(n) - offsets[seed_of]
    allrows = np.concatenate(decs)
    freq_all = None if freqs is None else np.concatenate([np.asarray(f, dtype=np.float64).reshape(-1) for f in freqs])
    members, recurrence, rep, tiebreak = [], np.zeros(ncomp, dtype=np.int64), np.zeros((ncomp, 2), np.int64), []
    groups = np.split(np.argsort(comp, kind="stable"), np.cumsum(np.bincount(comp, minlength=ncomp))[:-1])
    for c, g in enumerate(groups):
        members.append([(int(seed_of[x]), int(latent_of[x])) for x in g])
        recurrence[c] = len(set(seed_of[g].tolist()))
        if len(g) > 2:
            sims = allrows[g] @ allrows[g].T
            if absolute:
                sims = np.abs(sims)
            best = g[int(np.argmax(sims.sum(axis=1)))]
        else:
            best = g[0]
        rep[c] = (seed_of[best], latent_of[best])
        tiebreak.append(freq_all[best] if freq_all is not None else len(g))
    order = np.lexsort((-np.asarray(tiebreak, dtype=np.float64), -recurrence))
    component_of = [comp[offsets[a]:offsets[a + 1]] for a in range(S)]
    return Pool(members=members, recurrence=recurrence, representative=rep, order=order, component_of=component_of)


def pool_choice(pool: Pool, size: int, *, fill: str = "rank", base: int = 0, min_recurrence: int = 2,
                decoders: list[ArrayLike] | None = None) -> list[tuple[int, int]]:
    """The (seed, latent) of each of the ``size`` pooled latents (module docstring, step 2).

    ``fill="base"`` needs the pool seeds' ``decoders``: each recurring feature the base seed lacks replaces the
    base's non-recurring latent of highest cosine to it (greedily, in rank order), the latent that most likely
    covered the same direction; the base's remaining latents follow by rank (frequency).
    """
    if fill == "rank":
        chosen = [tuple(int(v) for v in pool.representative[c]) for c in pool.order[:size]]
    elif fill == "base":
        if decoders is None:
            raise ValueError("fill='base' needs the pool seeds' decoders")
        if min_recurrence < 2:
            raise ValueError(f"min_recurrence must be >= 2 (seeds), got {min_recurrence}")
        recurring, foreign, own_rest = [], [], []
        for c in pool.order:
            own = [m for m in pool.members[c] if m[0] == base]
            if pool.recurrence[c] >= min_recurrence:
                if own:  # all of them: a chain of links can join two latents of the base in one component
                    recurring += own
                else:
                    foreign.append(tuple(int(v) for v in pool.representative[c]))
            elif own:
                own_rest.append(own[0][1])
        if foreign and own_rest:
            units: dict[int, torch.Tensor] = {}

            def unit(seed: int) -> torch.Tensor:
                if seed not in units:
                    units[seed] = torch.as_tensor(unit_rows(decoders[seed], f"decoders[{seed}]"), dtype=torch.float32)
                return units[seed]

            own_units = unit(base)[own_rest]
            dropped = torch.zeros(len(own_rest), dtype=torch.bool)
            for start in range(0, len(foreign), 1024):  # (1024, own_rest) cosines at a time, not (foreign, own_rest)
                block = foreign[start:start + 1024]
                for sim in torch.stack([unit(s)[j] for s, j in block]) @ own_units.T:
                    if bool(dropped.all()):
                        break
                    dropped[int(sim.masked_fill(dropped, -2.0).argmax())] = True
            own_rest = [j for j, gone in zip(own_rest, dropped.tolist()) if not gone]
        chosen = (recurring + foreign + [(base, j) for j in own_rest])[:size]
    else:
        raise ValueError(f"fill must be 'rank' or 'base', got {fill!r}")
    if len(chosen) < size:
        raise ValueError(f"the pool yields only {len(chosen)} features with fill={fill!r}, fewer than "
                         f"target_size={size}")
    return chosen


@torch.no_grad()
def pooled_sae(saes: list[torch.nn.Module], pool: Pool, target_size: int | None = None, *, fill: str = "rank",
               base: int = 0, min_recurrence: int = 2, chosen: list[tuple[int, int]] | None = None
               ) -> torch.nn.Module:
    """A TopKSAE of ``target_size`` unique features (default: the first SAE's size) chosen by
    :func:`pool_choice`, or the ``chosen`` (seed, latent) pairs that call already returned."""
    from ..sae import TopKSAE

    first = saes[0]
    size = first.num_latents if target_size is None else int(target_size)
    if not 0 <= base < len(saes):
        raise ValueError(f"base must index one of the {len(saes)} pool seeds, got {base}")
    if chosen is None:
        decoders = [sae.W_dec.detach().float().cpu() for sae in saes] if fill == "base" else None
        chosen = pool_choice(pool, size, fill=fill, base=base, min_recurrence=min_recurrence, decoders=decoders)
    elif len(chosen) != size:
        raise ValueError(f"chosen holds {len(chosen)} latents, target_size is {size}")
    # "base": the base seed's own bias, so that its latents (most of the pool) reconstruct exactly as before
    b_dec = saes[base].b_dec.float() if fill == "base" else torch.stack([s.b_dec.float() for s in saes]).mean(0)
    out = TopKSAE(first.d_in, size, first.k, dtype=torch.float32, seed=0)
    for new, (s, j) in enumerate(chosen):
        sae = saes[s]
        w = sae.W_enc[j].float()
        out.W_enc[new] = w
        out.b_enc[new] = sae.b_enc[j].float() + w @ (b_dec - sae.b_dec.float())
        out.W_dec[new] = sae.W_dec[j].float()
    out.b_dec.copy_(b_dec)
    out.set_decoder_norm_to_unit_norm()
    return out


def refit(sae: torch.nn.Module, x: torch.Tensor, *, steps: int = 100, batch_size: int = 512, lr: float = 1e-3,
          decoder: bool = False, seed: int = 0, progress: bool = False, desc: str = "refit") -> list[float]:
    """Fine-tune ``sae`` on rows of ``x`` (Adam on FVU); returns the FVU per step. ``decoder=False``: W_enc, b_enc
    and b_dec with W_dec frozen; ``decoder=True``: every parameter, with the trainer's decoder upkeep
    (:func:`sae_fast.train.step.update`: the gradient component parallel to each decoder row removed, rows
    renormalised after each step). ``progress``: a
    tqdm bar named ``desc``."""
    from tqdm.auto import tqdm

    params = list(sae.parameters()) if decoder else [sae.W_enc, sae.b_enc, sae.b_dec]
    sae.W_dec.requires_grad_(decoder)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    try:
        for _ in tqdm(range(steps), desc=desc, leave=False, disable=not progress):
            xb = x[torch.randint(x.shape[0], (batch_size,), generator=gen)]
            loss = sae(xb).fvu
            opt.zero_grad(set_to_none=True)
            loss.backward()
            update(sae, opt, decoder=decoder)
            losses.append(float(loss.detach()))
    finally:
        sae.W_dec.requires_grad_(True)
    return losses


@dataclass(frozen=True)
class _Judge:
    """How :func:`pooling_study` scores an SAE: EV on ``x_eval`` and p̂ of its rows against the held-out seeds."""

    held: list[torch.Tensor]
    x_eval: torch.Tensor
    theta: float
    eps: float
    absolute: bool
    batch_size: int

    def ev(self, sae: torch.nn.Module) -> float:
        """Explained variance of ``sae`` on ``x_eval`` (batches of ``batch_size`` rows)."""
        from .masking import masked_fvu

        return 1.0 - masked_fvu(sae, self.x_eval, {}, batch_size=self.batch_size)["none"]

    def summary(self, sae: torch.nn.Module) -> dict:
        """EV, mean p̂ and the stable / unstable shares of ``sae``'s latents."""
        from .stability import anchor_scores, summarize

        sc = anchor_scores([sae.W_dec.detach().float().cpu(), *self.held], theta=self.theta, anchors=[0],
                           signed=not self.absolute)
        st = summarize(sc.p_hat[0], eps=self.eps)
        return {"ev": self.ev(sae), "p_hat_mean": st["p_hat_mean"], "share_stable": st["share_stable"],
                "share_unstable": st["share_unstable"]}


@dataclass(frozen=True)
class _RefitPlan:
    """The encoder refit and full fine-tuning that :func:`pooling_study` gives every compared SAE alike."""

    x_train: torch.Tensor | None
    refit_steps: int
    finetune_steps: int
    batch_size: int
    progress: bool

    @property
    def do_refit(self) -> bool:
        return self.refit_steps > 0 and self.x_train is not None

    @property
    def do_finetune(self) -> bool:
        return self.finetune_steps > 0 and self.x_train is not None


def _refit_ev(sae: torch.nn.Module, name: str, plan: _RefitPlan, judge: _Judge) -> tuple[dict, torch.nn.Module]:
    """The refit / fine-tuning results and the SAE worth keeping (fine-tuned, else refit, else ``sae``).
    Memory: one or two copies of ``sae``."""
    out: dict = {}
    final = sae
    if plan.do_refit:
        refitted = copy.deepcopy(sae).float().cpu().requires_grad_(True)
        losses = refit(refitted, plan.x_train, steps=plan.refit_steps, batch_size=plan.batch_size,
                       progress=plan.progress, desc=f"refit {name}")
        out.update(ev_refit=judge.ev(refitted), refit_steps=plan.refit_steps, refit_final_train_fvu=losses[-1])
        final = refitted
    if plan.do_finetune:
        tuned = copy.deepcopy(sae).float().cpu().requires_grad_(True)
        start = tuned.W_dec.detach().clone()
        losses = refit(tuned, plan.x_train, steps=plan.finetune_steps, batch_size=plan.batch_size, decoder=True,
                       progress=plan.progress, desc=f"fine-tune {name}")
        moved = torch.nn.functional.cosine_similarity(start, tuned.W_dec.detach(), dim=1)
        out["finetune"] = {**judge.summary(tuned), "steps": plan.finetune_steps, "final_train_fvu": losses[-1],
                           "decoder_cos_to_start_median": float(moved.median())}
        final = tuned
    return out, final


def _recurrence_hist(pool: Pool, choice: list[tuple[int, int]], num_seeds: int) -> list[int]:
    """Histogram (index = number of seeds) of the recurrence of the chosen features."""
    rec = [pool.recurrence[pool.component_of[s][j]] for s, j in choice]
    return np.bincount(np.asarray(rec, dtype=np.int64), minlength=num_seeds + 1).tolist()


def _save_pooled(final: torch.nn.Module, save_dir: str | Path, fill: str, plan: _RefitPlan, num_seeds: int) -> dict:
    """Save a pooled SAE in its last state to ``save_dir/<fill>``; returns its path and stage."""
    from ..checkpoint import save_sae

    stage = "finetuned" if plan.do_finetune else "refit" if plan.do_refit else "as built"
    folder = save_sae(final, Path(save_dir) / fill, metadata={"pool": fill, "stage": stage,
                                                               "pool_seeds": num_seeds})
    return {"path": str(folder), "stage": stage}


class Judged(TypedDict):
    """EV on the held-out rows and p̂ against the held-out seeds of one SAE."""

    ev: float
    p_hat_mean: float
    share_stable: float
    share_unstable: float


class SingleSeed(Judged):
    seed: int


class FineTuned(Judged):
    steps: int
    final_train_fvu: float
    decoder_cos_to_start_median: float


class SavedPool(TypedDict):
    path: str
    stage: str


class Refitted(TypedDict):
    """The refit / fine-tuning results of one SAE: each part only when it ran (``refit_steps`` /
    ``finetune_steps`` > 0 with training rows)."""

    ev_refit: NotRequired[float]
    refit_steps: NotRequired[int]
    refit_final_train_fvu: NotRequired[float]
    finetune: NotRequired[FineTuned]


class SingleRefit(Refitted):
    seed: int


class Pooled(Judged, Refitted):
    """One pooled SAE; ``saved`` only with a ``save_dir``; the base fill has base_seed, min_recurrence and
    latents_from_other_seeds too."""

    fill: str
    chosen_recurrence_hist: list[int]
    base_seed: NotRequired[int]
    min_recurrence: NotRequired[int]
    latents_from_other_seeds: NotRequired[int]
    saved: NotRequired[SavedPool]


class PoolingResult(TypedDict):
    """:func:`pooling_study`; ``single_refit`` (the base seed's control) only when a refit or fine-tuning ran."""

    num_pool_seeds: int
    num_heldout_seeds: int
    theta: float
    link: str
    absolute: bool
    ranked_by: str
    num_unique_features: int
    target_size: int
    recurrence_hist: list[int]
    single: list[SingleSeed]
    pooled: Pooled
    pooled_base: Pooled
    chosen_recurrence_hist: list[int]
    single_refit: NotRequired[SingleRefit]
    single_ev_mean: float
    single_p_hat_mean_mean: float
    single_share_stable_mean: float
    single_share_unstable_mean: float


def pooling_study(
    pool_saes: list[torch.nn.Module],
    heldout_decoders: list[ArrayLike],
    x_eval: torch.Tensor,
    *,
    x_train: torch.Tensor | None = None,
    theta: float = 0.7,
    eps: float = 0.05,
    absolute: bool = False,
    link: str = "mutual",
    freqs: list[ArrayLike] | None = None,
    refit_steps: int = 0,
    finetune_steps: int = 0,
    refit_batch_size: int = 1024,
    base: int = 0,
    min_recurrence: int = 2,
    batch_size: int = 4096,
    save_dir: str | Path | None = None,
    progress: bool = False,
) -> PoolingResult:
    """Pool ``pool_saes`` both ways (``fill="rank"`` → ``out["pooled"]``, ``fill="base"`` → ``out["pooled_base"]``)
    and compare each pooled SAE with the single pool seeds on EV and on p̂ against held-out seeds. With
    ``x_train``, both pooled SAEs and, as the control, the base seed itself get the same ``refit_steps`` of
    encoder refit (decoder frozen: ``ev_refit``) and, from the pool as it was built, the same ``finetune_steps``
    of fine-tuning of every parameter (``finetune``: EV and p̂ again, as the decoder moves, and the median cosine
    of each decoder row to where it started), so that every comparison is like with like. ``save_dir``: each
    pooled SAE, in its last state (fine-tuned, else refit, else as built), is saved to ``save_dir/<fill>``.
    ``freqs`` (ranking tie-break) should come from rows other than ``x_eval``; ``absolute``: match on |cos|
    (pooling and p̂ alike); ``progress``: tqdm bars over the refit and fine-tuning steps."""
    if len(pool_saes) < 2 or len(heldout_decoders) < 1:
        raise ValueError("pooling needs at least 2 pool seeds and 1 held-out seed")
    decs = [s.W_dec.detach().float().cpu() for s in pool_saes]
    pool = pool_features(decs, theta=theta, link=link, freqs=freqs, absolute=absolute)
    held = [unit_rows(h, "heldout_decoders") for h in heldout_decoders]
    size = pool_saes[0].num_latents
    judge = _Judge(held, x_eval, theta, eps, absolute, batch_size)
    plan = _RefitPlan(x_train, refit_steps, finetune_steps, refit_batch_size, progress)
    out: dict = {
        "num_pool_seeds": len(pool_saes), "num_heldout_seeds": len(held), "theta": theta, "link": link,
        "absolute": absolute,
        "ranked_by": "recurrence, then frequency" if freqs is not None else "recurrence, then size",
        "num_unique_features": len(pool.members), "target_size": size,
        "recurrence_hist": np.bincount(pool.recurrence, minlength=len(pool_saes) + 1).tolist(),
        "single": [{"seed": s, **judge.summary(sae)} for s, sae in enumerate(pool_saes)],
    }
    for key, fill in (("pooled", "rank"), ("pooled_base", "base")):
        choice = pool_choice(pool, size, fill=fill, base=base, min_recurrence=min_recurrence, decoders=decs)
        pooled = pooled_sae(pool_saes, pool, size, fill=fill, base=base, chosen=choice)
        out[key] = {"fill": fill, **judge.summary(pooled),
                    "chosen_recurrence_hist": _recurrence_hist(pool, choice, len(pool_saes))}
        if fill == "base":
            out[key].update(base_seed=base, min_recurrence=min_recurrence,
                            latents_from_other_seeds=sum(s != base for s, _ in choice))
        results, final = _refit_ev(pooled, f"{fill} pool", plan, judge)
        out[key].update(results)
        if save_dir is not None:
            out[key]["saved"] = _save_pooled(final, save_dir, fill, plan, len(pool_saes))
    out["chosen_recurrence_hist"] = out["pooled"]["chosen_recurrence_hist"]
    if plan.do_refit or plan.do_finetune:
        out["single_refit"] = {"seed": base, **_refit_ev(pool_saes[base], "base seed", plan, judge)[0]}
    for key in ("ev", "p_hat_mean", "share_stable", "share_unstable"):
        out[f"single_{key}_mean"] = float(np.mean([r[key] for r in out["single"]]))
    return out
