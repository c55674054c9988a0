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
