"""The GPU tests' checks at tiny shapes on a CPU (Triton interpreter): the rehearsal of `gpu_check.sh`'s test
stages. The GPU stages run `pytest -m gpu`; here, after checking that those tests are collected, the same check
functions of tests/kernels/test_kernels_gpu.py run on small inputs, so a broken helper or kernel shows up before a
lease is spent. Prints a markdown table; exits 1 when a check fails.

    TRITON_INTERPRET=1 python bench/gpu_check/dry_tests.py [--part small|large]

`small` rehearses the `tests` stage (every gpu test but the (4096, 2^20) sizes), `large` the `tests-2m20` stage.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
GPU_TESTS = ROOT / "tests" / "kernels" / "test_kernels_gpu.py"
D, F, K, N = 32, 256, 8, 64  # tiny: the interpreter runs every program instance in Python
SELECT = {"small": "not 4096x2", "large": "4096x2"}  # gpu_check.sh's pytest -k for each test stage


def collected_gpu_tests(select: str) -> int:
    """How many `gpu`-marked tests pytest collects with `-k select` (skipped here, run on the GPU machine)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-k", select, "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise AssertionError(f"pytest --collect-only failed (rc {out.returncode}):\n{out.stdout[-2000:]}")
    count = sum(1 for line in out.stdout.splitlines() if "::" in line)
    assert count > 0, "no gpu-marked tests collected"
    return count


def _load_gpu_tests():
    spec = importlib.util.spec_from_file_location("test_kernels_gpu", GPU_TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checks(part: str) -> dict[str, Callable[[], object]]:
    """Name -> check for one part; each raises AssertionError when wrong."""
    gpu = _load_gpu_tests()
    collected = {f"gpu-marked tests collected (-k '{SELECT[part]}')": lambda: f"{collected_gpu_tests(SELECT[part])}"}
    if part == "large":  # the real-size parametrisations' checks, at the next tiny size
        d, f, k, n = 2 * D, 4 * F, 2 * K, N
        return {
            **collected,
            f"encoder top-k + AuxK at ({d}, {f}, {k}, {n})": lambda: gpu.check_encoder(d, f, k, n, torch.float32,
                                                                                    device="cpu"),
            f"decoder + encoder backward at ({d}, {f}, {k}, {n})": lambda: gpu.check_backward(d, f, k, n,
                                                                                          torch.float32, "cpu"),
        }

    def trains() -> str:
        ref, ours = gpu.training_curves(D, F, K, N, steps=2, device="cpu")
        assert max(abs(a - b) / abs(a) for a, b in zip(ours, ref)) < 1e-3, (ref, ours)
        return f"FVU {ref[0]:.3f}, {ref[-1]:.3f}; kernels = reference"

    return {
        **collected,
        "encoder top-k + AuxK, tiles (fp32)": lambda: gpu.check_encoder(D, F, K, N, torch.float32, device="cpu"),
        "encoder top-k + AuxK, cuBLAS chunks": lambda: gpu.check_encoder(
            D, F, K, N, torch.float32, device="cpu", method="cublas"),
        "encoder top-k, AuxK buffer cap": lambda: gpu.check_encoder(
            D, F, K, N, torch.float32, device="cpu", dead_buffer_bytes=4 * N * 4),
        "decoder + encoder backward (fp32)": lambda: gpu.check_backward(D, F, K, N, torch.float32, device="cpu"),
        "training steps, kernels vs reference": trains,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=list(SELECT), default="small")
    part = parser.parse_args().part
    print(f"torch {torch.__version__}, TRITON_INTERPRET set: {'TRITON_INTERPRET' in os.environ}; part {part}\n")
    print("| check | result | seconds |\n|---|---|---|", flush=True)
    failed = 0
    for name, fn in checks(part).items():
        t0 = time.perf_counter()
        try:
            result = fn()
            verdict = "ok" + (f": {result}" if isinstance(result, str) else "")
        except Exception as err:  # report every check, then fail
            failed += 1
            traceback.print_exc()
            verdict = f"FAILED: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        print(f"| {name} | {verdict} | {time.perf_counter() - t0:.1f} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
