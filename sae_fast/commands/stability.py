"""`sae-fast stability DIR`: per-feature stability across the seeds saved under DIR."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..validate import non_negative_int_arg, positive_float_arg, positive_int_arg
from . import over_training, print_summary, set_threads

if TYPE_CHECKING:
    from ..stability import Stability

NAME = "stability"
HELP = "Stability scores p_hat of every feature across the seeds saved under DIR (one SAE folder per seed)."


def anchor_arg(text: str) -> str | int:
    """argparse type of --anchor: 'all' or a non-negative seed index."""
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 'all' or a non-negative seed index, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="directory with one folder per seed holding sae.safetensors or "
                                    "sae_weights.safetensors (W_dec of shape (F, d))")
    parser.add_argument("--theta", type=float, default=0.7, help="cosine threshold for a match")
    parser.add_argument("--eps", type=float, default=0.05, help="endpoint split: stable p>=1-eps, unstable p<=eps")
    parser.add_argument("--anchor", type=anchor_arg, default="all", help="'all' or the index of one anchor seed")
    parser.add_argument("--backend", choices=["auto", "exact", "faiss"], default="auto",
                        help="matching backend; 'auto' is exact on a GPU and below ~1e13 flop per pair on a CPU, above "
                             "that (with faiss installed) an approximate IVF index whose sampled recall@1 is printed: "
                             "pass 'exact' to be sure")
    parser.add_argument("--abs", dest="absolute", action="store_true", help="match on |cos| instead of signed cos")
    parser.add_argument("--hookpoint", default=None, help="pick this hookpoint when seeds hold several")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if any)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="score-tile dtype of the exact backend (default float32 on CPU, float16 on GPU)")
    parser.add_argument("--kernel", choices=["torch", "triton"], default="torch",
                        help="exact backend: tiled torch GEMM, or the fused Triton GEMM + max kernel (CUDA, k = 1)")
    parser.add_argument("--stack", type=positive_int_arg, default=None,
                        help="exact backend: seeds stacked into one GEMM sweep against an anchor (default: as many "
                             "as fit in 2^18 stacked rows and a quarter of the decoder cache)")
    parser.add_argument("--index", choices=["flat", "ivf", "ivf_sq", "hnsw", "cagra"], default=None,
                        help="faiss index (default flat; ivf when auto picks faiss; cagra: GPU faiss with cuVS only)")
    parser.add_argument("--nlist", type=positive_int_arg, default=None, help="faiss IVF lists (default ~4 sqrt(F))")
    parser.add_argument("--nprobe", type=positive_int_arg, default=None, help="faiss IVF lists searched per query")
    parser.add_argument("--hnsw-m", type=positive_int_arg, default=None,
                        help="faiss HNSW neighbours per node (default 32)")
    parser.add_argument("--ef-search", type=positive_int_arg, default=None, help="faiss HNSW search depth (default 64)")
    parser.add_argument("--recall-sample", type=non_negative_int_arg, default=None,
                        help="approximate faiss index: measure recall@1 vs exact on this many rows per pair "
                             "(default min(1000, F); 0: off)")
    parser.add_argument("--out", default=None, help="where results and checkpoints go (default DIR/stability); "
                                                    "a partial run found there is resumed")
    parser.add_argument("--no-save", action="store_true", help="do not write results or checkpoints")
    parser.add_argument("--save-every", type=positive_float_arg, default=60.0, help="checkpoint interval in seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--threads", type=non_negative_int_arg, default=0,
                        help="CPU threads for torch and faiss (0: default)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--over-training", action="store_true",
                        help="DIR is a training run saved with history='log': p̂ and labels at every kept checkpoint "
                             "(seed<s>/history/step<N>/), label transitions and cosine to initialisation vs final "
                             "p̂ (exact matching; --theta, --eps, --moved-below apply; results are written only "
                             "with --out)")
    parser.add_argument("--moved-below", type=float, default=0.9,
                        help="--over-training: a latent has moved when its cosine to its initialisation is below "
                             "this (default 0.9)")


def run(args: argparse.Namespace) -> int:
    """Under torchrun (WORLD_SIZE > 1) the ranks join one process group and split the pairs; rank 0 claims
    the output folder (writable, locked against a second run) before any work, and prints the summary.
    ``--over-training`` runs :func:`sae_fast.commands.over_training.report` on DIR instead."""
    if args.over_training:
        return over_training.report(args.dir, theta=args.theta, eps=args.eps, moved_below=args.moved_below,
                                    out=None if args.no_save else args.out)
    from .. import distributed as dist_utils  # imports torch (see _compute)
    from ..runs import find_saved_saes

    find_saved_saes(args.dir, args.hookpoint)  # a missing or empty DIR is named before any folder is made in it
    set_threads(args.threads)
    out = None if args.no_save else Path(args.out or Path(args.dir) / "stability")
    joined = dist_utils.init_from_environment()
    try:
        with contextlib.ExitStack() as stack:
            if out is not None:  # a folder holding an unfinished or finished compatible run is resumed
                stack.enter_context(dist_utils.claim_on_main(out, kind="a stability run"))
            result = _compute(args, out)
        if dist_utils.is_main_process():
            print_summary(_summary(result, out), args.json, width=12)
    finally:
        if joined:
            dist_utils.destroy()
    return 0


def _compute(args: argparse.Namespace, out: Path | None) -> Stability:
    import torch  # torch and the stability package load here: the CLI imports every command to build its parser

    from ..stability import stability_scores

    kwargs = {}
    if args.dtype:
        kwargs["dtype"] = getattr(torch, args.dtype)
    if args.kernel != "torch":
        kwargs["kernel"] = args.kernel
    if args.backend != "exact":
        options = {"index": args.index, "nlist": args.nlist, "nprobe": args.nprobe, "hnsw_m": args.hnsw_m,
                   "ef_search": args.ef_search}
        kwargs.update({k: v for k, v in options.items() if v is not None})
    return stability_scores(args.dir, theta=args.theta, eps=args.eps, anchor=args.anchor, backend=args.backend,
                            absolute=args.absolute, device=args.device, out=out, save_every=args.save_every,
                            progress=not args.no_progress, hookpoint=args.hookpoint,
                            recall_sample=args.recall_sample, stack=args.stack, **kwargs)


def _summary(result: Stability, out: Path | None) -> dict[str, Any]:
    summary = result.summary()
    summary["seconds"] = round(result.info.get("seconds", 0.0), 3)
    for key in ("stack", "pairs_per_rank"):
        if key in result.info:
            summary[key] = result.info[key]
    if "recall_at_1" in result.info:
        summary["recall_at_1"] = round(result.info["recall_at_1"], 4)
        summary["recall_rows_per_pair"] = result.info.get("recall_rows_per_pair")
    if out:
        summary["out"] = str(out)
    return summary
