"""A full TopK SAE training step on a GPU: sae_fast vs a dense torch TopK SAE vs eai-sparsify, beside the floor.

    python -m pytest bench/test_sae_step.py --benchmark-only -s     # pytest-benchmark; skips without CUDA
    python bench/test_sae_step.py [--shapes 768x16384,2048x131072] [--modes fp32-adam,bf16-signsgd]
                                                                    # one run, prints the markdown table
    python bench/test_sae_step.py --kernels --no-table               # each kernel alone, beside the bf16 GEMM
    python bench/test_sae_step.py --device cpu --shapes 64x512 --n-tokens 256 --k 8   # tiny rehearsal on a CPU

Step = forward (FVU + AuxK over 1% dead latents, k_aux = d/2), backward, decoder-gradient projection,
optimizer step, decoder renormalisation; N = 8192 tokens, k = 64. Modes:
- fp32-adam:    fp32 parameters, torch Adam (fused), forward under bf16 autocast (the anchors' setting);
- bf16-signsgd: bf16 parameters, stateless SignSGD (sae_fast.optim.SignSGD, used for every implementation);
- bf16-lmadam:  bf16 parameters, sae_fast.optim.LowMemoryAdam with bf16 moments (8 bytes per parameter).
Floor = bare bf16 encoder GEMM (N x d x F) + the optimizer's memory traffic at the measured copy bandwidth.
Peers that run out of memory are reported as OOM. Kernels are also timed alone (`test_kernels_alone`).
Checked, not only timed: every step's loss is finite, and sae_fast's first loss equals the dense baseline's on
the same parameters and batch (relative `LOSS_RTOL`); the table says so per row and the script exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import math
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from sae_fast import TopKSAE, ops
from sae_fast.optim import LowMemoryAdam, SignSGD

N_TOKENS = 8192
K = 64
REPS = 5  # timed steps per measurement (median), after 2 warm-up steps (--reps)
LOSS_RTOL = 0.01  # sae_fast vs dense first loss: same math, bf16 rounding in other places (2e-4 seen on CPU)
SHAPES = [(768, 2**14), (768, 2**17), (2048, 2**17), (768, 2**20), (2048, 2**20), (4096, 2**20)]
MODES = ["fp32-adam", "bf16-signsgd", "bf16-lmadam"]
# bytes read + written per parameter by one optimizer step (parameter, gradient, states)
TRAFFIC = {"fp32-adam": 28, "bf16-signsgd": 6, "bf16-lmadam": 14}
# bytes stored per parameter (parameter + gradient + states): skip modes that cannot fit
STORED = {"fp32-adam": 16, "bf16-signsgd": 4, "bf16-lmadam": 8}

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda_time_ms(fn: Callable[[], object], warmup: int = 2, reps: int = 5) -> float:
    """Median wall time of fn() in ms, measured with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def time_ms(fn: Callable[[], object], device: str, warmup: int = 2, reps: int = 5) -> float:
    """Median time of fn() in ms: CUDA events on a GPU, the wall clock on a CPU."""
    if device == "cuda":
        return cuda_time_ms(fn, warmup, reps)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def copy_bandwidth_gbs(device: str = "cuda") -> float:
    """Copy bandwidth (GB/s, read + write) on a 2 GiB buffer (16 MiB on a CPU)."""
    src = torch.empty(2**29 if device == "cuda" else 2**22, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def gemm_ms(d: int, f: int, device: str = "cuda") -> float:
    """The bare bf16 encoder GEMM x (N, d) @ W_enc.T (d, F): the physical floor of the step."""
    x = torch.randn(N_TOKENS, d, device=device, dtype=torch.bfloat16)
    w = torch.randn(f, d, device=device, dtype=torch.bfloat16)
    return time_ms(lambda: x @ w.T, device)


def _param_dtype(mode: str) -> torch.dtype:
    return torch.float32 if mode == "fp32-adam" else torch.bfloat16


def _optimizer(mode: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if mode == "fp32-adam":
        return torch.optim.Adam(params, lr=1e-4, fused=True)
    if mode == "bf16-signsgd":
        return SignSGD(params, lr=1e-4)
    return LowMemoryAdam(params, lr=1e-4)


def _autocast(mode: str, device: str = "cuda") -> contextlib.AbstractContextManager:
    if mode == "fp32-adam":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class DenseTopKSAE(torch.nn.Module):
    """Baseline: dense encoder GEMM, torch.topk, dense decode (scatter into N x F, then GEMM), same AuxK."""

    def __init__(self, sae: TopKSAE) -> None:
        super().__init__()
        self.k = sae.k
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec

    def forward(self, x: torch.Tensor, dead_mask: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(torch.nn.functional.linear(x - self.b_dec, self.W_enc, self.b_enc))
        top = torch.topk(pre, self.k, sorted=False)
        dense = torch.zeros_like(pre).scatter(1, top.indices, top.values)
        recon = dense @ self.W_dec + self.b_dec
        e = x.float() - recon.float()
        total_variance = (x.float() - x.float().mean(0)).pow(2).sum()
        num_dead = int(dead_mask.sum())
        k_aux = x.shape[1] // 2
        aux = torch.topk(torch.where(dead_mask, pre, -1.0), min(k_aux, num_dead), sorted=False)
        aux_dense = torch.zeros_like(pre).scatter(1, aux.indices, aux.values.clamp_min(0))
        aux_loss = (aux_dense @ self.W_dec).float() - e.detach()
        return (
            e.pow(2).sum() / total_variance + min(num_dead / k_aux, 1.0) * aux_loss.pow(2).sum() / total_variance / 32
        )

    @torch.no_grad()
    def upkeep_after_backward(self) -> None:
        w = self.W_dec.float()
        g = self.W_dec.grad.float()
        self.W_dec.grad.copy_(g - (g * w).sum(1, keepdim=True) * w)


def import_sparsify():
    """sparsify.sparse_coder without running sparsify/__init__ (which imports its trainer and `datasets`)."""
    if "sparsify" not in sys.modules:
        spec = importlib.util.find_spec("sparsify")
        if spec is None or not spec.submodule_search_locations:
            return None
        bare = types.ModuleType("sparsify")
        bare.__path__ = list(spec.submodule_search_locations)
        sys.modules["sparsify"] = bare
    try:
        config = importlib.import_module("sparsify.config")
        coder = importlib.import_module("sparsify.sparse_coder")
    except Exception:
        return None
    return config.SparseCoderConfig, coder.SparseCoder


def make_step(impl: str, d: int, f: int, mode: str, device: str = "cuda") -> Callable[[], torch.Tensor]:
    """Build one training step of `impl` in {"sae_fast", "dense", "sparsify"}; raises if unavailable. The step
    returns its loss (detached, not synchronised)."""
    dtype = _param_dtype(mode)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(N_TOKENS, d, device=device, generator=g).to(dtype)
    dead = torch.zeros(f, dtype=torch.bool, device=device)
    dead[torch.randperm(f, device=device, generator=g)[: max(f // 100, 1)]] = True
    if impl == "sparsify":
        found = import_sparsify()
        if found is None:
            raise ModuleNotFoundError("eai-sparsify is not importable")
        config_cls, coder_cls = found
        model = coder_cls(d, config_cls(num_latents=f, k=K), device=device, dtype=dtype)
        # its forward runs under its own bf16 autocast (sparse_coder.py), as its trainer runs it
        return _sae_step(model, x, dead, _optimizer(mode, list(model.parameters())), contextlib.nullcontext)
    sae = TopKSAE(d, f, K, dtype=dtype, device=device, seed=0)
    opt = _optimizer(mode, list(sae.parameters()))
    if impl == "dense":
        dense = DenseTopKSAE(sae)

        def step() -> torch.Tensor:
            sae.set_decoder_norm_to_unit_norm()
            with _autocast(mode, device):
                loss = dense(x, dead)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            dense.upkeep_after_backward()
            opt.step()
            return loss.detach()

        return step
    return _sae_step(sae, x, dead, opt, lambda: _autocast(mode, device))


def _sae_step(
    model, x: torch.Tensor, dead: torch.Tensor, opt: torch.optim.Optimizer,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> Callable[[], torch.Tensor]:
    """One step of a sae_fast or sparsify SAE (same method names): renormalise, forward under `autocast()`, FVU +
    AuxK / 32, backward, decoder-gradient projection, optimizer. Returns the loss."""

    # ours as its trainer runs it: the batch is checked once by the trainer, not by the encoder each step
    extra = {"check_finite": False} if isinstance(model, TopKSAE) else {}

    def step() -> torch.Tensor:
        model.set_decoder_norm_to_unit_norm()
        with autocast():
            out = model(x, dead_mask=dead, **extra)
        opt.zero_grad(set_to_none=True)
        loss = out.fvu + out.auxk_loss / 32
        loss.backward()
        model.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        return loss.detach()

    return step


@dataclass
class Measured:
    """One implementation's step at one (shape, mode): ms per step and peak GiB as strings ("OOM", "n/a" when it
    cannot run), the loss of its first step, and whether every timed step's loss was finite."""

    ms: str
    gib: str
    first_loss: float = math.nan
    finite: bool = True

    @property
    def ran(self) -> bool:
        return self.ms not in ("OOM", "n/a")


def measure(impl: str, d: int, f: int, mode: str, device: str = "cuda") -> Measured:
    """Time `impl`'s step (2 warm-up steps, median of 5) after recording its first loss."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        step = make_step(impl, d, f, mode, device)
        first = float(step())
        losses: list[torch.Tensor] = []
        ms = time_ms(lambda: losses.append(step()), device, warmup=min(2, REPS), reps=REPS)
        finite = math.isfinite(first) and bool(torch.isfinite(torch.stack(losses)).all())
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device == "cuda" else "-"
        return Measured(f"{ms:.1f}", peak, first, finite)
    except torch.OutOfMemoryError:
        return Measured("OOM", "-")
    except ModuleNotFoundError:
        return Measured("n/a", "-")
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


def fits(d: int, f: int, mode: str, device: str = "cuda") -> bool:
    if device != "cuda":
        return True
    total = torch.cuda.get_device_properties(0).total_memory
    return 2 * f * d * STORED[mode] < 0.9 * total


def check(res: dict[str, Measured]) -> list[str]:
    """What is wrong with one row's results: a non-finite loss, or sae_fast's first loss off the dense one's."""
    problems = [f"{impl}: non-finite loss" for impl, m in res.items() if m.ran and not m.finite]
    ours, dense = res["sae_fast"], res["dense"]
    if ours.ran and dense.ran and not math.isclose(ours.first_loss, dense.first_loss, rel_tol=LOSS_RTOL):
        problems.append(f"first loss sae_fast {ours.first_loss:.5g} vs dense {dense.first_loss:.5g}")
    return problems


HEADER = (
    "| d | F | mode | bf16 GEMM ms | floor ms | sae_fast ms (GiB) | dense ms (GiB) | sparsify ms (GiB) |"
    " sae_fast tok/s | vs sparsify | step / floor | checks |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(d: int, f: int, mode: str, device: str, bw: float) -> tuple[str, list[str]]:
    """One markdown row (every implementation at (d, F, mode), with the floor) and its problems."""
    gemm = gemm_ms(d, f, device)
    if not fits(d, f, mode, device):
        return f"| {d} | {f} | {mode} | {gemm:.2f} | - | does not fit | | | | | | |", []
    floor = gemm + TRAFFIC[mode] * 2 * f * d / (bw * 1e9) * 1e3
    res = {impl: measure(impl, d, f, mode, device) for impl in ("sae_fast", "dense", "sparsify")}
    ours, peer = res["sae_fast"], res["sparsify"]
    tok = f"{N_TOKENS / (float(ours.ms) * 1e-3):,.0f}" if ours.ran else "-"
    speedup = f"{float(peer.ms) / float(ours.ms):.2f}x" if ours.ran and peer.ran else "-"
    ratio = f"{float(ours.ms) / floor:.2f}" if ours.ran else "-"
    cells = " | ".join(f"{m.ms} ({m.gib})" for m in res.values())
    problems = check(res)
    verdict = "FAILED: " + "; ".join(problems) if problems else "ok"
    return f"| {d} | {f} | {mode} | {gemm:.2f} | {floor:.2f} | {cells} | {tok} | {speedup} | {ratio} | {verdict} |", \
        problems


def table(shapes: list[tuple[int, int]], modes: list[str], device: str = "cuda") -> tuple[str, list[str]]:
    """Markdown table, printed row by row as measured (a stage stopped at its time limit keeps what it printed),
    and every row's problems."""
    bw = copy_bandwidth_gbs(device)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines = [
        f"device: {name}, torch {torch.__version__}, copy bandwidth {bw:.0f} GB/s, "
        f"sae_fast encoder {ops.ENCODER_METHOD!r}; N = {N_TOKENS}, k = {K}, AuxK on 1% dead latents",
        "",
        HEADER,
    ]
    print("\n".join(lines), flush=True)
    problems: list[str] = []
    for d, f in shapes:
        for mode in modes:
            line, bad = row(d, f, mode, device, bw)
            lines.append(line)
            problems += [f"({d}, {f}, {mode}) {p}" for p in bad]
            print(line, flush=True)
    return "\n".join(lines), problems


def _assert_topk_values(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, values: torch.Tensor) -> None:
    """The fused encoder's top-k values on the first 256 rows equal an fp32 reference's (bf16 inputs, tolerance of
    fp32 sums in another order)."""
    rows = slice(0, min(256, x.shape[0]))
    pre = torch.relu(x[rows].float() @ W.float().T + b.float())
    ref = torch.topk(pre, K).values
    torch.testing.assert_close(values[rows].float().sort(1, descending=True).values, ref, atol=2e-3, rtol=2e-3)


def kernel_times(d: int, f: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, float]:
    """Each kernel alone (ms) at (d, F), N = 8192, k = 64, with 1% dead latents; asserts the fused encoder's
    top-k values against an fp32 reference first."""
    from sae_fast.kernels.decoder import decoder_backward, gather_weighted_sum
    from sae_fast.kernels.encoder_backward import encoder_backward
    from sae_fast.kernels.encoder_topk import encoder_topk

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(N_TOKENS, d, device="cuda", generator=g).to(dtype)
    W = (torch.randn(f, d, device="cuda", generator=g) / d**0.5).to(dtype)
    b = torch.zeros(f, device="cuda", dtype=dtype)
    dead = torch.zeros(f, dtype=torch.bool, device="cuda")
    dead[: f // 100] = True
    values, indices, _, _ = encoder_topk(x, W, b, K)
    _assert_topk_values(x, W, b, values)
    grad = torch.randn(N_TOKENS, d, device="cuda", generator=g).to(dtype)
    gv = torch.randn_like(values)
    out = {
        "bf16 GEMM (floor)": gemm_ms(d, f),
        "encoder top-k (fused)": cuda_time_ms(lambda: encoder_topk(x, W, b, K)),
        "encoder top-k + AuxK (fused)": cuda_time_ms(lambda: encoder_topk(x, W, b, K, dead, d // 2)),
        # as training calls them: without the wrappers' index range check (a host sync)
        "decoder forward": cuda_time_ms(lambda: gather_weighted_sum(values, indices, W, check_range=False)),
        "decoder backward": cuda_time_ms(lambda: decoder_backward(grad, values, indices, W, check_range=False)),
        "encoder backward": cuda_time_ms(lambda: encoder_backward(gv, values, indices, x, W, check_range=False)),
    }
    if f <= 2**18:  # the dense (N, F) pre-activations fit
        out["cuBLAS GEMM + relu + torch.topk"] = cuda_time_ms(
            lambda: torch.topk(torch.relu(torch.nn.functional.linear(x, W, b)), K, sorted=False)
        )
    return out


@needs_cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("d", "f"), SHAPES, ids=[f"{d}x{f}" for d, f in SHAPES])
@pytest.mark.parametrize("impl", ["sae_fast", "dense", "sparsify"])
def test_sae_step(benchmark, impl: str, d: int, f: int, mode: str) -> None:
    if not fits(d, f, mode):
        pytest.skip(f"{mode} needs {STORED[mode]} bytes per parameter: does not fit")
    torch.cuda.empty_cache()
    try:
        step = make_step(impl, d, f, mode)
    except ModuleNotFoundError as err:
        pytest.skip(str(err))
    except torch.OutOfMemoryError:
        pytest.skip("OOM")

    losses: list[torch.Tensor] = []

    def run() -> None:
        losses.append(step())
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=2)
    assert bool(torch.isfinite(torch.stack(losses)).all()), f"{impl}: non-finite loss"
    gemm = gemm_ms(d, f)
    floor = gemm + TRAFFIC[mode] * 2 * f * d / (copy_bandwidth_gbs() * 1e9) * 1e3
    benchmark.extra_info.update(
        {"gemm_ms": gemm, "floor_ms": floor, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    )
    print(f"\n{impl} d={d} F={f} {mode}: floor {floor:.2f} ms (bf16 GEMM {gemm:.2f} ms)")


@needs_cuda
@pytest.mark.parametrize(("d", "f"), SHAPES, ids=[f"{d}x{f}" for d, f in SHAPES])
def test_kernels_alone(d: int, f: int) -> None:
    times = kernel_times(d, f)  # asserts the encoder's top-k values first
    assert all(math.isfinite(ms) and ms > 0 for ms in times.values())
    print(f"\nd={d} F={f}: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in times.items()))


def main() -> None:
    global N_TOKENS, K, REPS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(f"{d}x{f}" for d, f in SHAPES))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--kernels", action="store_true", help="also time each kernel alone")
    parser.add_argument("--no-table", action="store_true", help="skip the step table (with --kernels: kernels only)")
    parser.add_argument("--encoder", choices=["tiles", "cublas", "running"], default=None,
                        help="sae_fast's encoder method (sae_fast.ops.ENCODER_METHOD); default: the library's")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: a rehearsal of the step table at tiny shapes (wall-clock times)")
    parser.add_argument("--n-tokens", type=int, default=N_TOKENS, help="tokens per step (N)")
    parser.add_argument("--k", type=int, default=K, help="latents kept per token")
    parser.add_argument("--reps", type=int, default=REPS, help="timed steps per measurement (median)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("needs a CUDA device (or --device cpu)")
    N_TOKENS, K, REPS = args.n_tokens, args.k, args.reps
    if args.encoder is not None:
        ops.ENCODER_METHOD = args.encoder
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if not args.no_table:
        _, problems = table(shapes, args.modes.split(","), args.device)  # type: ignore[arg-type]
        if problems:
            sys.exit("checks failed:\n" + "\n".join(problems))
    if args.kernels and args.device == "cuda":
        for d, f in shapes:
            times = kernel_times(d, f)
            print(f"d={d} F={f}: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in times.items()))


if __name__ == "__main__":
    main()
