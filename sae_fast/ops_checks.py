"""Input checks of the SAE operations in :mod:`sae_fast.ops`: shapes, dtypes, devices, index ranges, finiteness.

Each check raises a ValueError or TypeError naming the argument and what was expected. Memory: O(1) beyond the
inputs (the index-range and finiteness checks reduce on the inputs' device, one host sync each).
"""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_matrix(name: str, t: Tensor, cols: int | None = None) -> None:
    """t: a 2-D floating tensor, with `cols` columns when given."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2 or (cols is not None and t.shape[1] != cols):
        want = f"(rows, {cols})" if cols is not None else "(rows, cols)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (fp32/fp64/bf16/fp16), got {t.dtype}")


def check_k(name: str, k: object, high: int | None = None) -> None:
    """k: a positive Python int (not a bool), at most `high` when given."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or (high is not None and k > high):
        span = f"[1, num_latents={high}]" if high is not None else "[1, inf)"
        raise ValueError(f"{name} must be an int in {span}, got {k!r}")


def check_dead_mask(dead_mask: object, num_latents: int, device: torch.device) -> None:
    """dead_mask: a bool tensor of shape (num_latents,) on `device`."""
    if not isinstance(dead_mask, Tensor) or dead_mask.dtype != torch.bool or dead_mask.shape != (num_latents,):
        got = (
            f"{dead_mask.dtype} {tuple(dead_mask.shape)}" if isinstance(dead_mask, Tensor) else type(dead_mask).__name__
        )
        raise ValueError(f"dead_mask must be a bool tensor of shape ({num_latents},), got {got}")
    if dead_mask.device != device:
        raise ValueError(f"dead_mask must be on {device} (the weights' device), got {dead_mask.device}")


def require_finite(name: str, t: Tensor) -> None:
    """No NaN or inf in t (one host sync); the error names the argument."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")


def check_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, dead_mask: Tensor | None) -> None:
    """Shapes, dtypes and devices of :func:`sae_fast.ops.encode`'s inputs; k in [1, num_latents]."""
    check_matrix("W_enc", W_enc)
    num_latents, d_in = W_enc.shape
    check_matrix("x", x, d_in)
    if not isinstance(b_enc, Tensor) or b_enc.shape != (num_latents,):
        raise ValueError(f"b_enc must have shape ({num_latents},), got {tuple(getattr(b_enc, 'shape', ()))}")
    if x.dtype != W_enc.dtype or b_enc.dtype != W_enc.dtype:
        raise TypeError(f"x, W_enc, b_enc must share a dtype, got {x.dtype}, {W_enc.dtype}, {b_enc.dtype}")
    if x.device != W_enc.device or b_enc.device != W_enc.device:
        raise ValueError(f"x, W_enc and b_enc must be on one device, got {x.device}, {W_enc.device}, {b_enc.device}")
    check_k("k", k, num_latents)
    if dead_mask is not None:
        check_dead_mask(dead_mask, num_latents, W_enc.device)


def check_decode(
    values: Tensor, indices: Tensor, W_dec: Tensor, *, check_indices: bool, check_finite: bool,
    names: tuple[str, str] = ("values", "indices"),
) -> None:  # fmt: skip
    """Shapes, dtypes, devices; with `check_indices` every index in [0, num_latents) (one host sync); with
    `check_finite` no NaN/inf in values."""
    v_name, i_name = names
    check_matrix("W_dec", W_dec)
    check_matrix(v_name, values)
    if not isinstance(indices, Tensor) or indices.dtype not in (torch.int64, torch.int32):
        got = indices.dtype if isinstance(indices, Tensor) else type(indices).__name__
        raise TypeError(f"{i_name} must be an int64 (or int32) tensor, got {got}")
    if indices.shape != values.shape:
        raise ValueError(
            f"{i_name} must have the shape of {v_name} {tuple(values.shape)}, got {tuple(indices.shape)}"
        )
    if values.device != W_dec.device or indices.device != W_dec.device:
        raise ValueError(
            f"{v_name}, {i_name} and W_dec must be on one device, got {values.device}, {indices.device}, {W_dec.device}"
        )
    if check_indices and indices.numel():
        low, high = (int(v) for v in torch.aminmax(indices))
        if low < 0 or high >= W_dec.shape[0]:
            raise ValueError(
                f"{i_name} must lie in [0, num_latents={W_dec.shape[0]}), got values in [{low}, {high}]"
            )
    if check_finite:
        require_finite(v_name, values)


def check_aux(aux_indices: Tensor, dead_mask: Tensor, W_dec: Tensor, check_indices: bool) -> None:
    """dead_mask (F,) bool on W_dec's device; with `check_indices` every AuxK index a dead latent."""
    check_dead_mask(dead_mask, W_dec.shape[0], W_dec.device)
    if check_indices and aux_indices.numel() and not bool(dead_mask[aux_indices.long()].all()):
        raise ValueError("aux_indices must all be dead latents (dead_mask[aux_indices] all True)")
