"""Tests of sae_fast.stability.schedule: every pair planned exactly once, stacked sweeps, decoder loads."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("anchors", [[0, 1, 2, 3, 4, 5, 6], [3]])
@pytest.mark.parametrize("stack", [1, 2, 3, 6, 7])
def test_stacked_sweeps_cover_every_pair_once(anchors: list[int], stack: int) -> None:
    from sae_fast.stability import plan_jobs as _jobs

    jobs = _jobs(7, anchors, "exact", stack=stack)
    pairs = [p for j in jobs for p in j.pairs]
    want = {(q, s) for q in anchors for s in range(7) if s != q}
    assert len(pairs) == len(set(pairs)) and set(pairs) == want
    for j in jobs:
        assert 1 <= len(j.others) <= stack and j.query not in j.others
        first = j.block.index(j.others[0])
        assert j.block[first:first + len(j.others)] == j.others  # a contiguous run of the stacked block


def test_stacked_sweeps_bound_decoder_loads() -> None:
    """48 seeds, 8 per sweep: ~S^2 / (2 stack) sweeps instead of S^2 / 2 pairs, and with an LRU cache of 16
    decoders the snake order reads each seed ~3 times in all."""
    from collections import OrderedDict

    from sae_fast.stability import plan_jobs as _jobs

    def loads(jobs, capacity: int) -> int:
        cache: OrderedDict[int, None] = OrderedDict()
        count, block = 0, None
        for j in jobs:  # as stability_scores: the block's seeds once when its stacked matrix is built
            for seed in ((*j.block, j.query) if j.block != block else (j.query,)):
                if seed in cache:
                    cache.move_to_end(seed)
                    continue
                count += 1
                cache[seed] = None
                if len(cache) > capacity:
                    cache.popitem(last=False)
            block = j.block
        return count

    jobs = _jobs(48, list(range(48)), "exact", stack=8)
    assert len(jobs) == sum(range(7, 48, 8))  # block J ending at j1 is swept by the j1 - 1 seeds below its end
    assert loads(jobs, 48) == 48  # all fit: each seed read once
    assert loads(jobs, 16) <= 160  # 144 with the snake order; 1128 pairs would be 2256 reads without a cache
