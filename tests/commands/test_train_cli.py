"""`sae-fast train`: bad input is one line naming what is wrong, finished work is never overwritten unasked,
and a resume refuses other or changed data."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

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
    err = _error(["train", "--cache", cache, "--num-seeds", "0"], capsys)
    assert "argument --num-seeds: must be a positive integer, got 0" in err


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


_SMALL = ["--num-seeds", "2", "--num-latents", "16", "--k", "2", "--batch-size", "100", "--total-tokens", "400",
          "--log-interval", "2", "--no-progress"]


def _train(tmp_path: Path, *argv: str) -> int:
    return main(["train", *_SMALL, "--output-dir", str(tmp_path / "run"), *argv])


def _log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_resume_on_another_cache_of_the_same_shape_is_refused_naming_the_shard(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = _cache(tmp_path)
    assert _train(tmp_path, "--cache", cache) == 0
    save_tensor_cache(torch.randn(500, 8, generator=torch.Generator().manual_seed(1)), tmp_path / "other")
    err = _error(["train", *_SMALL, "--output-dir", str(tmp_path / "run"), "--cache", str(tmp_path / "other"),
                  "--resume"], capsys, code=1)
    assert "was made on other data" in err and str(tmp_path / "other" / "shard_00000.npy") in err
    assert _train(tmp_path, "--cache", cache, "--resume") == 0  # the same cache resumes


def test_resume_after_a_shard_was_rewritten_is_refused_naming_the_shard(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = Path(_cache(tmp_path))
    assert _train(tmp_path, "--cache", str(cache)) == 0
    shard = cache / "shard_00000.npy"
    np.save(shard, np.load(shard)[::-1].copy())  # same shape and size, other order: the manifest is unchanged
    err = _error(["train", *_SMALL, "--output-dir", str(tmp_path / "run"), "--cache", str(cache), "--resume"],
                 capsys, code=1)
    assert f"activation cache shard {shard} was changed after caching" in err


def test_a_folder_with_trained_saes_is_not_overwritten_without_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = _cache(tmp_path)
    run = tmp_path / "run"
    assert _train(tmp_path, "--cache", cache) == 0
    shutil.rmtree(run / "checkpoints")
    before = (run / "seed0" / "sae.safetensors").read_bytes()
    rows_before = len(_log_rows(run))
    err = _error(["train", *_SMALL, "--output-dir", str(run), "--cache", cache, "--lr", "0.01"], capsys, code=1)
    assert "already holds trained SAEs (" in err and "seed0/sae.safetensors" in err and "--overwrite" in err
    assert (run / "seed0" / "sae.safetensors").read_bytes() == before and len(_log_rows(run)) == rows_before
    (run / "seed7").mkdir()  # a seed of the earlier run that the new one does not train
    assert _train(tmp_path, "--cache", cache, "--lr", "0.01", "--overwrite") == 0
    assert (run / "seed0" / "sae.safetensors").read_bytes() != before
    assert len(_log_rows(run)) == rows_before  # the old log was removed, not appended to
    assert not (run / "seed7").exists() and not (run / ".sae_fast.lock").exists()
    assert "--resume continues" in _error(["train", "--cache", cache, "--output-dir", str(run), "--resume",
                                           "--overwrite"], capsys)


def test_a_second_run_on_one_folder_is_refused_naming_the_first(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / ".sae_fast.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                    "command": "sae-fast train --output-dir run"}))
    err = _error(["train", *_SMALL, "--output-dir", str(run), "--cache", _cache(tmp_path)], capsys, code=1)
    assert f"in use by another run (process {os.getppid()}" in err and "sae-fast train --output-dir run" in err
    assert not (run / "log.jsonl").exists()


def test_a_mistyped_cache_is_an_error_not_a_new_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "cahce"
    err = _error(["train", *_SMALL, "--output-dir", str(tmp_path / "run"), "--cache", str(typo)], capsys, code=1)
    assert f"--cache {typo}: no activation cache there" in err and "sae-fast cache --out" in err
    assert not typo.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_train_on_an_activations_file(tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    file = tmp_path / f"acts{suffix}"
    if suffix == ".npy":
        np.save(file, x.numpy())
    else:
        save_file({"activations": x}, file)
    assert _train(tmp_path, "--activations", str(file)) == 0
    assert f"on 400 tokens of {file}" in capsys.readouterr().out
    x[123, 4] = float("nan")
    np.save(tmp_path / "bad.npy", x.numpy())
    err = _error(["train", *_SMALL, "--output-dir", str(tmp_path / "run2"), "--activations",
                  str(tmp_path / "bad.npy")], capsys, code=1)
    assert f"activations file {tmp_path / 'bad.npy'}: row 123 holds NaN or inf" in err
    err = _error(["train", "--activations", str(file), "--cache", str(tmp_path)], capsys)
    assert "not allowed with" in err
    err = _error(["train", "--cache", str(file), "--output-dir", str(tmp_path / "run3")], capsys)
    assert f"--cache {file} is a file, not a cache folder" in err and f"use --activations {file}" in err


def test_a_nan_row_in_an_older_cache_is_named_by_its_place_in_the_cache(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    save_tensor_cache(x, tmp_path / "cache", shard_tokens=200)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    for shard in manifest["shards"]:  # a cache written before shards were hashed and checked
        del shard["bytes"], shard["sha256"]
    del manifest["finite"]
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps(manifest))
    x[437, 2] = float("inf")
    np.save(tmp_path / "cache" / "shard_00002.npy", x[400:].numpy())
    err = _error(["train", *_SMALL, "--output-dir", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")],
                 capsys, code=1)
    assert f"cache shard {tmp_path / 'cache' / 'shard_00002.npy'}: row 37 (row 437 of the cache)" in err
