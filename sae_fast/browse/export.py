"""Exports of the per-latent results: a safetensors sidecar and Neuronpedia-style per-feature JSON.

The sidecar (`latents.safetensors`) holds p_hat (F,), label (F,) int8, partner_seed / partner_latent (F, P)
int32, partner_cos (F, P), and, where known, frequency (F,), candidate (F,) int64, hist_counts / hist_edges,
top_rows / top_values; its metadata holds the seed names, the anchor seed, θ and ε. Neuronpedia-style JSON
follows SAEDashboard's batch files (`batch-<n>.json`, `features` with `feature_index`, `frac_nonzero`,
`freq_hist_data_bar_heights`/`_values`, `activations` with tokens/values when snippets exist) and adds a
`sae_fast` block per feature (p_hat, label, partners, candidate). Memory: one batch of features at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import atomic_save_safetensors, atomic_write_json
from ..errors import UsageError
from ..provenance import to_jsonable
from .table import LABEL_NAMES, LatentTable

_OPTIONAL = ("frequency", "candidate", "hist_counts", "hist_edges", "top_rows", "top_values")


def export_safetensors(table: LatentTable, path: str | os.PathLike[str]) -> Path:
    """Write the table's arrays to one safetensors file (atomically); returns its path."""
    tensors = {name: torch.from_numpy(np.ascontiguousarray(getattr(table, name)))
               for name in ("p_hat", "label", "partner_seed", "partner_latent", "partner_cos")}
    tensors.update({name: torch.from_numpy(np.ascontiguousarray(getattr(table, name)))
                    for name in _OPTIONAL if getattr(table, name) is not None})
    meta = {"format": "sae_fast.latents/1", "seed": table.seed, "seeds": json.dumps(table.seeds),
            "theta": repr(table.theta), "eps": repr(table.eps)}
    out = Path(path)
    atomic_save_safetensors(tensors, out, metadata=meta)
    return out


def _feature(table: LatentTable, i: int, model_id: str, layer: str) -> dict[str, Any]:
    feat: dict[str, Any] = {"modelId": model_id, "layer": layer, "feature_index": i,
                            "frac_nonzero": None if table.frequency is None else float(table.frequency[i])}
    if table.hist_counts is not None:
        edges = table.hist_edges[i]
        feat["freq_hist_data_bar_heights"] = table.hist_counts[i].tolist()
        feat["freq_hist_data_bar_values"] = ((edges[:-1] + edges[1:]) / 2).tolist()
    acts = []
    for n, snip in enumerate(table.snippets.get(i, [])):
        value = None if table.top_values is None else float(table.top_values[i, n])
        acts.append({"text": snip.replace("[[", "").replace("]]", ""), "maxValue": value, "snippet": snip})
    feat["activations"] = acts
    feat["sae_fast"] = {
        "seed": table.seed, "p_hat": float(table.p_hat[i]), "label": LABEL_NAMES[int(table.label[i])],
        "candidate": None if table.candidate is None or table.candidate[i] < 0 else int(table.candidate[i]),
        "partners": [{"seed": table.seeds[s], "latent": int(j), "cos": float(c)} for s, j, c in
                     zip(table.partner_seed[i], table.partner_latent[i], table.partner_cos[i]) if j >= 0]}
    return feat


def export_neuronpedia(table: LatentTable, out: str | os.PathLike[str], *, model_id: str = "unknown",
                       layer: str = "unknown", batch_size: int = 1024) -> list[Path]:
    """Write `batch-<n>.json` files of `batch_size` features into the folder `out`; returns their paths."""
    if batch_size < 1:
        raise UsageError(f"batch_size must be positive, got {batch_size}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, lo in enumerate(range(0, table.num_latents, batch_size)):
        hi = min(table.num_latents, lo + batch_size)
        batch = {"modelId": model_id, "layer": layer, "features": [_feature(table, i, model_id, layer)
                                                                  for i in range(lo, hi)]}
        paths.append(atomic_write_json(root / f"batch-{n}.json", to_jsonable(batch)))
    return paths
