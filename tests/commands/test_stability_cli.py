"""`sae-fast stability` and `sae-fast match` read verified files, claim their output folder before any work,
and under torchrun split the pairs across ranks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from sae_fast import Stability, TopKSAE, stability_scores
from sae_fast.checkpoint import save_sae
from sae_fast.cli import main
from sae_fast.outdir import LOCK_FILE
from tests.test_runs import change_one_weight


def _run_folder(root: Path, num: int = 4, f: int = 48, d: int = 16) -> Path:
    for s in range(num):
        save_sae(TopKSAE(d, f, 4, seed=s), root / f"seed{s}")  # with the embedded SHA-256
    return root


def test_a_changed_weight_fails_stability_and_match_naming_the_file(tmp_path: Path, cli_fails) -> None:
    run = _run_folder(tmp_path / "run")
    assert main(["stability", str(run), "--no-save", "--no-progress", "--json"]) == 0
    file = run / "seed2" / "sae.safetensors"
    change_one_weight(file, row=11)
    cli_fails(["stability", str(run), "--no-progress"], f"{file}.*SHA-256")
    assert not (run / "stability" / "stability.json").exists()  # refused before any pair was computed
    cli_fails(["match", str(run / "seed0"), str(run / "seed2")], f"{file}.*SHA-256")
    cli_fails(["match", str(file), str(run / "seed0")], f"{file}.*SHA-256")


def test_a_truncated_seed_file_is_named(tmp_path: Path, cli_fails) -> None:
    run = _run_folder(tmp_path / "run", num=3)
    file = run / "seed1" / "sae.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    cli_fails(["stability", str(run), "--no-save", "--no-progress"], f"{file}.*truncated")
    cli_fails(["match", str(run / "seed0"), str(run / "seed1")], f"{file}.*truncated")


def test_seeds_of_different_shapes_are_refused_naming_both(tmp_path: Path, cli_fails) -> None:
    run = _run_folder(tmp_path / "run", num=2)
    save_sae(TopKSAE(16, 64, 4, seed=9), run / "seed2")
    cli_fails(["stability", str(run), "--no-save", "--no-progress"],
              rf"{run / 'seed0'} has shape \(48, 16\), {run / 'seed2'} has \(64, 16\)")


def test_a_second_run_on_the_same_folder_is_refused(tmp_path: Path, cli_fails) -> None:
    run = _run_folder(tmp_path / "run", num=3)
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(),
                                                 "command": "sae-fast stability run"}))
        cli_fails(["stability", str(run), "--out", str(out), "--abs", "--no-progress"],
                  f"in use by another run \\(process {other.pid}")
        assert not (out / "stability.json").exists()
    finally:
        other.kill()
        other.wait()
    # its process is gone: the stale lock is taken over, the run computes, and a later call resumes it
    assert main(["stability", str(run), "--out", str(out), "--no-progress", "--json"]) == 0
    assert Stability.load(out).complete and not (out / LOCK_FILE).exists()
    assert main(["stability", str(run), "--out", str(out), "--no-progress", "--json", "--theta", "0.9"]) == 0


def test_an_out_below_a_file_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_fails) -> None:
    import sae_fast.stability as stability

    run = _run_folder(tmp_path / "run", num=2)
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(stability, "stability_scores", lambda *a, **k: pytest.fail("computed before the check"))
    cli_fails(["stability", str(run), "--out", str(tmp_path / "a_file" / "st"), "--no-progress"], "not writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_out_fails_before_any_work(tmp_path: Path, cli_fails) -> None:
    run = _run_folder(tmp_path / "run", num=2)
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        cli_fails(["stability", str(run), "--out", str(locked / "st"), "--no-progress"], "not writable")
    finally:
        locked.chmod(0o700)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli_worker(rank: int, world: int, port: int, run: str, out: str) -> None:
    """One torchrun rank: only the environment says there are others; the command joins them."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    assert main(["stability", run, "--out", out, "--no-progress", "--json", "--stack", "1"]) == 0


def test_torchrun_ranks_split_the_pairs(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run", num=4)
    out = tmp_path / "out"
    world = 2
    mp.spawn(_cli_worker, args=(world, _free_port(), str(run), str(out)), nprocs=world, join=True)
    result = Stability.load(out)
    pairs = result.info["pairs_per_rank"]
    assert len(pairs) == world and all(n > 0 for n in pairs) and sum(pairs) == 4 * 3  # each pair once
    single = stability_scores(str(run), progress=False, stack=1)
    assert result.complete and torch.equal(result.best_j, single.best_j)
    torch.testing.assert_close(result.best_cos, single.best_cos, equal_nan=True, atol=1e-6, rtol=0)
    assert not (out / LOCK_FILE).exists()


def _failing_worker(rank: int, world: int, port: int, run: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            main(["stability", run, "--out", out, "--no-progress"])
    except SystemExit as exit_info:  # the one-line error of a DataError: exit 1
        Path(out, f"error{rank}.txt").write_text(f"exit {exit_info.code}: {err.getvalue()}")


def test_torchrun_ranks_share_verification_and_all_stop_on_a_changed_file(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run", num=4)
    file = run / "seed1" / "sae.safetensors"  # verified by rank 1 only: rank 0 must stop too, not wait
    change_one_weight(file)
    out = tmp_path / "out"
    mp.spawn(_failing_worker, args=(2, _free_port(), str(run), str(out)), nprocs=2, join=True)
    for rank in range(2):
        text = (out / f"error{rank}.txt").read_text()
        assert text.startswith("exit 1: sae-fast stability: error: ") and str(file) in text
    assert not (out / "stability.json").exists()
