"""The exact sweep's running top-m merge on the CPU: the C++ fold (`_C.topk_merge`) against the torch merge it
replaced (`Tensor.topk` per tile and per running list), side by side in one run, both directions, and the naive
full-matrix top-m as the peer. Outputs are asserted equal (values and indices) before anything is reported.

    python bench/test_topk_merge.py                       # (2^14, 256) and (2^14, 768) at m = 1 and 16
    python bench/test_topk_merge.py --sizes 65536x256 --m 16 --repeat 1
"""

from __future__ import annotations

import argparse
import importlib
import time

import numpy as np
import torch

from sae_fast.matching import match

exact = importlib.import_module("sae_fast.matching.exact")


def unit(rng: np.random.Generator, f: int, d: int) -> np.ndarray:
    x = rng.standard_normal((f, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def naive(a: np.ndarray, b: np.ndarray, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The peer: the whole F x F score matrix, then torch.topk both ways (F^2 floats of memory)."""
    s = torch.from_numpy(a) @ torch.from_numpy(b).T
    return s.topk(m, dim=1).values, s.T.topk(m, dim=1).values


def run(f: int, d: int, m: int, repeat: int) -> list[str]:
    rng = np.random.default_rng(0)
    a, b = unit(rng, f, d), unit(rng, f, d)
    native = exact._native_merge
    if native() is None:
        raise SystemExit("the C++ extension has no topk_merge: rebuild it (pip install -e .)")
    t_c, res_c = timed(lambda: match(a, b, k=m, both=True, backend="exact"), repeat)
    exact._native_merge = lambda: None
    try:
        t_t, res_t = timed(lambda: match(a, b, k=m, both=True, backend="exact"), repeat)
    finally:
        exact._native_merge = native
    t_n, (nv_ab, nv_ba) = timed(lambda: naive(a, b, m), repeat)
    for x, y in ((res_c.cos_ab, res_t.cos_ab), (res_c.cos_ba, res_t.cos_ba), (res_c.index_ab, res_t.index_ab),
                 (res_c.index_ba, res_t.index_ba)):
        assert torch.equal(x.reshape(f, -1), y.reshape(f, -1)), "the C++ and torch merges disagree"
    assert torch.allclose(res_c.cos_ab.reshape(f, -1), nv_ab, atol=1e-5), "top-m values differ from the full matrix"
    assert torch.allclose(res_c.cos_ba.reshape(f, -1), nv_ba, atol=1e-5)
    gf = 2 * f * f * d / 1e9
    return [f"| ({f}, {d}) | {m} | {t_c:.2f} s ({gf / t_c:.0f} GFLOP/s) | {t_t:.2f} s | {t_n:.2f} s | "
            f"{t_t / t_c:.2f}× | {t_n / t_c:.2f}× |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16384x256,16384x768", help="comma-separated FxD")
    ap.add_argument("--m", type=int, nargs="+", default=[1, 16], help="neighbours kept per row and column")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; both directions from one sweep")
    print("| (F, d) | m | C++ merge | torch merge | naive full matrix + topk | C++ vs torch | C++ vs naive |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        f, d = (int(v) for v in size.lower().split("x"))
        for m in args.m:
            for line in run(f, d, m, args.repeat):
                print(line, flush=True)


def test_topk_merge_bench_small() -> None:
    """The bench's asserts on a small size (CI)."""
    assert run(1024, 32, 4, 1)[0].startswith("| (1024, 32) | 4 |")


if __name__ == "__main__":
    main()
