"""Codes of either form (TopK's (values, indices), other architectures' sparse (N, F)) read the same way."""

from __future__ import annotations

import pytest
import torch

from sae_fast.analysis.codes import fixed_k, mask_code, positive_entries, topk_only_note
from sae_fast.analysis.firing import frequency_from_codes, sparse_codes
from sae_fast.formats import ThresholdSAE, as_args
from sae_fast.sae import TopKSAE


def _dense_from_entries(rows, cols, vals, n, F):
    out = torch.zeros(n, F, dtype=vals.dtype)
    out[rows, cols] = vals
    return out


def test_both_forms_give_the_same_positive_entries():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(6, 10, generator=g).relu()
    dense[2] = 0.0  # a row with no activation
    values, indices = dense.topk(3, dim=1)
    topk_dense = torch.zeros_like(dense).scatter(1, indices, values)
    for code, want in (((values, indices), topk_dense), (topk_dense.to_sparse(), topk_dense), (dense, dense)):
        rows, cols, vals = positive_entries(code, 10)
        assert (vals > 0).all() and bool((rows[1:] >= rows[:-1]).all())
        torch.testing.assert_close(_dense_from_entries(rows, cols, vals, 6, 10), want)


def test_a_code_of_another_width_is_refused():
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        positive_entries(torch.zeros(3, 10).to_sparse(), 12)


def test_mask_code_zeroes_the_masked_latents_only():
    dense = torch.arange(1.0, 13.0).reshape(3, 4)
    masked = torch.tensor([False, True, False, True])
    want = dense * torch.tensor([1.0, 0.0, 1.0, 0.0])
    torch.testing.assert_close(mask_code(dense.to_sparse(), masked).to_dense(), want)
    values, indices = dense.topk(2, dim=1)  # latents 3 and 2 of every row
    v, i = mask_code((values, indices), masked)
    torch.testing.assert_close(v, torch.stack([torch.zeros(3), values[:, 1]], dim=1))
    assert i is indices


def test_sparse_codes_of_a_jumprelu_sae_match_the_dense_rule():
    g = torch.Generator().manual_seed(1)
    d, F = 5, 7
    w = torch.randn(F, d, generator=g)
    theta = torch.linspace(0.0, 1.5, F)
    sae = ThresholdSAE(w, torch.zeros(F), w, torch.zeros(d), theta, torch.zeros(d), architecture="jumprelu")
    x = torch.randn(200, d, generator=g)
    pre = x @ w.T
    want = torch.where(pre > theta, pre, torch.zeros(()))
    codes = sparse_codes(sae, [x[:64], x[64:]])
    torch.testing.assert_close(torch.as_tensor(codes.toarray()), want)
    torch.testing.assert_close(torch.as_tensor(frequency_from_codes(codes)), (want > 0).double().mean(0))
    torch.testing.assert_close(sae.decode(*as_args(sae.encode(x))), want @ w)


def test_fixed_k_is_topk_only():
    assert fixed_k(TopKSAE(4, 8, 3)) == 3 and topk_only_note(TopKSAE(4, 8, 3), "x") is None
    relu = ThresholdSAE(torch.eye(4), torch.zeros(4), torch.eye(4), torch.zeros(4), torch.zeros(4), torch.zeros(4),
                        architecture="relu")
    assert fixed_k(relu) is None and "'relu'" in topk_only_note(relu, "the k/F baseline")
