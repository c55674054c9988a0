"""Compile every Triton kernel config for a CUDA target on a machine without a GPU and report its resources.

    python bench/compile_report.py [--arch 90] [--d 4096] [--k 64]

Uses Triton's own ptxas (shipped in its wheel): a compile error, a register spill (stack bytes / local memory)
or a shared-memory overflow shows here at no GPU time. Prints one row per (kernel, config): registers per
thread, stack frame bytes, shared memory bytes, and whether the SASS has tensor-core instructions (HMMA/HGMMA).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import triton
from sae_fast.kernels import decoder, decoder_norm, encoder_topk, match_max, optimizer, sparse_transpose
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def _signature(fn: triton.JITFunction, types: dict[str, str], constants: dict[str, object]) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        sig[name] = "constexpr" if name in constants else types[name]
    return sig


def _divisible(fn: triton.JITFunction, types: dict[str, str], divisible: set[str]) -> dict[tuple[int], list]:
    """Pointers (16-byte aligned allocations) and the named ints get Triton's divisibility-by-16 hint."""
    attrs = {}
    for i, name in enumerate(fn.arg_names):
        if name in types and (types[name].startswith("*") or name in divisible):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


def compile_one(
    fn: triton.JITFunction,
    types: dict[str, str],
    constants: dict[str, object],
    *,
    num_warps: int,
    num_stages: int,
    arch: int,
    divisible: set[str] = frozenset(),
) -> dict[str, object]:
    """Compile fn for sm_<arch>; return registers, stack bytes, shared bytes, tensor-core ops seen in SASS."""
    src = ASTSource(fn, _signature(fn, types, constants), constants, _divisible(fn, types, set(divisible)))
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps,
                                                                                "num_stages": num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(kernel.asm["cubin"])
        usage = subprocess.run([os.path.join(_TOOLS, "cuobjdump"), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([os.path.join(_TOOLS, "cuobjdump"), "--dump-sass", path],
                              capture_output=True, text=True, check=True).stdout
    field = lambda key: int(re.search(rf"{key}:(\d+)", usage).group(1))
    mma = sorted({m for m in re.findall(r"\b(HGMMA|HMMA|LDL|STL)\b", sass)})
    return {"regs": field("REG"), "stack": field("STACK"), "shared": kernel.metadata.shared, "sass": ",".join(mma)}


def rows(arch: int, d: int, k: int) -> list[tuple[str, dict[str, object]]]:
    out = []
    for dtype in ("bf16", "fp32"):
        m = encoder_topk._candidates_per_tile(k, 2**20, encoder_topk.TILE_N)
        for cfg in encoder_topk._tile_configs():
            for has_dead in (False, True):
                consts = {**cfg.kwargs, "M": m, "HAS_DEAD": has_dead, "CAST_FP32": False, "IEEE_FP32": False}
                types = {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "b_ptr": f"*{dtype}", "cand_v_ptr": "*fp32",
                         "cand_i_ptr": "*i32", "dead_pos_ptr": "*i32", "dead_out_ptr": f"*{dtype}",
                         "N": "i32", "F": "i32", "D": "i32", "num_dead": "i32"}
                name = f"tile_candidates {dtype} M={m} {cfg.kwargs} w{cfg.num_warps} s{cfg.num_stages} dead={has_dead}"
                out.append((name, compile_one(encoder_topk._tile_candidates_kernel, types, consts,
                                              num_warps=cfg.num_warps, num_stages=cfg.num_stages, arch=arch,
                                              divisible={"D", "F"})))
        for cfg in encoder_topk._configs():
            for has_dead in (False, True):
                consts = {**cfg.kwargs, "K": k, "KP": triton.next_power_of_2(k), "SPLITS": 4, "HAS_DEAD": has_dead,
                          "CAST_FP32": False, "IEEE_FP32": dtype == "fp32"}
                types = {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "b_ptr": f"*{dtype}", "cand_v_ptr": "*fp32",
                         "cand_i_ptr": "*i32", "dead_pos_ptr": "*i32", "dead_out_ptr": f"*{dtype}",
                         "N": "i32", "F": "i32", "D": "i32", "num_dead": "i32"}
                name = f"running_topk {dtype} {cfg.kwargs} w{cfg.num_warps} s{cfg.num_stages} dead={has_dead}"
                out.append((name, compile_one(encoder_topk._running_topk_kernel.fn, types, consts,
                                              num_warps=cfg.num_warps, num_stages=cfg.num_stages, arch=arch,
                                              divisible={"D", "F"})))
        block_d = decoder._block_d(d)
        block_k = decoder._block_k(k, block_d)
        types = {"w_ptr": "*fp32", "idx_ptr": "*i64", "table_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "K": "i32",
                 "D": "i32"}
        out.append((f"gather_weighted_sum {dtype}", compile_one(
            decoder._gather_weighted_sum_kernel, types, {"BLOCK_K": block_k, "BLOCK_D": block_d},
            num_warps=4, num_stages=3, arch=arch, divisible={"D"})))
        types = {"g_ptr": f"*{dtype}", "idx_ptr": "*i64", "table_ptr": f"*{dtype}", "out_ptr": "*fp32", "K": "i32",
                 "D": "i32"}
        out.append((f"sparse_dot {dtype}", compile_one(
            decoder._sparse_dot_kernel, types, {"BLOCK_K": block_k, "BLOCK_D": block_d},
            num_warps=4, num_stages=3, arch=arch, divisible={"D"})))
        for cfg in sparse_transpose._GPU_CONFIGS:
            types = {"rows_ptr": "*i64", "w_ptr": "*fp32", "start_ptr": "*i64", "count_ptr": "*i32",
                     "dense_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "colsum_ptr": "*fp32", "D": "i32"}
            out.append((f"csr_rows {dtype} {cfg.kwargs} w{cfg.num_warps}", compile_one(
                sparse_transpose._csr_rows_kernel, types, {**cfg.kwargs, "HAS_COLSUM": True},
                num_warps=cfg.num_warps, num_stages=3, arch=arch, divisible={"D"})))
        _, block_r, block_d, warps = decoder_norm._launch_shape(2**16, d)
        for kern, names in ((decoder_norm._normalize_rows_kernel, ("w_ptr",)),
                            (decoder_norm._remove_parallel_kernel, ("g_ptr", "w_ptr"))):
            types = {**{n: f"*{dtype}" for n in names}, "R": "i32", "D": "i32", "eps": "fp32"}
            out.append((f"{kern.__name__} {dtype}", compile_one(
                kern, types, {"BLOCK_R": block_r, "BLOCK_D": block_d}, num_warps=warps, num_stages=3, arch=arch,
                divisible={"D"})))
        launch = optimizer._launch()
        types = {"p_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "m_ptr": "*bf16", "v_ptr": "*bf16", "n": "i64",
                 "step_size": "fp32", "beta1": "fp32", "beta2": "fp32", "bias2_sqrt": "fp32", "eps": "fp32",
                 "seed": "i32"}
        out.append((f"adam_step {dtype} params, bf16 states", compile_one(
            optimizer._adam_kernel, types, {"SR_P": dtype == "bf16", "SR_STATE": True, "BLOCK": launch["BLOCK"]},
            num_warps=launch["num_warps"], num_stages=3, arch=arch)))
        types = {"p_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "buf_ptr": "*bf16", "n": "i64", "lr": "fp32",
                 "momentum": "fp32"}
        out.append((f"sign_step {dtype}", compile_one(
            optimizer._sign_kernel, types, {"HAS_MOMENTUM": True, "BLOCK": launch["BLOCK"]},
            num_warps=launch["num_warps"], num_stages=3, arch=arch)))
        types = {"a_ptr": f"*{dtype}", "b_ptr": f"*{dtype}", "row_best_ptr": "*i64", "row_second_ptr": "*i32",
                 "col_best_ptr": "*i64", "col_second_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32",
                 "stride_am": "i32", "stride_bn": "i32", "SEG_N": "i32", "NUM_SEG": "i32"}
        consts = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "BOTH": True, "UPCAST": False}
        out.append((f"match_max {dtype}", compile_one(match_max._match_max_kernel, types, consts, num_warps=8,
                                                      num_stages=3, arch=arch, divisible={"K", "stride_am",
                                                                                          "stride_bn"})))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--k", type=int, default=64)
    args = parser.parse_args()
    print(f"triton {triton.__version__}, sm_{args.arch}, d={args.d}, k={args.k}")
    print("| kernel | regs | stack B | shared B | SASS |")
    print("|---|---|---|---|---|")
    for name, res in rows(args.arch, args.d, args.k):
        print(f"| {name} | {res['regs']} | {res['stack']} | {res['shared']} | {res['sass']} |", flush=True)


if __name__ == "__main__":
    main()
