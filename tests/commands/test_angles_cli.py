"""`sae-fast angles`: the demo and the file mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sae_fast.cli import main


def test_demo_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["angles", "--demo", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "sae_fast" in out and "random null" in out


def test_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = np.eye(6)[:, :2]
    b = np.eye(6)[:, 1:3]
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    assert main(["angles", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]) == 0
    out = capsys.readouterr().out
    assert "mean cos^2 0.500000" in out


def test_needs_files_or_demo() -> None:
    with pytest.raises(SystemExit):
        main(["angles"])
