"""The one optimizer step with decoder upkeep (sae_fast.train.step.update) against a plain-torch reference."""

from __future__ import annotations

import torch

from sae_fast.sae import TopKSAE
from sae_fast.train.step import update


def _sae_with_grads(seed: int = 0) -> TopKSAE:
    sae = TopKSAE(8, 24, 3, seed=seed)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(seed))
    sae(x).fvu.backward()
    return sae


def test_update_projects_the_decoder_gradient_and_renormalises_rows() -> None:
    sae = _sae_with_grads()
    w, g = sae.W_dec.detach().clone(), sae.W_dec.grad.clone()
    opt = torch.optim.SGD(sae.parameters(), lr=0.5)
    update(sae, opt, lr=0.25)
    # reference: g minus its component along each (unit) row, one SGD step at lr 0.25, rows rescaled to norm 1
    g_perp = g - (g * w).sum(1, keepdim=True) * w
    expected = w - 0.25 * g_perp
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(sae.W_dec.detach(), expected, rtol=1e-5, atol=1e-6)
    assert opt.param_groups[0]["lr"] == 0.25
    # without the upkeep the same step leaves rows off the unit sphere (the reference above is not trivial)
    plain = w - 0.25 * g
    assert (plain.norm(dim=1) - 1).abs().max() > 1e-3


def test_update_without_decoder_leaves_it_alone() -> None:
    sae = _sae_with_grads(1)
    w = sae.W_dec.detach().clone()
    sae.W_dec.grad = None
    opt = torch.optim.SGD([sae.W_enc, sae.b_enc, sae.b_dec], lr=0.5)
    enc = sae.W_enc.detach().clone()
    update(sae, opt, decoder=False)
    assert torch.equal(sae.W_dec.detach(), w)
    assert not torch.equal(sae.W_enc.detach(), enc)
