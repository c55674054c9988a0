import json

import numpy as np
import pytest

from sae_fast.cli import main


def test_over_training_cli_writes_results(tmp_path, capsys):
    from sae_fast import TopKSAE
    from sae_fast.checkpoint import save_sae

    run = tmp_path / "run"
    for s in range(3):
        for step in (0, 1, 2):
            save_sae(TopKSAE(8, 16, 2, seed=s * 10 + step), run / f"seed{s}" / "history" / f"step{step}")
    assert main(["over-training", str(run), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "steps [0, 1, 2]" in text and "Spearman" in text
    saved = json.loads((tmp_path / "out" / "over_training.json").read_text())
    assert saved["steps"] == [0, 1, 2]
    with np.load(tmp_path / "out" / "over_training.npz") as z:
        assert z["p_hat"].shape == (3, 16)


def test_over_training_cli_names_the_missing_history(tmp_path, capsys):
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed1").mkdir()
    with pytest.raises(SystemExit) as exit_info:  # the CLI's one-line error of a DataError: exit 1
        main(["over-training", str(tmp_path)])
    assert exit_info.value.code == 1 and "history='log'" in capsys.readouterr().err


def _planted_history(run, d: int = 16, F: int = 16):
    """Three seeds that start from unrelated decoders (step 0) and end on one shared dictionary (step 2)."""
    import torch

    from sae_fast import TopKSAE
    from sae_fast.checkpoint import save_sae

    rng = np.random.default_rng(0)
    shared = rng.standard_normal((F, d))
    for s in range(3):
        for step, mix in ((0, 0.0), (1, 0.5), (2, 1.0)):
            dec = mix * shared + (1 - mix) * rng.standard_normal((F, d)) + 0.01 * rng.standard_normal((F, d))
            sae = TopKSAE(d, F, 2, seed=s)
            with torch.no_grad():
                sae.W_dec.copy_(torch.as_tensor(dec / np.linalg.norm(dec, axis=1, keepdims=True)))
            save_sae(sae, run / f"seed{s}" / "history" / f"step{step}")


def test_stability_over_training_flag_is_the_over_training_command(tmp_path, capsys):
    run = tmp_path / "run"
    _planted_history(run)
    assert main(["stability", str(run), "--over-training", "--out", str(tmp_path / "flag")]) == 0
    text = capsys.readouterr().out
    assert "steps [0, 1, 2]" in text and "Spearman" in text
    with np.load(tmp_path / "flag" / "over_training.npz") as z:
        p_hat = z["p_hat"]
    saved = json.loads((tmp_path / "flag" / "over_training.json").read_text())
    assert p_hat.shape == (3, 16) and (p_hat == 1.0).all()  # final p̂ per seed: one shared dictionary at the end
    per_step = [row["p_hat_mean"] for row in saved["per_step"]]
    assert per_step[0] < 0.2 and per_step[-1] == 1.0  # planted: unrelated decoders at step 0
    assert main(["over-training", str(run), "--out", str(tmp_path / "alias")]) == 0
    with np.load(tmp_path / "alias" / "over_training.npz") as z:
        np.testing.assert_array_equal(z["p_hat"], p_hat)
    assert saved == json.loads((tmp_path / "alias" / "over_training.json").read_text())
    assert not (run / "stability").exists()  # no stability run was started in RUN


def test_stability_over_training_flag_names_the_missing_history(tmp_path, capsys):
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed1").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["stability", str(tmp_path), "--over-training"])
    assert exit_info.value.code == 1 and "history='log'" in capsys.readouterr().err
