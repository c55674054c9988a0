"""Wall time of the README job's training phase (`sae_fast.train` as `train_embedded_default` runs it: batch 1024,
lr 2e-3, AuxK after min(200k, tokens / 4) tokens) for candidate (seeds, F, k) settings, on a cached activation set.

    python bench/cpu_train_time.py CACHE_DIR --runs 5x768x16,8x6144x24,8x8192x32 --tokens 60000 [--threads 2]

CACHE_DIR: an activation cache (`sae_fast.activations.cache_activations`, e.g. the `activations/` folder of a
`sae-fast study --out DIR` run, MiniLM layer 3 over Shakespeare). Prints one line per run and a markdown table with
the measured seconds and the seconds per seed-step. Run the same command with PYTHONPATH pointing at another
checkout to time that code on the same data.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from sae_fast.activations import CachedSource
from sae_fast.train import TrainConfig, train

BATCH = 1024


def _run(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"a run is SEEDSxFxK with positive ints, got {text!r}")
    seeds, f, k = (int(p) for p in parts)
    return seeds, f, k


def time_training(cache: str, seeds: int, num_latents: int, k: int, tokens: int) -> float:
    """Seconds to train `seeds` SAEs of (d, num_latents, k) on `tokens` tokens each (fresh output folder)."""
    source = CachedSource(cache)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(seeds=list(range(seeds)), num_latents=num_latents, k=k, total_tokens=tokens,
                          batch_size=BATCH, lr=2e-3, output_dir=out, progress=False, device="cpu",
                          dead_tokens_threshold=min(200_000, tokens // 4))
        start = time.perf_counter()
        train(source, cfg)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", help="activation cache folder")
    parser.add_argument("--runs", type=lambda s: [_run(p) for p in s.split(",")], default=[(5, 768, 16)])
    parser.add_argument("--tokens", type=int, default=60_000, help="training tokens per seed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.tokens < BATCH or args.threads < 1:
        parser.error(f"--tokens must be >= {BATCH} and --threads >= 1")
    torch.set_num_threads(args.threads)
    rows = []
    for seeds, f, k in args.runs:
        seconds = time_training(args.cache, seeds, f, k, args.tokens)
        steps = -(-args.tokens // BATCH)
        per_step_ms = seconds / (seeds * steps) * 1e3
        rows.append(f"| {seeds} | {f} | {k} | {args.tokens:,} | {seconds:.1f} | {per_step_ms:.0f} |")
        print(rows[-1], flush=True)
    print("\n| seeds | F | k | tokens per seed | training seconds | ms per seed-step |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
