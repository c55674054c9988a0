"""A full TopK SAE training step on the CPU: sae_fast vs eai-sparsify vs a dense torch TopK SAE, beside the bare
encoder GEMM, measured side by side in one run (2 threads, fp32, Adam).

    python bench/test_cpu_step.py                       # the three shapes; prints a markdown table
    python bench/test_cpu_step.py --shapes 768x16384x32x4096 --reps 7 --threads 2
    python bench/test_cpu_step.py --profile 768x16384x32x4096   # torch.profiler table of sae_fast's step
    python -m pytest bench/test_cpu_step.py -q -s       # agreement asserts + pytest-benchmark timings

Step = decoder renormalisation, forward (FVU; no dead latents, so no AuxK, as in a first step), backward,
decoder-gradient projection, Adam step (the same fused torch Adam for all); every implementation starts from
the same weights and batch. Before timing, the losses of one forward and the gradients of one backward are
asserted to agree between the implementations (sparsify's and the dense SAE's against sae_fast's), so a fast
but wrong step fails the run.
Timings interleave the implementations round by round (a load spike hits all of them alike); medians are
reported. sparsify runs its eager CPU path (SPARSIFY_DISABLE_TRITON=1: its Triton decoder needs a GPU).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import os
import statistics
import sys
import time
import types
from collections.abc import Callable

import pytest
import torch

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # read when sparsify.utils is imported

from sae_fast import TopKSAE
from sae_fast.optim import make_optimizer

SHAPES = [(384, 1536, 16, 1024), (768, 2**14, 32, 4096), (768, 2**15, 64, 2048)]  # (d, F, k, N)
IMPLS = ("sae_fast", "sparsify", "dense")
TARGET_VS_SPARSIFY = 1.5  # sae_fast's step at least this many times faster than sparsify's
TARGET_VS_GEMM = 1.6  # at F >= 2^14, sae_fast's step at most this many times the encoder GEMM
LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-3  # relative to the gradient's largest entry


def _no_accelerate(*args: object, **kwargs: object) -> None:
    raise ModuleNotFoundError("accelerate is not installed (sparsify's model loading needs it; the bench does not)")


def import_sparsify() -> tuple[type, type] | None:
    """(SparseCoderConfig, SparseCoder) without running sparsify/__init__ (its trainer imports `datasets`)."""
    if "sparsify" not in sys.modules:
        spec = importlib.util.find_spec("sparsify")
        if spec is None or not spec.submodule_search_locations:
            return None
        if importlib.util.find_spec("accelerate") is None:  # sparsify.utils imports it for model loading only
            importlib.import_module("transformers")  # before the stub: it probes for accelerate on import
            stub = types.ModuleType("accelerate.utils")
            stub.send_to_device = _no_accelerate  # type: ignore[attr-defined]
            sys.modules["accelerate"] = types.ModuleType("accelerate")
            sys.modules["accelerate"].__spec__ = importlib.machinery.ModuleSpec("accelerate", None)
            sys.modules["accelerate.utils"] = stub
        bare = types.ModuleType("sparsify")
        bare.__path__ = list(spec.submodule_search_locations)
        sys.modules["sparsify"] = bare
    try:
        config = importlib.import_module("sparsify.config")
        coder = importlib.import_module("sparsify.sparse_coder")
    except Exception:
        return None
    return config.SparseCoderConfig, coder.SparseCoder


class DenseTopKSAE(torch.nn.Module):
    """Baseline: dense encoder GEMM, torch.topk, dense decode (scatter into N x F, then a GEMM); autograd."""

    def __init__(self, sae: TopKSAE) -> None:
        super().__init__()
        self.k = sae.k
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = (
            torch.nn.Parameter(p.detach().clone()) for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The FVU of x."""
        pre = torch.relu(torch.nn.functional.linear(x - self.b_dec, self.W_enc, self.b_enc))
        top = torch.topk(pre, self.k, sorted=False)
        codes = torch.zeros_like(pre).scatter(1, top.indices, top.values)
        e = x - (codes @ self.W_dec + self.b_dec)
        return e.pow(2).sum() / (x - x.mean(0)).pow(2).sum()

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        g, w = self.W_dec.grad, self.W_dec
        g -= (g * w).sum(1, keepdim=True) * w


def _models(d: int, f: int, k: int) -> dict[str, torch.nn.Module]:
    """The implementations, all holding sae_fast's seed-0 initial weights."""
    sae = TopKSAE(d, f, k, seed=0)
    models: dict[str, torch.nn.Module] = {"sae_fast": sae, "dense": DenseTopKSAE(sae)}
    found = import_sparsify()
    if found is not None:
        config_cls, coder_cls = found
        coder = coder_cls(d, config_cls(num_latents=f, k=k), device="cpu", dtype=torch.float32)
        with torch.no_grad():
            coder.encoder.weight.copy_(sae.W_enc)
            coder.encoder.bias.copy_(sae.b_enc)
            coder.W_dec.copy_(sae.W_dec)
            coder.b_dec.copy_(sae.b_dec)
        models["sparsify"] = coder
    return models


