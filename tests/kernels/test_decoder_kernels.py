"""Sparse decoder kernels (gather forward, k dot products, row-sparse dW) against sae_fast.reference."""

import pytest
import torch
from sae_fast.kernels.decoder import decoder_backward, gather_weighted_sum, sparse_dot

from sae_fast import reference
from tests.kernels._tolerances import SUMS


def _case(n: int, d: int, f: int, k: int, seed: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, k, generator=g)
    indices = torch.randint(0, f, (n, k), generator=g)
    if n and k > 1:
        indices[0, :2] = 5  # a latent repeated within a row
    W = torch.randn(f, d, generator=g).to(dtype)
    grad_out = torch.randn(n, d, generator=g).to(dtype)
    return values, indices, W, grad_out


@pytest.mark.parametrize(
    ("n", "d", "f", "k", "dtype"),
    [
        (1, 770, 50, 1, torch.float32),
        (7, 100, 130, 3, torch.bfloat16),
        (130, 384, 200, 32, torch.float32),
        (7, 770, 130, 32, torch.bfloat16),
        (0, 100, 50, 3, torch.float32),
    ],
)
def test_forward_and_backward_match_reference(n, d, f, k, dtype) -> None:
    values, indices, W, grad_out = _case(n, d, f, k, seed=n + d + k, dtype=dtype)
    out = gather_weighted_sum(values, indices, W)
    assert out.shape == (n, d) and out.dtype == dtype
    # the reference computes in fp32 from the same inputs; the kernel rounds once to `dtype` at the end
    expected = reference.gather_weighted_sum(values, indices, W.float())
    tol = SUMS[dtype]()
    torch.testing.assert_close(out.float(), expected, **tol)
    grad_values, grad_W = decoder_backward(grad_out, values, indices, W)
    ref_gv, ref_gW = reference.decode_backward(grad_out.float(), values, indices, W.float())
    torch.testing.assert_close(grad_values, ref_gv, **SUMS[torch.float32]())
    torch.testing.assert_close(grad_W.float(), ref_gW, **tol)
    assert grad_W.dtype == dtype
    unused = torch.ones(f, dtype=torch.bool)
    unused[indices.reshape(-1)] = False
    assert grad_W[unused].abs().sum() == 0  # row-sparse: latents that never fired get zero rows


def test_sparse_dot_many_columns() -> None:
    # k above the kernel's column block: exercises the grid over k (e.g. AuxK with k_aux = 200)
    _, indices, W, grad_out = _case(3, 100, 300, 200, seed=0, dtype=torch.float32)
    torch.testing.assert_close(
        sparse_dot(grad_out, indices, W), reference.sparse_values_grad(grad_out, indices, W), **SUMS[torch.float32]()
    )


def test_bad_inputs() -> None:
    values, indices, W, grad_out = _case(4, 100, 50, 3, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match="indices"):
        gather_weighted_sum(values, indices[:, :2], W)
    with pytest.raises(TypeError, match="indices"):
        gather_weighted_sum(values, indices.float(), W)
    with pytest.raises(ValueError, match="contiguous"):
        gather_weighted_sum(values, indices, W.t().contiguous().t())
    with pytest.raises(TypeError, match="table"):
        sparse_dot(grad_out, indices, W.double())


def test_out_of_range_indices_and_mixed_devices_raise() -> None:
    values, indices, W, grad_out = _case(4, 100, 50, 3, seed=1, dtype=torch.float32)
    for bad in (50, -1):
        wrong = indices.clone()
        wrong[1, 2] = bad
        for fn, args in ((gather_weighted_sum, (values, wrong, W)), (sparse_dot, (grad_out, wrong, W)),
                         (decoder_backward, (grad_out, values, wrong, W))):
            with pytest.raises(ValueError, match=r"indices must lie in \[0, 50\)"):
                fn(*args)
    with pytest.raises(ValueError, match="table on meta"):
        gather_weighted_sum(values, indices, W.to("meta"))
