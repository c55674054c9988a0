"""The multi-seed trainer: seed independence, the recipe, logs, checkpoints, exact resume, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sae_fast.activations import NonFiniteActivationsError, TensorSource, save_tensor_cache
from sae_fast.checkpoint import load_sae, read_cfg
from sae_fast.sae import TopKSAE, geometric_median
from sae_fast.train import TrainConfig, Trainer, field_docs, train

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int = 4000, d: int = 16, latents: int = 48, seed: int = 0) -> torch.Tensor:
    """Sparse combinations of unit directions plus noise: something an SAE can learn quickly."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(latents, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    codes = (torch.rand(n, latents, generator=g) < 0.06).float() * torch.rand(n, latents, generator=g) * 3
    return codes @ dirs + 0.05 * torch.randn(n, d, generator=g) + 0.5


def _cfg(tmp: Path, **kw) -> TrainConfig:
    base = dict(num_latents=48, k=4, seeds=[0, 1], batch_size=128, total_tokens=128 * 30, lr=3e-3,
                checkpoint_interval=0, log_interval=5, progress=False, output_dir=str(tmp / "run"))
    return TrainConfig(**{**base, **kw})


def _same(a: TopKSAE, b: TopKSAE) -> bool:
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in PARAMS)


# ---------------------------------------------------------------------------------------------- config


def test_config_validation_names_the_field() -> None:
    for kw, match in [({"k": 0}, "k must be a positive int"), ({"seeds": []}, "at least one seed"),
                      ({"seeds": [1, 1]}, "distinct"), ({"seeds": [-1]}, "non-negative"),
                      ({"batch_size": 1.5}, "batch_size"), ({"lr": -1.0}, "lr must be"),
                      ({"optimizer": "sgd"}, "optimizer must be"), ({"dtype": "int8"}, "dtype must be"),
                      ({"b_dec_init": "median"}, "b_dec_init"), ({"num_latents": 8, "k": 9}, "must not exceed"),
                      ({"adam_betas": (0.9, 1.0)}, "adam_betas"), ({"auxk_alpha": -0.1}, "auxk_alpha")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kw)


