"""`sae-fast study` under torchrun: the ranks split the stability pairs (the ``sae-fast stability`` path), rank 0
runs the study, and p̂ equals a study in one process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from sae_fast import Stability
from sae_fast.cli import main
from sae_fast.study.steps.stability import pairs_dir
from tests.study._planted import planted_run

ARGS = ["--no-synthetic", "--no-progress", "--only", "matching", "stability"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, run: str, x: str, out: str) -> None:
    """One torchrun rank: only the environment says there are others; the command joins them."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    assert main(["study", run, "--activations", x, "--out", out, *ARGS]) == 0


def test_torchrun_ranks_split_the_study_stability_pairs(tmp_path: Path) -> None:
    run, x = planted_run(tmp_path, num_seeds=4, F=40, shared=20)
    np.save(tmp_path / "x.npy", x.numpy())
    out, single = tmp_path / "out", tmp_path / "single"
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(run), str(tmp_path / "x.npy"), str(out)), nprocs=world,
             join=True)
    shared = Stability.load(pairs_dir(out, absolute=False))
    pairs = shared.info["pairs_per_rank"]
    assert len(pairs) == world and all(n > 0 for n in pairs) and sum(pairs) == 4 * 3  # each pair once
    assert main(["study", str(run), "--activations", str(tmp_path / "x.npy"), "--out", str(single), *ARGS]) == 0
    assert "pairs_per_rank" not in Stability.load(pairs_dir(single, absolute=False)).info
    for name in ("p_hat", "labels"):
        np.testing.assert_array_equal(np.load(out / "stability" / "arrays.npz")[name],
                                      np.load(single / "stability" / "arrays.npz")[name])
    assert Stability.load(out / "stability").seeds == [f"seed{s}" for s in range(4)]


def test_study_help_lists_every_setting(capsys) -> None:
    """Every StudyConfig / EmbeddedDefault field is an option, and help texts with a percent sign render."""
    import dataclasses

    import pytest

    from sae_fast.study import EmbeddedDefault, StudyConfig

    with pytest.raises(SystemExit):
        main(["study", "--help"])
    text = capsys.readouterr().out
    for f in (*dataclasses.fields(StudyConfig), *dataclasses.fields(EmbeddedDefault)):
        if f.name != "extra":
            assert "--" + f.name.replace("_", "-") in text, f.name
    assert "%" in text  # k's help names k/F in percent
