"""Optimizers for TopKSAE, including memory-light ones for million-latent dictionaries.

`TopKSAE` works with any `torch.optim` optimizer (e.g. `torch.optim.Adam(sae.parameters(), fused=True)` on
CUDA). For dictionaries whose fp32 Adam state does not fit (2·F·d = 8.6e9 parameters at (4096, 2^20): 128 GiB
with fp32 parameters, gradients and two moments), this module adds:

- `LowMemoryAdam`: Adam with moments stored in bf16 (or any `state_dtype`), with optional stochastic rounding
  of bf16 parameters and states.
- `SignSGD`: stateless sign descent (with optional momentum, "signum", whose buffer is in `state_dtype`).

Both run as one-pass Triton kernels where `sae_fast.ops` dispatches to Triton (CUDA tensors; kernels/optimizer.py:
each stored byte read and written once), else as torch element-wise ops in fp32 over chunks of 2^24 elements
(no full-size fp32 temporaries).

Bytes stored per parameter (parameter + gradient + optimizer state), see `bytes_per_parameter`:

| mode                                   | bytes | (4096, 2^20) |
|----------------------------------------|-------|--------------|
| fp32 params, torch Adam                | 16    | 128 GiB      |
| fp32 params, LowMemoryAdam bf16 states | 12    | 96 GiB       |
| bf16 params, LowMemoryAdam bf16 states | 8     | 64 GiB       |
| bf16 params, SignSGD (no momentum)     | 4     | 32 GiB       |
| bf16 params, SignSGD + bf16 momentum   | 6     | 48 GiB       |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from . import ops

__all__ = ["LowMemoryAdam", "SignSGD", "bytes_per_parameter", "make_optimizer", "stochastic_round_"]

_CHUNK = 1 << 24  # elements per fp32 working chunk (64 MiB)


def bytes_per_parameter(optimizer: str, param_dtype: torch.dtype, state_dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes stored per parameter: the parameter, its gradient (same dtype) and the optimizer state.

    optimizer: "adam" (torch.optim.Adam: two fp32-or-param-dtype moments), "low_memory_adam" (two moments
    in `state_dtype`), "signsgd" (none), "signum" (one momentum buffer in `state_dtype`).
    """
    p = torch.finfo(param_dtype).bits // 8
    s = torch.finfo(state_dtype).bits // 8
    states = {"adam": 2 * p, "low_memory_adam": 2 * s, "signsgd": 0, "signum": s}
    if optimizer not in states:
        raise ValueError(f"optimizer must be one of {sorted(states)}, got {optimizer!r}")
    return 2 * p + states[optimizer]


def stochastic_round_(dst: Tensor, src: Tensor, generator: torch.Generator | None = None) -> None:
    """Write fp32 `src` into bf16 `dst` with stochastic rounding (unbiased: E[dst] = src); other dtypes copy."""
    if dst.dtype != torch.bfloat16:
        dst.copy_(src)
        return
    bits = src.float().contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    rounded = (bits + noise) & -65536  # drop the low 16 bits after adding uniform noise below them
    dst.copy_(rounded.view(torch.float32))


def _chunks(n: int) -> Iterable[slice]:
    for start in range(0, n, _CHUNK):
        yield slice(start, min(start + _CHUNK, n))


