"""Planted decoders and a tiny exact SAE for the analysis tests."""

from __future__ import annotations

import numpy as np
import torch


def planted_decoders(num_seeds: int = 4, d: int = 32, shared: int = 12, private: int = 12, noise: float = 0.02,
                     seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Each seed: ``shared`` features common to all seeds (plus small noise) then ``private`` random ones.

    Returns the decoders and the (F,) ground-truth bool "shared" mask (the same layout in every seed).
    """
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((shared, d))
    decs = []
    for _ in range(num_seeds):
        rows = np.concatenate([common + noise * rng.standard_normal((shared, d)), rng.standard_normal((private, d))])
        decs.append(rows / np.linalg.norm(rows, axis=1, keepdims=True))
    return decs, np.arange(shared + private) < shared


def identity_sae(d: int = 8):
    """A TopKSAE with W_enc = W_dec = I, zero biases and k = d: it reconstructs non-negative x exactly."""
    from sae_fast import TopKSAE

    sae = TopKSAE(d, d, d, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.requires_grad_(False)
    return sae
