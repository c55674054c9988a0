"""The embedded default: what `sae-fast study` trains when given no run (MiniLM layer 3 on Shakespeare, a few
small seeds), and the check that guards the reuse of its cached activations and trained seeds."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import OutputDirError
from ..provenance import to_jsonable
from .config import EmbeddedDefault
from .inputs import HeldOut, activations_with_tokens


def heldout_embedded(texts: list[str], layer: int, max_rows: int, device: str = "cpu",
                     model_path: str | None = None) -> HeldOut:
    """Activations of MiniLM at ``layer`` for ``texts`` (computed on ``device``, kept on the CPU) with their
    token strings."""
    from ..activations import EMBEDDED_MODEL_NAME, ModelSource, load_embedded_model

    model, tokenizer = load_embedded_model(device, model_path)
    src = ModelSource(model, tokenizer, texts, layer=layer, model_name=EMBEDDED_MODEL_NAME, device=device)
    return activations_with_tokens(src, max_rows)


EMBEDDED_CONFIG_FILE = "embedded_default.json"
"""the embedded default's settings, saved next to ``activations/`` and ``seeds/`` to guard their reuse"""


def _embedded_fingerprint(cfg: EmbeddedDefault) -> dict[str, Any]:
    """The settings that determine the cached activations and the trained seeds (not the device or eval texts)."""
    from ..activations import EMBEDDED_MODEL_NAME

    return {"model": EMBEDDED_MODEL_NAME, "model_path": cfg.model_path, "layer": cfg.layer,
            "train_texts": cfg.train_texts, "expansion_factor": cfg.expansion_factor, "k": cfg.k,
            "total_tokens": cfg.total_tokens, "train_batch_size": cfg.train_batch_size, "lr": cfg.lr,
            "seeds": list(range(cfg.num_seeds)), "extra": to_jsonable(cfg.extra)}


def check_embedded_reuse(out_dir: str | os.PathLike, cfg: EmbeddedDefault) -> bool:
    """Guards the reuse of ``out_dir/activations`` and ``out_dir/seeds``: raises ValueError naming the fields
    that differ from the saved :data:`EMBEDDED_CONFIG_FILE` (or when earlier outputs have no such file); else
    writes that file. Returns True when earlier outputs are being reused."""
    out = Path(out_dir)
    want = json.loads(json.dumps(_embedded_fingerprint(cfg)))
    saved_file = out / EMBEDDED_CONFIG_FILE
    existing = [p.name for p in (out / "activations", out / "seeds") if p.exists()]
    if saved_file.is_file():
        saved = json.loads(saved_file.read_text())
        diff = sorted(k for k in set(want) | set(saved) if want.get(k) != saved.get(k))
        if diff:
            detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {want.get(k)!r}" for k in diff)
            raise OutputDirError(f"{out} holds activations/seeds of a different embedded default ({detail}); use a new "
                             "--out folder (or delete the old one)")
        return True
    if existing:
        raise OutputDirError(f"{out} holds {' and '.join(existing)} but no {EMBEDDED_CONFIG_FILE} saying how they were "
                         "made, so they cannot be reused safely; use a new --out folder (or delete them)")
    out.mkdir(parents=True, exist_ok=True)
    saved_file.write_text(json.dumps(want, indent=1))
    return False


def train_embedded_default(out_dir: str | os.PathLike, cfg: EmbeddedDefault | None = None,
                           progress: bool = True) -> tuple[Path, HeldOut, dict]:
    """Caches the embedded default's activations, trains ``num_seeds`` SAEs, returns (run dir, held-out, info).

    Earlier outputs in ``out_dir`` are reused only when they were made with the same settings
    (:func:`check_embedded_reuse`)."""
    from ..activations import CachedSource, cache_activations, embedded_default, shakespeare_sentences
    from ..train import TrainConfig, train

    cfg = cfg or EmbeddedDefault()
    out = Path(out_dir)
    reused = check_embedded_reuse(out, cfg)
    t0 = time.perf_counter()
    cache_dir = out / "activations"
    if not (cache_dir / "manifest.json").exists():
        model_source = embedded_default(layer=cfg.layer, num_texts=cfg.train_texts, device=cfg.device,
                                        model_path=cfg.model_path)
        cache_activations(model_source, cache_dir, progress=progress)
    source = CachedSource(cache_dir)
    t_cache = time.perf_counter() - t0
    run_dir = out / "seeds"
    if not all((run_dir / f"seed{s}" / "sae.safetensors").exists() for s in range(cfg.num_seeds)):
        tc = TrainConfig(seeds=list(range(cfg.num_seeds)), expansion_factor=cfg.expansion_factor, k=cfg.k,
                         total_tokens=cfg.total_tokens, batch_size=cfg.train_batch_size, lr=cfg.lr,
                         output_dir=str(run_dir), progress=progress, device=cfg.device,
                         dead_tokens_threshold=min(200_000, cfg.total_tokens // 4), **cfg.extra)
        if (run_dir / "checkpoints").is_dir():
            tc.resume = True
        train(source, tc)
    t_train = time.perf_counter() - t0 - t_cache
    sentences = shakespeare_sentences(cfg.train_texts + cfg.eval_texts)[cfg.train_texts:]
    held = heldout_embedded(sentences, cfg.layer, 10**9, cfg.device, cfg.model_path)
    info = {"embedded_default": asdict(cfg), "train_tokens_cached": int(source.num_tokens),
            "reused_earlier_outputs": reused, "seconds_cache": t_cache, "seconds_train": t_train,
            "seconds_heldout": time.perf_counter() - t0 - t_cache - t_train}
    return run_dir, held, info
