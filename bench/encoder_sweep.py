"""Encoder forward variants on a GPU, side by side: cuBLAS GEMM alone (floor), cuBLAS + relu + torch.topk,
the running-top-k kernel, the tile-candidates kernel (autotuned and at each explicit config), and the same
candidates from fp32 cuBLAS chunks (method="cublas").

    python bench/encoder_sweep.py [--shapes 768x16384,2048x131072] [--n 8192]

bf16 inputs, k = 64; each variant is also checked against an fp32 reference on the first 256 rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sae_fast.kernels import encoder_topk as et
from test_sae_step import cuda_time_ms

from sae_fast import reference

K = 64


def _check(x, W, b, values, indices) -> str:
    rows = slice(0, min(256, x.shape[0]))
    pre = torch.relu(x[rows].float() @ W.float().T + b.float())
    ref_v, ref_i = reference.topk_lowest_index(pre, K)
    err = float((values[rows] - ref_v).abs().max())
    same = float((indices[rows].sort(1).values == ref_i.sort(1).values).all(1).float().mean())
    return f"max |v - ref| {err:.1e}, same set {same:.3f}"


def sweep(d: int, f: int, n: int) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", generator=g).bfloat16()
    W = (torch.randn(f, d, device="cuda", generator=g) / d**0.5).bfloat16()
    b = (torch.randn(f, device="cuda", generator=g) * 0.05).bfloat16()
    dead = torch.zeros(f, dtype=torch.bool, device="cuda")
    dead[torch.randperm(f, device="cuda", generator=g)[: f // 100]] = True
    gemm = cuda_time_ms(lambda: x @ W.T)
    print(f"\n## d={d} F={f} N={n} bf16: cuBLAS GEMM {gemm:.2f} ms", flush=True)
    if n * f <= 2**31:
        ms = cuda_time_ms(lambda: torch.topk(torch.relu(torch.nn.functional.linear(x, W, b)), K, sorted=False))
        print(f"cuBLAS + relu + torch.topk: {ms:.2f} ms ({ms / gemm:.2f}x GEMM)", flush=True)
    ms = cuda_time_ms(lambda: et.encoder_topk(x, W, b, K, method="running"), warmup=1, reps=3)
    print(f"running top-k: {ms:.2f} ms ({ms / gemm:.2f}x)", flush=True)
    stats: dict = {}
    v, i, _, _ = et.encoder_topk(x, W, b, K, stats=stats)
    ms = cuda_time_ms(lambda: et.encoder_topk(x, W, b, K))
    best = getattr(et._tile_candidates_tuned, "best_config", None)
    print(f"tiles (autotuned {best}): {ms:.2f} ms ({ms / gemm:.2f}x), M={stats['M']}, unsure rows "
          f"{stats['unsure_rows']}; {_check(x, W, b, v, i)}", flush=True)
    ms = cuda_time_ms(lambda: et.encoder_topk(x, W, b, K, dead, d // 2))
    print(f"tiles + AuxK (1% dead): {ms:.2f} ms ({ms / gemm:.2f}x)", flush=True)
    st = {}
    v, i, _, _ = et.encoder_topk(x, W, b, K, method="cublas", stats=st)
    ms = cuda_time_ms(lambda: et.encoder_topk(x, W, b, K, method="cublas"))
    print(f"cublas fp32 chunks + candidates: {ms:.2f} ms ({ms / gemm:.2f}x), M={st['M']}, unsure rows "
          f"{st['unsure_rows']}; {_check(x, W, b, v, i)}", flush=True)
    ms = cuda_time_ms(lambda: et.encoder_topk(x, W, b, K, dead, d // 2, method="cublas"))
    print(f"cublas + AuxK (1% dead): {ms:.2f} ms ({ms / gemm:.2f}x)", flush=True)
    # a trained-like bias: the threshold where a row has k/2 positive values on average, so nearly every row's
    # top-k ends in ReLU zeros (completed by index, not recomputed)
    b_low = (b.float() - float(torch.special.ndtri(torch.tensor(1 - K / 2 / f)))).bfloat16()
    positives = (x[:256].float() @ W.float().T + b_low.float() > 0).sum(1)
    st = {}
    v, i, _, _ = et.encoder_topk(x, W, b_low, K, stats=st)
    ms = cuda_time_ms(lambda: et.encoder_topk(x, W, b_low, K))
    print(f"tiles, high threshold ({float(positives.float().mean()):.0f} positive values per row): {ms:.2f} ms "
          f"({ms / gemm:.2f}x), rows with < k positive completed {st['zero_tail_rows']}, unsure rows "
          f"{st['unsure_rows']}; {_check(x, W, b_low, v, i)}", flush=True)
    for m in (stats["M"] - 1, stats["M"] + 2):
        st: dict = {}
        et.encoder_topk(x, W, b, K, candidates=m, stats=st)
        ms = cuda_time_ms(lambda m=m: et.encoder_topk(x, W, b, K, candidates=m))
        print(f"tiles M={st['M']}: {ms:.2f} ms ({ms / gemm:.2f}x), unsure rows {st['unsure_rows']}", flush=True)
    for cfg in et._tile_configs():
        kw = cfg.kwargs
        tc = et.TileConfig(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], cfg.num_warps, cfg.num_stages, kw["GROUP_M"])
        try:
            ms = cuda_time_ms(lambda tc=tc: et.encoder_topk(x, W, b, K, tile_config=tc), warmup=1, reps=3)
            print(f"  {tc}: {ms:.2f} ms ({ms / gemm:.2f}x)", flush=True)
        except Exception as err:
            print(f"  {tc}: {type(err).__name__}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="768x16384,2048x131072,4096x262144,4096x1048576")
    parser.add_argument("--n", type=int, default=8192)
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for s in args.shapes.split(","):
        d, f = (int(v) for v in s.split("x"))
        sweep(d, f, args.n)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
