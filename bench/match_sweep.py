"""Launch configs of the fused matching kernel (kernels/match_max.py) on a GPU, against the bare cuBLAS GEMM.

    python bench/match_sweep.py [--sizes 16384x768,131072x2048] [--dtype bfloat16]

For each (F, d): two dictionaries of F unit rows, both directions (row and column max) in one launch, and a
stack of 8 dictionaries of F / 8 rows (the segments a stability run uses). Prints ms and TFLOP/s (2 F^2 d / t)
per config, and the cuBLAS GEMM alone (torch.mm with a float32 result where supported) as the ceiling.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sae_fast.kernels.match_max import match_max
from test_sae_step import cuda_time_ms

# (block_m, block_n, block_k, num_warps, num_stages, group_m): the default first
CONFIGS = [
    (128, 128, 64, 8, 3, 8),
    (128, 256, 64, 8, 3, 8),
    (256, 128, 64, 8, 3, 8),
    (128, 128, 64, 4, 4, 8),
    (128, 256, 32, 8, 4, 8),
    (128, 128, 128, 8, 2, 8),
]


def sweep(f: int, d: int, dtype: torch.dtype) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(f, d, device="cuda", generator=g), dim=1).to(dtype)
    b = torch.nn.functional.normalize(torch.randn(f, d, device="cuda", generator=g), dim=1).to(dtype)
    tflop = 2.0 * f * f * d / 1e12
    try:
        gemm = cuda_time_ms(lambda: torch.mm(a[: f // 4], b.T, out_dtype=torch.float32)) * 4
        kind = "fp32 out, 1/4 of the rows x4"
    except (TypeError, RuntimeError):
        gemm = cuda_time_ms(lambda: a[: f // 4] @ b.T) * 4
        kind = "16-bit out, 1/4 of the rows x4"
    print(f"\n## F={f} d={d} {dtype}: cuBLAS GEMM ({kind}) {gemm:.2f} ms = {tflop / gemm * 1e3:.0f} TFLOP/s",
          flush=True)
    for bm, bn, bk, warps, stages, group in CONFIGS:
        kw = {"block_m": bm, "block_n": bn, "block_k": bk, "num_warps": warps, "num_stages": stages, "group_m": group}
        label = f"{bm}x{bn}x{bk} w{warps} s{stages}"
        try:
            both = cuda_time_ms(lambda kw=kw: match_max(a, b, both=True, **kw))
            rows = cuda_time_ms(lambda kw=kw: match_max(a, b, both=False, **kw))
            seg = cuda_time_ms(lambda kw=kw: match_max(a, b, both=True, segment=f // 8, **kw))
        except Exception as err:  # a config that does not compile or fit is reported, not fatal
            print(f"  {label}: {type(err).__name__}: {str(err)[:100]}", flush=True)
            continue
        print(f"  {label}: both {both:.2f} ms ({tflop / both * 1e3:.0f} TFLOP/s), rows only {rows:.2f} ms "
              f"({tflop / rows * 1e3:.0f}), 8 segments {seg:.2f} ms ({tflop / seg * 1e3:.0f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16384x768,131072x2048")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for s in args.sizes.split(","):
        f, d = (int(v) for v in s.split("x"))
        sweep(f, d, getattr(torch, args.dtype))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
