"""The over_training step on a planted run with history snapshots, and its visible skip without them."""

from __future__ import annotations

import numpy as np
import torch

from sae_fast.checkpoint import save_sae
from sae_fast.sae import TopKSAE

D, F, K, S = 16, 24, 4, 3


def _save(dec: np.ndarray, folder, seed: int) -> None:
    sae = TopKSAE(D, F, K, seed=seed)
    with torch.no_grad():
        sae.W_dec.copy_(torch.as_tensor(dec, dtype=torch.float32))
        sae.W_enc.copy_(torch.as_tensor(dec, dtype=torch.float32))
    save_sae(sae, folder)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _run(root, history: bool):
    """Seeds start from their own random decoders; by step 8 their first 12 latents have moved onto common
    directions (stable), the other 12 stay at their initialisation (unstable, unmoved)."""
    rng = np.random.default_rng(0)
    common = rng.standard_normal((12, D))
    for s in range(S):
        init = _unit(rng.standard_normal((F, D)))
        final = init.copy()
        final[:12] = _unit(common + 0.01 * rng.standard_normal((12, D)))
        half = _unit(init + final)
        _save(final, root / "run" / f"seed{s}", s)
        if history:
            for step, dec in ((0, init), (4, half), (8, final)):
                _save(dec, root / "run" / f"seed{s}" / "history" / f"step{step}", s)
    return root / "run", torch.as_tensor(rng.standard_normal((500, D)), dtype=torch.float32)


def _study(tmp_path, history: bool):
    from sae_fast import study
    from sae_fast.study.steps.over_training import OverTrainingStep

    run, x = _run(tmp_path, history)
    out = tmp_path / "study"
    return out, study(run, activations=x, out_dir=out, progress=False, steps=[OverTrainingStep()])


def test_over_training_tracks_planted_labels_and_transitions(tmp_path):
    out, res = _study(tmp_path, history=True)
    e = res["over_training"]
    assert e["skipped"] is None and e["steps"] == [0, 4, 8]
    first, last = e["per_step"][0], e["per_step"][-1]
    # random directions in d = 16 meet a chance partner now and then: "neither", never stable
    assert first["share_stable"] == 0 and first["share_unstable"] > 0.9
    assert last["share_stable"] == 0.5 and last["share_unstable"] > 0.45
    into = sum(t["counts"][1][0] + t["counts"][2][0] - t["counts"][0][1] - t["counts"][0][2] for t in e["transitions"])
    assert into == S * 12  # net transitions into stable over both steps: the planted 12 per seed
    quad = e["final"]["quadrants"]
    assert quad["moved_stable"] == 0.5 and quad["unmoved_unstable"] > 0.45  # under-trained: never left the init
    with np.load(out / "over_training" / "arrays.npz") as z:
        assert z["cos_to_init"].shape == (S, F) and np.allclose(z["cos_to_init"][:, 12:], 1, atol=1e-5)
    text = (out / "report.md").read_text()
    assert "## Stability over training" in text and (out / "figures" / "over_training.png").is_file()


def test_over_training_is_skipped_with_its_reason_without_snapshots(tmp_path):
    out, res = _study(tmp_path, history=False)
    assert "history='log'" in res["over_training"]["skipped"]
    assert "Skipped: no training snapshots" in (out / "report.md").read_text()
