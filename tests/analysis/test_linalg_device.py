"""The analyses' Gram / eigen work on a torch device gives what numpy gives (the --device path of the study)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_fast.analysis import linalg_device
from sae_fast.analysis._common import right_singular
from sae_fast.analysis.linalg_device import compute_device, gram, on_device
from sae_fast.analysis.subspaces import cross_seed_subspaces, matched_cross_seed_subspaces


def _rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.1, d)  # distinct singular values, so the vectors are defined up to sign
    return rng.standard_normal((n, d)) * scales


def _same_span(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(np.abs(np.sum(a * b, axis=0)), 1.0, atol=1e-8)


@pytest.mark.parametrize("n", [300, 20])  # tall (Gram + eigh) and wide (SVD)
def test_torch_path_matches_numpy(n):
    rows = _rows(n, 40)
    s_np, v_np = right_singular(rows)
    assert compute_device() is None
    with on_device("cpu"):
        assert compute_device() == torch.device("cpu")
        s_t, v_t = right_singular(rows)
        g_t = gram(rows)
    assert compute_device() is None
    np.testing.assert_allclose(s_t, s_np, rtol=1e-10)
    _same_span(v_t[:, :10], v_np[:, :10])
    np.testing.assert_allclose(g_t, rows.T @ rows, rtol=1e-12, atol=1e-9)


def test_gram_is_summed_in_chunks(monkeypatch):
    """More rows than a chunk: the device never holds the whole (n, d) set, and the sum is still exact."""
    monkeypatch.setattr(linalg_device, "CHUNK_ROWS", 7)
    seen = []
    real = torch.Tensor.addmm_

    def spy(self, a, b, *args, **kwargs):
        seen.append(b.shape[0])
        return real(self, a, b, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "addmm_", spy)
    rows = _rows(50, 6)
    with on_device("cpu"):
        g = gram(rows)
    assert max(seen) == 7 and sum(seen) == 50
    np.testing.assert_allclose(g, rows.T @ rows, rtol=1e-12, atol=1e-10)


def _planted_decoders(S: int = 3, F: int = 200, d: int = 24, seed: int = 0) -> tuple[list[np.ndarray], list]:
    """S seeds whose first 60 latents lie in one shared 4-dim subspace; the rest are random."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, 4)))[0]
    decs = []
    for _ in range(S):
        dec = rng.standard_normal((F, d))
        dec[:60] = rng.standard_normal((60, 4)) @ basis.T + 0.05 * rng.standard_normal((60, d))
        decs.append(dec)
    return decs, [np.arange(60)] * S


def test_subspace_analyses_agree_across_paths():
    decs, sets = _planted_decoders()
    cpu = cross_seed_subspaces(decs, sets, ranks=(4, 8), n_random=2, seed=1)
    matched = matched_cross_seed_subspaces(decs, sets, ranks=(4,), draws=2, seed=1)
    with on_device(torch.device("cpu")):
        dev = cross_seed_subspaces(decs, sets, ranks=(4, 8), n_random=2, seed=1)
        dev_matched = matched_cross_seed_subspaces(decs, sets, ranks=(4,), draws=2, seed=1)
    assert cpu["ranks"][4]["set"]["mean_cos2"] > 0.95  # the planted shared subspace is found
    for r in (4, 8):
        for key in ("set", "random_subset"):
            for stat in ("mean_cos2", "energy"):
                assert dev["ranks"][r][key][stat] == pytest.approx(cpu["ranks"][r][key][stat], abs=1e-9)
    assert dev_matched["ranks"][4]["z_mean_cos2"] == pytest.approx(matched["ranks"][4]["z_mean_cos2"], rel=1e-6)


@pytest.mark.gpu
def test_cuda_matches_numpy():
    rows = _rows(5000, 64)
    s_np, v_np = right_singular(rows)
    with on_device("cuda"):
        s_t, v_t = right_singular(rows)
    np.testing.assert_allclose(s_t, s_np, rtol=1e-9)
    _same_span(v_t[:, :16], v_np[:, :16])
