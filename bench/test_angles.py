"""Principal angles: `principal_angles_pairs` (C++) side by side with a Python loop over scipy's
`subspace_angles`, on the study's workload shapes.

    python -m pytest bench/test_angles.py --benchmark-only     # pytest-benchmark
    python bench/test_angles.py                               # one run, prints the markdown table for RESULTS.md

scipy runs at its fastest BLAS thread count (each count in [1, cores] is tried, threadpoolctl); ours runs on
every OpenMP thread. Bases are "related": noisy copies of one shared subspace, so that small and large angles
mix and the sine branch runs (the costlier case for us); workload 1 also runs on unrelated random bases.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.linalg import subspace_angles
from threadpoolctl import threadpool_limits

from sae_fast import principal_angles_pairs


@dataclass(frozen=True)
class Workload:
    name: str
    d: int
    r: int
    num_bases: int
    num_pairs: int
    related: bool = True


WORKLOADS = [
    Workload("10k pairs, r=16, d=768", 768, 16, 200, 10_000),
    Workload("10k pairs, r=16, d=768, random", 768, 16, 200, 10_000, related=False),
    Workload("2k pairs, r=64, d=2048", 2048, 64, 100, 2_000),
    Workload("200 pairs, r=256, d=4096", 4096, 256, 40, 200),
]


def make(w: Workload, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    if w.related:
        shared = np.linalg.qr(rng.standard_normal((w.d, w.r)))[0]
        scale = 0.5 / np.sqrt(w.d)  # per-entry noise: column noise norm 0.5 -> angles from ~0.1 to ~1 rad
        bases = [shared + scale * rng.standard_normal((w.d, w.r)) for _ in range(w.num_bases)]
    else:
        bases = [rng.standard_normal((w.d, w.r)) for _ in range(w.num_bases)]
    first = rng.integers(0, w.num_bases, w.num_pairs)
    second = (first + rng.integers(1, w.num_bases, w.num_pairs)) % w.num_bases
    return bases, np.stack([first, second], axis=1)


def scipy_loop(bases: list[np.ndarray], pairs: np.ndarray) -> np.ndarray:
    return np.stack([np.sort(subspace_angles(bases[i], bases[j])) for i, j in pairs])


def _time(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("w", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_sae_fast_pairs(benchmark, w: Workload) -> None:
    bases, pairs = make(w)
    benchmark.group = w.name
    out = benchmark.pedantic(principal_angles_pairs, args=(bases, pairs), rounds=3, iterations=1)
    assert out.shape == (w.num_pairs, w.r)


@pytest.mark.parametrize("w", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_scipy_loop(benchmark, w: Workload) -> None:
    bases, pairs = make(w)
    benchmark.group = w.name
    out = benchmark.pedantic(scipy_loop, args=(bases, pairs), rounds=1, iterations=1)
    assert out.shape == (w.num_pairs, w.r)


def main() -> None:
    cores = os.cpu_count() or 1
    print(f"| workload | scipy loop (best of 1..{cores} BLAS threads) | sae_fast ({cores} threads) | speed-up "
          "| max abs diff vs scipy (rad) |")
    print("|---|---|---|---|---|")
    for w in WORKLOADS:
        bases, pairs = make(w)
        ours = principal_angles_pairs(bases, pairs)
        t_ours = _time(lambda b=bases, p=pairs: principal_angles_pairs(b, p), repeat=3)
        # scipy: time a slice at each thread count, pick the best, then time the whole loop at it
        probe = pairs[: max(10, len(pairs) // 20)]
        per_thread = {}
        for threads in range(1, cores + 1):
            with threadpool_limits(threads):
                per_thread[threads] = _time(lambda b=bases, p=probe: scipy_loop(b, p), repeat=1)
        best_threads = min(per_thread, key=per_thread.get)
        with threadpool_limits(best_threads):
            t0 = time.perf_counter()
            ref = scipy_loop(bases, pairs)
            t_scipy = time.perf_counter() - t0
        diff = np.nanmax(np.abs(ref - ours))
        print(f"| {w.name} ({w.num_bases} bases) | {t_scipy:.2f} s ({best_threads} thr) | {t_ours:.3f} s "
              f"| {t_scipy / t_ours:.1f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
