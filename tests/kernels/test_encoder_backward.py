"""Sparse encoder backward (dx, dW_enc, db_enc) against sae_fast.reference.encode_backward."""

import pytest
import torch
from sae_fast.kernels.encoder_backward import encoder_backward

from sae_fast import reference


@pytest.mark.parametrize(
    ("n", "d", "f", "k", "dtype"),
    [(7, 770, 130, 3, torch.float32), (130, 100, 200, 33, torch.float32), (7, 384, 130, 32, torch.bfloat16)],
)
def test_matches_reference(n, d, f, k, dtype) -> None:
    g = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=g).to(dtype)
    W = torch.randn(f, d, generator=g).to(dtype)
    indices = torch.stack([torch.randperm(f, generator=g)[:k] for _ in range(n)])
    values = torch.relu(torch.randn(n, k, generator=g))  # some zeros: the relu gate must cut them
    grad_values = torch.randn(n, k, generator=g)
    dx, dW, db = encoder_backward(grad_values, values, indices, x, W)
    rdx, rdW, rdb = reference.encode_backward(grad_values, values, indices, x.float(), W.float())
    tol = {"atol": 1e-4, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 1e-2}
    torch.testing.assert_close(dx.float(), rdx, **tol)
    torch.testing.assert_close(dW.float(), rdW, **tol)
    torch.testing.assert_close(db.float(), rdb, **tol)
    assert dx.dtype == dW.dtype == db.dtype == dtype
    if n < 10:
        no_dx, only_dW, _ = encoder_backward(grad_values, values, indices, x, W, need_dx=False)
        assert no_dx is None and torch.equal(only_dW, dW)
