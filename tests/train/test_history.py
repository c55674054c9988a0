"""history="log": every seed's SAE at steps 0, 1, 2, 4, 8, ... and the last, equal to a run stopped there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_fast.activations import TensorSource
from sae_fast.checkpoint import load_sae
from sae_fast.train import TrainConfig, Trainer, train
from sae_fast.train.checkpointing import history_due

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupt(Exception):
    pass


def _data(n: int = 2000, d: int = 16, latents: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(latents, d, generator=g)
    codes = (torch.rand(n, latents, generator=g) < 0.06).float() * torch.rand(n, latents, generator=g) * 3
    return codes @ dirs + 0.05 * torch.randn(n, d, generator=g)


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(num_latents=48, k=4, seeds=[0, 3], batch_size=100, total_tokens=100 * 10, lr=3e-3,
                checkpoint_interval=0, log_interval=5, progress=False, output_dir=str(out))
    return TrainConfig(**{**base, **kw})


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in PARAMS)


def test_history_steps_are_zero_powers_of_two_and_the_last() -> None:
    assert [s for s in range(0, 11) if history_due(s, 10)] == [0, 1, 2, 4, 8, 10]
    assert [s for s in range(0, 17) if history_due(s, 16)] == [0, 1, 2, 4, 8, 16]


def test_history_snapshots_equal_runs_stopped_at_those_steps(tmp_path: Path) -> None:
    x = _data()
    saes = train(TensorSource(x), _cfg(tmp_path / "full", history="log"))
    for seed in (0, 3):
        root = tmp_path / "full" / f"seed{seed}" / "history"
        assert sorted(p.name for p in root.iterdir()) == [f"step{n}" for n in (0, 1, 10, 2, 4, 8)]  # no temp folder
        assert _same(load_sae(root / "step10"), saes[seed])
        meta_step = load_sae(root / "step4")
        short = train(TensorSource(x), _cfg(tmp_path / f"short{seed}", seeds=[seed], total_tokens=100 * 4))
        assert _same(meta_step, short[seed])
        assert not _same(load_sae(root / "step2"), short[seed])  # a different step is a different SAE
    plain = tmp_path / "plain"
    train(TensorSource(x), _cfg(plain, seeds=[0], total_tokens=300))
    assert not (plain / "seed0" / "history").exists()  # history="none" (the default) keeps none


def test_history_survives_an_interruption_and_resume(tmp_path: Path) -> None:
    x = _data()
    kw = dict(history="log", checkpoint_interval=300)

    def stop(t: Trainer) -> None:
        if t.step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(TensorSource(x), _cfg(tmp_path / "r", **kw)).fit(on_step=stop)
    assert sorted(p.name for p in (tmp_path / "r" / "seed0" / "history").iterdir()) == [
        "step0", "step1", "step2", "step4"]
    Trainer(TensorSource(x), _cfg(tmp_path / "r", resume=True, **kw)).fit()
    train(TensorSource(x), _cfg(tmp_path / "u", **kw))
    for seed in (0, 3):
        for n in (0, 1, 2, 4, 8, 10):
            resumed = load_sae(tmp_path / "r" / f"seed{seed}" / "history" / f"step{n}")
            assert _same(resumed, load_sae(tmp_path / "u" / f"seed{seed}" / "history" / f"step{n}"))


def test_history_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="history must be one of"):
        TrainConfig(history="linear")
