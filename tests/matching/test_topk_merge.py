"""The C++ running top-m merge of the exact sweep (`_C.topk_merge`) against the torch fallback and a full sort:
same lists for every m, tile shape and direction; equal scores keep the lower index first."""

from __future__ import annotations

import importlib

import pytest
import torch

exact = importlib.import_module("sae_fast.matching.exact")

pytestmark = pytest.mark.skipif(exact._native_merge() is None, reason="the C++ extension has no topk_merge")


def _sweep(a, b, m, both, absolute, blocks, native: bool, monkeypatch, segment=None):
    with monkeypatch.context() as mp:
        if not native:
            mp.setattr(exact, "_native_merge", lambda: None)
        return exact.topk_sweep(a, b, m, both, absolute, *blocks, segment=segment)


@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("blocks", [(64, 100), (37, 9), (1000, 1000)])
@pytest.mark.parametrize("absolute", [False, True])
def test_native_merge_equals_the_torch_merge(m, blocks, absolute, monkeypatch):
    g = torch.Generator().manual_seed(m + blocks[0])
    a, b = torch.randn(203, 24, generator=g), torch.randn(317, 24, generator=g)
    nat = _sweep(a, b, m, True, absolute, blocks, True, monkeypatch)
    ref = _sweep(a, b, m, True, absolute, blocks, False, monkeypatch)
    full = a @ b.T
    full = full.abs() if absolute else full
    for got, want, scores in ((nat[:2], ref[:2], full), (nat[2:], ref[2:], full.T)):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])  # same tiles: bit for bit
        # the full product is another GEMM call, equal only to rounding on some CPUs (AMD EPYC: last bits differ)
        top = scores.topk(m, dim=1)
        torch.testing.assert_close(got[0], top.values, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scores.gather(1, got[1]), top.values, rtol=1e-5, atol=1e-5)


def test_segments_fold_per_dictionary(monkeypatch):
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(50, 16, generator=g), torch.randn(4 * 30, 16, generator=g)
    nat = _sweep(a, b, 4, True, False, (16, 45), True, monkeypatch, segment=30)
    ref = _sweep(a, b, 4, True, False, (16, 45), False, monkeypatch, segment=30)
    for x, y in zip(nat, ref):
        assert torch.equal(x, y)


def test_equal_scores_keep_the_lower_index_across_tiles(monkeypatch):
    """Duplicate rows of B give equal scores in different tiles: the earlier index stays first, and a later
    equal score never displaces an earlier one at the end of the list."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(40, 8, generator=g), torch.randn(60, 8, generator=g)
    b[7] = 10 * a[0]
    b[45], b[52] = b[7], b[7]  # three equal scores for row 0 of A, in three column tiles of 20
    rv, ri = _sweep(a, b, 2, True, False, (13, 20), True, monkeypatch)[:2]
    assert ri[0].tolist() == [7, 45] and rv[0, 0] == rv[0, 1]
    a[30] = a[3]  # equal column scores: row 3 before row 30
    ci = _sweep(a, b, 40, True, False, (13, 20), True, monkeypatch)[3]
    pos3, pos30 = (ci == 3).int().argmax(1), (ci == 30).int().argmax(1)
    assert bool((pos3 < pos30).all())
