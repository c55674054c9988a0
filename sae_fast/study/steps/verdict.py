"""Step ``verdict``: the report's opening table, one row per claim of the paper, with this run's effect and its
seed-bootstrap interval, the null it is tested against, the calibrated power where there is one, the paper's
figure and a verdict (:mod:`sae_fast.analysis.verdict`).

Effects: *function*: masking ΔEV of M stable minus 4M unstable latents, per masked seed (``masking_seeds``);
*rare*: per seed, mean firing frequency of unstable over stable latents (null 1); *rank*: per seed, ER/d of the
study's set minus that of the stable set at matched size (null 0); *geometry*: cross-seed classifier balanced
accuracy over (train, test) seed pairs (null 0.5); *subspaces*: cross-seed subspace excess over the
frequency-matched outside null at the smallest rank (null 0; power from the calibration step at grouped share
``power_share``, with the calibration step's seed count and planted sizes); *pooling*: pooled p̂ minus each
single seed's (null 0). Steps missing from the plan give "not measured" rows. A second table lists every
headline number with its seed-bootstrap interval, or the reason it has none (:mod:`.intervals`).

Memory: O(S·F·d) decoders (the rank effect). Artifacts: ``section.json`` (results.json → verdict, verdict_intervals).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypedDict

import numpy as np

from ...analysis._common import STABLE, UNSTABLE
from ...analysis.bootstrap import Interval, pair_bootstrap, seed_bootstrap
from ...analysis.calibration import power_at
from ...analysis.effective_rank import effective_rank
from ...analysis.verdict import ClaimRow, VerdictRow, verdict_table
from ..step import Block, Context
from . import intervals as iv
from .intervals import IntervalRow
from .section import Section, SectionStep
from .subspaces import seed_sets
from .traceable import columns

NAN = float("nan")


@dataclass(frozen=True)
class VerdictOptions:
    min_power: float = 0.8
    """a null result with at least this power contradicts the claim; below it, the claim is underpowered"""
    power_share: float = 0.5
    """planted grouped share whose calibrated power is quoted for the subspace claim"""
    n_boot: int = 2000
    """seed-bootstrap resamples"""
    ev_tolerance: float = 0.01
    """pooling's claim is 'at equal EV': a pooled SAE losing more EV than this (after fine-tuning) contradicts it"""


def _row(key: str, metric: str, ci: Interval | None, null: float, null_name: str, direction: int,
         power: float = NAN) -> ClaimRow:
    if ci is None:
        return ClaimRow(key, metric, NAN, NAN, NAN, null, null_name, direction, power)
    return ClaimRow(key, metric, ci.estimate, ci.lo, ci.hi, null, null_name, direction, power)


def _rare(labels: np.ndarray, freq: np.ndarray, n_boot: int, seed: int) -> ClaimRow:
    ratios = [freq[s][labels[s] == UNSTABLE].mean() / freq[s][labels[s] == STABLE].mean()
              for s in range(len(labels)) if (labels[s] == UNSTABLE).any() and (labels[s] == STABLE).any()
              and freq[s][labels[s] == STABLE].mean() > 0]
    ci = seed_bootstrap(ratios, n_boot=n_boot, seed=seed) if len(ratios) >= 2 else None
    return _row("rare", "freq(unstable) / freq(stable)", ci, 1.0, "equal frequency", -1)


def _rank(decoders: list, labels: np.ndarray, kind: str, n_boot: int, seed: int) -> ClaimRow:
    rng = np.random.default_rng([seed, 0xE4])
    diffs = []
    for s, dec in enumerate(decoders):
        tested = np.flatnonzero(seed_sets(labels, None, kind)[s])
        stable = np.flatnonzero(labels[s] == STABLE)
        n = min(len(tested), len(stable))
        if n >= 2:
            d = dec.shape[1]
            er = [effective_rank(dec[rng.choice(idx, n, replace=False)]) / d for idx in (tested, stable)]
            diffs.append(er[0] - er[1])
    ci = seed_bootstrap(diffs, n_boot=n_boot, seed=seed) if len(diffs) >= 2 else None
    return _row("rank", f"ER/d({kind}) − ER/d(stable), matched n", ci, 0.0, "no difference", -1)


