"""The plain-PyTorch reference: tie rule, shapes, and float64 gradcheck of every differentiable piece."""

import pytest
import torch

from sae_fast import reference


def test_topk_ties_take_lowest_index() -> None:
    scores = torch.tensor([[0.0, 2.0, 1.0, 2.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    values, indices = reference.topk_lowest_index(scores, 3)
    assert indices.tolist() == [[1, 3, 5], [0, 1, 2]]
    assert values.tolist() == [[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]]


def test_encode_matches_dense_definition() -> None:
    g = torch.Generator().manual_seed(0)
    x, W, b = torch.randn(7, 10, generator=g), torch.randn(33, 10, generator=g), torch.randn(33, generator=g)
    values, indices, av, ai = reference.encode_topk(x, W, b, 4)
    pre = torch.relu(x @ W.T + b)
    expected = torch.topk(pre, 4).values
    torch.testing.assert_close(values, expected)
    torch.testing.assert_close(pre.gather(1, indices), values)
    assert av is None and ai is None


def test_encode_aux_selects_only_dead_latents() -> None:
    g = torch.Generator().manual_seed(1)
    x, W, b = torch.randn(9, 6, generator=g), torch.randn(20, 6, generator=g), torch.randn(20, generator=g)
    dead = torch.zeros(20, dtype=torch.bool)
    dead[[2, 5, 11]] = True
    _, _, av, ai = reference.encode_topk(x, W, b, 2, dead, k_aux=8)
    assert av.shape == (9, 3)  # min(k_aux, num_dead)
    assert set(ai.unique().tolist()) <= {2, 5, 11}
    pre = torch.relu(x @ W.T + b)
    torch.testing.assert_close(pre.gather(1, ai), av)
    with pytest.raises(ValueError, match="k_aux"):
        reference.encode_topk(x, W, b, 2, dead)


def test_decode_and_backward_pieces_agree_with_autograd() -> None:
    g = torch.Generator().manual_seed(2)
    values = torch.randn(5, 3, generator=g, requires_grad=True)
    indices = torch.randint(0, 11, (5, 3), generator=g)
    indices[0] = torch.tensor([4, 4, 4])  # repeated latent within a row
    W = torch.randn(11, 7, generator=g, requires_grad=True)
    out = reference.decode(values, indices, W)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    gv, gW = reference.decode_backward(grad_out, values.detach(), indices, W.detach())
    torch.testing.assert_close(gv, values.grad)
    torch.testing.assert_close(gW, W.grad)


def test_encode_backward_matches_autograd() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g, requires_grad=True)
    W = torch.randn(13, 5, generator=g, requires_grad=True)
    b = torch.randn(13, generator=g, requires_grad=True)
    dead = torch.arange(13) % 2 == 0
    values, indices, av, ai = reference.encode_topk(x, W, b, 3, dead, k_aux=4)
    gv, ga = torch.randn_like(values), torch.randn_like(av)
    torch.autograd.backward([values, av], [gv, ga])
    dx, dW, db = reference.encode_backward(
        torch.cat([gv, ga], 1), torch.cat([values, av], 1).detach(), torch.cat([indices, ai], 1), x.detach(), W.detach()
    )
    torch.testing.assert_close(dx, x.grad)
    torch.testing.assert_close(dW, W.grad)
    torch.testing.assert_close(db, b.grad)


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, generator=g, requires_grad=True)
    Wd = torch.randn(9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    dead = torch.arange(9) >= 5

    def f(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, Wd: torch.Tensor) -> torch.Tensor:
        values, indices, av, ai = reference.encode_topk(x, W, b, 2, dead, k_aux=2)
        return reference.decode(values, indices, Wd) + 0.5 * reference.decode(av, ai, Wd)

    assert torch.autograd.gradcheck(f, (x, W, b, Wd))


def test_bf16_selects_on_fp32_preactivations() -> None:
    """Pre-activations 256 and 257 from bf16 inputs: bf16 rounds 257 to 256 (a tie the lowest index would win);
    the kernels accumulate and select in fp32, and so does the reference. Values come back in bf16."""
    x = torch.tensor([[1.0, 1.0]], dtype=torch.bfloat16)
    W = torch.tensor([[256.0, 0.0], [256.0, 1.0], [0.0, 0.0]], dtype=torch.bfloat16)
    b = torch.zeros(3, dtype=torch.bfloat16)
    dead = torch.tensor([True, True, False])
    values, indices, av, ai = reference.encode_topk(x, W, b, 1, dead, k_aux=1)
    assert indices.tolist() == [[1]] and ai.tolist() == [[1]]
    assert values.dtype == av.dtype == torch.bfloat16
    assert reference.preactivations(x, W, b).dtype == torch.float32
