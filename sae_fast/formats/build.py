"""Turning weights read from any format into a :class:`~sae_fast.sae.TopKSAE` (so TopK keeps the kernels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import CheckpointError
from ..sae import TopKSAE

__all__ = ["fold_decoder_norms", "topk_sae"]


def topk_sae(w_enc: Tensor, b_enc: Tensor, w_dec: Tensor, b_dec: Tensor, k: int, *, cfg: Any, file: Path,
             dtype: torch.dtype | None, device: torch.device | str | None) -> TopKSAE:
    """A TopKSAE holding the given weights.

    Parameters
    ----------
    w_enc, b_enc, w_dec, b_dec : W_enc (F, d), b_enc (F,), W_dec (F, d), b_dec (d,).
    k : active latents per input (1..F; CheckpointError naming ``file`` otherwise).
    cfg : the raw config, kept as ``checkpoint_cfg``.
    file : the file the weights came from (for messages).
    dtype : default W_dec's; device: where the SAE is built.

    Returns
    -------
    The TopKSAE, with ``architecture = 'topk'``. Memory: one copy of the weights, 2 F d entries.
    """
    num_latents, d_in = (int(s) for s in w_dec.shape)
    if not 0 < k <= num_latents:
        raise CheckpointError(f"{file}: k={k} must be in 1..{num_latents}")
    dtype = dtype or w_dec.dtype
    sae = TopKSAE(d_in, num_latents, k, dtype=dtype, device=device, seed=0)
    with torch.no_grad():
        for name, value in (("W_enc", w_enc), ("b_enc", b_enc), ("W_dec", w_dec), ("b_dec", b_dec)):
            getattr(sae, name).copy_(value.to(dtype))
    sae.checkpoint_cfg = cfg  # type: ignore[attr-defined]  # the raw config, for callers who want seed etc.
    sae.architecture = "topk"  # type: ignore[attr-defined]
    return sae


def fold_decoder_norms(w_enc: Tensor, b_enc: Tensor, w_dec: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unit-norm decoder rows with the norms moved into the encoder: ``pre·‖W_dec_i‖`` and ``f/‖W_dec_i‖``
    become plain ``pre`` and ``f`` (SAELens' rescale_acts_by_decoder_norm). Computed in float64."""
    norms = w_dec.double().norm(dim=1).clamp_min(1e-8)
    return ((w_enc.double() * norms[:, None]).to(w_enc.dtype), (b_enc.double() * norms).to(b_enc.dtype),
            (w_dec.double() / norms[:, None]).to(w_dec.dtype))