def _geometry(results: dict, n_boot: int, seed: int) -> ClaimRow:
    pairs = results["classifier"].entries.get("classifier", {}).get("pairs", []) if "classifier" in results else []
    pairs = [p for p in pairs if np.isfinite(p.get("balanced_accuracy", NAN))]
    if len({p["train"] for p in pairs} | {p["test"] for p in pairs}) < 2:
        return _row("geometry", "classifier balanced accuracy", None, 0.5, "chance", 1)
    ci = pair_bootstrap(np.array([p["balanced_accuracy"] for p in pairs]),
                        np.array([(p["train"], p["test"]) for p in pairs]), n_boot=n_boot, seed=seed)
    f1 = np.mean([p.get("f1_unstable", NAN) for p in pairs])
    return _row("geometry", f"classifier balanced accuracy (F1 unstable {f1:.2f})", ci, 0.5, "chance", 1)


def _subspaces(results: dict, power: float) -> ClaimRow:
    sub = results["nulls"].entries["nulls"].get("subspace", {}) if "nulls" in results else {}
    if not sub:
        return _row("subspaces", "subspace excess", None, 0.0, "outside null", 1, power)
    r = min(sub, key=lambda k: int(k))
    t = sub[r]
    ci = Interval(t["excess"], t["excess_lo"], t["excess_hi"], 0)
    return _row("subspaces", f"cross-seed cos² excess at r = {r} (R = {t['R']:.2f})", ci, 0.0,
                "frequency-matched outside latents", 1, power)


def _function(results: dict, n_boot: int, seed: int) -> ClaimRow:
    m = results["masking"].entries.get("masking", {}) if "masking" in results else {}
    dev = m.get("delta_ev", {})
    keys = [k for k in dev if k.startswith("unstable_") and k.endswith("n")]
    if "stable_n" not in dev or not keys:
        return _row("function", "ΔEV(M stable) − ΔEV(4M unstable)", None, 0.0, "equal ΔEV", 1)
    metric = f"ΔEV(M stable) − ΔEV({keys[0][9:]} unstable)"
    per_seed = [e.get("stable_vs_unstable", NAN) for e in m.get("per_seed", [])]
    per_seed = [v for v in per_seed if np.isfinite(v)]
    if len(per_seed) >= 2:
        ci = seed_bootstrap(per_seed, n_boot=n_boot, seed=seed)
        return _row("function", f"{metric}, each of {len(per_seed)} seeds masked", ci, 0.0, "equal ΔEV", 1)
    return ClaimRow("function", f"{metric}, anchor seed only (fewer than 2 masked seeds with a value)",
                    dev["stable_n"] - dev[keys[0]], NAN, NAN, 0.0, "equal ΔEV", 1)


def _pooling(results: dict, n_boot: int, seed: int, ev_tolerance: float) -> ClaimRow:
    p = results["pooling"].entries.get("pooling", {}) if "pooling" in results else {}
    if "pooled" not in p or len(p.get("single", [])) < 2:
        return _row("pooling", "pooled p̂ − single-seed p̂", None, 0.0, "no gain", 1)
    gains = [p["pooled"]["p_hat_mean"] - s["p_hat_mean"] for s in p["single"]]
    ev = p["pooled"].get("ev", NAN) - p.get("single_ev_mean", NAN)
    row = _row("pooling", f"pooled p̂ − single-seed p̂ (EV change {ev:+.3f})",
               seed_bootstrap(gains, n_boot=n_boot, seed=seed), 0.0, "no gain", 1)
    if ev < -ev_tolerance:  # the claim is 'at equal EV'
        failed = f"EV not preserved: change {ev:+.3f} < −{ev_tolerance:g}"
        return replace(row, metric=f"{row.metric}; {failed}", failed=failed)
    return row


def _entries(results: dict, step: str, key: str) -> Any:
    return results[step].entries.get(key, {}) if step in results else {}


