"""Shared data of the activation tests."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import torch

TEXTS = ["To be, or not to be, that is the question.", "Now is the winter of our discontent.",
         "All the world's a stage.", "A horse! a horse! my kingdom for a horse!", "Et tu, Brute?",
         "The lady doth protest too much, methinks.", "What's in a name?", "Brevity is the soul of wit."]


def x_rows(n: int = 1000, d: int = 6) -> torch.Tensor:
    """n seeded standard-normal rows of width d."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def take(source, n: int, **kw) -> list[torch.Tensor]:
    """The first n batches of ``source.iter_batches(**kw)``."""
    return list(islice(source.iter_batches(**kw), n))


def strip_hashes(cache: Path) -> None:
    """Make the manifest look like one written before shard sizes, hashes and finiteness were recorded."""
    manifest = json.loads((cache / "manifest.json").read_text())
    for shard in manifest["shards"]:
        del shard["bytes"], shard["sha256"]
    del manifest["finite"]
    (cache / "manifest.json").write_text(json.dumps(manifest))
