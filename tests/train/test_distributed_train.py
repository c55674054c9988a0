"""torch.distributed training on CPU with gloo and 2 processes: seed sharding and data parallelism."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sae_fast.activations import TensorSource
from sae_fast.checkpoint import load_sae
from sae_fast.train import TrainConfig, Trainer

WORLD = 2


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.randn(3000, 12, generator=g) * torch.linspace(0.5, 2.0, 12)


def _config(output_dir: str, seeds: list[int], **extra) -> TrainConfig:
    return TrainConfig(num_latents=48, k=4, seeds=seeds, batch_size=200, total_tokens=200 * 12, progress=False,
                       checkpoint_interval=200 * 5, dead_tokens_threshold=600, log_interval=4, lr=3e-3,
                       output_dir=output_dir, **extra)


def _run(output_dir: str, seeds: list[int], resume_after: int | None) -> None:
    trainer = Trainer(TensorSource(_data()), _config(output_dir, seeds))
    assert trainer.local_seeds == (seeds if len(seeds) == 1 else seeds[dist.get_rank()::WORLD])
    if resume_after is None:
        trainer.fit()
        return

    class Stop(Exception):
        pass

    def stop(t: Trainer) -> None:
        if t.step == resume_after:
            raise Stop

    with suppress(Stop):
        trainer.fit(on_step=stop)
    dist.barrier()
    Trainer(TensorSource(_data()), _config(output_dir, seeds, resume=True)).fit()


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        _run(f"{out}/sharded", SHARDED_SEEDS, resume_after=7)  # ranks are interrupted, then resume
        _run(f"{out}/data_parallel", [DP_SEED], resume_after=None)
        _run(f"{out}/data_parallel_resumed", [DP_SEED], resume_after=7)
    finally:
        dist.destroy_process_group()


@contextmanager
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


SHARDED_SEEDS = [0, 1, 2]
DP_SEED = 5


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One gloo job of 2 processes: 3 seeds sharded over the ranks (with a resume), then 1 seed data-parallel
    (straight, and interrupted then resumed)."""
    tmp = tmp_path_factory.mktemp("dist")
    mp.start_processes(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, start_method="spawn", join=True)
    return tmp


def _single(tmp: Path, seeds: list[int]) -> dict[int, torch.nn.Module]:
    with _one_thread():
        return Trainer(TensorSource(_data()), _config(str(tmp / "single"), seeds)).fit()


PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_seed_sharding_over_two_ranks_matches_one_process_bit_for_bit(distributed_run: Path, tmp_path: Path) -> None:
    seeds = SHARDED_SEEDS
    out = distributed_run / "sharded"
    single = _single(tmp_path, seeds)
    for s in seeds:
        got = load_sae(out / f"seed{s}")
        for name in PARAMS:
            assert torch.equal(getattr(got, name), getattr(single[s], name)), (s, name)
    lines = (out / "log.jsonl").read_text().splitlines()
    for s in seeds:
        assert any(f'"seed": {s},' in line for line in lines), s
    assert sum('"step": 12,' in line for line in lines) == len(seeds)  # all seeds logged by rank 0


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_one_seed_is_data_parallel_and_matches_one_process(distributed_run: Path, tmp_path: Path) -> None:
    out = distributed_run / "data_parallel"
    single = _single(tmp_path, [5])
    got = load_sae(out / "seed5")
    for name in PARAMS:
        # Gradients are summed over ranks in another order than in one process: equal up to rounding.
        torch.testing.assert_close(getattr(got, name), getattr(single[5], name), rtol=2e-4, atol=2e-5)
    # Only rank 0 writes the (replicated) SAE and the log.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("seed")) == ["seed5"]
    assert '"seed": 5,' in (out / "log.jsonl").read_text()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_data_parallel_resume_matches_the_uninterrupted_run(distributed_run: Path) -> None:
    straight = load_sae(distributed_run / "data_parallel" / "seed5")
    resumed = load_sae(distributed_run / "data_parallel_resumed" / "seed5")
    for name in PARAMS:
        assert torch.equal(getattr(resumed, name), getattr(straight, name)), name
    steps = [int(line.split('"step": ')[1].split(",")[0])
             for line in (distributed_run / "data_parallel_resumed" / "log.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12]


def test_more_ranks_than_seeds_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    import sae_fast.distributed as d

    monkeypatch.setattr(d, "get_world_size", lambda: 4)
    monkeypatch.setattr(d, "get_rank", lambda: 1)
    with tempfile.TemporaryDirectory() as out, pytest.raises(ValueError, match="cannot be sharded over 4 ranks"):
        Trainer(TensorSource(_data()), _config(out, [0, 1]))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_torchrun_cli_shards_seeds_and_matches_one_process(tmp_path: Path) -> None:
    """The real launcher: `torchrun --nproc_per_node 2 -m sae_fast.cli train ...` against a one-process CLI run."""
    import os
    import subprocess
    import sys

    from sae_fast.activations import save_tensor_cache
    from sae_fast.cli import main

    save_tensor_cache(_data(), tmp_path / "cache")
    args = ["train", "--cache", str(tmp_path / "cache"), "--seeds", "0", "1", "2", "--num-latents", "32", "--k", "4",
            "--batch-size", "200", "--total-tokens", "2000", "--lr", "0.003", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*launcher, "-m", "sae_fast.cli", *args, "--output-dir", str(tmp_path / "torchrun")],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 3 SAEs") == 1  # rank 0 reports
    with _one_thread():
        assert main([*args, "--output-dir", str(tmp_path / "single")]) == 0
    for seed in (0, 1, 2):
        a, b = load_sae(tmp_path / "torchrun" / f"seed{seed}"), load_sae(tmp_path / "single" / f"seed{seed}")
        for name in PARAMS:
            assert torch.equal(getattr(a, name), getattr(b, name)), (seed, name)
