"""The static feature browser: `index.html` (sort and filter every latent) and `latent.html#i` (one latent).

Layout of the output folder::

    index.html  latent.html  app.js  style.css
    data/meta.js                 run facts, chunk sizes, label counts
    data/index_<c>.js            index rows [latent, p̂, label, frequency, candidate, best cos], `index_chunk` a file
    data/latents_<c>.js          per-latent details (partners, histogram, top activations, candidate members),
                                 `latent_chunk` latents a file

Every data file is a script calling ``SAE.put(key, value)``, so the pages work from ``file://`` (no server,
no fetch) and a page loads only the chunks it shows: at 2^16 latents the index is ~16 files of a few hundred KB
and a latent page reads one file. Memory while writing: one chunk's JSON at a time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..checkpoint import atomic_write
from ..errors import UsageError
from ..provenance import to_jsonable
from .table import LatentTable

ASSETS = Path(__file__).with_name("assets")
ASSET_FILES = ("index.html", "latent.html", "app.js", "style.css")


def _script(key: str, value: Any) -> bytes:
    text = json.dumps(to_jsonable(value), separators=(",", ":"), allow_nan=False)
    return f"SAE.put({json.dumps(key)},{text});\n".encode()


def _write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def _opt(arr: np.ndarray | None, i: int) -> Any:
    return None if arr is None else arr[i]


def _index_rows(t: LatentTable, lo: int, hi: int) -> list[list[Any]]:
    best = t.partner_cos[lo:hi, 0] if t.partner_cos.shape[1] else np.full(hi - lo, np.nan)
    freq = t.frequency[lo:hi] if t.frequency is not None else np.full(hi - lo, np.nan)
    cand = t.candidate[lo:hi] if t.candidate is not None else np.full(hi - lo, -1)
    return [[i, float(t.p_hat[i]), int(t.label[i]), float(f), int(c), float(b)]
            for i, f, c, b in zip(range(lo, hi), freq, cand, best)]


def _details(t: LatentTable, i: int, members: dict[int, list[int]], max_members: int) -> dict[str, Any]:
    partners = [[int(s), int(j), float(c)] for s, j, c in zip(t.partner_seed[i], t.partner_latent[i],
                                                              t.partner_cos[i]) if j >= 0]
    out: dict[str, Any] = {"p_hat": float(t.p_hat[i]), "label": int(t.label[i]),
                           "frequency": _opt(t.frequency, i), "partners": partners, "candidate": -1, "members": []}
    if t.hist_counts is not None:
        out["hist"] = {"counts": t.hist_counts[i], "edges": t.hist_edges[i]}
    if t.top_values is not None:
        snips = t.snippets.get(i, [])
        out["top"] = [{"value": float(v), "row": int(r), "snippet": snips[n] if n < len(snips) else None}
                      for n, (v, r) in enumerate(zip(t.top_values[i], t.top_rows[i])) if r >= 0]
    elif i in t.snippets:
        out["top"] = [{"value": None, "row": -1, "snippet": s} for s in t.snippets[i]]
    if t.candidate is not None and t.candidate[i] >= 0:
        out["candidate"] = int(t.candidate[i])
        out["members"] = [j for j in members[int(t.candidate[i])] if j != i][:max_members]
    return out


def write_site(table: LatentTable, out: str | os.PathLike[str], *, index_chunk: int = 4096,
               latent_chunk: int = 512, page_size: int = 100, max_members: int = 64,
               progress: bool = True) -> Path:
    """Write the browser for `table` into the folder `out`; returns the path of its index.html.

    Parameters
    ----------
    index_chunk : index rows per data file; latent_chunk : latents per detail file.
    page_size : rows per page of the index table; max_members : candidate members listed per latent.
    """
    if min(index_chunk, latent_chunk, page_size, max_members) < 1:
        raise UsageError("index_chunk, latent_chunk, page_size and max_members must be positive")
    root = Path(out)
    data = root / "data"
    if data.exists():
        shutil.rmtree(data)  # chunks of an earlier, larger table must not survive
    data.mkdir(parents=True)
    for name in ASSET_FILES:
        shutil.copyfile(ASSETS / name, root / name)
    F = table.num_latents
    counts = {name: int((table.label == v).sum()) for v, name in ((1, "stable"), (0, "neither"), (-1, "unstable"))}
    meta = {"seed": table.seed, "seeds": table.seeds, "theta": table.theta, "eps": table.eps, "num_latents": F,
            "index_chunks": math.ceil(F / index_chunk), "latent_chunk": latent_chunk, "page_size": page_size,
            "counts": counts}
    _write(data / "meta.js", _script("meta", meta))
    for c in range(meta["index_chunks"]):
        lo, hi = c * index_chunk, min(F, (c + 1) * index_chunk)
        _write(data / f"index_{c}.js", _script(f"index{c}", _index_rows(table, lo, hi)))
    members = table.candidate_members()
    for c in tqdm(range(math.ceil(F / latent_chunk)), desc="browser pages", disable=not progress):
        lo, hi = c * latent_chunk, min(F, (c + 1) * latent_chunk)
        _write(data / f"latents_{c}.js", _script(f"latents{c}", [_details(table, i, members, max_members)
                                                                 for i in range(lo, hi)]))
    return root / "index.html"
