"""Calibration of the study's subspace and candidate tests where the answer is known (method.md §11, "power").

:func:`planted_study` draws the decoders of S seeds of a study whose ground truth is known:

* ``n_stable`` **stable** latents: directions shared by every seed (plus a small per-seed jitter); they are the
  subspace test's outside population, and 640 of them keep its default subsample (1/20 of them, see
  :mod:`sae_fast.analysis.nulls`) at 32 (with 160 it is 8, and the test's power at a grouped share of 0.3 falls
  from 7/12 to 4/12 at 4 seeds);
* ``n_unstable`` latents per seed that no seed reproduces one by one, of two kinds:
  - **grouped** (a share ``grouped_share`` of them): random unit vectors inside one of ``n_groups`` shared
    subspaces of rank ``group_rank`` — basis ambiguity, the paper's mechanism (a reproducible subspace);
  - **lottery** (the rest): each seed draws its own latents from a pool of ``pool_factor`` × n_lottery random
    directions — unstable latents with **no** shared subspace (the negative control when grouped_share = 0).

All random directions (stable, lottery) come from one anisotropic Gaussian whose standard deviation along
the i-th axis of a random frame is ∝ i^(−anisotropy/2): real decoder rows are anisotropic, and this is what makes
a Haar null too weak (two random sets of such directions share their top subspace). Firing frequencies are
log-normal, the unstable ones scaled by ``unstable_freq_ratio`` (they fire less, method.md §3.2).

:func:`run_tests` applies the study's own pipeline to one such study: p̂ by the argmax rule (every seed as an
anchor), the endpoint split, then on each seed's non-stable latents (a) the subspace test of
:func:`sae_fast.analysis.nulls.subspace_test` (frequency-matched outside null) and (b) the candidate test of
:func:`sae_fast.analysis.candidates.candidate_subspaces` with BH control over candidates
(:func:`sae_fast.analysis.fdr.candidate_fdr`). :func:`calibrate` sweeps grouped share and seed count and
reports each test's rejection rate (power; at share 0 the false-positive rate) and the AUC of the per-latent
candidate q-values against the ground truth "grouped".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from ..errors import UsageError
from . import candidates as cand
from ._common import STABLE
from .fdr import candidate_fdr
from .nulls import MAX_OUTSIDE_SHARE, subspace_test
from .stability import anchor_scores, split


@dataclass(frozen=True)
class PlantedStudy:
    """Parameters of :func:`planted_study` (module docstring)."""

    num_seeds: int = 6
    d: int = 48
    n_stable: int = 640
    n_unstable: int = 64
    grouped_share: float = 0.5
    n_groups: int = 2
    group_rank: int = 6
    pool_factor: int = 20
    anisotropy: float = 0.5
    jitter: float = 0.05
    unstable_freq_ratio: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_seeds < 2:
            raise UsageError(f"num_seeds must be >= 2, got {self.num_seeds}")
        if not 0.0 <= self.grouped_share <= 1.0:
            raise UsageError(f"grouped_share must be in [0, 1], got {self.grouped_share}")
        if self.group_rank > self.d or self.n_groups < 1 or self.pool_factor < 1:
            raise UsageError("need 1 <= group_rank <= d, n_groups >= 1 and pool_factor >= 1")


class Planted(NamedTuple):
    decoders: list[np.ndarray]
    """S decoders (F, d), unit rows; F = n_stable + n_unstable"""
    freqs: list[np.ndarray]
    """S (F,) firing frequencies"""
    grouped: list[np.ndarray]
    """S (F,) bool: the latent lies in a shared group subspace (ground truth)"""
    stable: np.ndarray
    """(F,) bool: the latent is one of the shared stable directions (same layout in every seed)"""


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def planted_study(cfg: PlantedStudy) -> Planted:
    """Decoders, frequencies and ground truth of a planted study. Memory: S × F × d floats."""
    rng = np.random.default_rng([cfg.seed, 0xCA1])
    frame = np.linalg.qr(rng.standard_normal((cfg.d, cfg.d)))[0]
    scale = np.arange(1, cfg.d + 1) ** (-cfg.anisotropy / 2)
    draw = lambda m: _unit((rng.standard_normal((m, cfg.d)) * scale) @ frame.T)
    stable_dirs = draw(cfg.n_stable)
    groups = [np.linalg.qr(rng.standard_normal((cfg.d, cfg.group_rank)))[0] for _ in range(cfg.n_groups)]
    n_grouped = round(cfg.grouped_share * cfg.n_unstable)
    n_lottery = cfg.n_unstable - n_grouped
    pool = draw(max(1, cfg.pool_factor * n_lottery))
    F = cfg.n_stable + cfg.n_unstable
    decs, freqs, grouped = [], [], []
    for _ in range(cfg.num_seeds):
        st = _unit(stable_dirs + cfg.jitter * rng.standard_normal(stable_dirs.shape) / np.sqrt(cfg.d))
        g_of = np.arange(n_grouped) % cfg.n_groups
        gr = np.stack([groups[g] @ _unit(rng.standard_normal(cfg.group_rank)) for g in g_of]) if n_grouped else \
            np.zeros((0, cfg.d))
        lot = pool[rng.choice(len(pool), n_lottery, replace=False)] if n_lottery else np.zeros((0, cfg.d))
        decs.append(np.concatenate([st, gr, lot]))
        f = np.exp(rng.normal(np.log(0.01), 0.5, F))
        f[cfg.n_stable:] *= cfg.unstable_freq_ratio
        freqs.append(f)
        grouped.append(np.arange(F) >= cfg.n_stable)
        grouped[-1][cfg.n_stable + n_grouped:] = False
    return Planted(decs, freqs, grouped, np.arange(F) < cfg.n_stable)


@dataclass(frozen=True)
class CalibrationSettings:
    """Settings of the tests run by :func:`run_tests`. Planted decoders have no firing data, so candidates are
    clustered by decoder cosine; 0.3 separates latents of a rank-6 group (mean |cos| ~0.33) from anisotropic random
    ones (the study's firing-correlation threshold of 0.1 does not carry over)."""

    theta: float = 0.7
    eps: float = 0.05
    rank: int = 8
    max_n: int = 32
    max_outside_share: float = MAX_OUTSIDE_SHARE
    """the subspace test's largest null sample as a share of the outside set (:mod:`sae_fast.analysis.nulls`)"""
    null_draws: int = 100
    candidate_null_draws: int = 2000
    candidate_pvalues: str = "tail"
    """candidate p-values as in the study's fdr step: "tail" (fitted generalized-Pareto tail) or "empirical"
    (the plain share of draws)"""
    candidate_method: str = "cosine"
    candidate_threshold: float = 0.3
    alpha: float = 0.05
    fdr: float = 0.05
    candidate_beyond_matches: bool = True
    """score candidates on their span beyond latents that recur one by one in the other seed (the study's default,
    :func:`sae_fast.analysis.candidates.candidate_subspaces` ``matched``)"""


def run_tests(planted: Planted, settings: CalibrationSettings = CalibrationSettings(), seed: int = 0) -> dict:
    """The study's subspace and candidate tests on one planted study (module docstring).

    Returns ``{"subspace_p", "subspace_R", "subspace_excess", "candidate_discoveries", "candidate_min_q",
    "latent_q": per seed (F,), "nonstable": per seed (F,) bool, "candidate_auc"}`` (AUC over non-stable
    latents of score 1 − q against "grouped"; NaN when either class is empty).
    """
    decs = planted.decoders
    S = len(decs)
    scores = anchor_scores(decs, theta=settings.theta)
    labels = [split(p, settings.eps) for p in scores.p_hat]
    nonstable = [lab != STABLE for lab in labels]
    sub = subspace_test(decs, nonstable, freqs=planted.freqs, ranks=(settings.rank,), max_n=settings.max_n,
                        max_outside_share=settings.max_outside_share,
                        null_draws=settings.null_draws, seed=seed)
    entry = sub["ranks"].get(settings.rank, {})
    cands = cand.candidate_subspaces(decs, nonstable, method=settings.candidate_method,
                                     threshold=settings.candidate_threshold, freqs=planted.freqs,
                                     min_null_draws=settings.candidate_null_draws,
                                     null_neighbours=settings.candidate_null_draws,
                                     pvalues=settings.candidate_pvalues, seed=seed,
                                     matched=scores.matched() if settings.candidate_beyond_matches else None)
    fdr = candidate_fdr(cands, [len(D) for D in decs], levels=(settings.fdr,))
    y = np.concatenate([planted.grouped[s][nonstable[s]] for s in range(S)])
    score = np.concatenate([1 - fdr["latent_q"][s][nonstable[s]] for s in range(S)])
    auc = float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")
    return {"subspace_p": entry.get("p_value", float("nan")), "subspace_R": entry.get("R", float("nan")),
            "subspace_excess": entry.get("excess", float("nan")),
            "candidate_discoveries": fdr["discoveries"][float(settings.fdr)],
            "candidate_min_q": float(fdr["q"].min()) if len(fdr["q"]) else 1.0,
            "latent_q": fdr["latent_q"], "nonstable": nonstable, "candidate_auc": auc,
            "nonstable_share": float(np.mean([m.mean() for m in nonstable]))}


def calibrate(
    *,
    shares: tuple[float, ...] = (0.0, 0.5),
    seed_counts: tuple[int, ...] = (4,),
    repeats: int = 5,
    base: PlantedStudy = PlantedStudy(),
    settings: CalibrationSettings = CalibrationSettings(),
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Rejection rates of each test over a grid of grouped share × seed count, ``repeats`` studies per cell.

    Parameters
    ----------
    shares: grouped shares to sweep (0 is the negative control: its rejection rate is the false-positive rate).
    seed_counts: numbers of seeds S.
    repeats: planted studies per cell (the rates' resolution is 1 / repeats).
    base: the planted study's other parameters.
    settings: the tests' settings.
    seed: base seed (each study gets its own).
    progress: show a tqdm bar.

    Returns
    -------
    One dict per cell: ``grouped_share``, ``num_seeds``, ``repeats``, ``subspace_rejection``,
    ``candidate_rejection`` (at least one BH discovery at ``settings.fdr``), ``candidate_auc`` (mean over
    repeats with both classes), ``subspace_R``, ``nonstable_share``, ``kind`` ("negative control" or "planted").
    Memory and time: ``repeats`` × cells planted studies, one at a time.
    """
    if repeats < 1:
        raise UsageError(f"repeats must be >= 1, got {repeats}")
    cells = [(sh, S) for S in seed_counts for sh in shares]
    rows = []
    for sh, S in tqdm(cells, desc="calibration", disable=not progress):
        res = [run_tests(planted_study(replace(base, grouped_share=sh, num_seeds=S, seed=seed * 1000 + i)),
                         settings, seed=i) for i in range(repeats)]
        aucs = [r["candidate_auc"] for r in res if np.isfinite(r["candidate_auc"])]
        rows.append({
            "grouped_share": sh, "num_seeds": S, "repeats": repeats,
            "kind": "negative control" if sh == 0 else "planted",
            "subspace_rejection": float(np.mean([r["subspace_p"] <= settings.alpha for r in res])),
            "candidate_rejection": float(np.mean([r["candidate_discoveries"] > 0 for r in res])),
            "candidate_auc": float(np.mean(aucs)) if aucs else float("nan"),
            "subspace_R": float(np.nanmean([r["subspace_R"] for r in res])),
            "nonstable_share": float(np.mean([r["nonstable_share"] for r in res])),
        })
    return rows


def power_at(rows: list[dict], num_seeds: int, test: str = "subspace", grouped_share: float | None = None) -> float:
    """The calibrated power of ``test`` at the seed count nearest ``num_seeds`` (smallest planted share by
    default: the weakest effect swept), for the verdict table."""
    planted = [r for r in rows if r["grouped_share"] > 0
               and (grouped_share is None or np.isclose(r["grouped_share"], grouped_share))]
    if not planted:
        return float("nan")
    S = min({r["num_seeds"] for r in planted}, key=lambda s: (abs(s - num_seeds), -s))
    cell = min((r for r in planted if r["num_seeds"] == S), key=lambda r: r["grouped_share"])
    return float(cell[f"{test}_rejection"])


def describe(base: PlantedStudy, settings: CalibrationSettings) -> dict:
    """The calibration's parameters as plain dicts (for saved artifacts)."""
    return {"planted": asdict(base), "tests": asdict(settings)}