def test_every_config_field_is_documented_and_lr_scales() -> None:
    docs = field_docs(TrainConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(len(doc) > 10 for doc in docs.values())
    cfg = TrainConfig()
    assert cfg.resolved_lr(2**14) == pytest.approx(2e-4)
    assert cfg.resolved_lr(2**16) == pytest.approx(1e-4)
    assert TrainConfig(lr=1e-3).resolved_lr(2**16) == 1e-3
    assert TrainConfig(total_tokens=1000, batch_size=300).num_steps == 4


# ---------------------------------------------------------------------------------------------- seeds


class CountingSource(TensorSource):
    """Counts the batches handed out."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__(x)
        self.batches_read = 0

    def iter_batches(self, batch_size: int, *, seed: int = 0, start: int = 0):
        for batch in super().iter_batches(batch_size, seed=seed, start=start):
            self.batches_read += 1
            yield batch


def test_seeds_trained_together_equal_seeds_trained_alone_and_read_each_batch_once(tmp_path: Path) -> None:
    x = _data()
    source = CountingSource(x)
    together = train(source, _cfg(tmp_path / "both", seeds=[0, 1, 7]))
    steps = TrainConfig(total_tokens=128 * 30, batch_size=128).num_steps
    assert steps <= source.batches_read <= steps + 3  # one read per step (+ at most the prefetch depth)
    for seed in (0, 7):
        alone = train(TensorSource(x), _cfg(tmp_path / f"alone{seed}", seeds=[seed]))
        assert _same(together[seed], alone[seed]), seed
    assert not torch.equal(together[0].W_dec, together[1].W_dec)
    # The init depends only on the seed.
    fresh = Trainer(source, _cfg(tmp_path / "x", seeds=[3, 7])).saes[7]
    assert torch.equal(TopKSAE(16, 48, 4, seed=7).W_enc, fresh.W_enc)


def test_recipe_unit_decoder_b_dec_from_first_batch_parallel_gradient_removed(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    x = _data()
    calls = {"n": 0}
    original = TopKSAE.remove_gradient_parallel_to_decoder_directions

    def counting(self: TopKSAE) -> None:
        calls["n"] += 1
        grad_before = self.W_dec.grad.clone()
        original(self)
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1)
        assert parallel.abs().max() <= 1e-5 * max(1.0, float(grad_before.abs().max()))

    monkeypatch.setattr(TopKSAE, "remove_gradient_parallel_to_decoder_directions", counting)
    saes = train(TensorSource(x), _cfg(tmp_path, seeds=[0, 1], total_tokens=128 * 6))
    assert calls["n"] == 2 * 6
    for sae in saes.values():
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(48), rtol=0, atol=1e-5)
    # b_dec starts at the geometric median of the first batch: with a vanishing lr it stays there.
    one = train(TensorSource(x), _cfg(tmp_path / "one", seeds=[0], total_tokens=128, lr=1e-30))
    first = next(TensorSource(x).iter_batches(128, seed=0))
    torch.testing.assert_close(one[0].b_dec, geometric_median(first), rtol=1e-5, atol=1e-5)
    mean = train(TensorSource(x), _cfg(tmp_path / "mean", seeds=[0], total_tokens=128, lr=1e-30, b_dec_init="mean"))
    torch.testing.assert_close(mean[0].b_dec, first.mean(0), rtol=1e-5, atol=1e-6)


def test_dead_latents_are_counted_in_tokens_and_auxk_revives_them(tmp_path: Path) -> None:
    x = _data()

    def sabotage(trainer: Trainer) -> Trainer:
        with torch.no_grad():
            for st in trainer.states:
                st.sae.W_enc[:8] *= -1e-3  # latents 0..7 barely reach the top k
                st.sae.b_enc[:8] = -5.0
        return trainer

    plain = sabotage(Trainer(TensorSource(x), _cfg(tmp_path / "plain", seeds=[0], auxk_alpha=0.0,
                                                  dead_tokens_threshold=256)))
    plain.fit()
    counters = plain.states[0].tokens_since_fired
    assert (counters % 128 == 0).all() and (counters <= plain.tokens_seen).all()
    assert (counters[:8] == plain.tokens_seen).all()  # never fired
    rows = [json.loads(line) for line in (tmp_path / "plain" / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["dead_fraction"] >= 8 / 48 and rows[-1]["auxk_loss"] == 0.0

    aux = sabotage(Trainer(TensorSource(x), _cfg(tmp_path / "aux", seeds=[0], dead_tokens_threshold=256)))
    assert aux.cfg.auxk_alpha > 0  # AuxK is on by default
    aux.fit()
    rows = [json.loads(line) for line in (tmp_path / "aux" / "run" / "log.jsonl").read_text().splitlines()]
    assert any(r["auxk_loss"] > 0 for r in rows)
    assert not _same(aux.states[0].sae, plain.states[0].sae)


def test_logs_per_seed_and_fvu_goes_down(tmp_path: Path) -> None:
    train(TensorSource(_data()), _cfg(tmp_path, seeds=[2, 5], total_tokens=128 * 40))
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 8 and {r["seed"] for r in rows} == {2, 5}
    for key in ("fvu", "explained_variance", "l0", "dead_fraction", "tokens_per_s", "step", "tokens", "lr"):
        assert all(key in r for r in rows), key
    for seed in (2, 5):
        mine = [r for r in rows if r["seed"] == seed]
        assert mine[-1]["fvu"] < 0.8 * mine[0]["fvu"]
        assert all(r["explained_variance"] == pytest.approx(1 - r["fvu"]) for r in mine)
        assert all(0 < r["l0"] <= 4 for r in mine)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train_config"]["seeds"] == [2, 5] and config["num_latents"] == 48


def test_non_finite_batches_are_reported(tmp_path: Path) -> None:
    x = _data()
    x[::50, 3] = float("nan")
    with pytest.raises(NonFiniteActivationsError, match="training batch 0"):
        train(TensorSource(x, check=False), _cfg(tmp_path))


def test_trainer_validates_its_inputs(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="ActivationSource"):
        Trainer(torch.zeros(3, 3), _cfg(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width 16"):
        Trainer(TensorSource(_data()), _cfg(tmp_path, d_in=8))
    with pytest.raises(TypeError, match="unknown TrainConfig fields"):
        train(TensorSource(_data()), _cfg(tmp_path), num_seeds=3)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_checkpoints_are_per_seed_and_final_saes_load(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, seeds=[0, 3], checkpoint_interval=128 * 10, keep_checkpoints=2)
    saes = train(TensorSource(_data()), cfg)
    out = tmp_path / "run"
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_000000020", "step_000000030"]  # every 10 steps, last 2 kept
    files = sorted(p.name for p in (out / "checkpoints" / "step_000000030" / "seed3").iterdir())
    assert files == ["cfg.json", "optimizer.pt", "sae.safetensors", "train_state.safetensors"]
    for seed in (0, 3):
        loaded = load_sae(out / f"seed{seed}")
        assert _same(loaded, saes[seed])
        meta = read_cfg(out / f"seed{seed}")["sae_fast"]
        assert meta["seed"] == seed and meta["tokens"] == 128 * 30
    with pytest.raises(FileExistsError, match="resume"):
        train(TensorSource(_data()), cfg)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize(("optimizer", "dtype"), [("adam", "float32"), ("low_memory_adam", "float32"),
                                                  ("low_memory_adam", "bfloat16"), ("signum", "float32")])
def test_resume_after_an_interruption_gives_the_same_weights(tmp_path: Path, optimizer: str, dtype: str) -> None:
    x = _data()
    kw = dict(seeds=[1, 4], total_tokens=128 * 50, checkpoint_interval=128 * 15, dead_tokens_threshold=640,
              optimizer=optimizer, dtype=dtype, lr=None if optimizer == "signum" else 3e-3)
    straight = train(TensorSource(x), _cfg(tmp_path / "a", **kw))

    def stop_at_step_37(t: Trainer) -> None:  # after the checkpoint at step 30, before the one at 45
        if t.step == 37:
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(TensorSource(x), _cfg(tmp_path / "b", **kw)).fit(on_step=stop_at_step_37)
    resumed_trainer = Trainer(TensorSource(x), _cfg(tmp_path / "b", resume=True, **kw))
    resumed = resumed_trainer.fit()
    for seed in (1, 4):
        assert _same(straight[seed], resumed[seed]), seed
    with pytest.raises(ValueError, match="other settings"):
        Trainer(TensorSource(x), _cfg(tmp_path / "b", resume=True, **{**kw, "batch_size": 64})).fit()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Trainer(TensorSource(x), _cfg(tmp_path / "c", resume=True, **kw)).fit()


_KILLED_RUN = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)  # as in the test process, so that the weights can be compared bit for bit
    sys.path.insert(0, {tests!r})
    from test_train import _cfg, _data
    from pathlib import Path
    from sae_fast.activations import TensorSource
    from sae_fast.train import Trainer

    def slow(trainer):
        time.sleep(0.02)

    Trainer(TensorSource(_data()), _cfg(Path({tmp!r}), **{kw!r})).fit(on_step=slow)
""")


