"""Latent-sorted (CSR) row-sparse weight gradient: hot latents, unused latents, column sums, determinism."""

import pytest
import torch
from sae_fast.kernels.sparse_transpose import latent_csr, sparse_transpose_matmul, sparse_transpose_pairs

from sae_fast import reference
from tests.kernels._tolerances import SUMS


def _matches_reference(indices: torch.Tensor, weights: torch.Tensor, dense: torch.Tensor, f: int):
    """The kernel's (F, d) product and column sums, checked against the reference; returns both."""
    out, colsum = sparse_transpose_matmul(indices, weights, dense, f, with_colsum=True)
    expected = reference.sparse_transpose_matmul(indices, weights, dense, f)
    torch.testing.assert_close(out, expected, **SUMS[torch.float32]())
    torch.testing.assert_close(colsum, torch.zeros(f).index_add_(0, indices.reshape(-1), weights.reshape(-1)))
    return out, colsum


def test_hot_and_unused_latents() -> None:
    g = torch.Generator().manual_seed(0)
    n, k, d, f = 130, 3, 100, 40
    indices = torch.randint(0, f, (n, k), generator=g)
    indices[:, 0] = 7  # one latent fires on every token
    indices[indices == 11] = 12  # latent 11 never fires
    weights = torch.randn(n, k, generator=g)
    dense = torch.randn(n, d, generator=g)
    out, colsum = _matches_reference(indices, weights, dense, f)
    assert out[11].abs().sum() == 0 and colsum[11] == 0
    again, _ = sparse_transpose_matmul(indices, weights, dense, f, csr=latent_csr(indices, f))
    assert torch.equal(out, again)  # fixed summation order: bitwise reproducible


def test_csr_layout() -> None:
    indices = torch.tensor([[2, 0], [2, 1], [0, 2]])
    csr = latent_csr(indices, 4)
    assert csr.count.tolist() == [2, 1, 3, 0]
    assert csr.start.tolist() == [0, 2, 3, 6]
    assert csr.rows.tolist() == [0, 2, 1, 0, 1, 2]  # tokens of latent 0, then 1, then 2 (stable order)


@pytest.mark.parametrize(("n", "k"), [(1, 1), (1, 5), (7, 1), (0, 3)])
def test_small_and_empty_batches(n: int, k: int) -> None:
    g = torch.Generator().manual_seed(n * 10 + k)
    f, d = 13, 33
    indices = torch.randint(0, f, (n, k), generator=g)
    weights = torch.randn(n, k, generator=g)
    dense = torch.randn(n, d, generator=g)
    _matches_reference(indices, weights, dense, f)


def test_rejects_out_of_range_indices() -> None:
    """Latent F used to be dropped silently by the layout's bincount; now every entry point raises."""
    indices = torch.tensor([[0, 4], [5, 1]])
    weights, dense = torch.ones(2, 2), torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 5\)"):
        sparse_transpose_matmul(indices, weights, dense, 5)
    with pytest.raises(ValueError, match=r"latents must lie in \[0, 5\)"):
        latent_csr(indices, 5)  # free: bincount's length shows it even without the range check
    with pytest.raises(ValueError, match=r"indices must lie"):
        sparse_transpose_matmul(-indices, weights, dense, 6)
    rows = torch.tensor([0, 0, 2, 1])
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 2\)"):
        sparse_transpose_pairs(torch.tensor([0, 1, 2, 3]), rows, torch.ones(4), dense, 5)
    with pytest.raises(ValueError, match="dense on meta"):
        sparse_transpose_matmul(indices.clamp(max=4), weights, dense.to("meta"), 5)
