"""The plan of a stability run: which sweeps compute which (anchor, seed) pairs, in which order, on which rank.

Memory: O(S^2) job tuples.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import distributed as dist_utils
from ..errors import UsageError


class Job(NamedTuple):
    """One unit of work of a stability run and the directed (anchor, seed) pairs it fills in.

    exact: one sweep of seed ``query``'s rows against the seeds ``others`` stacked (a contiguous run of
    ``block``, whose stacked matrix is built once for all the sweeps that share it); ``both``: the column
    maxima give the other direction too. faiss: ``query`` is the database seed, whose index is built once,
    searched by every anchor in ``pairs``.
    """

    query: int
    others: tuple[int, ...]
    block: tuple[int, ...]
    both: bool
    pairs: tuple[tuple[int, int], ...]


def plan_jobs(num_seeds: int, anchors: list[int], backend: str, stack: int = 1) -> list[Job]:
    """The run's jobs in the order they are computed.

    exact, every seed an anchor: the seeds are cut into blocks of ``stack``; for each block J, every seed q
    below J's end is swept once against the seeds of J above q, stacked (one GEMM sweep for up to ``stack``
    unordered pairs, both directions). Each unordered pair is computed exactly once; q runs down and up in
    turn (snake order) so that an LRU decoder cache keeps the seeds the previous block ended with.
    exact, other anchors: each anchor is swept against the other seeds, ``stack`` at a time (one direction).
    faiss: one job per database seed, whose index is built once and searched by every anchor.
    """
    stack = max(1, stack)
    if backend != "exact":
        return [Job(s, (), (), False, tuple((q, s) for q in anchors if q != s))
                for s in range(num_seeds) if any(q != s for q in anchors)]
    jobs = []
    if sorted(anchors) == list(range(num_seeds)):
        for bi, j0 in enumerate(range(0, num_seeds, stack)):
            block = tuple(range(j0, min(j0 + stack, num_seeds)))
            queries = range(block[-1] - 1, -1, -1) if bi % 2 else range(block[-1])
            for q in queries:
                others = tuple(s for s in block if s > q)
                pairs = tuple((q, s) for s in others) + tuple((s, q) for s in others)
                jobs.append(Job(q, others, block, True, pairs))
        return jobs
    for q in anchors:
        rest = [s for s in range(num_seeds) if s != q]
        for i in range(0, len(rest), stack):
            block = tuple(rest[i:i + stack])
            jobs.append(Job(q, block, block, False, tuple((q, s) for s in block)))
    return jobs


def default_stack(num_seeds: int, num_features: int, d: int, cache_bytes: int, max_rows: int = 2**18) -> int:
    """Seeds stacked per exact sweep: as many as fit in ``max_rows`` stacked rows (one large GEMM instead of
    many small ones, with one launch and A read once) and in a quarter of the decoder cache's memory (the
    stacked float32 matrix is held beside the cache), at least 1 and at most S - 1."""
    by_rows = max_rows // max(1, num_features)
    by_memory = cache_bytes // 4 // max(1, num_features * d * 4)
    return max(1, min(num_seeds - 1, by_rows, by_memory))


def agree_stack(stack: int | None, saved: int | None, default: int, use_dist: bool) -> int:
    """Seeds per exact sweep, the same on every rank (they must cut the same job list): the one given, else the
    saved run's, else the default (the smallest over ranks: free GPU memory differs)."""
    if stack is not None:
        if not isinstance(stack, (int, np.integer)) or isinstance(stack, bool) or stack < 1:
            raise UsageError(f"stack must be a positive int (seeds per exact sweep), got {stack!r}")
        return int(stack)
    if not use_dist:
        return int(saved) if saved else default
    votes = dist_utils.all_gather_objects((int(saved) if saved else None, default))
    kept = [v[0] for v in votes if v[0] is not None]
    return kept[0] if kept else min(v[1] for v in votes)


def plan_for_ranks(num_seeds: int, anchors: list[int], backend: str, stack: int, world: int) -> tuple[list[Job], int]:
    """The jobs and the stacking actually used: with the exact backend the stacking is lowered until every
    one of ``world`` ranks gets work."""
    jobs = plan_jobs(num_seeds, anchors, backend, stack=stack)
    while backend == "exact" and len(jobs) < world and stack > 1:
        stack -= 1
        jobs = plan_jobs(num_seeds, anchors, backend, stack=stack)
    return jobs, stack