def test_resume_after_kill_9_gives_the_same_weights(tmp_path: Path) -> None:
    kw = dict(seeds=[0, 2], total_tokens=128 * 120, checkpoint_interval=128 * 20, log_interval=20)
    script = _KILLED_RUN.format(tests=str(Path(__file__).parent), tmp=str(tmp_path / "killed"), kw=kw)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpts = tmp_path / "killed" / "run" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.name.startswith("step_") for p in ckpts.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = Trainer(TensorSource(_data()), _cfg(tmp_path / "killed", resume=True, **kw))
    latest = resumed.latest_checkpoint()
    assert latest is not None and int(latest.name.split("_")[1]) < 120  # killed mid-run
    assert not (tmp_path / "killed" / "run" / "seed0").exists()
    resumed_saes = resumed.fit()
    straight = train(TensorSource(_data()), _cfg(tmp_path / "straight", **kw))
    for seed in (0, 2):
        assert _same(straight[seed], resumed_saes[seed]), seed


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_train_on_a_cache_saves_every_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sae_fast.cli import main

    save_tensor_cache(_data(), tmp_path / "cache")
    out = tmp_path / "cli_run"
    rc = main(["train", "--cache", str(tmp_path / "cache"), "--num-seeds", "3", "--num-latents", "32", "--k", "4",
               "--batch-size", "100", "--total-tokens", "1000", "--lr", "0.003", "--no-progress",
               "--output-dir", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "trained 3 SAEs" in printed and "seed2" in printed
    for seed in range(3):
        sae = load_sae(out / f"seed{seed}")
        assert (sae.d_in, sae.num_latents, sae.k) == (16, 32, 4)


def test_cli_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    from sae_fast.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        flag = "--no-progress" if f.name == "progress" else "--" + f.name.replace("_", "-")
        assert flag in text, f.name
    for option in ("--cache", "--num-seeds", "--layer", "--module", "--cache-tokens", "--model"):
        assert option in text
    with pytest.raises(SystemExit):
        main(["cache", "--help"])
    assert "--out" in capsys.readouterr().out


def test_cli_train_defaults_path_caches_the_embedded_default_then_trains(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`sae-fast train` without --cache: MiniLM layer 3 over Shakespeare is cached under runs/, then seeds train."""
    from sae_fast.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--num-texts", "80", "--cache-tokens", "1000", "--num-latents", "64", "--k", "8",
               "--batch-size", "250", "--total-tokens", "1000", "--no-progress", "--seeds", "0", "1"])
    assert rc == 0
    caches = list((tmp_path / "runs" / "activations").iterdir())
    assert len(caches) == 1 and caches[0].name.startswith("minilm-l3-shakespeare-1000")
    manifest = json.loads((caches[0] / "manifest.json").read_text())
    assert (manifest["d_in"], manifest["num_tokens"], manifest["hook"]) == (384, 1000, "layers.3")
    for seed in (0, 1):
        sae = load_sae(tmp_path / "runs" / "sae" / f"seed{seed}")
        assert (sae.d_in, sae.num_latents, sae.k) == (384, 64, 8)
        meta = read_cfg(tmp_path / "runs" / "sae" / f"seed{seed}")["sae_fast"]
        assert meta["source"]["model"].endswith("MiniLM-L6-v2") and meta["seed"] == seed


def test_wandb_is_used_when_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    calls: dict[str, list] = {"init": [], "log": [], "finish": []}

    class Run:
        def log(self, payload: dict, step: int) -> None:
            calls["log"].append((step, payload))

        def finish(self) -> None:
            calls["finish"].append(True)

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls["init"].append(kw) or Run()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train(TensorSource(_data()), _cfg(tmp_path, seeds=[0, 9], total_tokens=128 * 10, wandb_project="sae-seeds"))
    assert calls["init"][0]["project"] == "sae-seeds" and calls["finish"] == [True]
    steps = [step for step, _ in calls["log"]]
    assert steps == [5, 10]
    assert {"seed0/fvu", "seed9/fvu", "seed9/dead_fraction", "seed0/l0", "tokens_per_s"} <= set(calls["log"][-1][1])


@pytest.mark.gpu
def test_multi_seed_training_on_cuda_matches_separate_runs_and_resumes(tmp_path: Path) -> None:
    """On a GPU the kernels may sum in another order run to run (atomics): equal up to rounding."""
    x = _data(n=8192, d=64, latents=256)
    kw = dict(num_latents=256, k=8, batch_size=1024, total_tokens=1024 * 20, checkpoint_interval=1024 * 10,
              device="cuda")
    together = train(TensorSource(x), _cfg(tmp_path / "t", seeds=[0, 1], **kw))
    alone = train(TensorSource(x), _cfg(tmp_path / "a", seeds=[1], **kw))
    for name in PARAMS:
        torch.testing.assert_close(getattr(together[1], name), getattr(alone[1], name), rtol=1e-3, atol=1e-4)
    assert together[0].W_dec.is_cuda
    with pytest.raises(Interrupt):
        Trainer(TensorSource(x), _cfg(tmp_path / "r", seeds=[0, 1], **kw)).fit(
            on_step=lambda t: (_ for _ in ()).throw(Interrupt()) if t.step == 15 else None)
    resumed = Trainer(TensorSource(x), _cfg(tmp_path / "r", seeds=[0, 1], resume=True, **kw)).fit()
    for name in PARAMS:
        torch.testing.assert_close(getattr(resumed[0], name), getattr(together[0], name), rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------- audit fixes


def _interrupted(tmp: Path, x: torch.Tensor, stop_at: int = 7, **kw) -> dict:
    """A run of 10 steps (checkpoint every 5) interrupted after step ``stop_at``; returns its settings."""
    kw = dict(seeds=[0], batch_size=100, total_tokens=1000, checkpoint_interval=500, log_interval=2, **kw)

    def stop(t: Trainer) -> None:
        if t.step == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(TensorSource(x), _cfg(tmp, **kw)).fit(on_step=stop)
    return kw


def test_a_corrupt_byte_in_any_checkpoint_file_is_refused_on_resume(tmp_path: Path) -> None:
    from sae_fast.checkpoint import CheckpointError

    x = _data(2000)
    kw = _interrupted(tmp_path, x)
    trainer = Trainer(TensorSource(x), _cfg(tmp_path, resume=True, **kw))
    folder = trainer.latest_checkpoint()
    assert folder is not None
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert {p.name for p in files} == {"trainer_state.json", "optimizer.pt", "sae.safetensors", "cfg.json",
                                       "train_state.safetensors"}
    for file in files:
        original = file.read_bytes()
        corrupt = bytearray(original)
        corrupt[len(corrupt) // 2] ^= 0x01
        file.write_bytes(bytes(corrupt))
        with pytest.raises(CheckpointError, match=file.name):
            trainer.load_checkpoint()
        file.write_bytes(original)
    trainer.load_checkpoint()
    assert trainer.step == 5


def test_resume_checks_the_data_source_and_compares_resolved_settings(tmp_path: Path) -> None:
    x = _data(2000)
    kw = _interrupted(tmp_path / "a", x)
    other = _data(1500, seed=1)
    with pytest.raises(ValueError, match=r"data source in .* other settings \(.*num_tokens: saved"):
        Trainer(TensorSource(other), _cfg(tmp_path / "a", resume=True, **kw)).fit()
    same_shape = x.clone()
    same_shape[::7] += 1.0
    with pytest.raises(ValueError, match=r"data source in .* other settings \(.*sample_sha256: saved"):
        Trainer(TensorSource(same_shape), _cfg(tmp_path / "a", resume=True, **kw)).fit()
    with pytest.raises(ValueError, match=r"d_in: saved 16, requested 8"):
        Trainer(TensorSource(x[:, :8]), _cfg(tmp_path / "a", resume=True, **kw)).fit()
    # num_latents=None with expansion factor 3 and an explicit 48 both resolve to F = 48 (d = 16): accepted.
    kw = _interrupted(tmp_path / "b", x, num_latents=None, expansion_factor=3)
    resumed = Trainer(TensorSource(x), _cfg(tmp_path / "b", resume=True, **{**kw, "num_latents": 48}))
    resumed.fit()
    assert resumed.step == 10 and resumed.num_latents == 48


def test_resume_trims_the_log_to_the_checkpoint_and_removes_stale_temp_folders(tmp_path: Path) -> None:
    x = _data(2000)
    kw = _interrupted(tmp_path, x)
    stale = tmp_path / "run" / "checkpoints" / ".tmp_step_000000007"
    stale.mkdir()
    (stale / "junk").write_text("half a checkpoint")
    Trainer(TensorSource(x), _cfg(tmp_path, resume=True, **kw)).fit()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8, 10]
    assert not stale.exists()


def test_a_failed_checkpoint_write_leaves_no_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sae_fast.train import checkpointing as train_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(train_module, "atomic_save_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        train(TensorSource(_data(2000)), _cfg(tmp_path, seeds=[0], batch_size=100, total_tokens=1000))
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []


def test_wandb_run_id_is_saved_and_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    inits: list[dict] = []

    class Run:
        id = "run-abc"

        def log(self, payload: dict, step: int) -> None:
            pass

        def finish(self) -> None:
            pass

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: inits.append(kw) or Run()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    x = _data(2000)
    kw = _interrupted(tmp_path, x, wandb_project="p")
    Trainer(TensorSource(x), _cfg(tmp_path, resume=True, **kw)).fit()
    assert "id" not in inits[0] and (inits[1]["id"], inits[1]["resume"]) == ("run-abc", "must")


def test_low_memory_adam_rounding_noise_depends_on_the_seed(tmp_path: Path) -> None:
    trainer = Trainer(TensorSource(_data(2000)), _cfg(tmp_path, optimizer="low_memory_adam", dtype="bfloat16"))
    opts = [st.optimizer for st in trainer.states]
    assert [o._seed for o in opts] == [0, 1]
    noise = [torch.randint(0, 1 << 16, (64,), generator=o._generator(torch.device("cpu"))) for o in opts]
    assert not torch.equal(noise[0], noise[1])


def test_batch_larger_than_the_source_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"batch_size=4096 is larger than the source \(2000 tokens\)"):
        Trainer(TensorSource(_data(2000)), _cfg(tmp_path, batch_size=4096))
    assert not (tmp_path / "run").exists()


def test_metrics_per_seed_reach_the_console_without_a_progress_bar(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    train(TensorSource(_data(2000)), _cfg(tmp_path, seeds=[0, 7], batch_size=100, total_tokens=1000))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert len(lines) == 4 and lines[-1].startswith("step 10/10 seed 7: fvu")
    # logged every step (log.jsonl), printed about ten times a run and at the last step
    train(TensorSource(_data(4000)), _cfg(tmp_path / "b", seeds=[0], batch_size=100, total_tokens=4000,
                                          log_interval=1))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == [f"{s}/40" for s in (*range(1, 40, 4), 40)]
    assert len((tmp_path / "b" / "run" / "log.jsonl").read_text().splitlines()) == 40


def test_a_diverged_seed_stops_training_before_any_checkpoint_of_it(tmp_path: Path) -> None:
    """Non-finite weights (or losses) are caught at the next log or checkpoint, never saved; log.jsonl shows it."""
    def poison(t: Trainer) -> None:
        if t.step == 3:
            with torch.no_grad():
                t.states[1].sae.W_enc[0, 0] = float("nan")

    cfg = _cfg(tmp_path, checkpoint_interval=128 * 4, log_interval=10)
    with pytest.raises(FloatingPointError, match=r"seed\(s\) \[1\]"):
        Trainer(TensorSource(_data()), cfg).fit(on_step=poison)
    assert not list((tmp_path / "run" / "checkpoints").glob("step_*"))
    trainer = Trainer(TensorSource(_data()), _cfg(tmp_path / "c"))
    with torch.no_grad():
        trainer.states[0].sae.b_dec[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"seed\(s\) \[0\]"):
        trainer.save_final()
    assert not (tmp_path / "c" / "run" / "seed0").exists()

    def poison_loss(t: Trainer) -> None:
        if t.step == 3:
            t.states[0].metrics["fvu"] = t.states[0].metrics["fvu"] * float("inf")

    cfg = _cfg(tmp_path / "b", log_interval=4)
    with pytest.raises(FloatingPointError, match=r"seed\(s\) \[0\]"):
        Trainer(TensorSource(_data()), cfg).fit(on_step=poison_loss)
    rows = [json.loads(line) for line in (tmp_path / "b" / "run" / "log.jsonl").read_text().splitlines()]
    last = {r["seed"]: r for r in rows if r["step"] == 4}
    assert last[0]["fvu"] == float("inf") and last[1]["fvu"] < 1
