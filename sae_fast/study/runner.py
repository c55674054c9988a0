"""Runs the study's steps: reuses every step whose saved fingerprint matches, computes the rest, then writes
``results.json``, ``arrays.npz``, ``snippets.json`` and the report (see :mod:`sae_fast.study.step`).

Memory: the inputs (O(S·F·d) SAEs, the held-out rows) plus the largest step's own (each step's docstring).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import atomic_write, atomic_write_json
from ..errors import OutputDirError, UsageError
from ..outdir import claim
from ..provenance import to_jsonable
from . import report as report_mod
from .config import StudyConfig
from .inputs import Inputs, resolve_inputs
from .step import Block, Context, Step, begin, fingerprint, finish, is_done, read_marker
from .steps import default_steps

STUDY_FILE = "study.json"
"""the identity of the study a folder holds (its seeds and held-out rows); another study is refused"""
OUTPUTS = ["results.json", "arrays.npz", "snippets.json", "report.html", "report.md", "figures", STUDY_FILE]


def needed(plan: list[Step], only: list[str] | None) -> list[Step]:
    """The steps to bring up to date: ``only`` and every step they require (transitively), in plan order."""
    names = {s.name for s in plan}
    bad = sorted(set(only or []) - names)
    if bad:
        raise UsageError(f"unknown study step(s) {bad}; the steps are {[s.name for s in plan]}")
    if not only:
        return plan
    want, by_name = set(only), {s.name: s for s in plan}
    for step in reversed(plan):
        if step.name in want:
            want.update(step.requires)
    return [by_name[n] for n in by_name if n in want]


def run_steps(plan: list[Step], ctx: Context, only: list[str] | None = None, redo: list[str] | None = None) -> None:
    """Bring the needed steps up to date (reuse or compute); fills ctx.results / ctx.fingerprints."""
    needed(plan, redo)  # validates the names
    ident = ctx.inputs.identity()
    for step in plan:  # fingerprints of every step, so a later --only run finds what is still valid
        ctx.fingerprints[step.name] = fingerprint(step, ctx.cfg, ident, ctx.fingerprints)
        ctx.loaders[step.name] = lambda step=step: step.load(ctx)
    todo = needed(plan, only)
    bar = tqdm(todo, desc="study", disable=not ctx.progress)
    for step in bar:
        folder, fp = ctx.out / step.name, ctx.fingerprints[step.name]
        bar.set_postfix_str(step.name)
        if step.name not in (redo or []) and is_done(folder, fp):
            ctx.results[step.name] = step.load(ctx)
            continue
        begin(folder)
        t0 = time.perf_counter()
        ctx.results[step.name] = step.run(ctx)
        finish(folder, fp, step.settings(ctx.cfg), time.perf_counter() - t0)
    for step in plan:  # steps outside --only whose saved result is still valid join the report
        if step.name not in ctx.results and is_done(ctx.out / step.name, ctx.fingerprints[step.name]):
            ctx.results[step.name] = step.load(ctx)


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
    results["warnings"] = heldout_warnings(ctx.inputs)
    results["timings_seconds"] = timings
    return to_jsonable(results)


def heldout_warnings(inputs: Inputs) -> list[str]:
    """A warning when the held-out rows are too few for the firing frequencies to resolve a latent firing at the
    mean rate k/F: it should fire about 10 times, so N >= 10·F/k rows."""
    sae = inputs.seeds.saes[0]
    need = int(np.ceil(10 * sae.num_latents / sae.k))
    if inputs.held.num_rows >= need:
        return []
    msg = (f"only {inputs.held.num_rows} held-out rows: a latent firing at the mean rate k/F = {sae.k}/"
           f"{sae.num_latents} fires about {inputs.held.num_rows * sae.k / sae.num_latents:.1f} times on them; "
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
        (opening if getattr(step, "opening", False) else body).extend(step.render(ctx.results[name], ctx))
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


def study(run_dir: str | os.PathLike | None = None, *, activations: Any = None, refit_activations: Any = None,
          out_dir: str | os.PathLike = "runs/study", config: StudyConfig | None = None, embedded: Any = None,
          synthetic: bool = True, hookpoint: str | None = None, model: Any = None, progress: bool = True,
          report: bool = True, device: str | torch.device = "cpu", only: list[str] | None = None,
          redo: list[str] | None = None, overwrite: bool = False, steps: list[Step] | None = None) -> dict:
    """Run the study into ``out_dir``; return the results (results.json).

    Parameters
    ----------
    run_dir : folder of trained seeds; None trains the embedded default (MiniLM layer 3 on Shakespeare) first.
    activations : held-out rows: (N, d) array/tensor, .npy/.safetensors, activation cache folder, or a HeldOut.
    refit_activations : training rows for the pooled SAEs' refit (default: half of the held-out rows).
    config, embedded, model : StudyConfig, EmbeddedDefault, StudyModel (the model the seeds were trained on).
    device : where encoding and matching run ('cuda' for a GPU); the rest runs on the CPU.
    only, redo : bring only these steps (and what they require) up to date / recompute these even if saved.
    overwrite : replace another study's results in ``out_dir`` (removed first) instead of refusing.
    steps : the steps to run (default :func:`sae_fast.study.steps.default_steps`); ``synthetic`` adds its step.
    """
    cfg = config or StudyConfig()
    plan = steps if steps is not None else default_steps(synthetic)
    needed(plan, only), needed(plan, redo)  # bad step names fail before any work
    with claim(out_dir, kind="a study") as out:
        inputs = resolve_inputs(run_dir, activations=activations, refit_activations=refit_activations, out=out,
                                cfg=cfg, embedded=embedded, model=model, hookpoint=hookpoint, progress=progress)
        claim_study(out, inputs.identity(), overwrite)
        ctx = Context(cfg, out, inputs, torch.device(device), progress)
        run_steps(plan, ctx, only, redo)
        results = assemble(plan, ctx)
        write_outputs(plan, ctx, results, report)
    return results
