"""The study's stability step computes p̂ with ``stability_scores`` (the ``sae-fast stability`` path); the matching
step's top-1 neighbour graph, the route the study took before, gives the same numbers, and a rerun step resumes
the saved stability run instead of computing the pairs again."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_fast.stability import Stability
from sae_fast.stability.sweeps import PairRunner
from sae_fast.study import StudyConfig, study
from sae_fast.study.steps.stability import pairs_dir

from ._planted import FAST, planted_run


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("route")
    run, x = planted_run(root, num_seeds=4, F=40, shared=20)
    out = root / "out"
    study(run, activations=x, out_dir=out, synthetic=False, progress=False, config=StudyConfig(**FAST),
          only=["matching", "stability"])
    return run, x, out


def test_p_hat_equals_the_matching_graph_route(finished):
    _, _, out = finished
    graph = np.load(out / "matching" / "arrays.npz")
    stab = np.load(out / "stability" / "arrays.npz")
    S = stab["p_hat"].shape[0]
    eye = np.eye(S, dtype=bool)
    top1 = graph["cos"][..., 0].copy()
    top1[eye] = np.nan
    np.testing.assert_allclose(stab["best_cos"], top1, atol=1e-6)
    best_j = graph["index"][..., 0].copy()
    best_j[eye] = -1
    cfg = StudyConfig()
    graph_route = Stability(torch.from_numpy(top1), torch.from_numpy(best_j), torch.from_numpy(~eye), list(range(S)),
                            [str(s) for s in range(S)], cfg.theta, cfg.eps, cfg.absolute)  # the study's former route
    np.testing.assert_array_equal(stab["p_hat"], graph_route.p_hat().numpy().astype(np.float64))
    np.testing.assert_array_equal(stab["labels"], graph_route.split().numpy())
    saved = Stability.load(out / "stability")
    assert saved.seeds == [f"seed{s}" for s in range(S)]
    np.testing.assert_array_equal(saved.best_j.numpy()[~eye], graph["index"][..., 0][~eye])
    assert 0 < (stab["p_hat"] == 1).sum() < stab["p_hat"].size  # planted: some latents stable, some not


def test_a_rerun_step_resumes_the_saved_stability_run(finished, monkeypatch):
    """The step's stability run is checkpointed outside the step folder: rerunning the step (--redo stability,
    or after a kill) computes no pair again and gives the same p̂."""
    run, x, out = finished
    saved = Stability.load(pairs_dir(out, absolute=False))
    assert bool(saved.done[~torch.eye(saved.done.shape[0], dtype=torch.bool)].all())
    before = np.load(out / "stability" / "arrays.npz")["p_hat"]

    def no_pairs(self, *args, **kwargs):
        raise AssertionError("a pair was computed again")

    monkeypatch.setattr(PairRunner, "run", no_pairs)
    study(run, activations=x, out_dir=out, synthetic=False, progress=False, config=StudyConfig(**FAST),
          only=["stability"], redo=["stability"])
    np.testing.assert_array_equal(np.load(out / "stability" / "arrays.npz")["p_hat"], before)
