import json

import numpy as np
import pytest

from sae_fast.cli import main
from sae_fast.errors import DataError


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


def test_over_training_cli_names_the_missing_history(tmp_path):
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed1").mkdir()
    with pytest.raises(DataError, match="history='log'"):
        main(["over-training", str(tmp_path)])
