"""sae_fast.sparse_rows: the C++ per-pair products against the dense reference, the torch fallback, and
themselves across thread counts (bit for bit)."""

import pytest
import torch

from sae_fast import reference, sparse_rows


def _planted(dtype: torch.dtype, n: int = 29, k: int = 6, f: int = 41, d: int = 13):
    g = torch.Generator().manual_seed(3)
    weights = torch.randn(n, k, generator=g, dtype=dtype)
    indices = torch.randint(0, f - 5, (n, k), generator=g)  # the last 5 latents get no pair: zero rows
    indices[0] = 7  # one latent repeated within a row
    dense = torch.randn(n, d, generator=g, dtype=dtype)
    table = torch.randn(f, d, generator=g, dtype=dtype)
    return weights, indices, dense, table


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("native", [True, False])
def test_products_match_the_reference(dtype, native, monkeypatch) -> None:
    if native and sparse_rows._native() is None:
        pytest.skip("the C++ extension is not built")
    if not native:
        monkeypatch.setattr(sparse_rows, "_native", lambda: None)
    weights, indices, dense, table = _planted(dtype)
    f = table.shape[0]
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    out, sums = sparse_rows.sparse_transpose(weights, indices, dense, f, with_sums=True)
    torch.testing.assert_close(out, reference.sparse_transpose_matmul(indices, weights, dense, f).to(dtype), **tol)
    want_sums = torch.zeros(f, dtype=dtype).index_add_(0, indices.reshape(-1), weights.reshape(-1))
    torch.testing.assert_close(sums, want_sums, **tol)
    assert torch.equal(out[-5:], torch.zeros_like(out[-5:])) and torch.equal(sums[-5:], torch.zeros(5, dtype=dtype))
    dots = sparse_rows.sparse_dot(dense, indices, table)
    torch.testing.assert_close(dots, reference.sparse_values_grad(dense, indices, table).to(dtype), **tol)
    gathered = sparse_rows.gather_weighted_sum(weights, indices, table)
    torch.testing.assert_close(gathered, reference.gather_weighted_sum(weights, indices, table), **tol)


def test_bit_identical_across_thread_counts_and_runs() -> None:
    if sparse_rows._native() is None:
        pytest.skip("the C++ extension is not built")
    weights, indices, dense, table = _planted(torch.float32, n=300, k=9, f=50, d=37)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            out, sums = sparse_rows.sparse_transpose(weights, indices, dense, 50, with_sums=True)
            results.append((out, sums, sparse_rows.sparse_dot(dense, indices, table)))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_empty_inputs() -> None:
    weights, indices, dense, table = _planted(torch.float32)
    out, sums = sparse_rows.sparse_transpose(weights[:, :0], indices[:, :0], dense, 41, with_sums=True)
    assert torch.equal(out, torch.zeros(41, 13)) and torch.equal(sums, torch.zeros(41))
    assert sparse_rows.sparse_dot(dense[:0], indices[:0], table).shape == (0, 6)
    assert torch.equal(sparse_rows.gather_weighted_sum(weights[:, :0], indices[:, :0], table), torch.zeros(29, 13))