class LowMemoryAdam(torch.optim.Optimizer):
    """Adam (Kingma & Ba) whose two moments are stored in `state_dtype` (default bf16).

    The update runs in fp32 on chunks of at most 2^24 elements, so the extra working memory is bounded.
    With `stochastic_rounding` (default on), bf16 parameters and bf16 states are written back with
    unbiased stochastic rounding, so updates smaller than half a bf16 ulp are not lost on average.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        state_dtype: torch.dtype = torch.bfloat16,
        stochastic_rounding: bool = True,
        seed: int = 0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if not state_dtype.is_floating_point:
            raise TypeError(f"state_dtype must be floating point, got {state_dtype}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.state_dtype = state_dtype
        self.stochastic_rounding = stochastic_rounding
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if not self.stochastic_rounding:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device]

    def _draw_seed(self, step: int, index: int) -> int:
        """Seed of the kernel's stochastic rounding for parameter number `index` at `step`: differs per step and
        parameter, reproducible per run."""
        return (self._seed * 1_000_003 + step * 7919 + index * 104_729) % (2**31 - 1)

    def _store(self, dst: Tensor, src: Tensor, gen: torch.Generator | None) -> None:
        if gen is not None and dst.dtype == torch.bfloat16:
            stochastic_round_(dst, src, gen)
        else:
            dst.copy_(src)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = -1  # position of p among all parameters: part of its stochastic-rounding seed
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError("LowMemoryAdam does not take sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros(p.shape, dtype=self.state_dtype, device=p.device)
                    state["exp_avg_sq"] = torch.zeros(p.shape, dtype=self.state_dtype, device=p.device)
                state["step"] += 1
                t = state["step"]
                step_size = group["lr"] / (1 - beta1**t)
                bias2_sqrt = (1 - beta2**t) ** 0.5
                gen = self._generator(p.device)
                flat_p = p.view(-1) if p.is_contiguous() else None
                if flat_p is None:
                    raise ValueError("LowMemoryAdam needs contiguous parameters")
                flat_g, m, v = p.grad.reshape(-1), state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1)
                if ops.use_triton(p) and p.grad.dtype == p.dtype:
                    from .kernels.optimizer import adam_step_

                    adam_step_(
                        flat_p, flat_g.contiguous(), m, v, step_size=step_size, beta1=beta1, beta2=beta2,
                        bias2_sqrt=bias2_sqrt, eps=group["eps"], seed=self._draw_seed(t, index),
                        stochastic_params=self.stochastic_rounding, stochastic_states=self.stochastic_rounding,
                    )  # fmt: skip
                    continue
                for sl in _chunks(flat_p.numel()):
                    g = flat_g[sl].float()
                    m32 = m[sl].float().mul_(beta1).add_(g, alpha=1 - beta1)
                    v32 = v[sl].float().mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    update = m32 / (v32.sqrt() / bias2_sqrt + group["eps"])
                    self._store(flat_p[sl], flat_p[sl].float().sub_(update, alpha=step_size), gen)
                    self._store(m[sl], m32, gen)
                    self._store(v[sl], v32, gen)
        return loss


class SignSGD(torch.optim.Optimizer):
    """p ← p − lr · sign(g) (or sign of a momentum buffer kept in `state_dtype` when momentum > 0: "signum").

    Stateless without momentum: 0 extra bytes per parameter. Memory traffic: read p and g, write p.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.0,
        *,
        state_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum})
        self.state_dtype = state_dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf: Tensor | None = None
                if group["momentum"] > 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p, dtype=self.state_dtype)
                    buf = state["momentum_buffer"]
                if ops.use_triton(p) and p.is_contiguous() and p.grad.dtype == p.dtype:
                    from .kernels.optimizer import sign_step_

                    sign_step_(p, p.grad.contiguous(), buf, lr=group["lr"], momentum=group["momentum"])
                    continue
                if not p.is_contiguous():
                    raise ValueError("SignSGD needs contiguous parameters")
                flat_p, flat_g = p.view(-1), p.grad.reshape(-1)
                flat_buf = buf.view(-1) if buf is not None else None
                for sl in _chunks(flat_p.numel()):  # fp32 math, rounded once: what the kernel computes
                    d = flat_g[sl].float()
                    if flat_buf is not None:
                        d = flat_buf[sl].float().mul_(group["momentum"]).add_(d, alpha=1 - group["momentum"])
                        flat_buf[sl] = d.to(flat_buf.dtype)
                    flat_p[sl] = flat_p[sl].float().sub_(torch.sign(d), alpha=group["lr"]).to(p.dtype)
        return loss


def make_optimizer(name: str, params: Iterable[Tensor], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """Build "adam" (torch.optim.Adam; fused on CUDA), "low_memory_adam", "signsgd" or "signum" (momentum 0.95)."""
    params = list(params)
    if name == "adam":
        fused = all(p.is_cuda for p in params) and bool(params)
        return torch.optim.Adam(params, lr=lr, fused=fused or None, **kwargs)
    if name == "low_memory_adam":
        return LowMemoryAdam(params, lr=lr, **kwargs)
    if name == "signsgd":
        return SignSGD(params, lr=lr, **kwargs)
    if name == "signum":
        return SignSGD(params, lr=lr, momentum=kwargs.pop("momentum", 0.95), **kwargs)
    raise ValueError(f"optimizer must be 'adam', 'low_memory_adam', 'signsgd' or 'signum', got {name!r}")
