"""--device cuda runs encoding, matching and the Gram / SVD work on the GPU through the same code: the same results
as on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from sae_fast.study import StudyConfig, study

from ._planted import FAST, planted_run


def _run(run, x, out, device, extra=()):
    return study(run, activations=x, out_dir=out, synthetic=False, progress=False, report=False, device=device,
                 config=StudyConfig(**FAST), only=["stability", "firing", "masking", *extra])


@pytest.mark.gpu
def test_cuda_study_steps_match_the_cpu(tmp_path):
    run, x = planted_run(tmp_path, F=256, d=32, k=8, shared=64, rows=4000)
    cpu = _run(run, x, tmp_path / "cpu", "cpu", ("subspaces", "candidates"))
    gpu = _run(run, x, tmp_path / "gpu", "cuda", ("subspaces", "candidates"))
    assert gpu["stability"]["anchor"]["num_stable"] == cpu["stability"]["anchor"]["num_stable"] == 64
    with np.load(tmp_path / "cpu" / "arrays.npz") as a, np.load(tmp_path / "gpu" / "arrays.npz") as b:
        np.testing.assert_allclose(a["best_cos"], b["best_cos"], atol=2e-3)
        np.testing.assert_allclose(a["freq"], b["freq"], atol=2e-3)
    assert gpu["masking"]["ev_full"] == pytest.approx(cpu["masking"]["ev_full"], abs=1e-3)
    for r, entry in cpu["subspaces"]["ranks"].items():
        assert gpu["subspaces"]["ranks"][r]["set"]["mean_cos2"] == pytest.approx(entry["set"]["mean_cos2"], abs=1e-3)
    assert len(gpu["candidates"]["candidates"]) == len(cpu["candidates"]["candidates"])


def test_the_device_path_runs_on_the_cpu(tmp_path):
    """The device-generic code with an explicit torch device object (what --device passes) on the CPU."""
    import torch

    run, x = planted_run(tmp_path, F=64, d=64, k=4, shared=16, rows=800)
    res = _run(run, x, tmp_path / "out", torch.device("cpu"))
    assert res["stability"]["anchor"]["num_stable"] == 16


def test_the_torch_linear_algebra_path_gives_the_cpu_results(tmp_path, monkeypatch):
    """The Gram / SVD work of the subspace and candidate steps through the torch path (what --device cuda takes),
    here on the CPU: the same results as numpy."""
    from sae_fast.analysis import linalg_device
    from sae_fast.study import runner

    run, x = planted_run(tmp_path, F=128, d=32, k=4, shared=32, rows=1500)
    extra = ("subspaces", "candidates")
    plain = _run(run, x, tmp_path / "numpy", "cpu", extra)
    used = []

    def torch_cpu(_device):
        used.append(True)
        return linalg_device.on_device("cpu")

    monkeypatch.setattr(runner, "on_device", torch_cpu)
    spy = linalg_device.right_singular_on
    calls = []
    monkeypatch.setattr("sae_fast.analysis._common.right_singular_on", lambda *a: calls.append(1) or spy(*a))
    via_torch = _run(run, x, tmp_path / "torch", "cpu", extra)
    assert used and calls, "the steps did not run through the torch path"
    for r, entry in plain["subspaces"]["ranks"].items():
        assert via_torch["subspaces"]["ranks"][r]["set"]["mean_cos2"] == pytest.approx(entry["set"]["mean_cos2"],
                                                                                      abs=1e-9)
    assert [c["size"] for c in via_torch["candidates"]["candidates"]] == [
        c["size"] for c in plain["candidates"]["candidates"]]
