"""Computing the jobs of a stability run: exact stacked sweeps or faiss index searches, with checkpoints.

Memory: the decoder cache of :class:`SeedDecoders`, plus one stacked block of ``stack`` float32 decoders
(exact) or one faiss index (faiss), plus the result arrays (A, S, F).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..matching import FaissIndex, match, match_many
from .result import Stability
from .schedule import Job
from .seeds import SeedDecoders


class PairRunner:
    """Runs a list of jobs into ``state``, checkpointing to ``ckpt_dir`` every ``save_every`` seconds and
    when interrupted (any exception, Ctrl-C, or SIGTERM turned into KeyboardInterrupt by the caller)."""

    def __init__(self, state: Stability, seeds: SeedDecoders, chosen: str, options: dict[str, Any], *,
                 device: torch.device, absolute: bool, recall_sample: int | None, stack: int,
                 ckpt_dir: Path | None, save_every: float) -> None:
        self.state, self.seeds, self.chosen, self.options = state, seeds, chosen, options
        self.device, self.absolute, self.recall_sample, self.stack = device, absolute, recall_sample, stack
        self.ckpt_dir, self.save_every = ckpt_dir, save_every
        self.pos = {a: i for i, a in enumerate(state.anchors)}
        self.last_save = time.monotonic()
        self.backend_desc = state.backend
        self.recalls: list[float] = []
        self._stacked: tuple[tuple[int, ...], torch.Tensor] | None = None
        self._index: tuple[int, FaissIndex] | None = None

    def done(self, q: int, s: int) -> bool:
        return bool(self.state.done[self.pos[q], s])

    def store(self, q: int, s: int, cos: torch.Tensor, idx: torch.Tensor) -> None:
        """Records the best match in seed s of every feature of anchor q."""
        p = self.pos[q]
        self.state.best_cos[p, s] = cos.float()
        self.state.best_j[p, s] = idx.to(torch.int32)
        self.state.done[p, s] = True

    def checkpoint(self, force: bool = False) -> None:
        if self.ckpt_dir is not None and (force or time.monotonic() - self.last_save >= self.save_every):
            self.state.backend = self.backend_desc
            self.state.save(self.ckpt_dir)
            self.last_save = time.monotonic()

    def run(self, mine: list[Job], progress: bool) -> None:
        """Computes every pair of ``mine`` not done yet; the state is checkpointed if anything fails."""
        todo = [job for job in mine if not all(self.done(q, s) for q, s in job.pairs)]
        total = sum(len(j.pairs) for j in mine)
        initial = sum(self.done(q, s) for j in mine for q, s in j.pairs)
        t_start = time.perf_counter()
        with tqdm(total=total, initial=initial, desc="stability pairs", unit="pair", disable=not progress) as bar:
            try:
                for job in todo:
                    (self.exact if self.chosen == "exact" else self.faiss)(job, bar, first=job is todo[0])
            except BaseException:
                self.checkpoint(force=True)
                raise
        self.finish(time.perf_counter() - t_start)

    def exact(self, job: Job, bar: Any, first: bool) -> None:
        """One stacked sweep of the query seed against ``job.others`` (both directions when ``job.both``)."""
        seeds, f = self.seeds, self.seeds.num_features
        if self._stacked is None or self._stacked[0] != job.block:
            self._stacked = None  # free the previous block's matrix before building the next
            rows = [seeds.get(s) for s in job.block]  # one seed: the cached tensor itself, no copy
            self._stacked = (job.block, torch.cat(rows) if len(rows) > 1 else rows[0])
            del rows
        at = job.block.index(job.others[0])
        rows = self._stacked[1][at * f:(at + len(job.others)) * f]
        ms = match_many(seeds.get(job.query), rows, segment=f, both=job.both, absolute=self.absolute,
                        device=self.device, normalize=False, **self.options)
        info = self.state.info
        info["rescored"] = (info.get("rescored", 0) + ms[0].info.get("rescored_rows", 0)
                            + ms[0].info.get("rescored_cols", 0))  # near ties redone in fp32
        new = sum(not self.done(q, s) for q, s in job.pairs)
        for s, m in zip(job.others, ms):
            self.store(job.query, s, m.cos_ab[:, 0], m.index_ab[:, 0])
            if job.both:
                self.store(s, job.query, m.cos_ba[:, 0], m.index_ba[:, 0])
        if first:  # the first sweep is the widest: its tiles describe the run
            self.backend_desc = f"{ms[0].backend}, up to {self.stack} seeds stacked per sweep"
        bar.update(new)
        bar.set_postfix_str(f"{seeds.names[job.query]} <-> {len(job.others)} seeds")
        self.checkpoint()

    def faiss(self, job: Job, bar: Any, first: bool) -> None:
        """Builds the index of the database seed once and searches it with every anchor of the job."""
        s, seeds = job.query, self.seeds
        if self._index is None or self._index[0] != s:
            self._index = None  # free the previous index first
            self._index = (s, FaissIndex(seeds.get(s).cpu(), self.options.get("index", "flat"),
                                         **{k: v for k, v in self.options.items() if k != "index"}))
        for q, _ in job.pairs:
            if self.done(q, s):
                continue
            m = match(seeds.get(q), None, backend="faiss", absolute=self.absolute, index_b=self._index[1],
                      recall_sample=self.recall_sample)
            self.store(q, s, m.cos_ab[:, 0], m.index_ab[:, 0])
            if "recall_at_1" in m.info:
                self.recalls.append(m.info["recall_at_1"])
                self.state.info["recall_rows_per_pair"] = m.info["recall_rows"]
            self.backend_desc = m.backend
            bar.update(1)
            bar.set_postfix_str(f"{seeds.names[q]} -> {seeds.names[s]}")
            self.checkpoint()

    def finish(self, seconds: float) -> None:
        """Backend description, time and recall (pooled with the pairs of earlier, interrupted runs)."""
        info = self.state.info
        self.state.backend = self.backend_desc
        info["seconds"] = info.get("seconds", 0.0) + seconds
        if self.recalls:
            n_old, mean_old = info.get("recall_pairs", 0), info.get("recall_at_1", 0.0)
            info["recall_at_1"] = float((mean_old * n_old + np.sum(self.recalls)) / (n_old + len(self.recalls)))
            info["recall_pairs"] = n_old + len(self.recalls)
