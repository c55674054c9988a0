"""`sae-fast train`: bad input is reported as a usage error, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_fast.activations import save_tensor_cache
from sae_fast.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cache(tmp_path: Path, n: int = 500) -> str:
    save_tensor_cache(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), tmp_path / "cache")
    return str(tmp_path / "cache")


def _error(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    """The one-line error of `sae-fast ARGV`, which must exit with ``code`` (2: usage, 1: data)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert err.startswith("sae-fast") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(("option", "value"), [("--optimizer", "sgd"), ("--dtype", "int8"),
                                               ("--b-dec-init", "median")])
def test_string_options_have_choices(option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert "invalid choice" in _error(["train", option, value], capsys)


def test_invalid_config_and_too_large_batch_are_usage_errors(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cache = _cache(tmp_path)
    out = str(tmp_path / "run")
    assert "k must be a positive int" in _error(["train", "--cache", cache, "--k", "0", "--output-dir", out], capsys)
    err = _error(["train", "--cache", cache, "--batch-size", "1000", "--output-dir", out], capsys)
    assert "batch_size=1000 is larger than the source (500 tokens)" in err
    assert not Path(out).exists()  # refused before config.json was written
    assert "not allowed with" in _error(["train", "--num-seeds", "2", "--seeds", "0", "1"], capsys)
    assert "argument --num-seeds: must be a positive integer, got 0" in _error(["train", "--cache", cache, "--num-seeds", "0"], capsys)


def test_no_progress_prints_metrics_per_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", "--cache", _cache(tmp_path), "--num-seeds", "2", "--num-latents", "16", "--k", "2",
               "--batch-size", "100", "--total-tokens", "400", "--log-interval", "2", "--no-progress",
               "--output-dir", str(tmp_path / "run")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "step 2/4 seed 0: fvu" in out and "step 4/4 seed 1: fvu" in out


def test_train_on_a_given_cache_checks_only_the_options_given(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cache = _cache(tmp_path)  # a tensor cache: no model, no texts
    err = _error(["train", "--cache", cache, "--layer", "5", "--output-dir", str(tmp_path / "run")], capsys, code=1)
    assert "other settings" in err and "hook" in err
