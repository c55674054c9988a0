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
    pytest.importorskip("faiss")  # the rest needs faiss
    args = ["match", str(tmp_path / "sae_a" / "sae.safetensors"), str(tmp_path / "b.npy"), "--backend", "faiss",
            "--index", "ivf", "--nlist", "2", "--nprobe", "2", "--recall"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "IndexIVFFlat(nlist=2)" in text and "recall_at_1: 1.0" in text


def test_match_cli_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["match", str(tmp_path / "nope.npy"), str(tmp_path / "nope.npy")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"sae-fast match: error: decoder file {tmp_path / 'nope.npy'} does not exist\n"


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
    assert main(["stability", str(tmp_path), "--no-save", "--json", "--no-progress", "--stack", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stack"] == 2 and summary["stable"] == pytest.approx(0.5)
    pytest.importorskip("faiss")  # the rest needs faiss
    assert main(["stability", str(tmp_path), "--anchor", "1", "--backend", "faiss", "--no-save", "--json",
                 "--no-progress", "--index", "ivf", "--nprobe", "3", "--recall-sample", "50"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["anchors"] == 1 and 0.5 <= summary["recall_at_1"] <= 1.0 and "IVF" in summary["backend"]
    assert summary["recall_rows_per_pair"] == 50


def _write(root: Path, dicts: list[torch.Tensor]) -> None:
    for s, w in enumerate(dicts):
        (root / f"seed{s}").mkdir(parents=True)
        save_file({"W_dec": w}, str(root / f"seed{s}" / "sae.safetensors"))


def test_stability_cli_resumes_after_an_interruption(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sae_fast.stability.sweeps as stab_run
    from sae_fast import stability_scores

    _write(tmp_path, _dicts(4))
    real, calls = stab_run.match_many, []

    def fail_after_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("node lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(stab_run, "match_many", fail_after_first)
    with pytest.raises(RuntimeError, match="node lost"):
        main(["stability", str(tmp_path), "--no-progress", "--stack", "1", "--save-every", "1e9"])
    partial = Stability.load(tmp_path / "stability")
    assert int(partial.done.sum()) == 2 and not partial.complete  # the first pair, both directions
    calls.clear()
    monkeypatch.setattr(stab_run, "match_many", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    capsys.readouterr()
    assert main(["stability", str(tmp_path), "--no-progress", "--json"]) == 0
    assert len(calls) == 5 and json.loads(capsys.readouterr().out)["stack"] == 1  # 6 pairs, 1 done; stack kept
    resumed = Stability.load(tmp_path / "stability")
    full = stability_scores(str(tmp_path), progress=False, stack=1)
    assert resumed.complete and torch.equal(resumed.best_j, full.best_j)
    torch.testing.assert_close(resumed.best_cos, full.best_cos, equal_nan=True, atol=0, rtol=0)


def test_stability_cli_prints_recall_and_checks_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("faiss")
    _write(tmp_path / "ok", _dicts(3))
    assert main(["stability", str(tmp_path / "ok"), "--backend", "faiss", "--index", "hnsw", "--hnsw-m", "8",
                 "--ef-search", "16", "--no-save", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "M=8" in summary["backend"] and "efSearch=16" in summary["backend"]
    assert summary["recall_rows_per_pair"] == 128 and 0.5 <= summary["recall_at_1"] <= 1.0  # on by default
    assert main(["stability", str(tmp_path / "ok"), "--backend", "faiss", "--index", "ivf", "--nlist", "4",
                 "--no-save", "--no-progress", "--recall-sample", "0", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "nlist=4" in summary["backend"] and "recall_at_1" not in summary
    with pytest.raises(SystemExit):
        main(["stability", str(tmp_path / "ok"), "--anchor", "first"])
    assert "expected 'all' or a non-negative seed index" in capsys.readouterr().err
    _write(tmp_path / "mixed", [torch.randn(32, 8), torch.randn(32, 12)])
    with pytest.raises(SystemExit) as exit_info:
        main(["stability", str(tmp_path / "mixed"), "--no-progress"])
    assert exit_info.value.code in (1, 2) and "same d" in capsys.readouterr().err


def test_match_cli_prints_sampled_recall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("faiss")
    a, b = _dicts(2)
    np.save(tmp_path / "a.npy", a.numpy())
    np.save(tmp_path / "b.npy", b.numpy())
    assert main(["match", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--backend", "faiss", "--index", "ivf",
                 "--nlist", "4", "--nprobe", "4", "--both", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["recall_rows"] == 128 and summary["sampled_recall_at_1"] == 1.0
    assert summary["sampled_recall_at_1_ba"] == 1.0
