"""One-pass optimizer updates: each element of parameter, gradient and state is read once and written once.

The torch versions in sae_fast.optim do the same arithmetic as a chain of element-wise ops over fp32 chunks
(about ten passes and several fp32 temporaries per chunk); at (4096, 2^20) that is ~1 TB of traffic per step.
Here the arithmetic is fp32 in registers and only the stored tensors move:
- Adam with moments in any float dtype: read p, g, m, v; write p, m, v (14 bytes per bf16 parameter).
- sign descent: read p, g (and the momentum buffer); write p (and the buffer).
bf16 outputs are rounded on their bits: to nearest (ties to even), or stochastically (unbiased: the fp32 bits plus
16 random low bits, truncated), each output with its own random stream (`tl.randint4x` of the element offset
and a per-call seed).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, check_devices, check_tensor, interpreting

__all__ = ["adam_step_", "sign_step_"]



@triton.jit
def _round_to(x, rnd, dtype: tl.constexpr, STOCHASTIC: tl.constexpr):
    """fp32 x -> dtype. To bf16 the rounding is done on the bits here (the conversion is then exact): stochastic
    when STOCHASTIC (rnd: uint32 random bits per element), else to nearest, ties to even — the same on a GPU and
    in the interpreter (whose own fp32 -> bf16 conversion truncates). NaN stays NaN."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        if STOCHASTIC:
            carry = (rnd & 0xFFFF).to(tl.int32)
        else:
            carry = 0x7FFF + ((bits >> 16) & 1)
        rounded = ((bits + carry) & -65536).to(tl.float32, bitcast=True)  # low 16 bits zero: exact in bf16
        x = tl.where(x == x, rounded, x)
    return x.to(dtype)


@triton.jit
def _adam_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, n, step_size, beta1, beta2, bias2_sqrt, eps, seed,
    SR_P: tl.constexpr, SR_STATE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """p, g (n,) one float dtype; m, v (n,) one float dtype (the states); all contiguous, updated in place.

    m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  p ← p − step_size · m / (√v / bias2_sqrt + eps), in fp32.
    SR_P / SR_STATE: stochastic rounding of p / of m and v (only meaningful for bf16). Grid (cdiv(n, BLOCK),).
    """
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = m * beta1 + g * (1.0 - beta1)
    v = v * beta2 + g * g * (1.0 - beta2)
    p = p - step_size * (m / (tl.sqrt(v) / bias2_sqrt + eps))
    r_p, r_m, r_v, _ = tl.randint4x(seed, offs)
    tl.store(p_ptr + offs, _round_to(p, r_p, p_ptr.dtype.element_ty, SR_P), mask=mask)
    tl.store(m_ptr + offs, _round_to(m, r_m, m_ptr.dtype.element_ty, SR_STATE), mask=mask)
    tl.store(v_ptr + offs, _round_to(v, r_v, v_ptr.dtype.element_ty, SR_STATE), mask=mask)


@triton.jit
def _sign_kernel(
    p_ptr, g_ptr, buf_ptr, n, lr, momentum,
    HAS_MOMENTUM: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """p, g (n,) one float dtype, buf (n,) any float dtype (read only with HAS_MOMENTUM); contiguous, in place.

    buf ← momentum·buf + (1 − momentum)·g (with HAS_MOMENTUM, else the direction is g); p ← p − lr·sign(direction),
    in fp32, rounded to nearest. Grid (cdiv(n, BLOCK),).
    """
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    direction = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_MOMENTUM:
        buf = tl.load(buf_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        direction = buf * momentum + direction * (1.0 - momentum)
        tl.store(buf_ptr + offs, _round_to(direction, 0, buf_ptr.dtype.element_ty, False), mask=mask)
    sign = tl.where(direction > 0, 1.0, tl.where(direction < 0, -1.0, 0.0))
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(p_ptr + offs, _round_to(p - lr * sign, 0, p_ptr.dtype.element_ty, False), mask=mask)


def _launch() -> dict[str, int]:
    """Block size (and warps on a GPU): 8 elements per thread, 77 registers with the Philox draws (sm_90);
    16 per thread with 4 warps spilled (bench/compile_report.py)."""
    return {"BLOCK": 1024} if interpreting() else {"BLOCK": 2048, "num_warps": 8}


def adam_step_(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    *,
    step_size: float,
    beta1: float,
    beta2: float,
    bias2_sqrt: float,
    eps: float,
    seed: int,
    stochastic_params: bool,
    stochastic_states: bool,
) -> None:
    """One Adam update in place. p, g: same shape, one dtype in {fp32, bf16, fp16}; m, v: p's shape, one float
    dtype; all contiguous, one device. Stochastic rounding applies to bf16 outputs only; `seed` picks the draw."""
    shape = tuple(p.shape)
    check_tensor("p", p, shape, FLOAT_DTYPES)
    check_tensor("grad", g, shape, (p.dtype,))
    check_tensor("exp_avg", m, shape, FLOAT_DTYPES)
    check_tensor("exp_avg_sq", v, shape, (m.dtype,))
    check_devices(p=p, grad=g, exp_avg=m, exp_avg_sq=v)
    n = p.numel()
    if n == 0:
        return
    launch = _launch()
    _adam_kernel[(triton.cdiv(n, launch["BLOCK"]),)](
        p, g, m, v, n, step_size, beta1, beta2, bias2_sqrt, eps, seed,
        SR_P=stochastic_params and p.dtype == torch.bfloat16,
        SR_STATE=stochastic_states and m.dtype == torch.bfloat16, **launch,
    )  # fmt: skip


def sign_step_(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, *, lr: float, momentum: float) -> None:
    """p ← p − lr·sign(g), or with a momentum buffer (updated in place) p ← p − lr·sign(momentum·buf + (1−m)·g).
    p, g: same shape and dtype in {fp32, bf16, fp16}; buf: p's shape, any float dtype; contiguous, one device."""
    shape = tuple(p.shape)
    check_tensor("p", p, shape, FLOAT_DTYPES)
    check_tensor("grad", g, shape, (p.dtype,))
    if buf is not None:
        check_tensor("momentum_buffer", buf, shape, FLOAT_DTYPES)
    check_devices(p=p, grad=g, momentum_buffer=buf)
    n = p.numel()
    if n == 0:
        return
    launch = _launch()
    _sign_kernel[(triton.cdiv(n, launch["BLOCK"]),)](
        p, g, buf if buf is not None else p, n, lr, momentum, HAS_MOMENTUM=buf is not None, **launch
    )
