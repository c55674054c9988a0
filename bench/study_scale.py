"""The study at the scale users bring: S planted TopK SAEs of F latents in d dimensions plus N held-out rows, the
whole study (no synthetic section) run on them, with each step's wall time and peak memory.

    python bench/study_scale.py --seeds 4 --latents 65536 --d 256 --rows 50000 [--device cuda] [--out DIR]

Planted data: a pool of ground-truth unit directions; every seed holds the same ``shared`` share of them (its
stable latents, slightly perturbed per seed) plus random directions of its own; encoders are the decoders (tied).
Held-out rows are sparse combinations of the pool's directions plus noise, so the SAEs fire as trained ones do.

Per step: wall seconds, CPU seconds of the process (on a shared machine wall time depends on the load; CPU
seconds over the cores available is what an idle machine would take), peak RSS of the process during the step
(sampled every 20 ms; VmHWM for the whole run),
peak traced Python/numpy memory (tracemalloc) and, on CUDA, peak allocated GPU memory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from sae_fast.checkpoint import save_sae
from sae_fast.sae import TopKSAE
from sae_fast.study import StudyConfig, study
from sae_fast.study.steps.section import SectionStep


def rss_bytes(field: str = "VmRSS") -> int:
    """The process's resident memory (or its high-water mark with ``VmHWM``) from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class RssPeak:
    """Samples RSS in a thread; ``peak`` since the last ``reset``."""

    def __init__(self, every: float = 0.02) -> None:
        self.peak, self.every, self._stop = 0, every, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.every)

    def reset(self) -> None:
        self.peak = rss_bytes()

    def stop(self) -> None:
        self._stop.set()


def write_run(root: Path, seeds: int, F: int, d: int, k: int, rows: int, shared: float = 0.5) -> tuple[Path, Path]:
    """Planted seeds under root/run and held-out rows at root/heldout.npy (module docstring)."""
    rng = np.random.default_rng(0)
    n_shared = int(shared * F)
    pool = rng.standard_normal((n_shared, d)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    for s in range(seeds):
        own = rng.standard_normal((F - n_shared, d)).astype(np.float32)
        dec = np.concatenate([pool + 0.03 * rng.standard_normal(pool.shape).astype(np.float32), own])
        dec /= np.linalg.norm(dec, axis=1, keepdims=True)
        dec = dec[rng.permutation(F)]
        sae = TopKSAE(d, F, k, seed=s)
        with torch.no_grad():
            sae.W_dec.copy_(torch.from_numpy(dec))
            sae.W_enc.copy_(torch.from_numpy(dec))
        save_sae(sae, root / "run" / f"seed{s}")
    x = np.empty((rows, d), dtype=np.float32)
    for start in range(0, rows, 4096):
        n = min(4096, rows - start)
        idx = rng.integers(0, n_shared, size=(n, k))
        coef = rng.exponential(1.0, size=(n, k, 1)).astype(np.float32)
        x[start:start + n] = (coef * pool[idx]).sum(axis=1) + 0.05 * rng.standard_normal((n, d)).astype(np.float32)
    np.save(root / "heldout.npy", x)
    return root / "run", root / "heldout.npy"


def instrument(device: str) -> tuple[dict, RssPeak]:
    """Wrap every step's run with timing and peak-memory measurement; returns (per-step rows, the RSS sampler)."""
    rows: dict[str, dict] = {}
    sampler = RssPeak()
    original = SectionStep.run

    def run(self, ctx):
        sampler.reset()
        tracemalloc.reset_peak()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0, c0 = time.perf_counter(), time.process_time()
        result = original(self, ctx)
        rows[self.name] = {"seconds": round(time.perf_counter() - t0, 2),
                           "cpu_seconds": round(time.process_time() - c0, 2),
                           "peak_rss_gb": round(sampler.peak / 2**30, 3),
                           "peak_traced_gb": round(tracemalloc.get_traced_memory()[1] / 2**30, 3)
                           if tracemalloc.is_tracing() else None,
                           "peak_cuda_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3)
                           if device.startswith("cuda") else None}
        print(f"  {self.name:<11} {rows[self.name]}", flush=True)
        return result

    SectionStep.run = run
    return rows, sampler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--latents", type=int, default=2**14)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--refit-steps", type=int, default=50, help="pooling: encoder refit steps (study default 500)")
    p.add_argument("--finetune-steps", type=int, default=50, help="pooling: fine-tuning steps (study default 500)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="write the measurements here")
    p.add_argument("--no-trace", action="store_true",
                   help="skip tracemalloc (it slows Python-heavy steps); RSS and CUDA peaks are still measured")
    args = p.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="study_scale_"))
    t0 = time.perf_counter()
    run, held = write_run(root, args.seeds, args.latents, args.d, args.k, args.rows)
    print(f"wrote {args.seeds} seeds F={args.latents} d={args.d} k={args.k}, {args.rows} rows in "
          f"{time.perf_counter() - t0:.0f} s; baseline RSS {rss_bytes() / 2**30:.2f} GB", flush=True)
    rows, sampler = instrument(args.device)
    if not args.no_trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    cfg = StudyConfig(refit_steps=args.refit_steps, finetune_steps=args.finetune_steps)
    study(run, activations=str(held), out_dir=root / "study", synthetic=False, progress=False, config=cfg,
          device=args.device)
    total, cpu = time.perf_counter() - t0, time.process_time()
    tracemalloc.stop()
    sampler.stop()
    summary = {"seeds": args.seeds, "F": args.latents, "d": args.d, "k": args.k, "rows": args.rows,
               "device": args.device, "refit_steps": args.refit_steps, "finetune_steps": args.finetune_steps,
               "traced": not args.no_trace, "total_seconds": round(total, 1), "process_cpu_seconds": round(cpu, 1),
               "peak_rss_gb_whole_process": round(rss_bytes("VmHWM") / 2**30, 3),
               "steps": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "steps"}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
