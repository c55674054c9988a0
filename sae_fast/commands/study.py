"""`sae-fast study`: the seed-dependence study (train on the embedded default, or analyse a folder of seeds)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

NAME = "study"
STEP_NAMES = ("matching", "stability", "firing", "frequency", "masking", "geometry", "subspaces", "classifier",
              "candidates", "pooling", "synthetic")
HELP = ("Seed-dependence study: stability, masking EV, frequency, geometry, candidate subspaces, pooling, "
        "synthetic ground truth; writes report.html/report.md. Without RUN_DIR, trains seeds on the embedded "
        "default (MiniLM layer 3 on Shakespeare) first.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..study import EmbeddedDefault, StudyConfig

    try:
        from ..train import field_docs
    except ImportError:  # pragma: no cover
        field_docs = lambda cls: {}
    # argparse formats help strings with %: a literal percent sign in a field's docstring must be doubled
    docs = {k: v.replace("%", "%%") for k, v in {**field_docs(StudyConfig), **field_docs(EmbeddedDefault)}.items()}
    parser.add_argument("run_dir", nargs="?", default=None,
                        help="folder of trained seeds (sae_fast, sparsify or SAELens layout); omit to train the "
                             "embedded default")
    parser.add_argument("--activations", default=None,
                        help="held-out activations for RUN_DIR: an activation cache folder, .npy or .safetensors "
                             "(default with --model: computed from the model over --texts)")
    parser.add_argument("--refit-activations", default=None,
                        help="training activations for RUN_DIR (same forms) used by the pooled SAEs' encoder refit; "
                             "default: half of the held-out ones (the embedded default uses its training cache)")
    parser.add_argument("--out", default="runs/study", help="output folder (artifacts and report)")
    parser.add_argument("--hookpoint", default=None, help="hookpoint subfolder when RUN_DIR holds several")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic ground-truth experiment")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--only", nargs="+", default=None, metavar="STEP",
                        help="bring only these steps (and the steps they read) up to date; steps: "
                             + ", ".join(STEP_NAMES))
    parser.add_argument("--redo", nargs="+", default=None, metavar="STEP",
                        help="recompute these steps even when their saved results match the settings")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace another study's results in --out (its files are removed first)")
    lm = parser.add_argument_group("the model of RUN_DIR (held-out activations, snippets, spliced LM loss)")
    lm.add_argument("--model", default=None,
                    help="Hugging Face model folder the seeds were trained on ('embedded': MiniLM), run on --device: "
                         "held-out activations when --activations is not given, top-activating snippets, and for a "
                         "causal LM the next-token loss with the (masked) reconstruction spliced in")
    lm.add_argument("--texts", default=None,
                    help="held-out texts for --model, one per line (default: the Shakespeare sentences after the "
                         "embedded default's training sentences)")
    lm.add_argument("--module", default=None,
                    help="hook point of --model: the output of the module with this name (instead of --layer)")
    lm.add_argument("--max-length", type=int, default=128, help="tokens per text for --model")
    group = parser.add_argument_group("analyses (StudyConfig)")
    for f in dataclasses.fields(StudyConfig):
        default = f.default
        flag, text = "--" + f.name.replace("_", "-"), docs.get(f.name, "")
        if f.name == "ranks":
            group.add_argument(flag, type=int, nargs="+", default=list(default), help=text)
        elif isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            ann = str(f.type)
            kind = int if ann.startswith("int") else float if ann.startswith("float") else str
            group.add_argument(flag, type=kind, default=default, help=text)
    emb = parser.add_argument_group("embedded default training (without RUN_DIR)")
    for f in dataclasses.fields(EmbeddedDefault):
        if f.name == "extra":
            continue
        kind = float if f.name == "lr" else str if f.name in ("device", "model_path") else int
        text = docs.get(f.name, "")
        if f.name == "layer":  # shared with --model: the hook point of the given model
            text = f"{text} (default {f.default}); with RUN_DIR --model: the hook point, the output of block L"
        elif f.name == "device":
            text = (f"{text}; also where the study encodes and matches (cuda: a GPU); with RUN_DIR --model: the "
                    "device that runs the model")
        emb.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None if f.name == "layer" else f.default,
                         help=text)


def run(args: argparse.Namespace) -> int:
    """Under torchrun (WORLD_SIZE > 1, RUN_DIR given) every rank computes its share of the stability pairs first
    (:func:`shared_stability`); rank 0 then runs the study, whose stability step finds them done."""
    from .. import distributed as dist_utils  # imports torch (the CLI imports every command to build its parser)

    joined = dist_utils.init_from_environment()
    try:
        if joined and args.run_dir is not None:
            shared_stability(args)
        return _study(args) if dist_utils.is_main_process() else 0
    finally:
        if joined:
            dist_utils.destroy()


def shared_stability(args: argparse.Namespace) -> None:
    """Every rank of the process group: the study's stability run over RUN_DIR's seeds, the pairs split over the
    ranks (:func:`sae_fast.study.steps.stability.study_scores`), saved where the stability step resumes it. Not
    with --overwrite (rank 0 then computes them in the step) nor when --only leaves the stability step out."""
    from ..study import StudyConfig
    from ..study.inputs import load_seeds
    from ..study.steps.stability import study_scores

    if (args.only and "stability" not in args.only) or args.overwrite:
        # --overwrite may remove the folder's results (another study's) after this: rank 0 computes them alone
        return
    cfg = StudyConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(StudyConfig)})
    seeds = load_seeds(args.run_dir, args.hookpoint)
    study_scores(seeds.decoders(), cfg, Path(args.out), args.device, progress=not args.no_progress, distributed=True)


def _study(args: argparse.Namespace) -> int:
    from ..study import EmbeddedDefault, StudyConfig, StudyModel, study

    cfg = StudyConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(StudyConfig)})
    emb = EmbeddedDefault(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EmbeddedDefault)
                             if f.name != "extra" and getattr(args, f.name) is not None})
    given = [flag for flag, value in (("--model", args.model), ("--texts", args.texts), ("--module", args.module))
             if value is not None]
    model = None
    if args.run_dir is None and given:
        raise SystemExit(f"sae-fast study: {', '.join(given)} need RUN_DIR (the embedded default uses MiniLM)")
    if args.run_dir is not None:
        if args.activations is None and args.model is None:
            raise SystemExit("sae-fast study: RUN_DIR needs --activations (held-out activations of the same hook "
                             "point) or --model (the model they come from, with --layer or --module)")
        if args.model is None and (args.texts or args.module):
            raise SystemExit("sae-fast study: --texts and --module need --model")
        if args.model is not None:
            if (args.layer is None) == (args.module is None):
                raise SystemExit("sae-fast study: --model needs exactly one of --layer L or --module NAME (the hook "
                                 "point the seeds were trained on)")
            texts = None
            if args.texts:
                texts = [t for t in Path(args.texts).read_text(encoding="utf-8").splitlines() if t.strip()]
            model = StudyModel(args.model, layer=args.layer, module=args.module, texts=texts,
                               max_length=args.max_length, device=args.device)
    t0 = time.perf_counter()
    res = study(args.run_dir, activations=args.activations, refit_activations=args.refit_activations,
                out_dir=args.out, config=cfg, embedded=emb, model=model,
                synthetic=not args.no_synthetic, hookpoint=args.hookpoint, progress=not args.no_progress,
                device=args.device, only=args.only, redo=args.redo, overwrite=args.overwrite)
    if "stability" in res and "masking" in res:
        st = res["stability"]["anchor"]
        print(f"seeds {res['source']['num_seeds']}, F {res['source']['num_latents']}: stable "
              f"{st['share_stable']:.3f}, unstable {st['share_unstable']:.3f}, EV {res['masking']['ev_full']:.4f}")
    if res.get("missing_steps"):
        print(f"not computed in {args.out}: {', '.join(res['missing_steps'])} (see --only)")
    lm = res.get("lm_loss", {})
    if "masks" in lm:
        print(f"next-token loss: clean {lm['clean']:.4f}, reconstruction spliced in {lm['masks']['none']['loss']:.4f}")
    print(f"report: {args.out}/report.html  ({time.perf_counter() - t0:.0f} s)")
    return 0
