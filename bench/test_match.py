"""Matching two dictionaries: our exact tiled sweep side by side with faiss (flat, IVF at two nprobe, IVF-SQfp16)
and a naive full-matrix torch baseline; plus stability runs with one seed pair per GEMM sweep against stacked seeds.

    python bench/test_match.py --device cpu                 # CPU sizes (a minute or two), prints markdown rows
    python bench/test_match.py --device cuda                # GPU sizes (2^14..2^20), needs an 80 GB GPU
    python bench/test_match.py --device cuda --stability    # + 96 x (2^14, 768) all anchors, 32 x (2^20, 4096)
    python bench/test_match.py --device cpu --stability-only   # 32 x (2^10, 128) and 8 x (2^12, 256), all anchors
    python bench/test_match.py --stability-only --stability-settings 96x16384x768xall   # one setting
    python -m pytest bench/test_match.py --benchmark-only -s   # the same cases through pytest-benchmark

Rates are GEMM-equivalent: 2 F^2 d / t, whether one direction or both (both come from one sweep for `exact`;
faiss needs one search per direction, so its both-direction time is twice the one-direction time shown).
Cases: `random` (independent unit Gaussian rows: near ties, worst case for IVF) and `planted` (B is a permuted
noisy copy of A with cos 0.8 to the partner: real-data-like). recall@1 is against the float32 exact top-1 (both
directions pooled for methods that give both). Checked, not only timed: every `exact` method must equal the
float32 exact result on every row and column, and every exhaustive method must find the planted partners; the
script exits 1 listing what does not.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch

from sae_fast.matching import FaissIndex, faiss_available, faiss_has_cagra, faiss_has_gpu, match

CPU_SIZES = [(2**12, 768), (2**13, 768), (2**14, 768)]
GPU_SIZES = [(2**14, 768), (2**17, 2048), (2**20, 4096)]
NAIVE_BYTES = {"cpu": 2**32, "cuda": 40 * 2**30}  # full score matrix budget for the naive baseline


@dataclass
class Row:
    device: str
    case: str
    f: int
    d: int
    method: str
    seconds: float
    recall: float | None = None
    note: str = ""

    def markdown(self) -> str:
        rate = 2.0 * self.f * self.f * self.d / self.seconds
        unit, scale = ("TFLOP/s", 1e12) if self.device == "cuda" else ("GFLOP/s", 1e9)
        rec = "" if self.recall is None else f"{self.recall:.4f}"
        return (f"| {self.case} | 2^{int(math.log2(self.f))} | {self.d} | {self.method} | {self.seconds:.4g} | "
                f"{rate / scale:.3g} {unit} | {rec} | {self.note} |")


def make_pair(f: int, d: int, case: str, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit rows A (f, d) and B: independent (`random`) or a permuted noisy copy with cos 0.8 (`planted`)."""
    g = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(f, d, generator=g, device=device)
    a /= a.norm(dim=1, keepdim=True)
    b = torch.randn(f, d, generator=g, device=device)
    if case == "planted":
        b -= (b * a).sum(1, keepdim=True) * a
        b /= b.norm(dim=1, keepdim=True)
        b = (0.8 * a + 0.6 * b)[torch.randperm(f, generator=g, device=device)]
    b /= b.norm(dim=1, keepdim=True)
    return a, b


