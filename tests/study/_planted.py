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


def planted_dose_run(root: Path, *, grouped: bool, d: int = 64, block: int = 11, group_rank: int = 16,
                     rows: int = 3000, seed: int = 0) -> tuple[Path, torch.Tensor]:
    """A run of 4 seeds whose latents fall in four p̂ levels by construction, with (``grouped``) or without a
    planted dose-response trend.

    Per seed (TopK SAEs, encoder = decoder, k = 8): 3·``block`` latents at each level: shared by every seed
    (p̂ = 1); shared by all but one seed (p̂ = 2/3); shared with exactly one other seed (p̂ = 1/3); the seed's own
    (p̂ = 0). With ``grouped``, every p̂ = 0 latent and half the p̂ = 1/3 ones are random unit vectors of one shared
    ``group_rank``-dim subspace (too wide for two of them to match one to one): cross-seed subspace sharing rises as
    p̂ falls. Without it every direction is an isotropic random one (the negative control). Each seed's latents are
    in their own random order. Held-out rows are isotropic, so every latent fires about equally often."""
    rng = np.random.default_rng(seed)
    span = np.linalg.qr(rng.standard_normal((d, group_rank)))[0]

    def draw(m: int, in_group: bool) -> np.ndarray:
        return span @ rng.standard_normal((group_rank, m)) if in_group else rng.standard_normal((d, m))

    def jitter(dirs: np.ndarray) -> np.ndarray:
        return dirs.T + 0.01 * rng.standard_normal(dirs.T.shape)

    S = 4
    stable = draw(3 * block, False)
    but_one = {o: draw(block, False) for o in range(S)}  # block o: in every seed but o
    pairs = [(a, b) for a in range(S) for b in range(a + 1, S)]
    half = block // 2
    pair_dirs = {p: np.concatenate([draw(half, grouped), draw(block - half, False)], axis=1) for p in pairs}
    for s in range(S):
        mine = [stable, *(but_one[o] for o in range(S) if o != s), *(pair_dirs[p] for p in pairs if s in p),
                draw(3 * block, grouped)]
        dec = np.concatenate([jitter(m) for m in mine])
        dec = dec[rng.permutation(len(dec))]
        dec /= np.linalg.norm(dec, axis=1, keepdims=True)
        sae = TopKSAE(d, len(dec), 8, seed=s)
        with torch.no_grad():
            sae.W_dec.copy_(torch.as_tensor(dec, dtype=torch.float32))
            sae.W_enc.copy_(torch.as_tensor(dec, dtype=torch.float32))
        save_sae(sae, root / "run" / f"seed{s}")
    return root / "run", torch.as_tensor(rng.standard_normal((rows, d)), dtype=torch.float32)
