"""Training S seeds in one run (one pass over the data) against S separate runs, one seed each.

    python -m pytest bench/test_train.py --benchmark-only -s        # pytest-benchmark, prints the tables
    python bench/test_train.py                                      # CPU rows only, prints markdown for RESULTS.md
    python bench/test_train.py --gpu                                # the GPU rows (needs CUDA)

Both sides do the same work per seed (same SAE, same batches, same steps); the difference is what a separate
run repeats: reading/gathering each batch from the memory-mapped cache (or running the model, for an
on-the-fly source), copying it to the device, and the per-run setup. Wall-clock times include everything
a user pays for `sae-fast train` minus the Python start-up.

GPU row of the issue: 32 seeds of (d, F, k) = (768, 16384, 64) from one cached activation set, fp32 + Adam.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pytest
import torch

from sae_fast.activations import ActivationSource, CachedSource, save_tensor_cache
from sae_fast.train import TrainConfig, Trainer


def _synthetic(n: int, d: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    """(n, d) float32 on the CPU: sparse combinations of 4·d random unit directions plus noise, built on
    `device` (2^20 x 768 takes about a minute on 16 CPU cores, well under a second on a GPU)."""
    g = torch.Generator(device=device).manual_seed(seed)
    dirs = torch.randn(4 * d, d, generator=g, device=device)
    dirs /= dirs.norm(dim=1, keepdim=True)
    out = torch.empty(n, d)
    for start in range(0, n, 65536):  # sparse codes in chunks, to bound memory
        m = min(65536, n - start)
        codes = (torch.rand(m, 4 * d, generator=g, device=device) < 0.02).float()
        codes *= torch.rand(m, 4 * d, generator=g, device=device)
        out[start:start + m] = (codes @ dirs + 0.05 * torch.randn(m, d, generator=g, device=device)).cpu()
    return out


def _run(source: ActivationSource, seeds: list[int], out: Path, **cfg) -> float:
    """Wall seconds of one training run (setup included); CUDA is synchronised at the end."""
    t0 = time.perf_counter()
    Trainer(source, TrainConfig(seeds=seeds, output_dir=str(out), progress=False, checkpoint_interval=0,
                                log_interval=10**9, **cfg)).fit()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compare(source_factory, num_seeds: int, work: Path, **cfg) -> dict[str, float]:
    """Time one run with ``num_seeds`` seeds and ``num_seeds`` runs of one seed; return both and the ratio."""
    seeds = list(range(num_seeds))
    _run(source_factory(), [0], work / "warmup", **{**cfg, "total_tokens": cfg["batch_size"] * 2})
    together = _run(source_factory(), seeds, work / "together", **cfg)
    separate = sum(_run(source_factory(), [s], work / f"alone{s}", **cfg) for s in seeds)
    tokens = cfg["total_tokens"]
    return {"seeds": num_seeds, "together_s": together, "separate_s": separate, "speedup": separate / together,
            "together_seed_tokens_per_s": num_seeds * tokens / together,
            "separate_seed_tokens_per_s": num_seeds * tokens / separate}


CPU_CASES = {
    # name: (cache tokens, d, F, k, batch, total tokens)
    "cache, small SAE (64, 512, 8)": (262_144, 64, 512, 8, 2048, 2048 * 40),
    "cache, (384, 1536, 16) = the CLI default shape": (65_536, 384, 1536, 16, 1024, 1024 * 12),
}


def _cpu_row(name: str, work: Path, num_seeds: int = 4) -> dict[str, float]:
    n, d, f, k, batch, total = CPU_CASES[name]
    cached = save_tensor_cache(_synthetic(n, d), work / "cache", shard_tokens=65536)
    return compare(lambda: CachedSource(cached.path), num_seeds, work, d_in=d, num_latents=f, k=k,
                   batch_size=batch, total_tokens=total, device="cpu")


def _model_row(work: Path, num_seeds: int = 4) -> dict[str, float]:
    """On the fly from MiniLM (no cache): every separate run has to run the model again."""
    from sae_fast.activations import embedded_default

    source = embedded_default(num_texts=600)
    return compare(lambda: source, num_seeds, work, num_latents=1536, k=16, batch_size=1024,
                   total_tokens=1024 * 8, device="cpu")


def _gpu_row(work: Path, num_seeds: int = 32, separate_seeds: int = 4) -> dict[str, float]:
    """32 seeds of (768, 16384, 64) together; separate runs measured on `separate_seeds` and scaled per seed."""
    d, f, k, batch = 768, 16384, 64, 8192
    total = batch * 200
    cached = save_tensor_cache(_synthetic(1 << 20, d, device="cuda"), work / "cache", dtype="float16",
                               shard_tokens=1 << 18)
    cfg = dict(d_in=d, num_latents=f, k=k, batch_size=batch, total_tokens=total, device="cuda")
    _run(CachedSource(cached.path), [0], work / "warmup", **{**cfg, "total_tokens": batch * 5})
    together = _run(CachedSource(cached.path), list(range(num_seeds)), work / "together", **cfg)
    one = sum(_run(CachedSource(cached.path), [s], work / f"alone{s}", **cfg) for s in range(separate_seeds))
    separate = one / separate_seeds * num_seeds
    return {"seeds": num_seeds, "together_s": together, "separate_s": separate, "speedup": separate / together,
            "together_seed_tokens_per_s": num_seeds * total / together,
            "separate_seed_tokens_per_s": num_seeds * total / separate, "tokens_per_s": total / together}


def _markdown(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| case | seeds | one run, S seeds (s) | S runs, 1 seed (s) | speed-up | seed-tokens/s together | "
             "seed-tokens/s separate |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['seeds']:.0f} | {r['together_s']:.1f} | {r['separate_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['together_seed_tokens_per_s']:,.0f} | "
                     f"{r['separate_seed_tokens_per_s']:,.0f} |")
    return "\n".join(lines)


@pytest.mark.parametrize("name", list(CPU_CASES))
def test_multi_seed_vs_separate_runs_cpu(benchmark, name: str, tmp_path: Path) -> None:
    row = benchmark.pedantic(lambda: _cpu_row(name, tmp_path), rounds=1, iterations=1)
    benchmark.extra_info.update(row)
    print("\n" + _markdown({name: row}))
    assert row["speedup"] > 1.0


def test_multi_seed_vs_separate_runs_on_the_fly_cpu(benchmark, tmp_path: Path) -> None:
    row = benchmark.pedantic(lambda: _model_row(tmp_path), rounds=1, iterations=1)
    benchmark.extra_info.update(row)
    print("\n" + _markdown({"on the fly from MiniLM layer 3 (no cache), (384, 1536, 16)": row}))
    assert row["speedup"] > 1.0


@pytest.mark.gpu
def test_32_seeds_768_16384_64_gpu(benchmark, tmp_path: Path) -> None:
    row = benchmark.pedantic(lambda: _gpu_row(tmp_path), rounds=1, iterations=1)
    benchmark.extra_info.update(row)
    print("\n" + _markdown({"GPU: 32 seeds of (768, 16384, 64), batch 8192, fp32 + Adam": row}))
    print(f"tokens/s (each token trains all 32 SAEs): {row['tokens_per_s']:,.0f}")
    assert row["speedup"] > 1.0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="run the GPU row instead of the CPU rows")
    parser.add_argument("--seeds", type=int, default=4, help="seeds in the CPU rows")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.gpu:
            results["GPU: 32 seeds of (768, 16384, 64), batch 8192, fp32 + Adam"] = _gpu_row(Path(tmp))
        else:
            for i, case in enumerate(CPU_CASES):
                results[case] = _cpu_row(case, Path(tmp) / str(i), args.seeds)
            results["on the fly from MiniLM layer 3 (no cache), (384, 1536, 16)"] = _model_row(Path(tmp) / "m",
                                                                                               args.seeds)
    print(_markdown(results))
