"""`sae-fast browse RUN_OR_STUDY --out DIR`: a static HTML feature browser of one seed's latents."""

from __future__ import annotations

import argparse

from ..browse import write_site
from ..browse.sources import build_table
from ..outdir import claim
from ..validate import positive_int_arg

NAME = "browse"
HELP = ("Static HTML feature browser: an index that sorts and filters every latent of one seed by p_hat, label, "
        "frequency and candidate subspace, and a page per latent (partners, histogram, top activations).")


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `browse` and `export`: which run, which seed, which activations."""
    parser.add_argument("path", help="a run folder (seeds + stability/), a study folder, or a stability folder")
    parser.add_argument("--seed", default=None, help="seed name or index (an anchor of the stability run; default: "
                                                     "the first anchor)")
    parser.add_argument("--run", default=None, help="folder holding the seeds' SAEs (default: PATH)")
    parser.add_argument("--activations", default=None,
                        help=".npy or .safetensors (N, d) held-out activations: adds firing frequency, activation "
                             "histograms and top activations (streamed, memory-mapped)")
    parser.add_argument("--max-rows", type=positive_int_arg, default=None, help="use at most this many activation rows")
    parser.add_argument("--batch-size", type=positive_int_arg, default=4096, help="activation rows encoded at a time")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stats_arguments(parser)
    parser.add_argument("--out", required=True, help="folder to write the browser into")
    parser.add_argument("--overwrite", action="store_true", help="replace a browser already in --out")
    parser.add_argument("--page-size", type=positive_int_arg, default=100, help="rows per page of the index")


def run(args: argparse.Namespace) -> int:
    with claim(args.out, kind="a feature browser", finished=["index.html"], overwrite=args.overwrite,
               remove=["index.html", "latent.html", "app.js", "style.css", "data"]):
        table = build_table(args.path, seed=args.seed, run=args.run, activations=args.activations,
                            batch_size=args.batch_size, max_rows=args.max_rows)
        index = write_site(table, args.out, page_size=args.page_size)
    print(f"browser of seed {table.seed} ({table.num_latents} latents): {index}")
    return 0
