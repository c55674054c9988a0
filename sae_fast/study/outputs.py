"""What the study writes besides the steps' folders: results.json, arrays.npz, snippets.json, the report, and
the guard against mixing two studies in one folder (``study.json``)."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.codes import fixed_k
from ..checkpoint import atomic_write, atomic_write_json
from ..errors import OutputDirError
from ..outdir import clear
from ..provenance import to_jsonable
from . import report as report_mod
from .inputs import Inputs
from .step import Block, Context, Step, read_marker
from .steps.stability import PAIRS_DIR

STUDY_FILE = "study.json"
"""the identity of the study a folder holds (its seeds and held-out rows); another study is refused"""
OUTPUTS = ["results.json", "arrays.npz", "snippets.json", "report.html", "report.md", "figures", "export", STUDY_FILE,
           PAIRS_DIR]


def assemble(plan: list[Step], ctx: Context) -> dict[str, Any]:
    """results.json from the steps' results (their entries), with each step's timing and whether it was reused."""
    results: dict[str, Any] = {"config": asdict(ctx.cfg), "source": ctx.inputs.source}
    timings, missing = {}, []
    for step in plan:
        res = ctx.results.get(step.name)
        if res is None:
            missing.append(step.name)
            continue
        results.update(getattr(res, "entries", {}))
        timings[step.name] = (read_marker(ctx.out / step.name) or {}).get("seconds")
    results["missing_steps"] = missing
    results["topk_only"] = {key: entry["topk_only"] for key, entry in results.items()
                            if isinstance(entry, dict) and entry.get("topk_only")}
    results["warnings"] = heldout_warnings(ctx.inputs)
    results["timings_seconds"] = timings
    return to_jsonable(results)


def heldout_warnings(inputs: Inputs) -> list[str]:
    """A warning when the held-out rows are too few for the firing frequencies to resolve a latent firing at the
    mean rate k/F: it should fire about 10 times, so N >= 10·F/k rows. Only for TopK seeds (a fixed k); other
    architectures have no such rate before their codes are seen."""
    sae = inputs.seeds.saes[0]
    k = fixed_k(sae)
    if k is None:
        return []
    need = int(np.ceil(10 * sae.num_latents / k))
    if inputs.held.num_rows >= need:
        return []
    msg = (f"only {inputs.held.num_rows} held-out rows: a latent firing at the mean rate k/F = {k}/"
           f"{sae.num_latents} fires about {inputs.held.num_rows * k / sae.num_latents:.1f} times on them; "
           f"frequencies, masking ΔEV and co-activation need at least {need} rows (10·F/k)")
    warnings.warn(msg, stacklevel=3)
    return [msg]


def write_outputs(plan: list[Step], ctx: Context, results: dict[str, Any], report: bool) -> None:
    """results.json, arrays.npz, snippets.json and (``report``) the report rendered step by step."""
    arrays: dict[str, np.ndarray] = {"seeds": np.asarray(ctx.inputs.seeds.names)}
    for step, keys in (("stability", ("p_hat", "labels", "best_cos")), ("firing", ("freq",)),
                       ("candidates", ("candidate_id", "candidate_score"))):
        if step in ctx.results:
            arrays.update({k: ctx.results[step].arrays[k] for k in keys})
    atomic_write(ctx.out / "arrays.npz", lambda f: np.savez_compressed(f, **arrays))
    snippets = ctx.out / "frequency" / "snippets.json"
    ctx.snippets = json.loads(snippets.read_text()) if "frequency" in ctx.results else None
    atomic_write_json(ctx.out / "snippets.json", ctx.snippets or {})
    atomic_write_json(ctx.out / "results.json", results)
    if not report:
        return
    ctx.report_results, ctx.figures = results, report_mod.make_figures(results, arrays)
    order = [s for s in report_mod.SECTIONS if s in {p.name for p in plan}] + [
        p.name for p in plan if p.name not in report_mod.SECTIONS]
    by_name = {p.name: p for p in plan}
    opening: list[Block] = []
    body: list[Block] = []
    for name in order:
        step = by_name[name]
        if name not in ctx.results:
            body.append(("p", f"<b>Step {name}: not computed in this folder</b> (run the study with --only {name})."))
            continue
        blocks = report_mod.render_section(name, lambda step=step, name=name: step.render(ctx.results[name], ctx))
        (opening if getattr(step, "opening", False) else body).extend(blocks)
    blocks = report_mod.header_blocks(results) + opening + [("p", "<b>Warning</b>: " + w) for w in
                                                            results["warnings"]] + body
    report_mod.write_blocks(ctx.out, blocks + report_mod.timing_blocks(results), ctx.figures)


def claim_study(out: Path, inputs_identity: dict[str, Any], overwrite: bool) -> None:
    """Refuse a folder holding another study's results (other seeds or held-out rows) unless ``overwrite``, which
    removes that study's files first; record this study's identity."""
    saved = out / STUDY_FILE
    other = (json.loads(saved.read_text()) != to_jsonable(inputs_identity) if saved.is_file()
             else (out / "results.json").is_file())
    if other and not overwrite:
        raise OutputDirError(f"--out {out} already holds another study's results (other seeds or held-out "
                             "activations); choose another folder, or pass --overwrite to replace it")
    if other:
        for entry in [*OUTPUTS, *(p.name for p in out.iterdir() if (p / "done.json").is_file())]:
            path = out / entry
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    atomic_write_json(saved, to_jsonable(inputs_identity))


def replace_embedded(out: Path, embedded: Any) -> None:
    """With --overwrite: an embedded default trained with other settings is removed (it would be refused)."""
    from .config import EmbeddedDefault
    from .embedded import EMBEDDED_CONFIG_FILE, check_embedded_reuse

    try:
        check_embedded_reuse(out, embedded or EmbeddedDefault())
    except OutputDirError:
        clear(out, ["activations", "seeds", EMBEDDED_CONFIG_FILE])
