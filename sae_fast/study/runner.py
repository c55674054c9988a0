"""Runs the study's steps: reuses every step whose saved fingerprint matches, computes the rest, then writes
``results.json``, ``arrays.npz``, ``snippets.json`` and the report (see :mod:`sae_fast.study.step`).

Memory: the inputs (O(S·F·d) SAEs, the held-out rows) plus the largest step's own (each step's docstring).
What is written besides the steps' folders is in :mod:`.outputs`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from ..analysis.linalg_device import on_device
from ..errors import UsageError
from ..outdir import claim
from .config import StudyConfig
from .inputs import resolve_inputs
from .outputs import assemble, claim_study, replace_embedded, write_outputs
from .step import Context, Step, begin, fingerprint, finish, is_done
from .steps import default_steps


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
        with on_device(None if ctx.device.type == "cpu" else ctx.device):  # the Gram / SVD work on --device
            ctx.results[step.name] = step.run(ctx)
        finish(folder, fp, step.settings(ctx.cfg), time.perf_counter() - t0)
    for step in plan:  # steps outside --only whose saved result is still valid join the report
        if step.name not in ctx.results and is_done(ctx.out / step.name, ctx.fingerprints[step.name]):
            ctx.results[step.name] = step.load(ctx)


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
        if overwrite and run_dir is None:
            replace_embedded(out, embedded)
        inputs = resolve_inputs(run_dir, activations=activations, refit_activations=refit_activations, out=out,
                                cfg=cfg, embedded=embedded, model=model, hookpoint=hookpoint, progress=progress)
        claim_study(out, inputs.identity(), overwrite)
        ctx = Context(cfg, out, inputs, torch.device(device), progress)
        run_steps(plan, ctx, only, redo)
        results = assemble(plan, ctx)
        write_outputs(plan, ctx, results, report)
    return results
