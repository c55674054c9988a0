"""Latent-sorted (CSR) row-sparse weight gradient: hot latents, unused latents, column sums, determinism."""

import torch
from sae_fast.kernels.sparse_transpose import latent_csr, sparse_transpose_matmul

from sae_fast import reference


def test_hot_and_unused_latents() -> None:
    g = torch.Generator().manual_seed(0)
    n, k, d, f = 130, 3, 100, 40
    indices = torch.randint(0, f, (n, k), generator=g)
    indices[:, 0] = 7  # one latent fires on every token
    indices[indices == 11] = 12  # latent 11 never fires
    weights = torch.randn(n, k, generator=g)
    dense = torch.randn(n, d, generator=g)
    out, colsum = sparse_transpose_matmul(indices, weights, dense, f, with_colsum=True)
    torch.testing.assert_close(out, reference.sparse_transpose_matmul(indices, weights, dense, f), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(colsum, torch.zeros(f).index_add_(0, indices.reshape(-1), weights.reshape(-1)))
    assert out[11].abs().sum() == 0 and colsum[11] == 0
    again, _ = sparse_transpose_matmul(indices, weights, dense, f, csr=latent_csr(indices, f))
    assert torch.equal(out, again)  # fixed summation order: bitwise reproducible


def test_csr_layout() -> None:
    indices = torch.tensor([[2, 0], [2, 1], [0, 2]])
    csr = latent_csr(indices, 4)
    assert csr.count.tolist() == [2, 1, 3, 0]
    assert csr.start.tolist() == [0, 2, 3, 6]
    assert csr.rows.tolist() == [0, 2, 1, 0, 1, 2]  # tokens of latent 0, then 1, then 2 (stable order)