REPEAT = 1  # timings are the best of REPEAT runs (--repeat)


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(REPEAT):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def naive(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole score matrix at once, then row and column arg-max."""
    s = a @ b.T
    return s.max(dim=1).indices, s.max(dim=0).indices


def run_case(f: int, d: int, case: str, device: str, nprobes: Sequence[int] = (4, 32),
             faiss_kinds: Sequence[str] = ("flat", "ivf", "ivf_sq"), low_precision: bool | None = None) -> list[Row]:
    """Every method on one (F, d, case); each row's recall@1 is against the float32 exact result. The bf16/fp16
    and fused-kernel methods run on a GPU, or on a CPU too with ``low_precision=True`` (a rehearsal: the Triton
    interpreter, tiny sizes)."""
    a, b = make_pair(f, d, case, device)
    rows: list[Row] = []
    if device == "cuda":
        match(a[:1024], b[:4096], both=True, dtype=torch.bfloat16)  # warm-up (cuBLAS handles, allocator)
    t, ref = timed(lambda: match(a, b, both=True, dtype=torch.float32, device=device), device)
    rows.append(Row(device, case, f, d, "exact float32, both directions", t))
    if device == "cuda" if low_precision is None else low_precision:
        rows += _low_precision_rows(a, b, ref, case, device)
    else:
        t, m = timed(lambda: match(a, b, dtype=torch.float32), device)
        rows.append(Row(device, case, f, d, "exact float32, A->B only", t, _recall(m.index_ab, ref.index_ab)))
    if f * f * (2 if device == "cuda" else 4) <= NAIVE_BYTES[device]:
        al, bl = (a.bfloat16(), b.bfloat16()) if device == "cuda" else (a, b)
        t, (ab, ba) = timed(lambda: naive(al, bl), device)
        rows.append(Row(device, case, f, d, f"naive torch {str(al.dtype)[6:]} full matrix, both", t,
                        _recall_both(ab, ba, ref)))
    if device == "cuda" and faiss_has_gpu():
        row = faiss_knn_gpu_bf16(a, b, ref.index_ab[:, 0], case)
        if row is not None:
            rows.append(row)
    if faiss_available() and (device == "cpu" or faiss_has_gpu()):
        rows += _faiss_rows(a, b, ref.index_ab, case, device, nprobes, faiss_kinds)
    if device == "cuda" and faiss_has_cagra():
        t_build, index = timed(lambda: FaissIndex(b.cpu(), "cagra"), "cpu")
        t, m = timed(lambda: match(a.cpu(), None, index_b=index), "cpu")
        rows.append(Row(device, case, f, d, "faiss GpuIndexCagra, A->B", t, _recall(m.index_ab, ref.index_ab),
                        f"build {t_build:.3g} s"))
    return rows


def _low_precision_rows(a: torch.Tensor, b: torch.Tensor, ref, case: str, device: str) -> list[Row]:
    """Exact matching from bf16/fp16 GEMM tiles (torch, then the fused Triton kernel) with the fp32 re-score, and
    a plain bf16 GEMM + arg-max without it."""
    f, d = a.shape
    rows = []
    for kernel in ("torch", "triton"):
        for dt in (torch.bfloat16, torch.float16):
            if kernel == "triton":
                match(a[:1024], b[:4096], both=True, dtype=dt, kernel="triton")  # compile
            t, m = timed(lambda dt=dt, kernel=kernel: match(a, b, both=True, dtype=dt, kernel=kernel), device)
            name = (f"exact {str(dt)[6:]} + fp32 re-score, both" if kernel == "torch"
                    else f"exact fused Triton kernel {str(dt)[6:]} + fp32 certify, both")
            rows.append(Row(device, case, f, d, name, t, _recall_both(m.index_ab, m.index_ba, ref),
                            f"re-scored rows {m.info['rescored_rows']}, cols {m.info['rescored_cols']}"))
    t, m = timed(lambda: match(a, b, dtype=torch.bfloat16), device)
    rows.append(Row(device, case, f, d, "exact bfloat16 + fp32 re-score, A->B only", t,
                    _recall(m.index_ab, ref.index_ab)))
    al, bl = a.bfloat16(), b.bfloat16()
    t, plain = timed(lambda: torch.cat([(al[i:i + 8192] @ bl.T).argmax(1) for i in range(0, f, 8192)]), device)
    rows.append(Row(device, case, f, d, "plain bf16 chunked GEMM + arg-max (no re-score), A->B", t,
                    _recall(plain, ref.index_ab)))
    return rows


def _recall(index_ab: torch.Tensor, ref_ab: torch.Tensor) -> float:
    """Share of rows whose top-1 equals the reference's."""
    return float((index_ab.reshape(-1, ref_ab.shape[1])[:, 0].cpu() == ref_ab[:, 0].cpu()).float().mean())


def _recall_both(ab: torch.Tensor, ba: torch.Tensor, ref) -> float:
    """Share of rows and columns whose top-1 equals the reference's, both directions pooled."""
    n_ab, n_ba = ref.index_ab.shape[0], ref.index_ba.shape[0]
    return (_recall(ab, ref.index_ab) * n_ab + _recall(ba, ref.index_ba) * n_ba) / (n_ab + n_ba)


def _faiss_rows(a: torch.Tensor, b: torch.Tensor, ref_ab: torch.Tensor, case: str, device: str,
                nprobes: Sequence[int], kinds: Sequence[str]) -> list[Row]:
    """faiss indexes of `kinds` (flat, ivf, ivf_sq) over B, A->B, on the GPU where faiss has one."""
    f, d = a.shape
    rows = []
    where = "gpu" if device == "cuda" else "cpu"
    if "flat" in kinds:
        t_build, index = timed(lambda: FaissIndex(b.cpu(), "flat"), "cpu")
        t, m = timed(lambda: match(a.cpu(), None, index_b=index), "cpu")
        rows.append(Row(device, case, f, d, f"faiss IndexFlatIP ({where}), A->B", t,
                        _recall(m.index_ab, ref_ab), f"build {t_build:.3g} s"))
    for kind in (k for k in ("ivf", "ivf_sq") if k in kinds):
            t_build, index = timed(lambda kind=kind: FaissIndex(b.cpu(), kind), "cpu")
            for nprobe in nprobes:
                index.set_nprobe(nprobe)
                t, m = timed(lambda index=index: match(a.cpu(), None, index_b=index), "cpu")
                rows.append(Row(device, case, f, d, f"faiss {index.description.split()[1]} nprobe={nprobe}, A->B",
                                t, _recall(m.index_ab, ref_ab), f"build {t_build:.3g} s"))
    return rows


APPROXIMATE = ("nprobe", "Cagra")  # methods allowed to miss: approximate indexes


def check_rows(rows: Sequence[Row]) -> list[str]:
    """What is wrong: an `exact ...` method whose top-1 differs from the float32 exact result anywhere, or, on
    planted pairs (the partner's cosine 0.8 stands far above every other), any exhaustive method below 0.999."""
    problems = []
    for r in rows:
        if r.recall is None or any(word in r.method for word in APPROXIMATE):
            continue
        need = 1.0 if r.method.startswith("exact") else 0.999 if r.case == "planted" else None
        if need is not None and r.recall < need:
            problems.append(f"{r.case} 2^{int(math.log2(r.f))} x {r.d}: {r.method}: top-1 = float32 exact for "
                            f"{r.recall:.4f} of rows, needs {need}")
    return problems


def faiss_knn_gpu_bf16(a: torch.Tensor, b: torch.Tensor, ref_top1: torch.Tensor, case: str) -> Row | None:
    """faiss's brute-force `knn_gpu` on bf16 torch tensors, one direction (its fastest exact path, gpu.md)."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # lets knn_gpu take torch tensors

        res = faiss.StandardGpuResources()
        al, bl = a.bfloat16(), b.bfloat16()
        faiss.knn_gpu(res, al[:1024], bl[:4096], 1, metric=faiss.METRIC_INNER_PRODUCT)
        t, (_, idx) = timed(lambda: faiss.knn_gpu(res, al, bl, 1, metric=faiss.METRIC_INNER_PRODUCT), "cuda")
    except Exception as err:  # a faiss build without bf16 or torch support: say so instead of failing the run
        print(f"(faiss knn_gpu bf16 unavailable: {err})")
        return None
    same = float((idx[:, 0].cpu() == ref_top1).float().mean())
    return Row("cuda", case, a.shape[0], a.shape[1], "faiss knn_gpu bf16, A->B", t, same)


STABILITY_SETTINGS = {  # (seeds, F, d, anchor)
    "cuda": [(96, 2**14, 768, "all"), (32, 2**20, 4096, 0)],
    "cpu": [(32, 2**10, 128, "all"), (8, 2**12, 256, "all")],
}
# (label, stability_scores keywords): one pair per sweep against the default stacking, per tile kernel
STABILITY_VARIANTS = {
    # fp16 tiles (the default): 8x smaller rounding than bf16 for unit rows, so far fewer rows to re-score
    "cuda": [("stack 1, torch fp16", {"stack": 1}), ("default stack, torch fp16", {}),
             ("stack 1, triton fp16", {"stack": 1, "kernel": "triton"}),
             ("default stack, triton fp16", {"kernel": "triton"})],
    "cpu": [("stack 1, float32", {"stack": 1}), ("default stack, float32", {})],
}


class LazySeeds(Sequence):
    """Seeds generated on demand on the device: half the features shared by every seed (cos ~ 0.96 between
    seeds), half seed-specific."""

    def __init__(self, n: int, f: int, d: int, device: str) -> None:
        self.n, self.f, self.d, self.device = n, f, d, device

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: int) -> torch.Tensor:
        if not 0 <= s < self.n:
            raise IndexError(s)
        g = torch.Generator(device=self.device)
        base = torch.randn(self.f, self.d, generator=g.manual_seed(10_000), device=self.device)
        own = torch.randn(self.f, self.d, generator=g.manual_seed(s), device=self.device)
        base[self.f // 2:] = own[self.f // 2:]
        base.add_(own, alpha=0.3)
        return base


def run_stability(device: str, settings: Sequence[tuple[int, int, int, str | int]] | None = None,
                  variants: Sequence[tuple[str, dict]] | None = None) -> list[str]:
    """GPU: the paper setting (96 seeds of (2^14, 768), all anchors) and 32 seeds of (2^20, 4096), one anchor;
    CPU: small settings. Each with one seed pair per GEMM sweep and with the default stacking (match_many)."""
    from sae_fast import stability_scores

    out = []
    for n, f, d, anchor in settings or STABILITY_SETTINGS[device]:
        seeds = LazySeeds(n, f, d, device)
        pairs = n * (n - 1) // 2 if anchor == "all" else n - 1
        first = None
        for label, kw in variants or STABILITY_VARIANTS[device]:
            t, st = timed(lambda seeds=seeds, anchor=anchor, kw=kw: stability_scores(
                seeds, anchor=anchor, device=device, progress=False, cache_bytes=2**34, **kw), device)
            if first is None:
                first = st
            same = float((st.best_j == first.best_j).float().mean())
            out.append(f"| {n} seeds of (2^{int(math.log2(f))}, {d}), anchor={anchor} | {label} (stack "
                       f"{st.info.get('stack')}) | {pairs} pairs | {t:.3g} s | "
                       f"{2.0 * f * f * d * pairs / t / 1e12:.3g} TFLOP/s | {same:.4f} | {st.backend}; "
                       f"{st.info.get('rescored', 0)} rows re-scored |")
            print(out[-1], flush=True)
    return out


def environment(device: str) -> str:
    threads = torch.get_num_threads()
    extra = ""
    if faiss_available():
        import faiss

        extra = f", faiss {faiss.__version__} with {faiss.omp_get_max_threads()} OpenMP threads"
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}{extra}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"with {threads} threads{extra}, load average at start {load:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=None, help="comma-separated FxD, e.g. 16384x768,131072x2048")
    parser.add_argument("--cases", default="random,planted")
    parser.add_argument("--stability", action="store_true", help="also time the stability settings")
    parser.add_argument("--stability-only", action="store_true", help="only the stability settings")
    parser.add_argument("--stability-settings", default=None,
                        help="comma-separated SEEDSxFxDxANCHOR, e.g. 96x16384x768xall,32x1048576x4096x0")
    parser.add_argument("--stability-variants", default=None,
                        help="only the variants whose label contains one of these comma-separated words")
    parser.add_argument("--repeat", type=int, default=1, help="report the best of this many runs")
    parser.add_argument("--low-precision", action="store_true",
                        help="on a CPU too: the bf16/fp16 and fused Triton kernel methods (interpreter: tiny sizes)")
    parser.add_argument("--faiss-kinds", default="flat,ivf,ivf_sq", help="faiss indexes to time (comma-separated)")
    args = parser.parse_args()
    global REPEAT
    REPEAT = args.repeat
    sizes = CPU_SIZES if args.device == "cpu" else GPU_SIZES
    if args.sizes:
        sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    print(f"device: {environment(args.device)}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    if not args.stability_only:
        print("| case | F | d | method | seconds | rate (2 F^2 d / t) | top-1 = float32 exact | note |")
        print("|---|---|---|---|---|---|---|---|")
        problems = []
        for f, d in sizes:
            for case in args.cases.split(","):
                rows = run_case(f, d, case, args.device, faiss_kinds=args.faiss_kinds.split(","),
                                low_precision=True if args.low_precision else None)
                for row in rows:
                    print(row.markdown(), flush=True)
                problems += check_rows(rows)
        if problems:
            sys.exit("checks failed:\n" + "\n".join(problems))
    if args.stability or args.stability_only:
        settings = None
        if args.stability_settings:
            settings = [(int(n), int(f), int(d), a if a == "all" else int(a))
                        for n, f, d, a in (x.split("x") for x in args.stability_settings.split(","))]
        print("\n| setting | variant | work | seconds | rate (2 F^2 d pairs / t) | best_j = first variant's | backend |"
              "\n|---|---|---|---|---|---|---|", flush=True)
        variants = STABILITY_VARIANTS[args.device]
        if args.stability_variants:
            words = args.stability_variants.split(",")
            variants = [v for v in variants if any(w in v[0] for w in words)]
        run_stability(args.device, settings, variants)


# ---------------------------------------------------------------------------------------------- pytest-benchmark

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("size", CPU_SIZES[:2], ids=lambda s: f"{s[0]}x{s[1]}")
def test_exact_cpu(benchmark, size: tuple[int, int]) -> None:
    a, b = make_pair(*size, "planted", "cpu")
    m = benchmark.pedantic(lambda: match(a, b, both=True), rounds=1, iterations=1)
    benchmark.extra_info["gflops"] = 2.0 * size[0] ** 2 * size[1] / benchmark.stats.stats.min / 1e9
    benchmark.extra_info["threads"] = torch.get_num_threads()
    assert bool(m.mutual(0.7).all())


@pytest.mark.skipif(not faiss_available(), reason="needs faiss")
@pytest.mark.parametrize("size", CPU_SIZES[:2], ids=lambda s: f"{s[0]}x{s[1]}")
def test_faiss_flat_cpu(benchmark, size: tuple[int, int]) -> None:
    a, b = make_pair(*size, "planted", "cpu")
    index = FaissIndex(b, "flat")
    m = benchmark.pedantic(lambda: match(a, None, index_b=index), rounds=1, iterations=1)
    assert torch.equal(m.index_ab, match(a, b).index_ab)  # planted partners: the exact sweep's top-1


@needs_cuda
@pytest.mark.parametrize("size", GPU_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_exact_gpu_default_fp16(benchmark, size: tuple[int, int]) -> None:
    a, b = make_pair(*size, "planted", "cuda")
    match(a[:1024], b[:4096], both=True)

    def run():
        m = match(a, b, both=True)
        torch.cuda.synchronize()
        return m

    m = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["tflops"] = 2.0 * size[0] ** 2 * size[1] / benchmark.stats.stats.min / 1e12
    assert bool(m.mutual(0.7).all())


if __name__ == "__main__":
    main()
