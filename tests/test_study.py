"""The study on a folder of small saved seeds (no training), through Python and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sae_fast.checkpoint import save_sae
from sae_fast.sae import TopKSAE

D, F, K, SHARED = 16, 24, 4, 12


def _run_dir(tmp_path, num_seeds: int = 4):
    """Seeds sharing 12 decoder (and encoder) directions, the rest random; sparsify and SAELens layouts mixed."""
    rng = np.random.default_rng(0)
    common = rng.standard_normal((SHARED, D))
    for s in range(num_seeds):
        rows = np.concatenate([common + 0.02 * rng.standard_normal((SHARED, D)), rng.standard_normal((F - SHARED, D))])
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        sae = TopKSAE(D, F, K, seed=s)
        with torch.no_grad():
            sae.W_dec.copy_(torch.as_tensor(rows, dtype=torch.float32))
            sae.W_enc.copy_(torch.as_tensor(rows, dtype=torch.float32))
        save_sae(sae, tmp_path / "run" / f"seed{s}", format="saelens" if s == 1 else "sparsify")
    (tmp_path / "run" / "checkpoints" / "step_1" / "seed0").mkdir(parents=True)  # trainer leftovers are ignored
    x = torch.as_tensor(rng.standard_normal((3000, D)), dtype=torch.float32)
    return tmp_path / "run", x


def test_study_on_saved_seeds_writes_traceable_report(tmp_path):
    from sae_fast import study
    from sae_fast.activations import save_tensor_cache
    from sae_fast.report import _get
    from sae_fast.seed_study import StudyConfig

    run, x = _run_dir(tmp_path)
    out = tmp_path / "study"
    train_cache = save_tensor_cache(x[:700], tmp_path / "train_cache").path  # fewer rows than max_refit_tokens
    res = study(run, activations=x, refit_activations=train_cache, out_dir=out, synthetic=False, progress=False,
                config=StudyConfig(ranks=(2, 4), n_random=1, refit_steps=2, finetune_steps=2))
    assert res["pooling"]["note"].startswith("refit on 700 training activations")
    assert res["source"]["seeds"] == ["seed0", "seed1", "seed2", "seed3"]
    st = res["stability"]["anchor"]
    assert st["num_stable"] == SHARED and st["num_unstable"] + st["num_neither"] == F - SHARED
    assert res["masking"]["delta_ev"]["stable"] > 0
    assert res["pooling"]["num_pool_seeds"] == 2 and res["pooling"]["pooled"]["share_stable"] >= 0.4
    for name in ("results.json", "arrays.npz", "report.html", "report.md", "snippets.json", "pooled/base/cfg.json",
                 "pooled/rank/sae.safetensors",
                 "stability/stability.json", "figures/stability.png", "figures/masking.png"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<img" in html
    assert json.loads((out / "results.json").read_text()) == res
    # every table row of the markdown report names a results.json path whose value it shows
    md = (out / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and line.endswith("` |")]
    assert len(rows) > 30
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        path = cells[-1].strip("`")
        value = _get(res, path)
        if isinstance(value, float):
            assert float(cells[1]) == pytest.approx(value, rel=1e-3, abs=1e-6), line
    with np.load(out / "arrays.npz") as z:
        np.testing.assert_array_equal(z["p_hat"].shape, (4, F))


def test_study_rejects_bad_input(tmp_path):
    from sae_fast import study

    run, x = _run_dir(tmp_path, num_seeds=2)
    with pytest.raises(ValueError, match="activations"):
        study(run, out_dir=tmp_path / "o", synthetic=False, progress=False)
    with pytest.raises(ValueError, match="d=8"):
        study(run, activations=torch.zeros(100, 8), out_dir=tmp_path / "o", synthetic=False, progress=False)
    bad = x.clone()
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        study(run, activations=bad, out_dir=tmp_path / "o", synthetic=False, progress=False)
    with pytest.raises(ValueError, match="refit_activations have d=8"):
        study(run, activations=x, refit_activations=torch.zeros(100, 8), out_dir=tmp_path / "o", synthetic=False,
              progress=False)
    with pytest.raises(ValueError, match=r">= 2 seeds"):
        study(tmp_path / "run" / "seed0", activations=x, out_dir=tmp_path / "o", synthetic=False, progress=False)


def test_cli_study(tmp_path, capsys):
    from sae_fast.cli import main

    run, x = _run_dir(tmp_path, num_seeds=3)
    np.save(tmp_path / "acts.npy", x.numpy())
    np.save(tmp_path / "train.npy", x.numpy()[::-1].copy())
    rc = main(["study", str(run), "--activations", str(tmp_path / "acts.npy"), "--out", str(tmp_path / "s"),
               "--no-synthetic", "--no-progress", "--ranks", "2", "--refit-steps", "2", "--finetune-steps", "2",
               "--refit-batch-size", "64",
               "--pool-seeds", "2", "--refit-activations", str(tmp_path / "train.npy"), "--max-refit-tokens", "500"])
    assert rc == 0
    assert "report:" in capsys.readouterr().out
    assert (tmp_path / "s" / "report.html").is_file()
    pooling = json.loads((tmp_path / "s" / "results.json").read_text())["pooling"]
    assert pooling["note"].startswith("refit on 500 training activations; EV on all 3000 held-out rows")
    assert pooling["pooled_base"]["refit_steps"] == 2 and "ev_refit" in pooling["single_refit"]
