"""Small planted runs for the pipeline tests: seeds sharing some decoder directions, the rest random."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sae_fast.checkpoint import save_sae
from sae_fast.formats import ThresholdSAE
from sae_fast.sae import TopKSAE


def planted_run(root: Path, *, num_seeds: int = 3, d: int = 16, F: int = 24, k: int = 4, shared: int = 12,
                rows: int = 1500, seed: int = 0) -> tuple[Path, torch.Tensor]:
    """A run folder of ``num_seeds`` TopK SAEs whose first ``shared`` latents agree across seeds, and held-out rows."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((shared, d))
    for s in range(num_seeds):
        dec = np.concatenate([common + 0.02 * rng.standard_normal((shared, d)), rng.standard_normal((F - shared, d))])
        dec /= np.linalg.norm(dec, axis=1, keepdims=True)
        sae = TopKSAE(d, F, k, seed=s)
        with torch.no_grad():
            sae.W_dec.copy_(torch.as_tensor(dec, dtype=torch.float32))
            sae.W_enc.copy_(torch.as_tensor(dec, dtype=torch.float32))
        save_sae(sae, root / "run" / f"seed{s}")
    x = torch.as_tensor(rng.standard_normal((rows, d)), dtype=torch.float32)
    return root / "run", x


FAST = {"ranks": (2, 4), "n_random": 1, "refit_steps": 0, "finetune_steps": 0, "subspace_draws": 1}
"""StudyConfig settings that keep a planted study to seconds"""


def planted_threshold_run(root: Path, architecture: str, *, num_seeds: int = 3, d: int = 16, F: int = 24,
                          shared: int = 12, rows: int = 1500, seed: int = 0) -> tuple[Path, torch.Tensor]:
    """As :func:`planted_run`, but SAELens ``standard`` (``architecture='relu'``) or ``jumprelu`` seeds
    (:class:`ThresholdSAE`; JumpReLU thresholds spread over [0, 1.2] so each latent fires at its own rate)."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((shared, d))
    for s in range(num_seeds):
        dec = np.concatenate([common + 0.02 * rng.standard_normal((shared, d)), rng.standard_normal((F - shared, d))])
        dec /= np.linalg.norm(dec, axis=1, keepdims=True)
        w = torch.as_tensor(dec, dtype=torch.float32)
        theta = torch.zeros(F) if architecture == "relu" else torch.as_tensor(rng.uniform(0.0, 1.2, F)).float()
        b_enc = torch.as_tensor(0.1 * rng.standard_normal(F), dtype=torch.float32)
        sae = ThresholdSAE(w, b_enc, w, torch.zeros(d), theta, torch.zeros(d), architecture=architecture)
        save_sae(sae, root / "run" / f"seed{s}", format="saelens")
    x = torch.as_tensor(rng.standard_normal((rows, d)), dtype=torch.float32)
    return root / "run", x
