"""Tests of sae_fast.distributed and of stability_scores split over 2 gloo processes (CPU)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import sae_fast.stability.sweeps as stab_run
from sae_fast import Stability, stability_scores
from sae_fast import distributed as du


def _seeds(num_seeds: int = 5, f: int = 96, d: int = 24) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(f, d, generator=g)
    out = []
    for _ in range(num_seeds):
        x = torch.randn(f, d, generator=g)
        x[: f // 2] = base[: f // 2] + 0.3 * torch.randn(f // 2, d, generator=g)
        out.append(x[torch.randperm(f, generator=g)])
    return out


def test_single_process_fallbacks() -> None:
    assert not du.is_initialized()
    assert (du.get_rank(), du.get_world_size(), du.is_main_process()) == (0, 1, True)
    assert du.all_gather_objects({"a": 1}) == [{"a": 1}]
    t = torch.ones(3)
    assert du.all_reduce_sum_(t) is t and torch.equal(t, torch.ones(3))
    assert du.broadcast_object(5) == 5
    du.barrier()


def test_shard_covers_every_item_once() -> None:
    items = list(range(11))
    parts = [du.shard(items, r, 3) for r in range(3)]
    assert sorted(x for p in parts for x in p) == items and parts[0] == [0, 3, 6, 9]
    assert du.shard(items) == items
    with pytest.raises(ValueError, match="rank"):
        du.shard(items, 3, 3)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        assert du.get_rank() == rank and du.get_world_size() == world
        gathered = du.all_gather_objects(rank * 10)
        assert gathered == [0, 10]
        t = torch.tensor([float(rank + 1)])
        du.all_reduce_sum_(t)
        assert t.item() == 3.0
        for anchor in ("all", 2):
            st = stability_scores(_seeds(), anchor=anchor, progress=False, out=Path(out_dir) / f"run-{anchor}")
            st.save(Path(out_dir) / f"rank{rank}-{anchor}")
        du.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    for anchor in ("all", 2):
        single = stability_scores(_seeds(), anchor=anchor, progress=False)
        for result in [Stability.load(tmp_path / f"rank{r}-{anchor}") for r in range(world)] + [
            Stability.load(tmp_path / f"run-{anchor}")  # written by rank 0
        ]:
            assert result.complete and result.anchors == single.anchors
            assert torch.equal(result.best_j, single.best_j)
            # one anchor: the ranks stack fewer seeds per sweep than one process, so sums may differ in the last bit
            torch.testing.assert_close(result.best_cos, single.best_cos, equal_nan=True, atol=1e-6, rtol=0)
            assert len(result.info["seconds_per_rank"]) == world
            assert all(n > 0 for n in result.info["pairs_per_rank"])  # one anchor too: every rank had work
        assert not math.isnan(float(single.p_hat().mean()))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _resume_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """env:// rendezvous set by hand; each rank is interrupted after 2 sweeps with stack=1, then resumed with the
    saved stack (stack=None, whose default would be 5) and with another one (stack=3)."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", init_method="env://")
    try:
        torch.set_num_threads(1)
        real = stab_run.match_many
        for name, again in (("saved", None), ("other", 3)):
            out = Path(out_dir) / name
            calls: list[int] = []

            def flaky(*args, _calls=calls, **kwargs):
                _calls.append(1)
                if len(_calls) == 3:
                    raise KeyboardInterrupt
                return real(*args, **kwargs)

            stab_run.match_many = flaky
            try:
                stability_scores(_seeds(6), out=out, progress=False, stack=1, save_every=1e9)
            except KeyboardInterrupt:
                pass
            finally:
                stab_run.match_many = real
            du.barrier()
            st = stability_scores(_seeds(6), out=out, progress=False, stack=again)
            st.save(Path(out_dir) / f"{name}-rank{rank}")
        du.barrier()
    finally:
        dist.destroy_process_group()


def test_distributed_resume_with_other_stacking(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_resume_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    single = stability_scores(_seeds(6), progress=False)
    for name in ("saved", "other"):
        for r in range(world):
            result = Stability.load(tmp_path / f"{name}-rank{r}")
            assert result.complete and torch.equal(result.best_j, single.best_j)
            torch.testing.assert_close(result.best_cos, single.best_cos, equal_nan=True, atol=1e-6, rtol=0)
    assert Stability.load(tmp_path / "saved-rank0").info["stack"] == 1  # the checkpoint's stacking was kept
    assert Stability.load(tmp_path / "other-rank0").info["stack"] == 3
