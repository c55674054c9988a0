"""The per-latent table: partners and p̂ from a planted stability run; activation statistics against a
brute-force dense computation; the streaming top-T merge with ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_fast import TopKSAE, stability_scores
from sae_fast.browse import activation_stats, latent_table
from sae_fast.browse.table import _merge_top
from sae_fast.errors import UsageError

D, F, K = 24, 60, 4


def planted_decoders(num_seeds: int = 4, shared: int = 30, seed: int = 0) -> list[torch.Tensor]:
    """Latents 0..shared-1 of every seed are noisy copies of one source (permuted per seed); the rest are fresh."""
    g = torch.Generator().manual_seed(seed)
    src = torch.nn.functional.normalize(torch.randn(shared, D, generator=g), dim=1)
    out = []
    for s in range(num_seeds):
        w = torch.randn(F, D, generator=g)
        perm = torch.randperm(shared, generator=g) if s else torch.arange(shared)
        w[:shared] = src[perm] + 0.05 * torch.randn(shared, D, generator=g)
        out.append(torch.nn.functional.normalize(w, dim=1))
    return out


def test_table_partners_follow_the_stability_run():
    decs = planted_decoders()
    st = stability_scores(decs, theta=0.7, anchor="all", progress=False)
    t = latent_table(st, 1)
    assert t.seed == st.seeds[1] and t.num_latents == F
    np.testing.assert_array_equal(t.p_hat, st.p_hat(anchor=1).numpy())
    assert (t.p_hat[:30] == 1).all() and (t.p_hat[30:] < 0.5).all()  # the planted shared latents
    assert t.partner_seed.shape == (F, 3) and set(t.partner_seed[0].tolist()) == {0, 2, 3}
    assert (np.diff(t.partner_cos, axis=1) <= 0).all()  # best first
    for f in (0, 17, 45):
        for s, j, c in zip(t.partner_seed[f], t.partner_latent[f], t.partner_cos[f]):
            expect = torch.nn.functional.cosine_similarity(decs[1][f], decs[s], dim=1)
            assert int(expect.argmax()) == j and abs(float(expect.max()) - c) < 1e-5
    with pytest.raises(UsageError, match="not an anchor"):
        latent_table(stability_scores(decs, anchor=0, progress=False), 2)


def test_activation_stats_match_dense_brute_force():
    torch.manual_seed(0)
    sae = TopKSAE(D, F, K, seed=3)
    x = torch.randn(301, D)
    batches = [x[i:i + 64] for i in range(0, 301, 64)]
    stats = activation_stats(sae, batches, F, bins=7, top=3)
    with torch.no_grad():
        v, i = sae.encode(x)
    dense = torch.zeros(301, F).scatter_(1, i, v.float())  # test oracle only: tiny
    np.testing.assert_allclose(stats["frequency"], (dense > 0).float().mean(0).numpy(), rtol=1e-6)
    for f in range(F):
        col = dense[:, f]
        pos = col[col > 0]
        assert stats["hist_counts"][f].sum() == len(pos)
        if len(pos):
            h, _ = np.histogram(pos.numpy(), bins=7, range=(0, float(pos.max())))
            assert abs(h - stats["hist_counts"][f]).sum() <= 2  # bin-edge rounding only
            order = torch.argsort(-col, stable=True)[: min(3, len(pos))]
            np.testing.assert_array_equal(stats["top_rows"][f, : len(order)], order.numpy())
            np.testing.assert_allclose(stats["top_values"][f, : len(order)], col[order].numpy(), rtol=1e-6)


def test_merge_top_keeps_the_largest_with_ties_to_the_lowest_row():
    best_v = torch.full((3, 2), -float("inf"))
    best_r = torch.full((3, 2), -1, dtype=torch.int64)
    _merge_top(best_v, best_r, torch.tensor([0, 0, 0, 2]), torch.tensor([1.0, 3.0, 1.0, 5.0]),
               torch.tensor([7, 8, 2, 9]))
    _merge_top(best_v, best_r, torch.tensor([0, 2]), torch.tensor([2.0, 4.0]), torch.tensor([11, 12]))
    assert best_r.tolist() == [[8, 11], [-1, -1], [9, 12]]
    assert best_v[0].tolist() == [3.0, 2.0]
    _merge_top(best_v, best_r, torch.tensor([1, 1]), torch.tensor([1.0, 1.0]), torch.tensor([5, 4]))
    assert best_r[1].tolist() == [4, 5]
