"""Building a :class:`LatentTable` from what is on disk: a stability run, the seeds' SAEs, held-out activations.

Memory: the stability arrays (A·S·F), one SAE, and one batch of activations at a time (the activation file is
memory-mapped and streamed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..activations import map_activations_file, to_torch
from ..checkpoint import load_sae
from ..errors import DataError, UsageError
from ..runs import decoder_identity
from ..stability import Stability, find_saved_saes
from .study import is_study, study_table
from .table import LatentTable, activation_stats, latent_table

STABILITY_META = "stability.json"


def find_stability(path: str | os.PathLike[str]) -> Path:
    """The stability folder of a run, a study, or the folder itself."""
    p = Path(path)
    for cand in (p, p / "stability"):
        if (cand / STABILITY_META).is_file():
            return cand
    raise DataError(f"{p} holds no stability run ({STABILITY_META} in it or in {p / 'stability'}); run "
                    f"`sae-fast stability RUN` or `sae-fast study RUN` first")


class ActivationBatches:
    """Re-iterable batches (float32 tensors of `batch_size` rows) of a (N, d) `.npy` or `.safetensors` file.

    The file is memory-mapped (:func:`sae_fast.activations.map_activations_file`: float32, float16 or bfloat16;
    a `.safetensors` file holds one tensor or names it ``activations``), so memory is one batch whatever N; each
    batch is checked finite (the first bad row is named).
    """

    def __init__(self, path: str | os.PathLike[str], d: int, batch_size: int = 4096, max_rows: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"--activations {self.path} does not exist" if not self.path.exists()
                            else f"--activations {self.path} is not a file")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise UsageError(f"--batch-size must be a positive integer, got {batch_size!r}")
        if max_rows is not None and (not isinstance(max_rows, int) or max_rows <= 0):
            raise UsageError(f"--max-rows must be a positive integer, got {max_rows!r}")
        self.array, self.dtype_name = map_activations_file(self.path)
        if self.array.shape[1] != d:
            raise DataError(f"--activations {self.path} has shape {tuple(self.array.shape)}; expected (N, {d}), the "
                            "SAEs' input width")
        self.rows = self.array.shape[0] if max_rows is None else min(max_rows, self.array.shape[0])
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        for lo in range(0, self.rows, self.batch_size):
            xb = to_torch(np.array(self.array[lo:min(lo + self.batch_size, self.rows)]), self.dtype_name).float()
            if not torch.isfinite(xb).all():
                bad = lo + int(torch.nonzero(~torch.isfinite(xb).all(1))[0])
                raise DataError(f"--activations {self.path}: row {bad} is not finite")
            yield xb


def sae_of_seed(run: str | os.PathLike[str], seed: str, stability: Stability | None = None) -> Any:
    """Load the SAE of the seed named ``seed`` under the run folder ``run``. With ``stability``, it must be the
    SAE that run was computed on: the same decoder identity where the run records one (streamed hash), and the
    same number of latents; DataError naming the folder otherwise (its statistics would be another SAE's)."""
    found = dict(find_saved_saes(run))
    if seed not in found:
        raise DataError(f"{run} holds no SAE for seed {seed!r} (found {sorted(found)})")
    folder = found[seed].parent
    hint = "pass --run the folder of the seeds the stability run was made from"
    ids = stability.info.get("decoder_ids") if stability is not None else None
    if ids and seed in stability.seeds and decoder_identity(found[seed]) != ids[stability.seeds.index(seed)]:
        raise DataError(f"{folder} is not the SAE the stability run computed seed {seed!r} on (its weights "
                        f"differ); {hint}")
    sae = load_sae(folder)
    if stability is not None and sae.W_dec.shape[0] != stability.num_features:
        raise DataError(f"{folder} holds an SAE of {sae.W_dec.shape[0]} latents; the stability run has "
                        f"{stability.num_features}; {hint}")
    return sae


def build_table(path: str | os.PathLike[str], *, seed: str | int | None = None, run: str | os.PathLike[str] |
                None = None, activations: str | os.PathLike[str] | None = None, batch_size: int = 4096,
                max_rows: int | None = None, bins: int = 20, top: int = 5) -> LatentTable:
    """The latent table of one anchor seed of the stability run under ``path``.

    Parameters
    ----------
    path : a study folder (then, without ``activations``, the study's own artifacts give frequency, histograms,
        top activations, candidate subspaces and snippets: :func:`sae_fast.browse.study.study_table`), or a
        stability run folder (or a folder holding one).
    seed : the anchor seed (name or index); default the study's anchor, or the run's first anchor.
    run : the folder of trained seeds whose SAE is run over ``activations`` (default ``path``).
    activations : a ``.npy``/``.safetensors`` file of (N, d) activations; with it, frequency, histograms and top
        activations of every latent are added.
    batch_size, max_rows : rows per encoder batch, and a cap on the rows read.
    bins, top : histogram bins and top activations kept per latent.

    Returns
    -------
    A :class:`~sae_fast.browse.table.LatentTable`. Memory: O(F (S + bins + top)) for the table plus one batch's
    codes; the activations are read memory-mapped, never whole.
    """
    if activations is None and is_study(path):
        return study_table(path, seed)  # bins and top as the study's browse step
    stab = Stability.load(find_stability(path))
    table = latent_table(stab, seed)
    if activations is not None:
        sae = sae_of_seed(path if run is None else run, table.seed, stab)
        stats = activation_stats(sae, ActivationBatches(activations, sae.d_in, batch_size, max_rows),
                                 table.num_latents, bins=bins, top=top)
        for name, value in stats.items():
            setattr(table, name, value)
    return table
