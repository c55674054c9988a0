"""Subcommands of `sae-fast`, one module each (see sae_fast/cli.py for the contract)."""

import json
from typing import Any


def print_summary(summary: dict[str, Any], as_json: bool, width: int = 12) -> None:
    """Prints a command's result summary: one JSON line, or aligned ``key: value`` lines."""
    if as_json:
        print(json.dumps(summary))
        return
    for key, val in summary.items():
        print(f"{key:>{width}}: {val}")


def set_threads(threads: int) -> None:
    """``threads`` > 0: that many torch and (if installed) faiss CPU threads; else leave the defaults."""
    if threads <= 0:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
