"""Step ``synthetic``: SAEs trained on the synthetic model (isolated features plus groups in shared subspaces
with no preferred basis), so the study's measures can be checked against ground truth.

Fixed small size (F = the model's natural dictionary size, 8192 rows), about a minute on 2 CPU cores; dense codes
are used here only because F is small. Artifacts: ``section.json`` (results.json → synthetic).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import numpy as np
import torch

from ...analysis import candidates as cand_mod
from ...analysis._common import STABLE
from ..step import Context
from .section import Section, SectionStep


def dense_codes(sae: Any, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, F) latent activations (zero where not selected): only for the synthetic model's small F."""
    out = torch.zeros(x.shape[0], sae.num_latents)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            values, indices = sae.encode(x[start : start + batch_size])
            out[start : start + batch_size].scatter_(1, indices.cpu(), values.float().cpu())
    return out


def synthetic_section(num_seeds: int = 4, steps: int = 800, seed: int = 0, progress: bool = True) -> SyntheticEntry:
    """Trains ``num_seeds`` SAEs on the synthetic model (sae_fast's trainer) and measures ground-truth recovery."""
    from ...activations import TensorSource
    from ...checkpoint import load_sae
    from ...synthetic import SyntheticConfig, SyntheticModel, evaluate_seeds
    from ...train import TrainConfig, train

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
    from ...analysis.stability import anchor_scores
    from ...analysis.stability import split as split_labels
    from ...synthetic import activation_mcc, evaluate_decoder, span_vs_groups

    labels = [split_labels(p) for p in anchor_scores(decoders).p_hat]
    nonstable = [lab != STABLE for lab in labels]
    batch = model.sample(8192, seed=seed + 2)
    codes = [dense_codes(s, batch.x, 4096) for s in saes]  # encoded once: firing is where a code is positive
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


class NonstableSpan(TypedDict):
    group_energy: float | None
    isolated_energy: float | None
    haar: float | None
    rank: int


class SyntheticCandidates(TypedDict):
    """Candidate subspaces on ground truth (the shares null when no non-stable latent is grouped / other)."""

    score_mean: float | None
    mean_best_similarity: float | None
    null_subset_mean_best_similarity: float | None
    null_subset_score_mean: float | None
    null_haar_score_mean: float | None
    nonstable_grouped_in_reproducible: float | None
    nonstable_other_in_reproducible: float | None


class SyntheticEntry(TypedDict):
    """:func:`synthetic_section`: what the report reads (more of :func:`sae_fast.synthetic.evaluate_seeds`
    follows)."""

    isolated_recovered_share: float | None
    isolated_mcc: float | None
    p_hat_isolated: float | None
    p_hat_grouped: float | None
    group_mean_cos2: float | None
    group_cross_seed_mean_cos2: float | None
    group_max_angle_median: float | None
    haar_mean_cos2: float | None
    nonstable_span: NonstableSpan
    candidates: SyntheticCandidates
    config: dict[str, Any]


class SyntheticEntries(TypedDict):
    synthetic: SyntheticEntry


class SyntheticStep(SectionStep):
    name: ClassVar[str] = "synthetic"
    setting_names = ("seed",)
    entries_type = SyntheticEntries

    def compute(self, ctx: Context) -> Section:
        return Section({"synthetic": synthetic_section(progress=ctx.progress, seed=ctx.cfg.seed)})
