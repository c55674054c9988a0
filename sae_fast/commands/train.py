"""`sae-fast train`: train one TopK SAE per seed from one pass over cached activations."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import DataError, UsageError
from ..outdir import check_writable
from ..train_guard import claim_output_dir
from ..validate import positive_int_arg
from .cache import add_source_arguments, default_cache_dir, ensure_cache

NAME = "train"
HELP = ("Train one TopK SAE per seed on the same activations (one pass over the data for all seeds): a .npy or "
        ".safetensors file (--activations), an activation cache (--cache), or a model's activations cached first "
        "(default: the embedded MiniLM layer 3 over Shakespeare; 4 seeds of a small SAE train on CPU in a few "
        "minutes). An output folder holding a run is refused without --resume or --overwrite. Under torchrun, "
        "seeds are sharded across ranks (one seed: data-parallel).")

_NO_FLAG = {"progress", "resume", "overwrite"}  # booleans with their own flags below


def _field_type(annotation: str) -> type | None:
    base = annotation.replace(" | None", "").strip()
    return {"int": int, "float": float, "str": str}.get(base)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train import B_DEC_INITS, DTYPES, OPTIMIZERS, TrainConfig, field_docs

    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument("--activations", default=None, metavar="FILE",
                        help="train on activations of shape (N, d) in a .npy file (memory-mapped) or a .safetensors "
                             "file (its one tensor, or the one named 'activations'); checked for NaN/inf and hashed")
    inputs.add_argument("--cache", default=None, metavar="DIR",
                        help="train on this activation cache (made by `sae-fast cache`; it must exist, unless "
                             "--model is given: then the model's activations are cached there first). Default: "
                             "runs/activations/<model>-<hook>-<...>, cached from the source options if needed")
    parser.add_argument("--resume", action="store_true", help=field_docs(TrainConfig)["resume"])
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an earlier run in --output-dir (its SAEs, checkpoints and log) and train anew")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar: print one line of metrics per seed at each log step instead")
    group = parser.add_argument_group("training (TrainConfig)")
    seeds = group.add_mutually_exclusive_group()
    seeds.add_argument("--num-seeds", type=positive_int_arg, default=None, help="shortcut for --seeds 0 1 ... N-1")
    choices = {"optimizer": OPTIMIZERS, "dtype": DTYPES, "b_dec_init": B_DEC_INITS}
    docs = field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NO_FLAG:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_text = docs.get(f.name, "")
        if f.name == "seeds":
            seeds.add_argument(flag, type=int, nargs="+", default=default, help=help_text)
        elif f.name == "adam_betas":
            group.add_argument(flag, type=float, nargs=2, default=list(default), metavar=("BETA1", "BETA2"),
                               help=help_text)
        else:
            kind = _field_type(str(f.type))
            if kind is None:
                raise TypeError(f"no command-line type for TrainConfig.{f.name}: {f.type}")
            group.add_argument(flag, type=kind, default=default, help=help_text, choices=choices.get(f.name))
    add_source_arguments(parser, default_model=None)


def config_from_args(args: argparse.Namespace):  # -> TrainConfig
    """The TrainConfig described by parsed arguments."""
    from ..train import TrainConfig

    values = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NO_FLAG:
            continue
        values[f.name] = getattr(args, f.name)
    if args.num_seeds is not None:
        values["seeds"] = list(range(args.num_seeds))
    values["adam_betas"] = tuple(values["adam_betas"])
    return TrainConfig(**values, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..train import Trainer

    cfg = config_from_args(args)
    model_given = args.model is not None
    args.model = args.model or "embedded"
    if args.activations and (args.cache or model_given):
        raise UsageError("--activations trains on a file; it cannot be combined with --cache or --model")
    initialized_here = distributed.init_from_environment()
    try:
        guard = (claim_output_dir(cfg.output_dir, resume=cfg.resume, overwrite=args.overwrite)
                 if distributed.get_rank() == 0 else contextlib.nullcontext())
        with guard:
            source, where = _open_source(args, cfg, model_given)
            trainer = Trainer(source, cfg)
            if cfg.resume:
                check_resume_data(trainer, source)
            trainer.fit()
            if distributed.get_rank() == 0:
                _print_result(trainer, cfg, where)
    finally:
        if initialized_here:
            distributed.destroy()
    return 0


def _open_source(args: argparse.Namespace, cfg: Any, model_given: bool) -> tuple[Any, Any]:
    """The activations to train on (from --activations, --cache or the model options) and where they are.

    ``--cache DIR`` must hold a cache unless --model asks for one to be made there; an existing cache is
    verified (shard hashes, or NaN/inf for caches older than the hashes) before training.
    """
    from .. import distributed
    from ..activations import CACHE_SPEC, MANIFEST, open_activations_file

    rank0 = distributed.get_rank() == 0
    if args.activations:
        return open_activations_file(args.activations, progress=cfg.progress and rank0), args.activations
    cache_dir = Path(args.cache) if args.cache else default_cache_dir(args)
    existed = (cache_dir / MANIFEST).is_file()
    if args.cache and cache_dir.is_file():
        raise UsageError(f"--cache {cache_dir} is a file, not a cache folder; to train on a .npy or .safetensors "
                         f"file of activations use --activations {cache_dir}")
    if args.cache and not existed and not model_given:
        state = ("caching into it was interrupted: run the same `sae-fast cache --out DIR ...` again to resume"
                 if (cache_dir / CACHE_SPEC).is_file() else f"{MANIFEST} is missing")
        raise DataError(f"--cache {cache_dir}: no activation cache there ({state}); make one with "
                        f"`sae-fast cache --out {cache_dir}`, or add --model to cache a model's activations into it")
    if rank0:
        if not existed:
            check_writable(cache_dir, "--cache")
        source = ensure_cache(args, cache_dir, progress=cfg.progress, only_given=bool(args.cache))
        if existed:
            source.verify(progress=cfg.progress)
    distributed.barrier()
    if not rank0:
        source = ensure_cache(args, cache_dir, progress=False, only_given=bool(args.cache))
    return source, cache_dir


def check_resume_data(trainer: Any, source: Any) -> None:
    """Refuse to resume on other data than the checkpoint's, naming the first shard that differs (the
    trainer's own check compares the whole fingerprint)."""
    from ..activations import CachedSource

    ckpt = trainer.latest_checkpoint()
    if ckpt is None or not isinstance(source, CachedSource):
        return
    try:
        saved = json.loads((ckpt / "trainer_state.json").read_text()).get("source") or {}
    except (OSError, ValueError):
        return  # an unreadable state is reported by the trainer, naming the file
    source.check_same_data(saved, f"the checkpoint {ckpt}")


def _print_result(trainer: Any, cfg: Any, where: Any) -> None:
    out = Path(cfg.output_dir)
    print(f"trained {len(cfg.seeds)} SAEs (d_in={trainer.d_in}, num_latents={trainer.num_latents}, "
          f"k={cfg.k}) on {trainer.tokens_seen:,} tokens of {where}")
    last = _last_metrics(out / "log.jsonl")
    for seed in cfg.seeds:
        m = last.get(seed, {})
        print(f"  {out / f'seed{seed}'}: fvu {m.get('fvu', float('nan')):.4f}  "
              f"L0 {m.get('l0', float('nan')):.1f}  dead {100 * m.get('dead_fraction', float('nan')):.1f}%")


def _last_metrics(log: Path) -> dict[int, dict]:
    last: dict[int, dict] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            last[row["seed"]] = row
    return last
