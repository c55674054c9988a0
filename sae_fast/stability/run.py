"""`stability_scores`: the coordinator of a stability run (options, seeds, resume, plan, sweeps, gather, save).

Memory: the decoder cache (``cache_bytes``), one stacked block or faiss index, and the result arrays
best_cos/best_j (A, S, F) (8 bytes per entry), gathered once over ranks when distributed.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import distributed as dist_utils
from ..matching import ArrayLike, choose_backend, resolve_device
from .options import backend_options, check_options, ignored_options, resolve_anchors, run_settings
from .result import Stability
from .resume import check_compatible, checkpoint_dir, load_prior
from .schedule import Job, agree_stack, default_stack, plan_for_ranks
from .seeds import SeedDecoders
from .sweeps import PairRunner

log = logging.getLogger(__name__)


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

    Parameters
    ----------
    decoders : S decoder matrices (F, d) (arrays/tensors), or a directory of saved SAEs
        (:func:`sae_fast.runs.find_saved_saes`), each verified once and read memory-mapped when needed.
    theta, eps : defaults of the returned :class:`Stability` (its p_hat/split accept any other value).
    anchor : ``"all"`` (every seed is an anchor; every directed pair) or one seed index.
    backend : ``auto`` | ``exact`` | ``faiss`` (:func:`sae_fast.matching.choose_backend`; ``auto`` decides on
        the size of one pair, 2 F^2 d, and picks an IVF index when it picks faiss).
    match_kwargs : exact backend ``dtype``, ``candidates``, ``tol``, ``block_rows``, ``block_cols``,
        ``kernel``; faiss ``index`` (kind) and every :class:`~sae_fast.matching.FaissIndex` keyword;
        anything else raises TypeError.
    absolute : match on |cos|.
    out : a directory; the result is saved there, progress is checkpointed every ``save_every`` seconds and
        when interrupted (an exception, Ctrl-C or SIGTERM), and a run found there is resumed at the next
        unfinished pair, after checking seeds, anchors, F, backend, index settings, d and a hash of every
        whole decoder (SettingsMismatch otherwise).
    recall_sample : approximate faiss index: recall@1 against exact float32 on this many random anchor rows
        per pair (default min(1000, F); 0 disables); the mean goes to ``info["recall_at_1"]``.
    cache_bytes : memory for normalised decoders kept between pairs (default: half the free GPU memory on
        CUDA, 2 GiB elsewhere).
    stack : exact backend, seeds stacked into one sweep against an anchor; default: the saved run's, else
        :func:`default_stack`, lowered until every rank has work. Results do not depend on it.
    progress : tqdm bars (verification of saved seeds, pairs).
    distributed : when torch.distributed is initialised, ranks split the pairs (each pair is computed by one
        rank), checkpoint to ``out/rank{r}of{w}``, and the results are gathered on every rank; rank 0 writes
        ``out``.

    Returns
    -------
    Stability : best_cos/best_j (A, S, F), done (A, S), and ``info`` (settings, decoder identities, timing).
    """
    check_options(theta, eps, recall_sample, match_kwargs)
    dev = resolve_device(device)
    use_dist = distributed and dist_utils.get_world_size() > 1
    rank, world = (dist_utils.get_rank(), dist_utils.get_world_size()) if use_dist else (0, 1)
    seeds = SeedDecoders(decoders, dev, cache_bytes=cache_bytes, hookpoint=hookpoint, progress=progress and rank == 0,
                         shard=use_dist)
    anchors = resolve_anchors(anchor, len(seeds))
    out_dir = Path(out) if out is not None else None
    ckpt_dir = checkpoint_dir(out_dir, rank, world)
    state, chosen, settings = start_or_resume(out_dir, ckpt_dir, world, seeds, anchors, backend, dev, theta, eps,
                                              absolute, match_kwargs)
    if state.complete:
        return state
    default = default_stack(len(seeds), seeds.num_features, seeds.d, seeds.cache_bytes)
    jobs, stack = plan_for_ranks(len(seeds), anchors, chosen,
                                 agree_stack(stack, state.info.get("stack"), default, use_dist), world)
    if chosen == "exact":
        state.info["stack"] = stack
    mine = claim_pairs(state, jobs, rank, world) if use_dist else jobs
    runner = PairRunner(state, seeds, chosen, backend_options(chosen, settings, match_kwargs), device=dev,
                        absolute=absolute, recall_sample=recall_sample, stack=stack, ckpt_dir=ckpt_dir,
                        save_every=save_every)
    with SigtermAsInterrupt():
        runner.run(mine, progress=progress and rank == 0)
    if use_dist:
        if ckpt_dir is not None:
            state.save(ckpt_dir)
        state = gather(state)
    if out_dir is not None and rank == 0:
        state.save(out_dir)
    return state


