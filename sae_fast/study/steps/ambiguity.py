"""Step ``ambiguity``: local basis ambiguity between the anchor seed and the next one: the share of each sampled
latent's decoder direction explained by the best m atoms of the other seed (OMP over its nearest atoms), and the
held-out R² of its activation from m latents of the other seed, each against the same random dictionary with the
other seed's spectrum (for the activations, that dictionary encodes the rows as a tied TopK encoder with the other
seed's mean number of active latents); curves vs m per p̂ bin (:mod:`sae_fast.analysis.ambiguity`).

Memory: O(F·d) decoders and the random dictionary, ``block`` × candidates × d floats in the pursuit, N × candidates
floats per latent for the activations, the null's codes O(N·k). Artifacts: ``section.json`` (results.json →
ambiguity), ``arrays.npz`` (latents, share, null_share, r2, r2_null).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypedDict

import numpy as np

from ...analysis._common import unit_rows
from ...analysis.ambiguity import (
    Curve,
    activation_null,
    activation_pursuit,
    curves_by_bin,
    direction_pursuit,
    nearest_atoms,
    null_dictionary,
)
from ..step import Block, Context
from .section import Section, SectionStep
from .traceable import columns, new_figure, png


@dataclass(frozen=True)
class AmbiguityOptions:
    max_latents: int = 96
    """latents of the anchor seed sampled (live ones, at random)"""
    m_max: int = 8
    """largest number of atoms / latents of the other seed"""
    candidates: int = 32
    """nearest atoms of the other seed the pursuit may choose from"""
    activation_rows: int = 4_000
    """held-out rows for the activation R² (first half fits, second half tests)"""
    edges: tuple[float, ...] = (0.0, 0.05, 0.5, 0.95, 1.0)
    """p̂ bins of the curves"""


class AmbiguityEntry(TypedDict):
    seeds: list[int]
    latents: int
    m: list[int]
    null_k: int
    direction: list[Curve]
    direction_null: list[Curve]
    activation_r2: list[Curve]
    activation_r2_null: list[Curve]


class AmbiguityEntries(TypedDict):
    ambiguity: AmbiguityEntry


class AmbiguityStep(SectionStep):
    name: ClassVar[str] = "ambiguity"
    requires = ("stability", "firing")
    setting_names = ("anchor", "seed")
    entries_type = AmbiguityEntries

    def __init__(self, options: AmbiguityOptions | None = None) -> None:
        self.options = options or AmbiguityOptions()

    def settings(self, cfg: Any) -> dict[str, Any]:
        return {**super().settings(cfg), **asdict(self.options)}

    def compute(self, ctx: Context) -> Section:
        cfg, opt = ctx.cfg, self.options
        p_hat, firing = ctx.result("stability").p_hat, ctx.result("firing")
        a = cfg.anchor
        b = (a + 1) % p_hat.shape[0]
        decoders = ctx.inputs.seeds.decoders()
        live = np.flatnonzero(firing.freq[a] > 0)
        rng = np.random.default_rng([cfg.seed, 0xA4B])
        lat = np.sort(rng.choice(live, min(opt.max_latents, len(live)), replace=False))
        null_dict = null_dictionary(decoders[b], cfg.seed)  # one random dictionary for both nulls
        d = direction_pursuit(decoders[a], decoders[b], latents=lat, m_max=opt.m_max, candidates=opt.candidates,
                              null_dict=null_dict)
        near = nearest_atoms(unit_rows(decoders[a])[lat], unit_rows(decoders[b]), opt.candidates)
        rows = min(opt.activation_rows, firing.codes[a].shape[0])
        codes_a, codes_b = firing.codes[a][:rows], firing.codes[b][:rows]
        r2 = activation_pursuit(codes_a, codes_b, near, latents=lat, m_max=opt.m_max)
        k_b = max(1, round(codes_b.nnz / max(rows, 1)))
        x = np.concatenate([xb.cpu().numpy() for xb in ctx.batches(rows)])
        r2_null = activation_null(codes_a, x, decoders[a], null_dict, latents=lat, k=k_b, m_max=opt.m_max,
                                  candidates=opt.candidates)
        p = p_hat[a][lat]
        entry = {"seeds": [int(a), int(b)], "latents": len(lat), "m": list(range(1, opt.m_max + 1)),
                 "null_k": k_b, "direction": curves_by_bin(d["share"], p, opt.edges),
                 "direction_null": curves_by_bin(d["null_share"], p, opt.edges),
                 "activation_r2": curves_by_bin(r2, p, opt.edges),
                 "activation_r2_null": curves_by_bin(r2_null, p, opt.edges)}
        return Section({"ambiguity": entry}, {"latents": lat, "share": d["share"], "null_share": d["null_share"],
                                              "r2": r2, "r2_null": r2_null})

    def render(self, result: Section, ctx: Context) -> list[Block]:
        e, res = result.entries["ambiguity"], ctx.report_results
        m = e["m"]
        keys = [k for k in ("direction", "direction_null", "activation_r2", "activation_r2_null") if k in e]
        prefixes = [f"ambiguity.{key}.{i}" for key in keys for i in range(len(e[key]))]
        fig, axes = new_figure(11.0, 3.5, ncols=2)
        panels = [("direction", "direction_null", "share of decoder direction explained"),
                  ("activation_r2", "activation_r2_null", "held-out R² of the activation")]
        for ax, (key, null_key, ylabel) in zip(axes, panels):
            for b, bn in zip(e[key], e.get(null_key, [{}] * len(e[key]))):
                if b["mean"] is not None:
                    line = ax.plot(m, b["mean"], "o-", label=f"p̂ in [{b['lo']}, {b['hi']}] (n={b['count']})")[0]
                    if bn.get("mean") is not None:
                        ax.plot(m, bn["mean"], "--", color=line.get_color())
            ax.set_xticks(m)
            ax.set_xlabel("atoms / latents of the other seed (m)")
            ax.set_ylabel(ylabel)
            ax.set_title("solid: trained, dashed: random dictionary")
            ax.legend(fontsize=7)
        ctx.figures["ambiguity"] = png(fig)
        return [("h2", "Local basis ambiguity"),
                ("p", f"{e['latents']} latents of seed {e['seeds'][0]} against seed {e['seeds'][1]}: share of the "
                      "decoder direction explained by the best m atoms (direction), held-out activation R² from m "
                      "latents (activation_r2), each beside the same over a random dictionary with the other seed's "
                      "spectrum (direction_null, activation_r2_null: that dictionary codes the rows as a TopK "
                      f"encoder with k = {e.get('null_k', '–')}, the other seed's mean active latents per row); mean "
                      f"over m = 1 … {m[-1]}. Basis ambiguity shows as unstable latents that one atom cannot explain "
                      "and a few atoms can, above the null."),
                columns(res, prefixes, [("p̂ from", "lo"), ("to", "hi"), ("latents", "count"), ("curve", "mean")]),
                ("fig", ("ambiguity", ctx.figures["ambiguity"]))]
