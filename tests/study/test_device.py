"""--device cuda runs encoding and matching on the GPU through the same code: the same results as on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from sae_fast.study import StudyConfig, study

from ._planted import FAST, planted_run


def _run(run, x, out, device):
    return study(run, activations=x, out_dir=out, synthetic=False, progress=False, report=False, device=device,
                 config=StudyConfig(**FAST), only=["stability", "firing", "masking"])


@pytest.mark.gpu
def test_cuda_study_steps_match_the_cpu(tmp_path):
    run, x = planted_run(tmp_path, F=256, d=32, k=8, shared=64, rows=4000)
    cpu = _run(run, x, tmp_path / "cpu", "cpu")
    gpu = _run(run, x, tmp_path / "gpu", "cuda")
    assert gpu["stability"]["anchor"]["num_stable"] == cpu["stability"]["anchor"]["num_stable"] == 64
    with np.load(tmp_path / "cpu" / "arrays.npz") as a, np.load(tmp_path / "gpu" / "arrays.npz") as b:
        np.testing.assert_allclose(a["best_cos"], b["best_cos"], atol=2e-3)
        np.testing.assert_allclose(a["freq"], b["freq"], atol=2e-3)
    assert gpu["masking"]["ev_full"] == pytest.approx(cpu["masking"]["ev_full"], abs=1e-3)


def test_the_device_path_runs_on_the_cpu(tmp_path):
    """The device-generic code with an explicit torch device object (what --device passes) on the CPU."""
    import torch

    run, x = planted_run(tmp_path, F=64, d=64, k=4, shared=16, rows=800)
    res = _run(run, x, tmp_path / "out", torch.device("cpu"))
    assert res["stability"]["anchor"]["num_stable"] == 16
