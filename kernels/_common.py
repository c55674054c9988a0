"""Small helpers shared by the kernels and their wrappers: interpreter detection, launch configuration, argument
checks, the grouped tile order of the GEMM kernels."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the kernels take


def interpreting() -> bool:
    """True when Triton runs in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    return triton.next_power_of_2(max(int(n), 1))


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 under the interpreter)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


_MM_FP32_OUT: bool | None = None


def cuda_mm_fp32_out_ok() -> bool:
    """Whether this torch has `torch.mm(a, b, out_dtype=torch.float32)` for 16-bit CUDA inputs (probed once)."""
    global _MM_FP32_OUT
    if _MM_FP32_OUT is None:
        try:
            x = torch.ones(16, 16, device="cuda", dtype=torch.bfloat16)
            _MM_FP32_OUT = torch.mm(x, x, out_dtype=torch.float32).dtype == torch.float32
        except (RuntimeError, TypeError):
            _MM_FP32_OUT = False
    return _MM_FP32_OUT


def check_tensor(name: str, t: torch.Tensor, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...]) -> None:
    """Assert shape, dtype and contiguity of a kernel argument (wrappers call this before launching)."""
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {dtypes}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_devices(**tensors: torch.Tensor | None) -> None:
    """All given tensors (None skipped) on one device; the error names each argument's device."""
    named = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(named.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in named.items())
        raise ValueError(f"tensors must be on one device, got {listed}")


def check_index_range(name: str, indices: torch.Tensor, high: int) -> None:
    """Every entry of `indices` in [0, high) (one host sync): an index out of range would be read or written out of
    bounds by a kernel."""
    if indices.numel():
        low, top = (int(v) for v in torch.aminmax(indices))
        if low < 0 or top >= high:
            raise ValueError(f"{name} must lie in [0, {high}), got values in [{low}, {top}]")


@triton.jit
def grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program `pid` in grouped order: GROUP_M row blocks walk the column blocks together, so
    that the B tiles they share stay in L2."""
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_rows, (pid % per_group) // group_rows