def _intervals(ctx: Context, results: dict, n_boot: int) -> list[IntervalRow]:
    """Every headline number with its seed-bootstrap interval, or the reason it has none."""
    cfg, labels, freq = ctx.cfg, ctx.result("stability").labels, ctx.result("firing").freq
    pairs = _entries(results, "classifier", "classifier").get("pairs", [])
    return [*iv.label_intervals(labels, freq, n_boot, cfg.seed),
            *iv.rank_intervals(ctx.inputs.seeds.decoders(), labels, cfg.subspace_set, n_boot, cfg.seed),
            *iv.classifier_intervals(pairs, labels.shape[0], n_boot, cfg.seed),
            *iv.subspace_entries(_entries(results, "nulls", "nulls").get("subspace", {})),
            *iv.pooling_intervals(_entries(results, "pooling", "pooling"), n_boot, cfg.seed),
            *iv.masking_entries(_entries(results, "masking", "masking"), n_boot, cfg.seed)]


class VerdictEntries(TypedDict):
    verdict: list[VerdictRow]
    verdict_intervals: list[IntervalRow]


class VerdictStep(SectionStep):
    name: ClassVar[str] = "verdict"
    opening = True
    setting_names = ("subspace_set", "seed")
    entries_type = VerdictEntries

    def __init__(self, options: VerdictOptions | None = None,
                 requires: tuple[str, ...] = ("stability", "firing", "nulls", "calibration")) -> None:
        self.options = options or VerdictOptions()
        self.requires = requires

    def settings(self, cfg: Any) -> dict[str, Any]:
        return {**super().settings(cfg), "min_power": self.options.min_power,
                "power_share": self.options.power_share, "n_boot": self.options.n_boot,
                "ev_tolerance": self.options.ev_tolerance}

    def compute(self, ctx: Context) -> Section:
        cfg, opt = ctx.cfg, self.options
        labels, freq = ctx.result("stability").labels, ctx.result("firing").freq
        results = {n: ctx.result(n) for n in self.requires}
        cal = results["calibration"].entries["calibration"]["rows"] if "calibration" in results else []
        power = power_at(cal, labels.shape[0], "subspace", grouped_share=opt.power_share) if cal else NAN
        rows = [_function(results, opt.n_boot, cfg.seed), _rare(labels, freq, opt.n_boot, cfg.seed),
                _rank(ctx.inputs.seeds.decoders(), labels, cfg.subspace_set, opt.n_boot, cfg.seed),
                _geometry(results, opt.n_boot, cfg.seed), _subspaces(results, power),
                _pooling(results, opt.n_boot, cfg.seed, opt.ev_tolerance)]
        return Section({"verdict": verdict_table(rows, min_power=opt.min_power),
                        "verdict_intervals": _intervals(ctx, results, opt.n_boot)})

    def render(self, result: Section, ctx: Context) -> list[Block]:
        return [("h2", "Verdict per claim of the paper"),
                ("p", "Effect with its 95 % seed-bootstrap interval against the stated null. Supported: the interval "
                      "excludes the null on the predicted side; contradicted: on the other side, or a null result "
                      "with calibrated power >= "
                      f"{self.options.min_power}; underpowered: a null result with less (or unknown) power."),
                columns(ctx.report_results, [f"verdict.{i}" for i in range(len(result.entries["verdict"]))],
                        [("claim", "claim"), ("this run", "effect"), ("95 % CI low", "lo"), ("high", "hi"),
                         ("null", "null"), ("against", "null_name"), ("power", "power"), ("paper", "paper"),
                         ("verdict", "verdict"), ("measured as", "metric")]),
                ("h3", "Headline numbers with seed-bootstrap intervals"),
                ("p", "Per-seed numbers resample seeds; per-pair numbers resample seeds with the pairs they keep; "
                      "a number without an interval says why."),
                columns(ctx.report_results, [f"verdict_intervals.{i}"
                                             for i in range(len(result.entries["verdict_intervals"]))],
                        [("number", "name"), ("estimate", "estimate"), ("95 % CI low", "lo"), ("high", "hi"),
                         ("resampled", "unit"), ("no interval because", "reason")])]
