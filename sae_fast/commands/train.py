"""`sae-fast train`: train one TopK SAE per seed from one pass over cached activations."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from .cache import add_source_arguments, default_cache_dir, ensure_cache

NAME = "train"
HELP = ("Train one TopK SAE per seed on the same activations (one pass over the data for all seeds). Without "
        "--cache, the embedded default (MiniLM layer 3 over Shakespeare) is cached first, then 4 seeds of a small "
        "SAE train on CPU in a few minutes. Under torchrun, seeds are sharded across ranks (one seed: data-parallel).")

_NO_FLAG = {"progress", "resume"}  # booleans with their own flags below


def _field_type(annotation: str) -> type | None:
    base = annotation.replace(" | None", "").strip()
    return {"int": int, "float": float, "str": str}.get(base)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train import B_DEC_INITS, DTYPES, OPTIMIZERS, TrainConfig, field_docs

    parser.add_argument("--cache", default=None,
                        help="train on this activation cache (made by `sae-fast cache`); created from the source "
                             "options below if it does not exist yet (default: runs/activations/<...>)")
    parser.add_argument("--resume", action="store_true", help=field_docs(TrainConfig)["resume"])
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar: print one line of metrics per seed at each log step instead")
    parser.set_defaults(_train_parser=parser)
    group = parser.add_argument_group("training (TrainConfig)")
    seeds = group.add_mutually_exclusive_group()
    seeds.add_argument("--num-seeds", type=int, default=None, help="shortcut for --seeds 0 1 ... N-1")
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
    add_source_arguments(parser)


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
    return TrainConfig(**values, resume=args.resume, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..train import Trainer

    parser = args._train_parser
    if args.num_seeds is not None and args.num_seeds <= 0:
        parser.error(f"--num-seeds must be positive, got {args.num_seeds}")
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    initialized_here = _init_from_environment()
    try:
        only_given = bool(args.cache)
        try:
            cache_dir = Path(args.cache) if args.cache else default_cache_dir(args)
            if distributed.get_rank() == 0:
                source = ensure_cache(args, cache_dir, progress=cfg.progress, only_given=only_given)
            distributed.barrier()
            if distributed.get_rank() != 0:
                source = ensure_cache(args, cache_dir, progress=False, only_given=only_given)
            trainer = Trainer(source, cfg)
        except (ValueError, OSError) as exc:
            parser.error(str(exc))
        trainer.fit()
        if distributed.get_rank() == 0:
            out = Path(cfg.output_dir)
            print(f"trained {len(cfg.seeds)} SAEs (d_in={trainer.d_in}, num_latents={trainer.num_latents}, "
                  f"k={cfg.k}) on {trainer.tokens_seen:,} tokens of {cache_dir}")
            last = _last_metrics(out / "log.jsonl")
            for seed in cfg.seeds:
                m = last.get(seed, {})
                print(f"  {out / f'seed{seed}'}: fvu {m.get('fvu', float('nan')):.4f}  "
                      f"L0 {m.get('l0', float('nan')):.1f}  dead {100 * m.get('dead_fraction', float('nan')):.1f}%")
    finally:
        if initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def _init_from_environment() -> bool:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPUs)."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def _last_metrics(log: Path) -> dict[int, dict]:
    last: dict[int, dict] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            last[row["seed"]] = row
    return last
