"""`sae-fast stability --over-training RUN` (alias `sae-fast over-training RUN`): p̂ and labels at every kept training
checkpoint of a multi-seed run, label transitions, and each latent's cosine to its initialisation against its final p̂
(sae_fast.analysis.over_training). :func:`report` is the one implementation both commands call.

The run must be trained with ``history='log'`` (snapshots in ``RUN/seed<s>/history/step<N>/``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "over-training"
HELP = ("Stability over training: p̂ and labels at each kept checkpoint of RUN (trained with history='log'); "
        "the same as `sae-fast stability --over-training RUN`.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training output folder holding seed<s>/history/step<N>/")
    parser.add_argument("--theta", type=float, default=0.7, help="match threshold of p̂ (default 0.7)")
    parser.add_argument("--eps", type=float, default=0.05, help="endpoint split of the labels (default 0.05)")
    parser.add_argument("--moved-below", type=float, default=0.9,
                        help="a latent has moved when its cosine to its initialisation is below this (default 0.9)")
    parser.add_argument("--out", default=None, help="write over_training.json and over_training.npz here")


def run(args: argparse.Namespace) -> int:
    return report(args.run, theta=args.theta, eps=args.eps, moved_below=args.moved_below, out=args.out)


def report(run_dir: str, *, theta: float, eps: float, moved_below: float, out: str | None) -> int:
    """Print the over-training summary of ``run_dir`` and (``out``) write over_training.json / .npz there."""
    import numpy as np

    from ..analysis.over_training import LABEL_NAMES, find_history, load_history, over_training
    from ..checkpoint import atomic_write, atomic_write_json
    from ..errors import UsageError
    from ..provenance import to_jsonable

    if not 0.0 < theta <= 1.0:
        raise UsageError(f"--theta must be in (0, 1], got {theta}")
    if not 0.0 <= eps < 0.5:
        raise UsageError(f"--eps must be in [0, 0.5), got {eps}")
    history = find_history(run_dir)
    res = over_training(load_history(history), theta=theta, eps=eps, moved_below=moved_below)
    print(f"{run_dir}: {len(history[res['steps'][0]])} seeds, steps {res['steps']}")
    print("step      p̂ mean  stable  neither  unstable")
    for row in res["per_step"]:
        print(f"{row['step']:<9} {row['p_hat_mean']:.3f}   {row['share_stable']:.3f}   {row['share_neither']:.3f}"
              f"    {row['share_unstable']:.3f}")
    for t in res["transitions"]:
        moves = ", ".join(f"{LABEL_NAMES[i]}→{LABEL_NAMES[j]} {c}" for i, row in enumerate(t["counts"])
                          for j, c in enumerate(row) if i != j and c)
        print(f"{t['from']} → {t['to']}: {moves or 'no label changes'}")
    fin = res["final"]
    print(f"cosine to initialisation vs final p̂: Spearman {fin['spearman_cos_init_vs_p_hat']:.3f}; "
          + ", ".join(f"{k} {v:.3f}" for k, v in fin["quadrants"].items()))
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {k: res.pop(k) for k in ("cos_to_init", "p_hat", "labels")}
        atomic_write(folder / "over_training.npz", lambda f: np.savez(f, **arrays))
        atomic_write_json(folder / "over_training.json", to_jsonable(res))
    return 0
