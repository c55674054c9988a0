"""`sae-fast export RUN_OR_STUDY --out DIR`: per-latent results as a safetensors sidecar and Neuronpedia JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..browse import export_neuronpedia, export_safetensors
from ..browse.sources import build_table
from ..outdir import claim
from .browse import add_stats_arguments

NAME = "export"
HELP = ("Export one seed's per-latent results (p_hat, label, best partners, candidate, frequency, histograms) as "
        "latents.safetensors and Neuronpedia-style batch-<n>.json files.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stats_arguments(parser)
    parser.add_argument("--out", required=True, help="folder to write the exports into")
    parser.add_argument("--format", choices=["all", "safetensors", "neuronpedia"], default="all")
    parser.add_argument("--model-id", default="unknown", help="model id written into the Neuronpedia JSON")
    parser.add_argument("--layer", default="unknown", help="layer / SAE id written into the Neuronpedia JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace exports already in --out")


def run(args: argparse.Namespace) -> int:
    with claim(args.out, kind="exports", finished=["latents.safetensors", "neuronpedia"], overwrite=args.overwrite):
        table = build_table(args.path, seed=args.seed, run=args.run, activations=args.activations,
                            batch_size=args.batch_size, max_rows=args.max_rows)
        out = Path(args.out)
        if args.format in ("all", "safetensors"):
            print(f"sidecar: {export_safetensors(table, out / 'latents.safetensors')}")
        if args.format in ("all", "neuronpedia"):
            paths = export_neuronpedia(table, out / "neuronpedia", model_id=args.model_id, layer=args.layer)
            print(f"neuronpedia: {len(paths)} batch files in {out / 'neuronpedia'}")
    return 0
