"""The latent table of one seed from a study's own artifacts: p̂ and labels (stability step), best partners
(the stability step's saved Stability run), frequency, histograms and top activations (the firing step's CSR
codes, never re-encoded), candidate subspaces (candidates step) and per-latent top snippets (frequency step's
``top_snippets.json``, when the held-out rows came with their tokens).

Memory: O(S²·F) for the stability arrays, O(nnz) for one seed's codes, O(F·(P + T + bins)) for the table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.firing import load_codes
from ..analysis.frequency import snippet
from ..errors import DataError
from ..stability import Stability
from .table import LatentTable, code_stats, latent_table

TOP_SNIPPETS = "top_snippets.json"
"""file of the frequency step: {latent: [snippet, ...]} of the anchor seed, best first, aligned with top_rows"""


def is_study(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a study folder (its stability and firing steps finished)."""
    p = Path(path)
    return all((p / step / "done.json").is_file() for step in ("stability", "firing"))


def top_snippets(top_rows: np.ndarray, tokens: Sequence[Sequence[str]], where: np.ndarray) -> dict[int, list[str]]:
    """Snippet text of each latent's top rows ((F, T) row indices, -1 for none) from the rows' tokens.

    ``where`` (N, 2) gives each row's text index and token position. Memory O(F·T) strings."""
    out: dict[int, list[str]] = {}
    for lat in np.flatnonzero((top_rows >= 0).any(1)):
        out[int(lat)] = [snippet(tokens[where[r, 0]], int(where[r, 1])) for r in top_rows[lat] if r >= 0]
    return out


def table_from_study_arrays(stab: Stability, seed: int, *, p_hat: np.ndarray, labels: np.ndarray, codes: Any,
                            candidate: np.ndarray | None, snippets: dict[int, list[str]], bins: int = 20,
                            top: int = 5) -> LatentTable:
    """The table of seed index ``seed`` from a study's arrays.

    Parameters
    ----------
    stab : the stability step's Stability run (partners and cosines).
    p_hat, labels : the study's (F,) p̂ and labels of this seed (the split the study reports).
    codes : the (N, F) sparse firing codes of this seed; frequency, histograms and top activations come from them.
    candidate : (F,) candidate id per latent (-1 none), or None.
    snippets : latent -> snippet strings aligned with the top activations.
    bins, top : histogram bins and top activations per latent.
    """
    table = latent_table(stab, seed)
    table.p_hat = np.asarray(p_hat, dtype=np.float32)
    table.label = np.asarray(labels, dtype=np.int8)
    for name, value in code_stats(codes, bins=bins, top=top).items():
        setattr(table, name, value)
    table.candidate = None if candidate is None else np.asarray(candidate, dtype=np.int64)
    table.snippets = snippets
    return table


def _npz(path: Path, name: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z[name]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path} lacks a readable array {name!r} ({err}); rerun that study step with --redo") from err


def _seed_index(stab: Stability, seed: str | int | None, default: int) -> int:
    if seed is None:
        return default
    if isinstance(seed, str) and seed in stab.seeds:
        return stab.seeds.index(seed)
    if (isinstance(seed, int) or str(seed).isdigit()) and 0 <= int(seed) < stab.num_seeds:
        return int(seed)
    raise DataError(f"--seed {seed!r} is neither a seed name {stab.seeds} nor an index below {stab.num_seeds}")


def _step_settings(root: Path) -> dict[str, Any]:
    """The settings the study's stability, frequency and browse steps ran with (later ones win)."""
    out: dict[str, Any] = {}
    for step in ("stability", "frequency", "browse"):
        try:
            out.update(json.loads((root / step / "done.json").read_text()).get("settings", {}))
        except (OSError, ValueError):
            continue
    return out


def study_table(path: str | os.PathLike[str], seed: str | int | None = None, *, bins: int | None = None,
                top: int | None = None) -> LatentTable:
    """The table of one seed read from the study folder ``path``'s step artifacts.

    ``seed`` defaults to the seed the study's browse step showed (else its anchor); ``bins`` and ``top`` to the
    study's ``browse_bins`` and ``snippet_top`` (so snippets align with the top activations). Memory as in the
    module docstring."""
    root = Path(path)
    stab = Stability.load(root / "stability")
    settings = _step_settings(root)
    anchor = int(settings.get("anchor", 0))
    browse_seed = settings.get("browse_seed")
    a = _seed_index(stab, seed, anchor if browse_seed is None else int(browse_seed))
    top = int(settings.get("snippet_top", 5)) if top is None else top
    bins = int(settings.get("browse_bins", 20)) if bins is None else bins
    snips: dict[int, list[str]] = {}
    if a == anchor and (root / "frequency" / TOP_SNIPPETS).is_file():
        snips = {int(k): v for k, v in json.loads((root / "frequency" / TOP_SNIPPETS).read_text()).items()}
    cand_file = root / "candidates" / "arrays.npz"
    candidate = _npz(cand_file, "candidate_id")[a] if (root / "candidates" / "done.json").is_file() else None
    codes_file = root / "firing" / f"codes_{a}.npz"
    try:
        codes = load_codes(str(codes_file))
    except (OSError, ValueError) as err:
        raise DataError(f"{codes_file} cannot be read ({err}); rerun the study with --redo firing") from err
    stab_arrays = root / "stability" / "arrays.npz"
    return table_from_study_arrays(stab, a, p_hat=_npz(stab_arrays, "p_hat")[a], labels=_npz(stab_arrays, "labels")[a],
                                   codes=codes, candidate=candidate, snippets=snips, bins=bins, top=top)
