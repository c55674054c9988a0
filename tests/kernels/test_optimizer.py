"""One-pass optimizer kernels (Triton interpreter on CPU) against sae_fast.optim's torch path."""

import pytest
import torch
from sae_fast.kernels.optimizer import adam_step_, sign_step_

from sae_fast import ops
from sae_fast.optim import LowMemoryAdam, SignSGD


def _run(opt_factory, backend: str, dtype: torch.dtype, steps: int = 5) -> list[torch.Tensor]:
    """Parameters (odd sizes) after `steps` updates on fixed random gradients, on one backend."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*shape, generator=g).to(dtype)) for shape in ((37, 11), (1001,))]
    grads = [[torch.randn(p.shape, generator=g).to(dtype) for p in params] for _ in range(steps)]
    opt = opt_factory(params)
    with ops.backend(backend):
        for step_grads in grads:
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
            opt.step()
    return [p.detach().float() for p in params] + [s.float() for st in opt.state.values() for s in st.values()
                                                   if isinstance(s, torch.Tensor)]


@pytest.mark.parametrize(("param_dtype", "state_dtype"), [(torch.float32, torch.float32),
                                                          (torch.bfloat16, torch.bfloat16),
                                                          (torch.float32, torch.bfloat16)])
def test_adam_kernel_matches_torch_path(param_dtype, state_dtype) -> None:
    """Round-to-nearest (no stochastic rounding): the kernel and the torch chunks compute the same fp32 values,
    up to the order of a few fp32 operations (one bf16 ulp where the result is stored in bf16)."""
    factory = lambda ps: LowMemoryAdam(ps, lr=1e-2, state_dtype=state_dtype, stochastic_rounding=False)
    ours, ref = _run(factory, "triton", param_dtype), _run(factory, "reference", param_dtype)
    assert len(ours) == len(ref) == 6  # 2 parameters + their two moments
    tol = 1e-6 if param_dtype == state_dtype == torch.float32 else 8e-3
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sign_kernel_matches_torch_path(dtype, momentum) -> None:
    factory = lambda ps: SignSGD(ps, lr=1e-2, momentum=momentum, state_dtype=torch.float32)
    for a, b in zip(_run(factory, "triton", dtype), _run(factory, "reference", dtype)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_adam_kernel_stochastic_rounding_is_unbiased_and_brackets() -> None:
    """bf16 parameter, update below half an ulp: each result is one of the two neighbouring bf16 values and the
    mean over many elements equals the fp32 result."""
    n = 50_000
    p = torch.ones(n, dtype=torch.bfloat16)
    g = torch.ones(n, dtype=torch.bfloat16)
    m, v = torch.zeros(n, dtype=torch.bfloat16), torch.zeros(n, dtype=torch.bfloat16)
    # first step: m = 0.1, v = 0.001, update = m / sqrt(v) ~ 3.16; step_size 1e-4 -> p = 1 - 3.16e-4
    adam_step_(p, g, m, v, step_size=1e-4, beta1=0.9, beta2=0.999, bias2_sqrt=1.0, eps=1e-30, seed=3,
               stochastic_params=True, stochastic_states=False)
    expected = 1 - 1e-4 * 0.1 / 0.001**0.5
    below = torch.tensor(1.0, dtype=torch.bfloat16) - 2**-8  # the bf16 neighbour under 1.0
    assert set(p.float().unique().tolist()) <= {1.0, float(below)}
    assert p.float().mean().item() == pytest.approx(expected, abs=2e-5)
    p2 = torch.ones(n, dtype=torch.bfloat16)
    adam_step_(p2, g, m.zero_(), v.zero_(), step_size=1e-4, beta1=0.9, beta2=0.999, bias2_sqrt=1.0, eps=1e-30,
               seed=4, stochastic_params=True, stochastic_states=False)
    assert not torch.equal(p, p2)  # another seed, another draw


def test_wrappers_check_their_arguments() -> None:
    p = torch.zeros(4)
    with pytest.raises(TypeError, match="grad"):
        sign_step_(p, torch.zeros(4, dtype=torch.float64), None, lr=1.0, momentum=0.0)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        adam_step_(p, p.clone(), p.clone(), torch.zeros(5), step_size=1.0, beta1=0.9, beta2=0.9, bias2_sqrt=1.0,
                   eps=1e-8, seed=0, stochastic_params=False, stochastic_states=False)
