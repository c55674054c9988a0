"""`sae-fast match A B`: best matches between the decoder rows of two saved SAEs (or .safetensors/.npy files)."""

from __future__ import annotations

import argparse
import time

from ..validate import non_negative_int_arg, output_file, positive_int_arg
from . import print_summary, set_threads

NAME = "match"
HELP = "Match the features of two dictionaries (SAE folders, .safetensors with W_dec, or .npy of shape (F, d))."

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="first dictionary: an SAE folder, a .safetensors file (W_dec) or a .npy file")
    parser.add_argument("b", help="second dictionary, same forms as A")
    parser.add_argument("--backend", choices=["auto", "exact", "faiss"], default="auto",
                        help="matching backend; 'auto' is exact on a GPU and below ~1e13 flop per pair on a CPU, above "
                             "that (with faiss installed) an approximate IVF index whose sampled recall@1 is printed: "
                             "pass 'exact' to be sure")
    parser.add_argument("--k", type=positive_int_arg, default=1, help="matches kept per row")
    parser.add_argument("--both", action="store_true", help="also match B -> A (and count mutual nearest neighbours)")
    parser.add_argument("--abs", dest="absolute", action="store_true", help="rank by |cos| instead of signed cos")
    parser.add_argument("--theta", type=float, default=0.7, help="cosine threshold for the summary")
    parser.add_argument("--key", default="W_dec", help="tensor name inside .safetensors files")
    parser.add_argument("--device", default=None, help="torch device for the exact backend (default: cuda if any)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None,
                        help="score-tile dtype of the exact backend (default float32 on CPU, float16 on GPU)")
    parser.add_argument("--kernel", choices=["torch", "triton"], default="torch",
                        help="exact backend: tiled torch GEMM, or the fused Triton GEMM + max kernel (CUDA, k = 1)")
    parser.add_argument("--index", choices=["flat", "ivf", "ivf_sq", "hnsw", "cagra"], default=None,
                        help="faiss index (default flat; ivf when auto picks faiss; cagra: GPU faiss with cuVS only)")
    parser.add_argument("--nlist", type=positive_int_arg, default=None, help="faiss IVF lists (default ~4 sqrt(F))")
    parser.add_argument("--nprobe", type=positive_int_arg, default=None, help="faiss IVF lists searched per query")
    parser.add_argument("--recall-sample", type=non_negative_int_arg, default=None,
                        help="approximate faiss index: recall@1 vs exact on this many sampled rows (default "
                             "min(1000, F); 0: off)")
    parser.add_argument("--recall", action="store_true",
                        help="with faiss: also run exact on every row, print the full recall@1")
    parser.add_argument("--threads", type=non_negative_int_arg, default=0,
                        help="CPU threads for torch and faiss (0: default)")
    parser.add_argument("--out", default=None, help="write indices and cosines to this .safetensors file")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..matching import match, recall_at_1
    from ..runs import load_decoder

    if args.out:
        output_file(args.out, "--out")
    set_threads(args.threads)
    a, b = load_decoder(args.a, args.key), load_decoder(args.b, args.key)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    t0 = time.perf_counter()
    m = match(a, b, k=args.k, both=args.both, backend=args.backend, absolute=args.absolute, device=args.device,
              dtype=dtype, index=args.index, nlist=args.nlist, nprobe=args.nprobe, kernel=args.kernel,
              recall_sample=args.recall_sample)
    seconds = time.perf_counter() - t0
    summary = {
        "backend": m.backend, "A": list(a.shape), "B": list(b.shape), "seconds": round(seconds, 4),
        "gflops": round(m.info["flop"] * (2 if args.both and m.info["picked"] == "faiss" else 1) / seconds / 1e9, 2),
        "mean_best_cos": float(m.best_ab.mean()), f"frac_best_cos_ge_{args.theta}": float((m.best_ab >= args.theta)
                                                                                         .float().mean()),
    }
    if args.both:
        summary["mutual_nn"] = int(m.mutual().sum())
        summary[f"mutual_nn_ge_{args.theta}"] = int(m.mutual(args.theta).sum())
    if m.info["picked"] != "exact":
        summary["picked"] = m.info["picked_reason"]
    for key in ("recall_at_1", "recall_at_1_ba", "recall_rows"):
        if key in m.info:
            summary[key if key == "recall_rows" else f"sampled_{key}"] = m.info[key]
    if args.recall and m.info["picked"] == "faiss":
        exact = match(a, b, backend="exact", absolute=args.absolute, device=args.device, dtype=dtype)
        summary["recall_at_1"] = recall_at_1(m, exact)
    if args.out:
        from safetensors.torch import save_file

        tensors = {"index_ab": m.index_ab.contiguous(), "cos_ab": m.cos_ab.contiguous()}
        if args.both:
            tensors.update(index_ba=m.index_ba.contiguous(), cos_ba=m.cos_ba.contiguous())
        save_file(tensors, args.out, metadata={"backend": m.backend})
        summary["out"] = args.out
    print_summary(summary, args.json, width=24)
    return 0
