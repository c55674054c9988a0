"""The seed-dependence study, end to end (method.md; issue 7). (Module named seed_study so that
``sae_fast.study`` stays the function after this module is imported.)

``study(run_dir, activations=..., out_dir=...)`` takes a folder of SAEs trained on the same data with
different seeds (sae_fast, sparsify or SAELens layout) plus held-out activations, and computes and saves:
stability (p̂, split, histograms), masking EV, firing frequency and top-activating snippets, effective rank,
cross-seed subspace angles, the stability classifier, candidate subspaces, pooling, and (optionally) the
synthetic ground-truth experiment; then writes ``report.html`` and ``report.md``. ``run_dir=None`` first
trains the seeds on the embedded default (MiniLM layer 3 on Shakespeare), which needs no network or GPU. A given
run may name its model (:class:`StudyModel`): held-out activations, snippets and, for a causal LM, the next-token
loss with the (masked) reconstruction spliced in (``results["lm_loss"]``, or the reason it is skipped) come from it.

Artifacts in ``out_dir``: ``results.json`` (every number of the report, by section), ``arrays.npz``
(p̂, labels, best cosines, frequencies per seed), ``stability/`` (the :class:`sae_fast.Stability` run),
``snippets.json``, ``figures/*.png``, ``report.html`` (self-contained) and ``report.md``; ``arrays.npz`` also holds
``candidate_id`` (S, F: index into results["candidates"]["candidates"], -1 for none) and ``candidate_score``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .analysis import candidates as cand_mod
from .analysis import classifier as clf_mod
from .analysis import effective_rank as er_mod
from .analysis import frequency as freq_mod
from .analysis import masking as mask_mod
from .analysis import pooling as pool_mod
from .analysis import stability as stab_mod
from .analysis import subspaces as sub_mod
from .analysis._common import STABLE, UNSTABLE
from .study.config import EmbeddedDefault, StudyConfig, StudyModel


@dataclass
class HeldOut:
    """Held-out activations, optionally with the token strings around each row (for snippets)."""

    x: torch.Tensor
    tokens: list[list[str]] | None = None  # tokens of each text
    where: np.ndarray | None = None  # (N, 2) (text index, token position) of each row
    texts: list[str] | None = None  # the texts themselves (the embedded default: for the splice analysis)


def _heldout_from_source(src: Any, max_tokens: int) -> HeldOut:
    """Activations of a ModelSource over its texts (first texts first, kept on the CPU) with the (text, position)
    of every row, up to ``max_tokens`` rows."""
    xs, tokens, where = [], [], []
    size = src.text_batch_size
    # texts in their own order (not sorted by length like the training pass): a cut at max_tokens keeps the
    # first texts, not the shortest of a group
    for batch in (src.texts[b:b + size] for b in range(0, len(src.texts), size)):
        acts = src._activations_of(batch).cpu()
        enc = src.tokenizer(list(batch), padding=True, truncation=True, max_length=src.max_length,
                            return_special_tokens_mask=True)
        for ids, att, special in zip(enc["input_ids"], enc["attention_mask"], enc["special_tokens_mask"]):
            keep = [i for i, (a, s) in enumerate(zip(att, special)) if a and not s]
            toks = src.tokenizer.convert_ids_to_tokens([ids[i] for i in keep])
            where.extend((len(tokens), p) for p in range(len(toks)))
            tokens.append(toks)
        xs.append(acts)
        if sum(x.shape[0] for x in xs) >= max_tokens:
            break
    x = torch.cat(xs)
    if x.shape[0] != len(where):
        raise RuntimeError(f"token bookkeeping mismatch: {x.shape[0]} activations, {len(where)} tokens")
    return HeldOut(x=x[:max_tokens], tokens=tokens, where=np.asarray(where[:max_tokens], dtype=np.int64),
                   texts=list(src.texts))


def _heldout_embedded(texts: list[str], layer: int, max_tokens: int, device: str = "cpu",
                      model_path: str | None = None) -> HeldOut:
    """Activations of MiniLM at ``layer`` for ``texts`` (computed on ``device``, kept on the CPU) with the
    (text, position) of every row."""
    from .activations import EMBEDDED_MODEL_NAME, ModelSource, load_embedded_model

    model, tokenizer = load_embedded_model(device, model_path)
    src = ModelSource(model, tokenizer, texts, layer=layer, model_name=EMBEDDED_MODEL_NAME, device=device)
    return _heldout_from_source(src, max_tokens)


def open_study_model(spec: StudyModel, d_in: int | None = None) -> tuple[Any, str | None]:
    """(ModelSource over the spec's texts, None for a causal LM else why no LM loss is reported); ValueError
    when the hook point's width differs from the SAEs' ``d_in``."""
    from .activations import EMBEDDED_MODEL_NAME, ModelSource, load_embedded_model, shakespeare_sentences
    from .analysis.splice import MINILM_NO_LM_LOSS, load_model

    if (spec.layer is None) == (spec.module is None):
        raise ValueError(f"the model {spec.path} needs exactly one hook point, the one the SAEs were trained on: "
                         f"layer (the output of block L) or module, got layer={spec.layer}, module={spec.module}")
    if spec.path == "embedded":
        (model, tokenizer), why, name = load_embedded_model(spec.device), MINILM_NO_LM_LOSS, EMBEDDED_MODEL_NAME
    else:
        model, tokenizer, why = load_model(spec.path, spec.device)
        name = str(spec.path)
    texts = spec.texts
    if texts is None:
        skip = EmbeddedDefault.train_texts
        texts = shakespeare_sentences()[skip:]
    src = ModelSource(model, tokenizer, texts, layer=spec.layer, module=spec.module, max_length=spec.max_length,
                      device=spec.device, model_name=name)
    if d_in is not None and src.d_in != d_in:
        raise ValueError(f"the model {name} gives d={src.d_in} at hook point {src.hook.name} but the SAEs have "
                         f"d_in={d_in}")
    return src, why


EMBEDDED_CONFIG_FILE = "embedded_default.json"
"""the embedded default's settings, saved next to ``activations/`` and ``seeds/`` to guard their reuse"""


def _embedded_fingerprint(cfg: EmbeddedDefault) -> dict[str, Any]:
    """The settings that determine the cached activations and the trained seeds (not the device or eval texts)."""
    from .activations import EMBEDDED_MODEL_NAME

    return {"model": EMBEDDED_MODEL_NAME, "model_path": cfg.model_path, "layer": cfg.layer,
            "train_texts": cfg.train_texts, "expansion_factor": cfg.expansion_factor, "k": cfg.k,
            "total_tokens": cfg.total_tokens, "train_batch_size": cfg.train_batch_size, "lr": cfg.lr,
            "seeds": list(range(cfg.num_seeds)), "extra": _to_jsonable(cfg.extra)}


def check_embedded_reuse(out_dir: str | os.PathLike, cfg: EmbeddedDefault) -> bool:
    """Guards the reuse of ``out_dir/activations`` and ``out_dir/seeds``: raises ValueError naming the fields
    that differ from the saved :data:`EMBEDDED_CONFIG_FILE` (or when earlier outputs have no such file); else
    writes that file. Returns True when earlier outputs are being reused."""
    out = Path(out_dir)
    want = json.loads(json.dumps(_embedded_fingerprint(cfg)))
    saved_file = out / EMBEDDED_CONFIG_FILE
    existing = [p.name for p in (out / "activations", out / "seeds") if p.exists()]
    if saved_file.is_file():
        saved = json.loads(saved_file.read_text())
        diff = sorted(k for k in set(want) | set(saved) if want.get(k) != saved.get(k))
        if diff:
            detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {want.get(k)!r}" for k in diff)
            raise ValueError(f"{out} holds activations/seeds of a different embedded default ({detail}); use a new "
                             "--out folder (or delete the old one)")
        return True
    if existing:
        raise ValueError(f"{out} holds {' and '.join(existing)} but no {EMBEDDED_CONFIG_FILE} saying how they were "
                         "made, so they cannot be reused safely; use a new --out folder (or delete them)")
    out.mkdir(parents=True, exist_ok=True)
    saved_file.write_text(json.dumps(want, indent=1))
    return False


def train_embedded_default(out_dir: str | os.PathLike, cfg: EmbeddedDefault | None = None,
                           progress: bool = True) -> tuple[Path, HeldOut, dict]:
    """Caches the embedded default's activations, trains ``num_seeds`` SAEs, returns (run dir, held-out, info).

    Earlier outputs in ``out_dir`` are reused only when they were made with the same settings
    (:func:`check_embedded_reuse`)."""
    from .activations import CachedSource, cache_activations, embedded_default, shakespeare_sentences
    from .train import TrainConfig, train

    cfg = cfg or EmbeddedDefault()
    out = Path(out_dir)
    reused = check_embedded_reuse(out, cfg)
    t0 = time.perf_counter()
    cache_dir = out / "activations"
    if not (cache_dir / "manifest.json").exists():
        model_source = embedded_default(layer=cfg.layer, num_texts=cfg.train_texts, device=cfg.device,
                                        model_path=cfg.model_path)
        cache_activations(model_source, cache_dir, progress=progress)
    source = CachedSource(cache_dir)
    t_cache = time.perf_counter() - t0
    run_dir = out / "seeds"
    if not all((run_dir / f"seed{s}" / "sae.safetensors").exists() for s in range(cfg.num_seeds)):
        tc = TrainConfig(seeds=list(range(cfg.num_seeds)), expansion_factor=cfg.expansion_factor, k=cfg.k,
                         total_tokens=cfg.total_tokens, batch_size=cfg.train_batch_size, lr=cfg.lr,
                         output_dir=str(run_dir), progress=progress, device=cfg.device,
                         dead_tokens_threshold=min(200_000, cfg.total_tokens // 4), **cfg.extra)
        if (run_dir / "checkpoints").is_dir():
            tc.resume = True
        train(source, tc)
    t_train = time.perf_counter() - t0 - t_cache
    sentences = shakespeare_sentences(cfg.train_texts + cfg.eval_texts)[cfg.train_texts:]
    held = _heldout_embedded(sentences, cfg.layer, 10**9, cfg.device, cfg.model_path)
    info = {"embedded_default": asdict(cfg), "train_tokens_cached": int(source.num_tokens),
            "reused_earlier_outputs": reused, "seconds_cache": t_cache, "seconds_train": t_train,
            "seconds_heldout": time.perf_counter() - t0 - t_cache - t_train}
    return run_dir, held, info


def find_seeds(run_dir: str | os.PathLike, hookpoint: str | None = None,
               names: list[str] | None = None) -> list[tuple[str, Path]]:
    """(name, folder) of every saved SAE under ``run_dir`` (``<seed>/`` or ``<seed>/<hookpoint>/``; sae_fast,
    sparsify or SAELens files) via :func:`sae_fast.stability.find_saved_saes`, in natural order. ``names``:
    keep only these seed names (``<seed>`` or ``<seed>/<hookpoint>``), in that order; all must exist."""
    from .stability import find_saved_saes

    try:
        found = [(name, f.parent) for name, f in find_saved_saes(run_dir, hookpoint)]
    except ValueError as err:
        if "no saved SAEs" not in str(err):
            raise
        found = []
    if names is None:
        return found
    by_name = {n: f for n, f in found}
    by_name.update({n.split("/")[0]: f for n, f in found if "/" in n})
    missing = [n for n in names if n not in by_name]
    if missing:
        raise FileNotFoundError(f"{run_dir} lacks the saved SAEs of {missing}")
    return [(n, by_name[n]) for n in names]


def _load_saes(run_dir: str | os.PathLike, hookpoint: str | None = None,
               names: list[str] | None = None) -> tuple[list[str], list[Any]]:
    from .checkpoint import load_sae

    found = find_seeds(run_dir, hookpoint, names)
    if len(found) < 2:
        raise ValueError(f"{run_dir} holds {len(found)} saved SAE(s) in its subfolders; the study needs >= 2 seeds")
    saes = [load_sae(folder, dtype=torch.float32, device="cpu").eval() for _, folder in found]
    for p in saes:
        p.requires_grad_(False)
    return [name for name, _ in found], saes


def _as_heldout(activations: Any, max_tokens: int) -> HeldOut:
    if isinstance(activations, HeldOut):
        return HeldOut(activations.x[:max_tokens], activations.tokens,
                       None if activations.where is None else activations.where[:max_tokens], activations.texts)
    if isinstance(activations, (str, os.PathLike)):
        path = Path(activations)
        if path.suffix == ".npy":
            return HeldOut(torch.from_numpy(np.load(path)[:max_tokens]).float())
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            return HeldOut(next(iter(tensors.values()))[:max_tokens].float())
        from .activations import CachedSource

        return HeldOut(CachedSource(path).read(0, max_tokens).float())
    return HeldOut(torch.as_tensor(activations)[:max_tokens].float())


def _fires(sae: Any, x: torch.Tensor, batch_size: int) -> np.ndarray:
    """(N, F) bool: latent selected with a positive value on each row."""
    out = torch.zeros(x.shape[0], sae.num_latents, dtype=torch.bool)
    for start in range(0, x.shape[0], batch_size):
        values, indices = sae.encode(x[start : start + batch_size])
        out[start : start + batch_size].scatter_(1, indices.cpu(), (values > 0).cpu())
    return out.numpy()


def _dense_codes(sae: Any, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, F) latent activations (zero where not selected)."""
    out = torch.zeros(x.shape[0], sae.num_latents)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            values, indices = sae.encode(x[start : start + batch_size])
            out[start : start + batch_size].scatter_(1, indices.cpu(), values.float().cpu())
    return out


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    return obj


def synthetic_section(num_seeds: int = 4, steps: int = 800, seed: int = 0, progress: bool = True) -> dict:
    """Trains ``num_seeds`` SAEs on the synthetic model (sae_fast's trainer) and measures ground-truth recovery."""
    from .activations import TensorSource
    from .checkpoint import load_sae
    from .synthetic import SyntheticConfig, SyntheticModel, evaluate_seeds
    from .train import TrainConfig, train

    model = SyntheticModel(SyntheticConfig(seed=seed))
    cfg = model.config
    x = model.activations(16384, seed=seed + 1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig(seeds=list(range(num_seeds)), num_latents=cfg.natural_num_latents, k=6, batch_size=256,
                         total_tokens=256 * steps, lr=4e-3, output_dir=tmp, progress=progress, device="cpu",
                         dead_tokens_threshold=256 * 200, b_dec_init="mean", checkpoint_interval=0)
        train(TensorSource(x), tc)
        saes = [load_sae(Path(tmp) / f"seed{s}") for s in range(num_seeds)]
    decoders = [s.W_dec.detach().numpy() for s in saes]
    res = evaluate_seeds(model, decoders)
    # candidate subspaces on ground truth: which non-stable latents are basis ambiguity (in a group) vs not
    from .analysis.stability import anchor_scores
    from .analysis.stability import split as split_labels
    from .synthetic import activation_mcc, evaluate_decoder, span_vs_groups

    labels = [split_labels(p) for p in anchor_scores(decoders).p_hat]
    nonstable = [lab != STABLE for lab in labels]
    batch = model.sample(8192, seed=seed + 2)
    codes = [_dense_codes(s, batch.x, 4096) for s in saes]  # encoded once: firing is where a code is positive
    fires = [(c > 0).numpy() for c in codes]
    # per-latent activations against the isolated features' codes (Hungarian-matched mean correlation)
    mcc = [activation_mcc(batch.isolated_codes, c)["mcc"] for c in codes]
    res["isolated_mcc"] = float(np.mean(mcc))
    res["isolated_mcc_per_seed"] = mcc
    # no ground-truth assignment: the top span of each seed's live non-stable latents against the group subspaces
    spans = [span_vs_groups(model, decoders[s], np.flatnonzero(nonstable[s] & fires[s].any(axis=0)))
             for s in range(num_seeds)]
    res["nonstable_span"] = {key: float(np.mean([sp[key] for sp in spans])) for key in
                             ("group_energy", "isolated_energy", "haar")}
    res["nonstable_span"]["rank"] = spans[0]["rank"]
    cands = cand_mod.candidate_subspaces(decoders, nonstable, fires=fires, seed=seed,
                                         freqs=[f.mean(axis=0) for f in fires])
    grouped_in, other_in = [], []
    for s in range(num_seeds):
        grouped = evaluate_decoder(model, decoders[s]).latent_group >= 0
        repro = np.zeros(len(grouped), dtype=bool)
        repro[cands["per_seed"][s]["reproducible_latents"]] = True
        grouped_in += repro[grouped & nonstable[s]].tolist()
        other_in += repro[~grouped & nonstable[s]].tolist()
    res["candidates"] = {"num_candidates": len(cands["candidates"]), "score_mean": cands["score_mean"],
                         "mean_best_similarity": cands["mean_best_similarity"],
                         "null_subset_mean_best_similarity": cands["null"].get("mean_best_similarity"),
                         "null_subset_score_mean": cands["null"].get("score_mean"),
                         "null_haar_score_mean": cands["null_haar"].get("score_mean"),
                         "reproducible_share": cands["reproducible_share"],
                         "nonstable_grouped_in_reproducible": float(np.mean(grouped_in)) if grouped_in else None,
                         "nonstable_other_in_reproducible": float(np.mean(other_in)) if other_in else None,
                         "params": cands["params"]}
    res["config"] = model.describe()
    res["sae"] = {"num_latents": cfg.natural_num_latents, "k": 6, "steps": steps, "batch_size": 256}
    res["seconds"] = time.perf_counter() - t0
    return res


def study(
    run_dir: str | os.PathLike | None = None,
    *,
    activations: Any = None,
    refit_activations: Any = None,
    out_dir: str | os.PathLike = "runs/study",
    config: StudyConfig | None = None,
    embedded: EmbeddedDefault | None = None,
    synthetic: bool = True,
    hookpoint: str | None = None,
    model: StudyModel | None = None,
    progress: bool = True,
    report: bool = True,
) -> dict:
    """Runs every analysis, saves the artifacts and the report in ``out_dir``; returns the results dict.

    ``run_dir``: a folder of trained seeds; ``activations``: held-out activations (an (N, d) array/tensor, a
    .npy/.safetensors file, or an activation cache folder, or a :class:`HeldOut` with tokens for snippets).
    ``refit_activations``: training activations (same forms) for the pooled SAEs' encoder refit; without them the
    refit uses the first half of the held-out rows and EV is measured on the second half.
    With ``run_dir=None`` the seeds are trained first on the embedded default (``embedded`` sets how), and the
    refit reads the cached training activations.
    ``model`` (with ``run_dir``): the model the seeds were trained on; it gives the held-out activations when
    ``activations`` is None, the token strings of the snippets, and the next-token loss with the (masked)
    reconstruction spliced in when it is a causal LM (results["lm_loss"]; else the reason it is skipped).
    ``synthetic``: also run the synthetic ground-truth experiment (about a minute on 2 CPU cores).
    """
    cfg = config or StudyConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    results: dict[str, Any] = {"config": asdict(cfg)}
    steps = ["stability", "frequency", "masking", "geometry", "subspaces", "classifier", "candidates", "pooling"]
    if run_dir is None:
        steps.insert(0, "train")
    if model is not None:
        steps.insert(0, "model")
    if synthetic:
        steps.append("synthetic")
    bar = tqdm(total=len(steps) + 1, desc="study", disable=not progress)

    def step(name: str) -> None:
        bar.set_postfix_str(name)
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = time.perf_counter() - timings[name]
        bar.update(1)

    embedded_layer = None
    seed_names = None
    src, why_no_lm = None, None  # the given model's ModelSource; why it has no LM loss
    snip_held = None  # the model's held-out activations with tokens, for snippets when `activations` have none
    if run_dir is None:
        if activations is not None or model is not None:
            raise ValueError(f"{'activations are' if model is None else 'model is'} for a given run_dir; the embedded "
                             "default computes its own held-out activations (pass run_dir=<out>/seeds to analyse its "
                             "seeds on others)")
        step("train")
        run_dir, held, info = train_embedded_default(out, embedded, progress=progress)
        seed_names = [f"seed{s}" for s in range((embedded or EmbeddedDefault()).num_seeds)]
        if refit_activations is None:
            refit_activations = out / "activations"
        embedded_layer = (embedded or EmbeddedDefault()).layer
        results["source"] = {"kind": "embedded default (MiniLM all-MiniLM-L6-v2 layer 3, Shakespeare)", **info}
        from .analysis.splice import MINILM_NO_LM_LOSS

        why_no_lm = MINILM_NO_LM_LOSS
        done("train")
        names, saes = _load_saes(run_dir, hookpoint, seed_names)
    else:
        if activations is None and model is None:
            raise ValueError("activations (held-out activations of the same hook point) or the model they come from "
                             "are required with run_dir")
        results["source"] = {"kind": "given run", "run_dir": str(run_dir)}
        names, saes = _load_saes(run_dir, hookpoint, seed_names)
        held = None if activations is None else _as_heldout(activations, cfg.max_eval_tokens)
        why_no_lm = "no model given (sae-fast study RUN_DIR --model PATH: a causal LM gives the next-token loss)"
        if model is not None:
            step("model")
            src, why_no_lm = open_study_model(model, saes[0].d_in)
            results["source"].update({"model": src.model_name, "hook": src.hook.name, "max_length": src.max_length})
            if held is None:
                held = _heldout_from_source(src, cfg.max_eval_tokens)
            elif held.tokens is None:  # snippets from the model's own activations of the same hook point
                snip_held = _heldout_from_source(src, cfg.max_eval_tokens)
                results["source"]["snippet_tokens"] = int(snip_held.x.shape[0])
            done("model")
    held = _as_heldout(held, cfg.max_eval_tokens)
    x = mask_mod.check_activations(held.x, "activations").float()
    S = len(saes)
    d = saes[0].d_in
    if x.shape[1] != d:
        raise ValueError(f"activations have d={x.shape[1]} but the SAEs have d_in={d}")
    x_refit = None
    do_refit = cfg.refit_steps > 0 or cfg.finetune_steps > 0
    if refit_activations is not None:  # also read without a refit: the pool's frequency ranking uses them
        n_rows = cfg.max_refit_tokens if do_refit else cfg.max_eval_tokens
        x_refit = mask_mod.check_activations(_as_heldout(refit_activations, n_rows).x, "refit_activations").float()
        if x_refit.shape[1] != d:
            raise ValueError(f"refit_activations have d={x_refit.shape[1]} but the SAEs have d_in={d}")
    if not 0 <= cfg.anchor < S:
        raise ValueError(f"anchor {cfg.anchor} outside the {S} seeds")
    results["source"].update({"seeds": names, "num_seeds": S, "d": d, "num_latents": saes[0].num_latents,
                              "k": saes[0].k, "eval_tokens": int(x.shape[0])})
    decoders = [s.W_dec.detach().float() for s in saes]
    a0 = cfg.anchor

    # 1. stability -------------------------------------------------------------------------------------------
    step("stability")
    from .stability import stability_scores

    stab = stability_scores(decoders, theta=cfg.theta, eps=cfg.eps, absolute=cfg.absolute, anchor="all",
                            progress=False, backend="exact")
    stab.save(out / "stability")
    p_hat = stab.p_hat().numpy().astype(np.float64)  # (S, F)
    best_cos = stab.best_cos.numpy()  # (S, S, F), NaN on the diagonal
    labels = np.stack([stab_mod.split(p, cfg.eps) for p in p_hat])
    others = [b for b in range(S) if b != a0]
    results["stability"] = {
        "anchor": stab_mod.summarize(p_hat[a0], best_cos[a0, others], eps=cfg.eps),
        "all_anchors": stab_mod.summarize(p_hat, eps=cfg.eps),
        "per_anchor_share_stable": [float((lab == STABLE).mean()) for lab in labels],
        "per_anchor_share_unstable": [float((lab == UNSTABLE).mean()) for lab in labels],
        "sweep": stab_mod.theta_eps_sweep(best_cos[a0, others]),
        "p_hat_resolution": 1.0 / (S - 1),
    }
    done("stability")

    # 2. activation frequency and snippets ---------------------------------------------------------------------
    step("frequency")
    freqs = [freq_mod.firing_frequency(s, x, batch_size=cfg.batch_size) for s in saes]
    k_over_f = saes[a0].k / saes[a0].num_latents
    results["frequency"] = {"anchor": freq_mod.compare_groups(freqs[a0], labels[a0]), "k_over_F": k_over_f,
                            "k_over_F_percent": 100 * k_over_f}
    snippets: dict[str, Any] = {}
    sn = held if held.tokens is not None and held.where is not None else snip_held
    if sn is not None and sn.tokens is not None and sn.where is not None:
        x_sn = x if sn is held else mask_mod.check_activations(sn.x, "the model's activations").float()
        chosen = freq_mod.sample_latents(labels[a0], freqs[a0], cfg.snippet_latents, seed=cfg.seed)
        for group, lats in chosen.items():
            rows, vals = freq_mod.top_activations(saes[a0], x_sn, lats, n_top=cfg.snippet_top,
                                                  batch_size=cfg.batch_size)
            snippets[group] = [
                {"latent": int(lat), "p_hat": float(p_hat[a0, lat]), "freq": float(freqs[a0][lat]),
                 "examples": [{"activation": float(v), "text": freq_mod.snippet(sn.tokens[sn.where[r, 0]],
                                                                                 int(sn.where[r, 1]))}
                              for r, v in zip(rows[i], vals[i]) if r >= 0]}
                for i, lat in enumerate(lats)
            ]
    else:
        results["snippets_skipped"] = ("the held-out activations come without their tokens (an array or file); "
                                       "pass the model they come from (--model, with --layer or --module) for "
                                       "top-activating snippets")
    (out / "snippets.json").write_text(json.dumps(snippets, indent=1))
    results["snippets_file"] = "snippets.json" if snippets else None
    done("frequency")

    # 3. masking -------------------------------------------------------------------------------------------------
    step("masking")
    results["masking"] = mask_mod.masking_study(saes[a0], x, labels[a0], freq=freqs[a0], ratio=cfg.ratio,
                                                n_random=cfg.n_random, seed=cfg.seed, batch_size=cfg.batch_size)
    results["masking_sweep"] = mask_mod.delta_ev_sweep(saes[a0], x, labels[a0], seed=cfg.seed,
                                                       batch_size=cfg.batch_size)
    if held.texts and cfg.splice_texts > 0 and embedded_layer is not None:
        from .activations import load_embedded_model
        from .analysis.splice import splice_study

        minilm, tokenizer = load_embedded_model("cpu", (embedded or EmbeddedDefault()).model_path)
        results["splice"] = splice_study(minilm, tokenizer, held.texts[: cfg.splice_texts], embedded_layer,
                                         saes[a0], labels[a0], ratio=cfg.ratio, seed=cfg.seed)
    if src is not None and cfg.splice_texts > 0:
        from .analysis.splice import lm_loss_study, splice_study

        assert model is not None  # src is the given model's
        texts = src.texts[: cfg.splice_texts]
        if src.hook.module is None and not src.hook.layer:  # layer 0: the embeddings are no block's output
            why_no_lm = ("the hook point is the embeddings (layer 0), which cannot be spliced: pass --layer >= 1 "
                         "or --module")
        elif model.path == "embedded":  # no LM head (why_no_lm says so): the embedding distortion instead
            if src.hook.layer:
                results["splice"] = splice_study(src.model, src.tokenizer, texts, src.hook.layer, saes[a0],
                                                 labels[a0], ratio=cfg.ratio, seed=cfg.seed)
            else:
                why_no_lm = ("all-MiniLM-L6-v2 has no LM head, and the embedding distortion is computed for a "
                             "--layer hook point only, not for --module")
        elif why_no_lm is None:
            results["lm_loss"] = {"model": src.model_name, **lm_loss_study(
                src.model, src.tokenizer, texts, saes[a0], labels[a0], layer=src.hook.layer, module=src.hook.module,
                ratio=cfg.ratio, seed=cfg.seed, max_length=src.max_length, progress=progress)}
    if "lm_loss" not in results:
        results["lm_loss"] = {"skipped": why_no_lm if cfg.splice_texts > 0 else "splice_texts = 0"}
    done("masking")

    # 4. effective rank -------------------------------------------------------------------------------------------
    step("geometry")
    alive = [f > 0 for f in freqs]
    sets = {"stable": labels[a0] == STABLE, "unstable": labels[a0] == UNSTABLE,
            "nonstable": labels[a0] != STABLE, "all": np.ones_like(labels[a0], dtype=bool)}
    if cfg.exclude_dead:
        sets = {k: v & alive[a0] for k, v in sets.items()}
    rand_from = alive[a0] if cfg.exclude_dead else None
    results["effective_rank"] = er_mod.matched_effective_rank(decoders[a0], sets, random_from=rand_from, seed=cfg.seed)
    results["effective_rank_pr"] = er_mod.matched_effective_rank(decoders[a0], sets, kind="participation",
                                                                 random_from=rand_from, seed=cfg.seed)
    done("geometry")

    # 5. cross-seed subspaces -----------------------------------------------------------------------------------
    step("subspaces")

    def seed_sets(kind: str) -> list[np.ndarray]:
        out_sets = []
        for s in range(S):
            m = labels[s] == UNSTABLE if kind == "unstable" else labels[s] != STABLE
            if kind == "stable":
                m = labels[s] == STABLE
            out_sets.append(m & alive[s] if cfg.exclude_dead else m)
        return out_sets

    sub_sets = seed_sets(cfg.subspace_set)
    # full sets (with the stable reference and the Haar null); the random-subset null lives in "matched" below,
    # where set and random latents are subsampled to a common n (a random subset as large as the set is the set)
    results["subspaces"] = {"set": cfg.subspace_set, **sub_mod.cross_seed_subspaces(
        decoders, sub_sets, ranks=cfg.ranks, n_random=0, reference_sets={"stable": seed_sets("stable")},
        seed=cfg.seed)}
    F_lat = saes[0].num_latents
    matched = {}
    for kind in ("unstable", "nonstable", "stable"):
        kind_sets = seed_sets(kind)
        if min(int(np.sum(m)) for m in kind_sets) >= 2:
            matched[kind] = sub_mod.matched_cross_seed_subspaces(
                decoders, kind_sets, ranks=cfg.ranks, max_fraction=0.25, draws=cfg.subspace_draws,
                random_from=alive if cfg.exclude_dead else None, seed=cfg.seed)
    results["subspaces"]["matched"] = matched
    results["subspaces"]["large_sets"] = [
        k for k in ("unstable", "nonstable") if float(np.mean([np.sum(m) for m in seed_sets(k)])) > F_lat / 2]
    done("subspaces")

    # 6. classifier ----------------------------------------------------------------------------------------------
    step("classifier")
    results["classifier"] = clf_mod.cross_seed_classifier(decoders, list(labels), seed=cfg.seed)
    done("classifier")

    # 7. candidate subspaces ------------------------------------------------------------------------------------
    step("candidates")
    n_co = min(x.shape[0], 20_000)
    fires = [_fires(s, x[:n_co], cfg.batch_size) for s in saes]
    results["candidates"] = {"set": cfg.subspace_set, **cand_mod.candidate_subspaces(
        decoders, sub_sets, fires=fires, method=cfg.candidate_method, threshold=cfg.candidate_threshold,
        tau=cfg.candidate_tau, freqs=freqs, seed=cfg.seed)}
    # per (seed, latent): the candidate it belongs to (-1: none) and that candidate's reproducibility score
    F_all = saes[0].num_latents
    candidate_id = np.full((S, F_all), -1, dtype=np.int64)
    candidate_score = np.full((S, F_all), np.nan)
    for c, cand in enumerate(results["candidates"]["candidates"]):
        candidate_id[cand["seed"], cand["latents"]] = c
        candidate_score[cand["seed"], cand["latents"]] = cand["score"]
    done("candidates")

    # 8. pooling ---------------------------------------------------------------------------------------------------
    step("pooling")
    n_pool = cfg.pool_seeds if cfg.pool_seeds is not None else max(2, S // 2)
    if S - n_pool >= 1 and n_pool >= 2:
        if x_refit is not None:
            x_train, x_pool_eval = x_refit, x
            note = (f"{'refit on' if do_refit else 'no refit; ranking frequencies from'} {x_refit.shape[0]} training "
                    f"activations; EV on all {x.shape[0]} held-out rows for the pools and the single seeds alike")
        elif do_refit:
            n_train = x.shape[0] // 2
            x_train, x_pool_eval = x[:n_train], x[n_train:]
            note = ("refit and ranking frequencies use the first half of the held-out activations; EV is measured "
                    "on the second half for the pools and the single seeds alike")
        else:
            x_train, x_pool_eval = None, x
            note = (f"no refit; the pool is ranked by recurrence, then component size (no training rows for "
                    f"frequencies); EV on all {x.shape[0]} held-out rows for the pools and the single seeds alike")
        # the ranking's frequencies come from the training rows, never from the rows EV is measured on
        pool_freqs = None if x_train is None else [
            freq_mod.firing_frequency(s, x_train[: cfg.max_eval_tokens], batch_size=cfg.batch_size)
            for s in saes[:n_pool]]
        results["pooling"] = pool_mod.pooling_study(
            saes[:n_pool], decoders[n_pool:], x_pool_eval, x_train=x_train if do_refit else None, theta=cfg.theta,
            eps=cfg.eps, absolute=cfg.absolute, freqs=pool_freqs, refit_steps=cfg.refit_steps,
            finetune_steps=cfg.finetune_steps, refit_batch_size=cfg.refit_batch_size,
            min_recurrence=cfg.pool_min_recurrence, batch_size=cfg.batch_size, save_dir=out / "pooled",
            progress=progress)
        results["pooling"]["note"] = note
    else:
        results["pooling"] = {"skipped": f"needs >= 2 pool seeds and >= 1 held-out seed (have {S} seeds)"}
    done("pooling")

    if synthetic:
        step("synthetic")
        results["synthetic"] = synthetic_section(progress=progress, seed=cfg.seed)
        done("synthetic")

    np.savez_compressed(out / "arrays.npz", p_hat=p_hat, labels=labels, best_cos=best_cos,
                        freq=np.stack(freqs), seeds=np.asarray(names), candidate_id=candidate_id,
                        candidate_score=candidate_score)
    results["timings_seconds"] = {k: round(v, 3) for k, v in timings.items()}
    results["timings_seconds"]["total_before_report"] = round(time.perf_counter() - t_start, 3)
    results = _to_jsonable(results)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if report:
        from .report import write_report

        bar.set_postfix_str("report")
        write_report(out)
    bar.update(1)
    bar.close()
    return results
