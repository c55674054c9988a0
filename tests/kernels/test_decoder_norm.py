"""Fused decoder-norm upkeep kernels against plain torch, and the chunked torch path of sae_fast.ops."""

import pytest
import torch
from sae_fast.kernels.decoder_norm import normalize_rows_, remove_parallel_component_

from sae_fast import ops


@pytest.mark.parametrize(("rows", "d", "dtype"), [(37, 100, torch.float32), (9, 770, torch.bfloat16)])
def test_kernels_match_torch(rows, d, dtype) -> None:
    g = torch.Generator().manual_seed(d)
    W = (torch.randn(rows, d, generator=g) * 3).to(dtype)
    G = torch.randn(rows, d, generator=g).to(dtype)
    W[0] = 0  # a zero row stays finite
    w = W.float()
    u = w / w.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).eps)
    expected_G = G.float() - (G.float() * u).sum(1, keepdim=True) * u
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    remove_parallel_component_(G, W)
    torch.testing.assert_close(G.float(), expected_G, **tol)
    normalize_rows_(W)
    torch.testing.assert_close(W.float(), u, **tol)
    assert W[0].abs().max() == 0


def test_ops_torch_path_in_chunks(monkeypatch) -> None:
    monkeypatch.setattr(ops, "_ROW_CHUNK_ELEMENTS", 50)  # several chunks
    W = torch.randn(23, 10) * 2
    G = torch.randn(23, 10)
    expected = G - (G * W).sum(1, keepdim=True) * W / W.norm(dim=1, keepdim=True).pow(2)
    with ops.backend("reference"):
        ops.remove_parallel_component_(G, W)
        ops.normalize_rows_(W)
    torch.testing.assert_close(G, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(W.norm(dim=1), torch.ones(23))
    with pytest.raises(ValueError, match="G must have"):
        ops.remove_parallel_component_(G[:5], W)
