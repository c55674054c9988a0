"""Memory-light optimizers: LowMemoryAdam tracks torch Adam, SignSGD, stochastic rounding, bytes table."""

import pytest
import torch

from sae_fast import TopKSAE
from sae_fast.optim import LowMemoryAdam, SignSGD, bytes_per_parameter, make_optimizer, stochastic_round_


def _quadratic_steps(opt_factory, steps: int = 20, dtype=torch.float32) -> torch.Tensor:
    torch.manual_seed(0)
    target = torch.randn(50, 7)
    p = torch.nn.Parameter(torch.zeros(50, 7, dtype=dtype))
    opt = opt_factory([p])
    for _ in range(steps):
        opt.zero_grad()
        ((p.float() - target) ** 2 * torch.linspace(0.1, 10, 7)).sum().backward()
        opt.step()
    return p.detach().float()


def test_low_memory_adam_fp32_states_equals_torch_adam() -> None:
    ours = _quadratic_steps(lambda ps: LowMemoryAdam(ps, lr=1e-2, state_dtype=torch.float32))
    ref = _quadratic_steps(lambda ps: torch.optim.Adam(ps, lr=1e-2))
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_low_memory_adam_bf16_states_close_to_adam() -> None:
    ours = _quadratic_steps(lambda ps: LowMemoryAdam(ps, lr=1e-2))
    ref = _quadratic_steps(lambda ps: torch.optim.Adam(ps, lr=1e-2))
    assert (ours - ref).abs().max() < 2e-3  # 20 steps of lr 1e-2: moves of ~0.2, states rounded to bf16


def test_bf16_parameters_keep_small_updates_on_average() -> None:
    # lr far below half a bf16 ulp of 1.0 (2^-9): round-to-nearest would never move p, stochastic rounding does
    p = torch.nn.Parameter(torch.ones(20000, dtype=torch.bfloat16))
    opt = SignSGD([p], lr=1e-3)
    p.grad = torch.ones_like(p)
    opt.step()
    assert p.float().mean().item() == pytest.approx(1.0, abs=1e-6)  # plain SignSGD: lost (documented)
    p2 = torch.nn.Parameter(torch.ones(20000, dtype=torch.bfloat16))
    adam = LowMemoryAdam([p2], lr=1e-3)
    p2.grad = torch.ones_like(p2)
    adam.step()
    assert p2.float().mean().item() == pytest.approx(1.0 - 1e-3, abs=2e-4)


def test_stochastic_round_unbiased() -> None:
    src = torch.full((100000,), 1.0 + 2**-10)  # a quarter of the way between two bf16 numbers
    dst = torch.empty(100000, dtype=torch.bfloat16)
    stochastic_round_(dst, src, torch.Generator().manual_seed(0))
    assert set(dst.float().unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert dst.float().mean().item() == pytest.approx(1.0 + 2**-10, abs=2e-5)


def test_signsgd_and_signum() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([2.0, -0.1, 0.0])
    SignSGD([p], lr=0.5).step()
    assert p.tolist() == [-0.5, 0.5, 0.0]
    opt = make_optimizer("signum", [p], lr=0.5)
    p.grad = torch.tensor([1.0, 1.0, 1.0])
    opt.step()
    assert opt.state[p]["momentum_buffer"].dtype == torch.bfloat16


def test_trains_a_sae_and_bytes_table() -> None:
    sae = TopKSAE(16, 64, 4, seed=0, dtype=torch.bfloat16)
    x = torch.randn(64, 16).bfloat16()
    opt = make_optimizer("low_memory_adam", sae.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        out = sae(x)
        opt.zero_grad()
        out.fvu.backward()
        opt.step()
        first = first if first is not None else out.fvu.item()
    assert out.fvu.item() < 0.8 * first
    assert bytes_per_parameter("adam", torch.float32) == 16
    assert bytes_per_parameter("low_memory_adam", torch.float32) == 12
    assert bytes_per_parameter("low_memory_adam", torch.bfloat16) == 8
    assert bytes_per_parameter("signsgd", torch.bfloat16) == 4
    with pytest.raises(ValueError, match="optimizer"):
        bytes_per_parameter("sgd", torch.float32)
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("lion", sae.parameters(), lr=1.0)
    with pytest.raises(ValueError, match="lr"):
        LowMemoryAdam(sae.parameters(), lr=0.0)