def _loss(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if name == "dense":
        return model(x)
    if name == "sae_fast":  # as its trainer runs it: the batch is checked once by the trainer
        return model(x, check_finite=False).fvu
    return model(x).fvu


def _enc_weight(name: str, model: torch.nn.Module) -> torch.Tensor:
    return model.encoder.weight if name == "sparsify" else model.W_enc


def make_step(name: str, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], float]:
    """One Adam training step of `model` on x; returns the loss. Every implementation gets sae_fast's trainer's
    Adam (`make_optimizer("adam")`: torch's fused Adam on the CPU), so the steps differ only in the SAE."""
    opt = make_optimizer("adam", model.parameters(), lr=1e-4)

    def step() -> float:
        model.set_decoder_norm_to_unit_norm()
        loss = _loss(name, model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        return float(loss.detach())

    return step


def check_agreement(models: dict[str, torch.nn.Module], x: torch.Tensor) -> None:
    """Assert that every implementation's loss and gradients on x match sae_fast's (same initial weights)."""
    grads: dict[str, tuple[float, torch.Tensor, torch.Tensor]] = {}
    for name, model in models.items():
        model.zero_grad(set_to_none=True)
        loss = _loss(name, model, x)
        loss.backward()
        w_dec = model.W_dec
        grads[name] = (float(loss.detach()), _enc_weight(name, model).grad.clone(), w_dec.grad.clone())
        model.zero_grad(set_to_none=True)
    ref_loss, ref_enc, ref_dec = grads["sae_fast"]
    for name, (loss, enc, dec) in grads.items():
        assert abs(loss - ref_loss) <= LOSS_RTOL * abs(ref_loss), f"{name}: loss {loss} vs sae_fast {ref_loss}"
        for what, got, want in (("dW_enc", enc, ref_enc), ("dW_dec", dec, ref_dec)):
            err = float((got - want).abs().max())
            assert err <= GRAD_RTOL * float(want.abs().max()), f"{name}: {what} differs by {err}"


def _gemm(x: torch.Tensor, w: torch.Tensor) -> Callable[[], float]:
    def run() -> float:
        return float((x @ w.T)[0, 0])

    return run


def measure(shape: tuple[int, int, int, int], reps: int) -> dict[str, float]:
    """Median seconds per step of every implementation and of the bare encoder GEMM, interleaved per round."""
    d, f, k, n = shape
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    models = _models(d, f, k)
    check_agreement(models, x)
    runs = {name: make_step(name, model, x) for name, model in models.items()}
    runs["gemm"] = _gemm(x, models["sae_fast"].W_enc.detach())
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up: Adam's state, allocator
        run()
    for _ in range(reps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def table(results: dict[tuple[int, int, int, int], dict[str, float]]) -> str:
    """Markdown table of the medians (ms) and the two target ratios."""
    lines = [
        "| (d, F, k, N) | encoder GEMM alone | sae_fast | sparsify | dense torch | sae_fast vs sparsify | "
        "sae_fast / GEMM |",
        "|---|---|---|---|---|---|---|",
    ]
    for (d, f, k, n), r in results.items():
        ms = {name: f"{r[name] * 1e3:.0f} ms" if name in r else "n/a" for name in ("gemm", *IMPLS)}
        speedup = f"{r['sparsify'] / r['sae_fast']:.2f}×" if "sparsify" in r else "n/a"
        lines.append(
            f"| ({d}, {f}, {k}, {n}) | {ms['gemm']} | {ms['sae_fast']} | {ms['sparsify']} | {ms['dense']} | "
            f"{speedup} | {r['sae_fast'] / r['gemm']:.2f}× |"
        )
    return "\n".join(lines)


def profile(shape: tuple[int, int, int, int]) -> str:
    """torch.profiler's table (self CPU time) of two sae_fast steps at `shape`."""
    d, f, k, n = shape
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    step = make_step("sae_fast", TopKSAE(d, f, k, seed=0), x)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"a shape is DxFxKxN with positive ints, got {text!r}")
    d, f, k, n = (int(p) for p in parts)
    return d, f, k, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=lambda s: [_parse_shape(p) for p in s.split(",")], default=SHAPES)
    parser.add_argument("--reps", type=int, default=5, help="timed rounds per shape (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", type=_parse_shape, default=None, help="profile sae_fast's step at DxFxKxN")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.threads < 1:
        parser.error("--reps and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    if args.profile is not None:
        print(profile(args.profile))
        return 0
    results = {}
    for shape in args.shapes:
        results[shape] = measure(shape, args.reps)
        print(f"{shape}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in results[shape].items()), flush=True)
    print(f"\n{args.threads} threads, fp32, Adam, median of {args.reps} interleaved rounds\n")
    print(table(results))
    return 0


# ---- pytest -------------------------------------------------------------------------------------------------

needs_sparsify = pytest.mark.skipif(import_sparsify() is None, reason="eai-sparsify is not importable")


@needs_sparsify
@pytest.mark.parametrize("shape", [(24, 96, 4, 64), (40, 200, 7, 33)])
def test_steps_agree(shape: tuple[int, int, int, int]) -> None:
    """The three implementations give one loss and one gradient on the same weights and batch."""
    d, f, k, n = shape
    check_agreement(_models(d, f, k), torch.randn(n, d, generator=torch.Generator().manual_seed(1)))


@needs_sparsify
@pytest.mark.parametrize("impl", [*IMPLS, "gemm"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_step_time(benchmark, impl: str, shape: tuple[int, int, int, int]) -> None:
    """pytest-benchmark timing of one step (or the bare GEMM) after the agreement check at that shape."""
    torch.set_num_threads(2)
    d, f, k, n = shape
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    models = _models(d, f, k)
    check_agreement(models, x)
    run = _gemm(x, models["sae_fast"].W_enc.detach()) if impl == "gemm" else make_step(impl, models[impl], x)
    loss = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert loss == loss  # a number, not NaN


if __name__ == "__main__":
    sys.exit(main())
