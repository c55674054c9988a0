"""`sae-fast match` and `sae-fast stability` on saved dictionaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_fast import Stability
from sae_fast.cli import main


def _dicts(num: int, f: int = 128, d: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(f, d, generator=g)
    out = []
    for _ in range(num):
        x = torch.randn(f, d, generator=g)
        x[: f // 2] = base[: f // 2] + 0.2 * torch.randn(f // 2, d, generator=g)
        out.append(x)
    return out


def test_match_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _dicts(2)
    (tmp_path / "sae_a").mkdir()
    save_file({"W_dec": a}, str(tmp_path / "sae_a" / "sae.safetensors"))
    np.save(tmp_path / "b.npy", b.numpy())
    out = tmp_path / "m.safetensors"
    args = ["match", str(tmp_path / "sae_a"), str(tmp_path / "b.npy"), "--both", "--json", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backend"].startswith("exact: torch float32")
    assert summary["mutual_nn_ge_0.7"] >= 64 and summary["frac_best_cos_ge_0.7"] >= 0.5
    saved = load_file(str(out))
    assert torch.equal(saved["index_ab"][:64, 0], torch.arange(64))
    args = ["match", str(tmp_path / "sae_a" / "sae.safetensors"), str(tmp_path / "b.npy"), "--backend", "faiss",
            "--index", "ivf", "--nlist", "2", "--nprobe", "2", "--recall"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "IndexIVFFlat(nlist=2)" in text and "recall_at_1: 1.0" in text


def test_match_cli_bad_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        main(["match", str(tmp_path / "nope.npy"), str(tmp_path / "nope.npy")])


def test_stability_cli_writes_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for s, w in enumerate(_dicts(4)):
        (tmp_path / f"seed{s}").mkdir()
        save_file({"W_dec": w}, str(tmp_path / f"seed{s}" / "sae.safetensors"))
    assert main(["stability", str(tmp_path), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seeds"] == 4 and summary["stable"] == pytest.approx(0.5)
    assert summary["unstable"] == pytest.approx(0.5)
    st = Stability.load(tmp_path / "stability")
    assert st.complete and st.seeds == ["seed0", "seed1", "seed2", "seed3"]
    # a second call finds the finished run; a different anchor needs another out directory
    assert main(["stability", str(tmp_path), "--json", "--no-progress", "--theta", "0.99"]) == 0
    assert json.loads(capsys.readouterr().out)["stable"] == 0.0
    assert main(["stability", str(tmp_path), "--anchor", "1", "--backend", "faiss", "--no-save", "--json",
                 "--no-progress", "--index", "ivf", "--nprobe", "3", "--recall-sample", "50"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["anchors"] == 1 and 0.5 <= summary["recall_at_1"] <= 1.0 and "IVF" in summary["backend"]
    assert main(["stability", str(tmp_path), "--no-save", "--json", "--no-progress", "--stack", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stack"] == 2 and summary["stable"] == pytest.approx(0.5)
