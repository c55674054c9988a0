"""Step ``browse``: the feature browser (``<out>/browse/index.html``) and exports (``<out>/export/``:
``latents.safetensors`` and Neuronpedia-style ``neuronpedia/batch-<n>.json``) of one seed's latents
(``browse_seed``, default the anchor), built from the study's own artifacts: p̂, labels and partners
(stability), frequency, histograms and top activations (firing codes, not re-encoded), candidate subspaces
(candidates) and top snippets (frequency's ``top_snippets.json``).

Memory: O(S²·F) stability arrays + O(nnz) codes of one seed + O(F·(P + T + bins)) for the table; the site and
the exports are written a chunk / batch at a time. Artifacts: the site files, ``section.json`` (results.json →
browse), ``arrays.npz`` (empty).
"""

from __future__ import annotations

import json
import shutil
from typing import ClassVar, TypedDict

from ...browse import export_neuronpedia, export_safetensors, write_site
from ...browse.study import TOP_SNIPPETS, table_from_study_arrays
from ...errors import UsageError
from ...stability import Stability
from ..step import Block, Context
from .section import Section, SectionStep

EXPORT_DIR = "export"


class BrowseEntry(TypedDict):
    """Where the browser and the exports are (paths relative to the study folder)."""

    seed: str
    num_latents: int
    index: str
    sidecar: str
    neuronpedia: list[str]
    snippet_latents: int


class BrowseEntries(TypedDict):
    browse: BrowseEntry


class BrowseStep(SectionStep):
    name: ClassVar[str] = "browse"
    requires = ("stability", "firing", "frequency", "candidates")
    setting_names = ("browse_seed", "browse_bins", "snippet_top", "anchor")
    entries_type = BrowseEntries

    def compute(self, ctx: Context) -> Section:
        cfg = ctx.cfg
        S = len(ctx.inputs.seeds.names)
        a = cfg.anchor if cfg.browse_seed is None else int(cfg.browse_seed)
        if a >= S:
            raise UsageError(f"browse_seed {a} is not a seed index of this study (it has {S} seeds)")
        stab = ctx.result("stability")
        snippets_file = ctx.out / "frequency" / TOP_SNIPPETS
        snippets = ({int(k): v for k, v in json.loads(snippets_file.read_text()).items()}
                    if a == cfg.anchor and snippets_file.is_file() else {})
        table = table_from_study_arrays(
            Stability.load(ctx.out / "stability"), a, p_hat=stab.p_hat[a], labels=stab.labels[a],
            codes=ctx.result("firing").codes[a], candidate=ctx.result("candidates").array("candidate_id")[a],
            snippets=snippets, bins=cfg.browse_bins, top=cfg.snippet_top)
        write_site(table, ctx.dir(self.name), progress=ctx.progress)
        export = ctx.out / EXPORT_DIR
        if export.exists():
            shutil.rmtree(export)  # batch files of an earlier study must not survive
        export.mkdir(parents=True)
        export_safetensors(table, export / "latents.safetensors")
        batches = export_neuronpedia(table, export / "neuronpedia")
        return Section({"browse": {"seed": table.seed, "num_latents": table.num_latents, "index": "browse/index.html",
                                   "sidecar": f"{EXPORT_DIR}/latents.safetensors",
                                   "neuronpedia": [f"{EXPORT_DIR}/neuronpedia/{p.name}" for p in batches],
                                   "snippet_latents": len(snippets)}})

    def render(self, result: Section, ctx: Context) -> list[Block]:
        e = result.entries["browse"]
        snip = (f"top snippets for {e['snippet_latents']} latents" if e["snippet_latents"]
                else "no snippets (the held-out rows came without tokens, or the seed is not the anchor)")
        files = ", ".join(f"<code>{n}</code>" for n in [e["sidecar"], *e["neuronpedia"][:3]])
        more = f" and {len(e['neuronpedia']) - 3} more batch files" if len(e["neuronpedia"]) > 3 else ""
        return [("h2", "Feature browser and exports"),
                ("p", f'<a href="{e["index"]}">Feature browser</a> of seed {e["seed"]}\'s {e["num_latents"]} '
                      f"latents (p̂, label, partners, frequency, histograms, candidate subspaces; {snip}). "
                      f"Exports: {files}{more}.")]