def start_or_resume(out_dir: Path | None, ckpt_dir: Path | None, world: int, seeds: SeedDecoders, anchors: list[int],
                    backend: str, dev: torch.device, theta: float, eps: float, absolute: bool,
                    match_kwargs: dict[str, Any]) -> tuple[Stability, str, dict[str, Any]]:
    """The state a stability run starts from.

    Parameters
    ----------
    out_dir, ckpt_dir, world : the run's folder, this rank's checkpoint folder, the number of ranks.
    seeds, anchors : the seed decoders and the anchor seeds.
    backend, dev, match_kwargs : the backend asked for, the device, and the backend options.
    theta, eps, absolute : as for :func:`stability_scores`.

    Returns
    -------
    (state, chosen backend, settings): the run saved in ``out_dir``/``ckpt_dir`` after checking it was made on the
    same seeds, anchors, settings and whole decoders (SettingsMismatch otherwise), else an empty run (best_cos
    (A, S, F) float32 and best_j int32: 8 bytes per entry). A complete saved run comes back as it is, with
    ``theta``/``eps`` set.
    """
    prior = load_prior(out_dir, ckpt_dir, world, seeds.names, anchors, seeds.num_features, absolute)
    chosen, reason, settings = pick_backend(backend, dev, seeds, prior, match_kwargs)
    ids = [seeds.identity(s) for s in range(len(seeds))] if out_dir is not None else None  # only saved runs resume
    if prior is not None:
        where = out_dir if ckpt_dir is None or prior.complete else ckpt_dir
        check_compatible(prior, seeds.names, anchors, seeds.num_features, absolute, where, settings, ids)
        prior.theta, prior.eps = theta, eps
        if prior.complete:
            return prior, chosen, settings
    ignored = ignored_options(chosen, match_kwargs)
    if ignored:
        log.warning("stability_scores: backend %s ignores %s", chosen, ignored)
    state = prior if prior is not None else empty_state(anchors, seeds, theta, eps, absolute)
    state.info.pop("fingerprints", None)  # the sampled-row identity of older runs, replaced by decoder_ids
    state.info.update(settings=settings, decoder_ids=ids, picked_reason=reason)
    return state, chosen, settings


def pick_backend(backend: str, dev: torch.device, seeds: SeedDecoders, prior: Stability | None,
                 match_kwargs: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(chosen backend, why, settings to record); a resumed ``auto`` run keeps the backend it started with."""
    saved = prior.info.get("settings") if prior is not None else None
    if backend == "auto" and prior is not None:
        # (runs saved before settings were recorded could only have been exact under "auto")
        chosen, reason = (saved or {}).get("backend", "exact"), "auto: the saved run's backend"
    else:
        chosen, reason = choose_backend(backend, dev, False, 2.0 * seeds.num_features**2 * seeds.d)
    return chosen, reason, run_settings(backend, chosen, seeds.d, match_kwargs, saved)


def empty_state(anchors: list[int], seeds: SeedDecoders, theta: float, eps: float, absolute: bool) -> Stability:
    """A run with no pair computed: best_cos NaN, best_j -1 (A, S, F)."""
    shape = (len(anchors), len(seeds), seeds.num_features)
    return Stability(torch.full(shape, math.nan), torch.full(shape, -1, dtype=torch.int32),
                     torch.zeros(shape[:2], dtype=torch.bool), anchors, seeds.names, theta, eps, absolute)


def claim_pairs(state: Stability, jobs: list[Job], rank: int, world: int) -> list[Job]:
    """This rank's share of the jobs; pairs a checkpoint holds that another rank owns under this split are
    forgotten here (that rank computes them), so every pair is counted by exactly one rank."""
    mine = dist_utils.shard(jobs, rank, world)
    pos = {a: i for i, a in enumerate(state.anchors)}
    owned = torch.zeros_like(state.done)
    for job in mine:
        for q, s in job.pairs:
            owned[pos[q], s] = True
    stale = state.done & ~owned
    state.done &= owned
    state.best_cos[stale] = math.nan
    state.best_j[stale] = -1
    return mine


def gather(state: Stability) -> Stability:
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
    state.info["seconds_per_rank"] = dist_utils.all_gather_objects(state.info.get("seconds", 0.0))
    state.info["pairs_per_rank"] = dist_utils.all_gather_objects(int(count_mine))
    mine = (state.info.get("recall_at_1"), state.info.get("recall_pairs", 0))
    recall = [r for r in dist_utils.all_gather_objects(mine) if r[0] is not None and r[1]]
    if recall:  # pooled over ranks
        state.info["recall_pairs"] = sum(n for _, n in recall)
        state.info["recall_at_1"] = sum(r * n for r, n in recall) / state.info["recall_pairs"]
    return state


class SigtermAsInterrupt:
    """While active (main thread only), SIGTERM raises KeyboardInterrupt so the run checkpoints before it dies;
    the previous handler is restored on exit."""

    def __enter__(self) -> SigtermAsInterrupt:
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
