"""Sparse encoder backward (dx, dW_enc, db_enc) against sae_fast.reference.encode_backward."""

import pytest
import torch
from sae_fast.kernels.encoder_backward import encoder_backward

from sae_fast import reference
from tests.kernels._tolerances import SUMS


@pytest.mark.parametrize(
    ("n", "d", "f", "k", "dtype"),
    [
        (7, 770, 130, 3, torch.float32),
        (130, 100, 200, 33, torch.float32),
        (7, 384, 130, 32, torch.bfloat16),
        (1, 100, 130, 1, torch.float32),
        (7, 100, 161, 1, torch.bfloat16),
        (0, 100, 130, 3, torch.float32),
    ],
)
def test_matches_reference(n, d, f, k, dtype) -> None:
    g = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=g).to(dtype)
    W = torch.randn(f, d, generator=g).to(dtype)
    indices = torch.stack([torch.randperm(f, generator=g)[:k] for _ in range(n)]) if n else torch.zeros(0, k).long()
    values = torch.relu(torch.randn(n, k, generator=g))  # some zeros: the relu gate must cut them
    grad_values = torch.randn(n, k, generator=g)
    dx, dW, db = encoder_backward(grad_values, values, indices, x, W)
    rdx, rdW, rdb = reference.encode_backward(grad_values, values, indices, x.float(), W.float())
    tol = SUMS[dtype]()
    torch.testing.assert_close(dx.float(), rdx, **tol)
    torch.testing.assert_close(dW.float(), rdW, **tol)
    torch.testing.assert_close(db.float(), rdb, **tol)
    assert dx.dtype == dW.dtype == db.dtype == dtype
    if n < 10:
        no_dx, only_dW, _ = encoder_backward(grad_values, values, indices, x, W, need_dx=False)
        assert no_dx is None and torch.equal(only_dW, dW)


def test_rejects_out_of_range_indices_and_mixed_devices() -> None:
    """An index F or -1 would be read (dx) and bincounted (dW) out of bounds; check_range=False skips the check."""
    x, W = torch.randn(3, 8), torch.randn(10, 8)
    values, grad = torch.rand(3, 2), torch.randn(3, 2)
    for bad in (10, -1):
        indices = torch.tensor([[0, 1], [2, bad], [4, 5]])
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 10\)"):
            encoder_backward(grad, values, indices, x, W)
    with pytest.raises(TypeError, match="indices"):
        encoder_backward(grad, values, torch.zeros(3, 2, dtype=torch.int32), x, W)
    with pytest.raises(ValueError, match="W_enc on meta"):
        encoder_backward(grad, values, torch.zeros(3, 2, dtype=torch.long), x, W.to("meta"))
    dx, _, _ = encoder_backward(grad, values, torch.zeros(3, 2, dtype=torch.long), x, W, check_range=False)
    assert dx.shape == (3, 8)
