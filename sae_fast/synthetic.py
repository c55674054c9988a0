"""A generative model of activations with known ground truth, for testing the seed-dependence analyses.

An activation is a sparse sum of two kinds of ground-truth structure plus noise (method.md §5, our design):

* **isolated features**: ``n_isolated`` unit directions ``f_i`` in R^d. Each fires independently with
  probability ``p_isolated`` and adds ``a * f_i`` with magnitude ``a ~ |N(magnitude_mean, magnitude_std)|``.
  A TopK SAE should recover each one as a single latent, the same in every seed.
* **low-rank groups**: ``n_groups`` orthonormal bases ``U_g`` of shape (d, group_rank). When group g fires
  (probability ``p_group``) it adds ``U_g z`` with ``z = a * u``, u uniform on the unit sphere of
  R^group_rank and a as above. The distribution of ``z`` is rotation-invariant, so no basis of the group is
  preferred: the SAE must spend several latents on the group, and *which* directions it picks depends on
  the seed (non-identifiable latents), while the span of those latents is the group's subspace
  (identifiable subspace). With ``atoms_per_group = m > 0`` the group instead holds m fixed unit atoms
  inside ``U_g`` of which one fires at a time (a partly identifiable variant).
* **noise**: isotropic Gaussian with standard deviation ``noise_std`` per coordinate.

With ``orthogonal=True`` (default) all isolated directions and group bases are mutually orthogonal (one
random orthonormal frame), which needs ``n_isolated + n_groups * group_rank <= d``; otherwise isolated
directions are independent random unit vectors and only each group basis is orthonormal.

Everything is seeded: the model's geometry by ``SyntheticConfig.seed``, each sample by the ``seed`` passed to
:meth:`SyntheticModel.sample`. The evaluation helpers measure, for trained decoders, how well isolated
features are recovered (best cosine per ground-truth direction) and how well each group's subspace is
recovered (principal angles between ``U_g`` and the top singular subspace of the latents assigned to it);
:func:`activation_mcc` correlates latent activations with the isolated features' codes (Hungarian-matched mean
correlation, MCC); :func:`span_vs_groups` checks the groups with no ground-truth assignment of latents.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch

from .analysis._common import unit_rows


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic generative model (all documented in the module docstring)."""

    d: int = 64
    """ambient dimension"""
    n_isolated: int = 24
    """number of isolated (individually identifiable) features"""
    n_groups: int = 3
    """number of low-rank groups"""
    group_rank: int = 8
    """dimension r of each group's subspace"""
    p_isolated: float = 0.05
    """firing probability of each isolated feature per sample"""
    p_group: float = 0.15
    """firing probability of each group per sample"""
    magnitude_mean: float = 1.0
    """mean of the firing magnitude |N(mean, std)|"""
    magnitude_std: float = 0.2
    """standard deviation of the firing magnitude"""
    noise_std: float = 0.01
    """per-coordinate standard deviation of the isotropic Gaussian noise"""
    atoms_per_group: int = 0
    """0: isotropic z inside each group (no preferred basis); m > 0: m fixed atoms per group, one fires at a time"""
    orthogonal: bool = True
    """make all isolated directions and group bases mutually orthogonal"""
    seed: int = 0
    """seed of the model's geometry (directions and bases)"""

    def __post_init__(self) -> None:
        for name in ("d", "group_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_isolated", "n_groups", "atoms_per_group"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.n_isolated + self.n_groups == 0:
            raise ValueError("the model needs at least one isolated feature or one group")
        if self.group_rank > self.d:
            raise ValueError(f"group_rank ({self.group_rank}) must not exceed d ({self.d})")
        for name in ("p_isolated", "p_group"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if self.magnitude_std < 0 or self.noise_std < 0:
            raise ValueError("magnitude_std and noise_std must be >= 0")
        if self.orthogonal and self.n_isolated + self.n_groups * self.group_rank > self.d:
            raise ValueError(
                f"orthogonal=True needs n_isolated + n_groups * group_rank <= d, got "
                f"{self.n_isolated} + {self.n_groups} * {self.group_rank} > {self.d}"
            )

    @property
    def expected_active(self) -> float:
        """Expected number of firing ground-truth components per sample (isolated features + groups)."""
        return self.n_isolated * self.p_isolated + self.n_groups * self.p_group

    @property
    def natural_num_latents(self) -> int:
        """Latents needed for one per isolated feature and 2r per group (±basis): a sensible SAE width."""
        per_group = self.atoms_per_group if self.atoms_per_group > 0 else 2 * self.group_rank
        return self.n_isolated + self.n_groups * per_group


class SyntheticBatch(NamedTuple):
    """One sample of the model: activations and the ground truth that produced them."""

    x: torch.Tensor
    """(n, d) float32 activations"""
    isolated_codes: torch.Tensor
    """(n, n_isolated) float32 magnitudes of the isolated features (0 where silent)"""
    group_codes: torch.Tensor
    """(n, n_groups, group_rank) float32 coordinates z inside each group (0 where silent)"""


class SyntheticModel:
    """The generative model; ``isolated`` is (n_isolated, d), ``group_bases`` is (n_groups, d, group_rank)."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = cfg = config or SyntheticConfig()
        rng = np.random.default_rng(cfg.seed)
        d, r = cfg.d, cfg.group_rank
        if cfg.orthogonal:
            frame = np.linalg.qr(rng.standard_normal((d, d)))[0]
            self.isolated = frame[:, : cfg.n_isolated].T.copy()
            cols = frame[:, cfg.n_isolated : cfg.n_isolated + cfg.n_groups * r]
            self.group_bases = cols.reshape(d, cfg.n_groups, r).transpose(1, 0, 2).copy()
        else:
            iso = rng.standard_normal((cfg.n_isolated, d))
            self.isolated = iso / np.linalg.norm(iso, axis=1, keepdims=True)
            self.group_bases = np.stack(
                [np.linalg.qr(rng.standard_normal((d, r)))[0] for _ in range(cfg.n_groups)]
            ).reshape(cfg.n_groups, d, r)
        self.atoms: np.ndarray | None = None
        if cfg.atoms_per_group > 0:
            coords = rng.standard_normal((cfg.n_groups, cfg.atoms_per_group, r))
            coords /= np.linalg.norm(coords, axis=-1, keepdims=True)
            self.atoms = np.einsum("gdr,gmr->gmd", self.group_bases, coords)  # (G, m, d) unit atoms

    def sample(self, n: int, seed: int = 0) -> SyntheticBatch:
        """Draws ``n`` activations with generator seed ``seed`` (independent of the geometry seed)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        cfg = self.config
        gen = torch.Generator().manual_seed(int(seed))
        d, r, G, M = cfg.d, cfg.group_rank, cfg.n_groups, cfg.n_isolated

        def magnitudes(*shape: int) -> torch.Tensor:
            return (cfg.magnitude_mean + cfg.magnitude_std * torch.randn(*shape, generator=gen)).abs()

        iso_fire = torch.rand(n, M, generator=gen) < cfg.p_isolated
        iso_codes = torch.where(iso_fire, magnitudes(n, M), torch.zeros(()))
        x = iso_codes @ torch.as_tensor(self.isolated, dtype=torch.float32)

        grp_fire = torch.rand(n, G, generator=gen) < cfg.p_group
        bases = torch.as_tensor(self.group_bases, dtype=torch.float32)  # (G, d, r)
        if self.atoms is None:
            u = torch.randn(n, G, r, generator=gen)
            u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            z = u * magnitudes(n, G, 1)
        else:
            m = self.atoms.shape[1]
            pick = torch.randint(m, (n, G), generator=gen)
            coords = torch.as_tensor(
                np.einsum("gdr,gmd->gmr", self.group_bases, self.atoms), dtype=torch.float32
            )  # (G, m, r)
            z = coords[torch.arange(G), pick] * magnitudes(n, G, 1)
        z = z * grp_fire.unsqueeze(-1)
        x = x + torch.einsum("ngr,gdr->nd", z, bases)
        if cfg.noise_std > 0:
            x = x + cfg.noise_std * torch.randn(n, d, generator=gen)
        return SyntheticBatch(x=x.float(), isolated_codes=iso_codes.float(), group_codes=z.float())

    def activations(self, n: int, seed: int = 0) -> torch.Tensor:
        """(n, d) float32 activations only."""
        return self.sample(n, seed).x

    def describe(self) -> dict:
        """The configuration as a plain dict (for reports and saved artifacts)."""
        return asdict(self.config)


# ----------------------------------------------------------------------------------------------------------
# Ground-truth evaluation of trained decoders


class GroundTruthReport(NamedTuple):
    """How one decoder relates to the ground truth of a :class:`SyntheticModel`."""

    isolated_best_cos: np.ndarray
    """(n_isolated,) best signed cosine of each isolated direction with any latent"""
    isolated_best_latent: np.ndarray
    """(n_isolated,) index of that latent"""
    latent_group: np.ndarray
    """(num_latents,) group index of each latent (-1: not assigned to a group)"""
    latent_is_isolated: np.ndarray
    """(num_latents,) bool: the latent is the best match (cos >= iso_threshold) of some isolated feature"""
    group_angles: np.ndarray
    """(n_groups, group_rank) principal angles between U_g and the top-r span of its latents (NaN: < r latents)"""
    group_num_latents: np.ndarray
    """(n_groups,) number of latents assigned to each group"""


def evaluate_decoder(
    model: SyntheticModel,
    decoder: np.ndarray | torch.Tensor,
    *,
    group_energy: float = 0.9,
    iso_threshold: float = 0.9,
) -> GroundTruthReport:
    """Compares a decoder (num_latents, d) with the ground truth.

    A latent belongs to group g when the squared norm of ``U_g^T d_j`` (unit row) is >= ``group_energy``.
    The group's recovered subspace is the span of the top ``group_rank`` right singular vectors of its
    latents' unit decoder rows.
    """
    from .angles import principal_angles

    cfg = model.config
    D = unit_rows(decoder)
    if D.shape[1] != cfg.d:
        raise ValueError(f"decoder must have d={cfg.d} columns, got shape {D.shape}")
    if cfg.n_isolated:
        cos = model.isolated @ D.T  # (M, F)
        best_latent = cos.argmax(axis=1)
        best_cos = cos[np.arange(cfg.n_isolated), best_latent]
    else:
        best_latent = np.zeros(0, dtype=np.int64)
        best_cos = np.zeros(0)
    is_iso = np.zeros(D.shape[0], dtype=bool)
    is_iso[best_latent[best_cos >= iso_threshold]] = True

    group = np.full(D.shape[0], -1, dtype=np.int64)
    r = cfg.group_rank
    angles = np.full((cfg.n_groups, r), np.nan)
    counts = np.zeros(cfg.n_groups, dtype=np.int64)
    if cfg.n_groups:
        energy = (np.einsum("fd,gdr->gfr", D, model.group_bases) ** 2).sum(axis=-1)  # (G, F)
        best_g = energy.argmax(axis=0)
        assigned = energy[best_g, np.arange(D.shape[0])] >= group_energy
        group[assigned] = best_g[assigned]
        for g in range(cfg.n_groups):
            rows = D[group == g]
            counts[g] = len(rows)
            if len(rows) >= r:
                span = np.linalg.svd(rows, full_matrices=False)[2][:r].T  # (d, r)
                angles[g] = principal_angles(model.group_bases[g], span)
    return GroundTruthReport(best_cos, best_latent, group, is_iso, angles, counts)


def haar_mean_cos2(d: int, r: int) -> float:
    """Expected mean cos² of the principal angles between two Haar-random r-dimensional subspaces of R^d."""
    return r / d


def haar_angle_quantile(d: int, r: int, q: float = 0.01, n: int = 2000, seed: int = 0) -> float:
    """The q-quantile of the largest principal angle between Haar-random r-subspaces of R^d (a null level)."""
    from .angles import random_subspace_angles

    theta = random_subspace_angles(d, r, r, n, seed=seed)
    return float(np.quantile(theta.max(axis=1), q))


def mean_pairwise_subspace_cos2(bases: list[np.ndarray]) -> float:
    """Mean cos² of principal angles over all pairs of the given (d, r) bases (NaN when fewer than 2)."""
    from .angles import principal_angles_pairs, subspace_similarity

    if len(bases) < 2:
        return math.nan
    pairs = np.array([(i, j) for i in range(len(bases)) for j in range(i + 1, len(bases))])
    return float(np.nanmean(subspace_similarity(principal_angles_pairs(bases, pairs)).mean_cos2))


def evaluate_seeds(
    model: SyntheticModel,
    decoders: list[np.ndarray | torch.Tensor],
    *,
    theta: float = 0.7,
    group_energy: float = 0.9,
    iso_threshold: float = 0.9,
) -> dict:
    """Feature- and subspace-level recovery over several seeds' decoders (plain numbers, for tests and reports).

    * ``isolated_recovered_share``: share of (seed, isolated feature) with a latent at cosine >= iso_threshold;
    * ``p_hat_isolated`` / ``p_hat_grouped``: mean cross-seed p̂ (argmax rule at theta, every seed as anchor)
      of latents matched to an isolated feature / assigned to a group;
    * ``group_mean_cos2``: mean cos² of the principal angles between each U_g and its latents' top-r span
      (per seed and group), with ``haar_mean_cos2`` = r/d for random subspaces; ``group_max_angle_median``;
    * ``group_cross_seed_mean_cos2``: the same between the recovered spans of different seeds.
    """
    from .angles import subspace_similarity

    cfg = model.config
    D = [unit_rows(dec, f"decoders[{i}]") for i, dec in enumerate(decoders)]
    S = len(D)
    if S < 2:
        raise ValueError("need at least 2 seeds")
    reports = [evaluate_decoder(model, dec, group_energy=group_energy, iso_threshold=iso_threshold) for dec in D]
    p_iso, p_grp = [], []
    for a in range(S):
        best = np.stack([(D[a] @ D[b].T).max(axis=1) for b in range(S) if b != a])
        p = (best >= theta).mean(axis=0)
        p_iso.append(p[reports[a].latent_is_isolated])
        p_grp.append(p[reports[a].latent_group >= 0])
    r = cfg.group_rank
    angles = np.stack([rep.group_angles for rep in reports])  # (S, G, r)
    valid = np.isfinite(angles).all(axis=-1)
    cos2 = subspace_similarity(np.where(np.isfinite(angles), angles, np.pi / 2)).mean_cos2  # (S, G)
    cross = []
    for g in range(cfg.n_groups):
        spans = []
        for a in range(S):
            rows = D[a][reports[a].latent_group == g]
            if len(rows) >= r:
                spans.append(np.linalg.svd(rows, full_matrices=False)[2][:r].T)
        cross.append(mean_pairwise_subspace_cos2(spans))
    iso_cos = np.stack([rep.isolated_best_cos for rep in reports]) if cfg.n_isolated else np.zeros((S, 0))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)
    return {
        "num_seeds": S,
        "isolated_best_cos_mean": float(iso_cos.mean()) if iso_cos.size else float("nan"),
        "isolated_recovered_share": float((iso_cos >= iso_threshold).mean()) if iso_cos.size else float("nan"),
        "p_hat_isolated": float(cat(p_iso).mean()) if cat(p_iso).size else float("nan"),
        "p_hat_grouped": float(cat(p_grp).mean()) if cat(p_grp).size else float("nan"),
        "num_isolated_latents": int(sum(rep.latent_is_isolated.sum() for rep in reports)),
        "num_grouped_latents": int(sum((rep.latent_group >= 0).sum() for rep in reports)),
        "latents_per_group_mean": float(np.mean([rep.group_num_latents for rep in reports])) if cfg.n_groups else 0.0,
        "group_recovered_share": float(valid.mean()) if cfg.n_groups else float("nan"),
        "group_mean_cos2": float(np.mean(cos2)) if cfg.n_groups else float("nan"),
        "group_mean_cos2_per_seed_group": cos2.tolist(),
        "group_max_angle_median": float(np.median(np.where(valid, angles.max(axis=-1), np.pi / 2)))
        if cfg.n_groups else float("nan"),
        "group_cross_seed_mean_cos2": float(np.nanmean(cross)) if cfg.n_groups and np.isfinite(cross).any()
        else float("nan"),
        "haar_mean_cos2": haar_mean_cos2(cfg.d, r),
    }


def activation_mcc(true_codes: np.ndarray | torch.Tensor, latent_acts: np.ndarray | torch.Tensor) -> dict:
    """Mean correlation coefficient (MCC): Pearson correlation of every ground-truth code (n, M) with every latent
    activation (n, F), one-to-one Hungarian matching maximising the total, then the mean over the M features.

    Returns ``{"mcc", "per_feature": (M,) matched correlations, "latent": (M,) matched latent}``; constant
    columns correlate 0.
    """
    from scipy.optimize import linear_sum_assignment

    def z(a: np.ndarray | torch.Tensor) -> np.ndarray:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        a = a.astype(np.float64)
        a = a - a.mean(axis=0)
        sd = np.linalg.norm(a, axis=0)
        return np.where(sd > 0, a / np.maximum(sd, 1e-300), 0.0)

    t, lat = z(true_codes), z(latent_acts)
    if t.ndim != 2 or lat.ndim != 2 or t.shape[0] != lat.shape[0]:
        raise ValueError(f"true_codes (n, M) and latent_acts (n, F) must share n, got {t.shape} and {lat.shape}")
    if t.shape[1] > lat.shape[1]:
        raise ValueError(f"need at least as many latents ({lat.shape[1]}) as features ({t.shape[1]})")
    corr = t.T @ lat  # (M, F)
    rows, cols = linear_sum_assignment(-corr)
    matched = corr[rows, cols]
    return {"mcc": float(matched.mean()) if len(matched) else float("nan"), "per_feature": matched,
            "latent": cols}


def span_vs_groups(model: SyntheticModel, decoder: np.ndarray | torch.Tensor, latents: np.ndarray) -> dict:
    """Group recovery with no ground-truth assignment of latents: the top-(n_groups * group_rank) right singular
    span of the given latents' unit decoder rows (e.g. a seed's non-stable latents) against the truth.

    ``group_energy``: mean over groups of ||V^T U_g||² / r (1: each U_g lies in the span); ``isolated_energy``:
    mean ||V^T f_i||² over isolated directions (low: the span holds the groups, not the isolated features);
    ``haar``: R / d, the value for a random R-dimensional span.
    """
    cfg = model.config
    R = cfg.n_groups * cfg.group_rank
    rows = unit_rows(decoder)[np.asarray(latents)]
    if R == 0 or len(rows) < R:
        return {"group_energy": float("nan"), "isolated_energy": float("nan"), "haar": R / cfg.d, "rank": R}
    V = np.linalg.svd(rows, full_matrices=False)[2][:R].T  # (d, R)
    g = float(np.mean([(np.linalg.norm(V.T @ U) ** 2) / cfg.group_rank for U in model.group_bases]))
    iso = float(np.mean(np.linalg.norm(model.isolated @ V, axis=1) ** 2)) if cfg.n_isolated else float("nan")
    return {"group_energy": g, "isolated_energy": iso, "haar": R / cfg.d, "rank": R}
