"""The whole study on SAELens ``standard`` (ReLU) and ``jumprelu`` seeds: every step reads the seeds' own sparse
codes, and the parts that assume TopK (the k/F baseline, pooling) say so in results.json and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sae_fast.formats import load
from sae_fast.study import StudyConfig, study

from ._planted import FAST, planted_threshold_run


def _reference_codes(folder, x: torch.Tensor) -> np.ndarray:
    """The dense (N, F) code of a ThresholdSAE, computed from its saved weights in numpy."""
    sae = load(folder)
    w_enc, b_enc = sae.W_enc.detach().double().numpy(), sae.b_enc.detach().double().numpy()
    theta = sae.threshold.detach().double().numpy()
    pre = (x.double().numpy() - sae.b_pre.double().numpy()) @ w_enc.T + b_enc
    return np.where(pre > theta, np.maximum(pre, 0.0), 0.0)


@pytest.fixture(scope="module", params=["jumprelu", "relu"])
def finished(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    run, x = planted_threshold_run(root, request.param)
    out = root / "out"
    study(run, activations=x, out_dir=out, synthetic=False, progress=False, config=StudyConfig(**FAST))
    return request.param, run, x, out


def test_study_runs_end_to_end_and_names_the_topk_only_parts(finished):
    arch, _, _, out = finished
    results = json.loads((out / "results.json").read_text())
    assert results["missing_steps"] == []
    assert results["source"]["architecture"] == arch and results["source"]["k"] is None
    assert set(results["topk_only"]) == {"frequency", "pooling"}
    assert results["frequency"]["k_over_F"] is None and arch in results["frequency"]["topk_only"]
    assert results["pooling"]["skipped"] == results["topk_only"]["pooling"]
    # the analyses that read codes ran on them: stable latents were found, masking measured a real EV
    assert results["stability"]["anchor"]["num_stable"] == 12
    assert 0.0 < results["masking"]["ev_full"] <= 1.0
    report = (out / "report.md").read_text()
    assert "Parts that assume a TopK SAE" in report and "k/F firing baseline" in report
    assert f"{arch} SAEs" in report


def test_firing_frequency_and_masking_read_the_sparse_codes(finished):
    _, run, x, out = finished
    freq = np.load(out / "arrays.npz")["freq"]
    results = json.loads((out / "results.json").read_text())
    fvu_ref = None
    for s in range(3):
        codes = _reference_codes(run / f"seed{s}", x)
        np.testing.assert_allclose(freq[s], (codes > 0).mean(axis=0), atol=1e-12)
        if s == 0:
            sae = load(run / "seed0")
            recon = codes @ sae.W_dec.detach().double().numpy() + sae.b_dec.detach().double().numpy()
            xd = x.double().numpy()
            fvu_ref = ((recon - xd) ** 2).sum() / ((xd - xd.mean(axis=0)) ** 2).sum()
    # latents fire at different rates (JumpReLU thresholds differ), and the anchor's mean is reported as such
    assert freq[0].std() > 0.01
    assert results["frequency"]["anchor"]["all"]["mean"] == pytest.approx(freq[0].mean())
    assert results["masking"]["fvu_full"] == pytest.approx(fvu_ref, rel=1e-4)
