"""Cross-seed subspaces at matched sizes and candidate subspaces against a latent-subset null, on a saved study.

    python bench/subspace_nulls.py runs/study_l [runs/study_16 ...] [--draws 10] [--candidates]

Reads each run's seeds (``RUN/seeds/seed<s>``) and ``RUN/arrays.npz`` (labels, firing frequencies) as
``sae-fast study`` saved them, then prints, per set (unstable, non-stable, stable, and unstable subsampled to the
stable set's size), the mean cos² between the top-r subspaces of two seeds' sets against random live latents of the
same size (``matched_cross_seed_subspaces``). With ``--candidates`` it also scores the candidate subspaces of the
non-stable latents (firing correlation on the last 20,000 tokens of ``RUN/activations``) against frequency-matched
random latent subsets (``candidate_subspaces``). The tables of bench/RESULTS.md ("Cross-seed subspaces at matched
sizes") come from this script.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sae_fast.activations import CachedSource
from sae_fast.analysis import candidates as cand
from sae_fast.analysis import subspaces as sub
from sae_fast.analysis._common import STABLE, UNSTABLE
from sae_fast.analysis.firing import firing_indicator, sparse_codes
from sae_fast.checkpoint import load_sae


def _sets(labels: np.ndarray, alive: list[np.ndarray], kind: str) -> list[np.ndarray]:
    keep = {"unstable": lambda lab: lab == UNSTABLE, "stable": lambda lab: lab == STABLE,
            "nonstable": lambda lab: lab != STABLE}[kind]
    return [keep(labels[s]) & alive[s] for s in range(len(labels))]


def matched(run: str, labels: np.ndarray, freq: np.ndarray, decoders: list[np.ndarray], draws: int) -> None:
    alive = [f > 0 for f in freq]
    n_stable = int(min(m.sum() for m in _sets(labels, alive, "stable")))
    rows = [("unstable", None), ("nonstable", None), ("stable", None), ("unstable", n_stable)]
    print(f"{run}: {len(labels)} seeds, F = {labels.shape[1]}, {draws} draws")
    for kind, n in rows:
        start = time.time()
        out = sub.matched_cross_seed_subspaces(decoders, _sets(labels, alive, kind), ranks=(8, 16, 32, 64), n=n,
                                               draws=draws, random_from=alive, seed=0)
        print(f"  {kind} n = {out['n']} (sets of ~{np.mean(out['set_sizes']):.0f}), {time.time() - start:.0f} s")
        for r, e in out["ranks"].items():
            print(f"    r = {r}: set {e['set']['mean_cos2']:.3f} ± {e['set']['mean_cos2_spread']:.3f}, random "
                  f"{e['random']['mean_cos2']:.3f} ± {e['random']['mean_cos2_spread']:.3f}, z {e['z_mean_cos2']:.1f}, "
                  f"Haar {e['haar_mean_cos2']:.3f}")


def candidates(run: str, labels: np.ndarray, freq: np.ndarray, saes: list, decoders: list[np.ndarray],
               tokens: int = 20_000) -> None:
    source = CachedSource(f"{run}/activations")
    x = source.read(max(0, source.num_tokens - tokens), source.num_tokens)
    with torch.no_grad():  # top-k codes kept sparse (CSR), as the study's firing step does
        fires = [firing_indicator(sparse_codes(sae, x.split(4096))) for sae in saes]
    start = time.time()
    out = cand.candidate_subspaces(decoders, _sets(labels, [f > 0 for f in freq], "nonstable"), fires=fires,
                                   freqs=list(freq), seed=0)
    c = out["candidates"]
    sim = np.nanmean([q["mean_best_similarity"] for q in c])
    p_small = np.nanmean([q["p_value"] <= 0.05 for q in c])
    print(f"{run}: {len(c)} candidates (mean size {np.mean([len(q['latents']) for q in c]):.1f}), "
          f"{time.time() - start:.0f} s")
    print(f"  mean best similarity {sim:.3f}; subset null {out['null']['mean_best_similarity']:.3f} "
          f"(q99 {out['null']['mean_best_similarity_q99']:.3f}); Haar {out['null_haar']['mean_best_similarity']:.3f}")
    print(f"  p <= 0.05: {100 * p_small:.1f} %; reproducible: {100 * np.mean([q['reproducible'] for q in c]):.2f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="folders written by sae-fast study")
    parser.add_argument("--draws", type=int, default=10, help="subsampling draws per set")
    parser.add_argument("--candidates", action="store_true", help="also score candidate subspaces")
    args = parser.parse_args()
    for run in args.runs:  # each run's seeds and labels are read once, for both analyses
        arrays = np.load(f"{run}/arrays.npz")
        labels, freq = arrays["labels"], arrays["freq"]
        saes = [load_sae(f"{run}/seeds/seed{s}") for s in range(len(labels))]
        decoders = [sae.W_dec.detach().numpy() for sae in saes]
        matched(run, labels, freq, decoders, args.draws)
        if args.candidates:
            candidates(run, labels, freq, saes, decoders)


if __name__ == "__main__":
    main()
