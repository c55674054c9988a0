"""Training many TopK SAEs that differ only in their seed, from one pass over the activations.

``train(source, TrainConfig(seeds=[0, 1, 2, 3]))`` trains one :class:`~sae_fast.sae.TopKSAE` per seed. All
seeds see the same batches in the same order and each batch is read (or computed) once per step; per-seed
state (weights, optimizer, dead-latent counters) is independent and the initialisation depends only on the
seed. The recipe is Gao et al. (2024): decoder rows unit-norm after every step, the gradient component
parallel to each row removed before it, ``b_dec`` from the first batch, dead latents counted in tokens since
they last fired, AuxK on by default, Adam with ``lr = 2e-4 / sqrt(num_latents / 2**14)``.

Output folder (``output_dir``)::

    config.json                   the TrainConfig and the source's description
    log.jsonl                     one line per seed per log step: fvu, explained variance, L0, dead fraction, ...
    seed0/ sae.safetensors cfg.json   the final SAE of seed 0, in sparsify's layout (load_sae reads it)
    seed1/ ...
    checkpoints/step_000001234/   the last complete checkpoint: trainer_state.json and, per seed,
                                  seed<s>/{sae.safetensors, cfg.json, optimizer.pt, train_state.safetensors}
    seed0/history/step<N>/        with history="log": seed 0's SAE after N = 0, 1, 2, 4, ... steps and the last
                                  (sae.safetensors, cfg.json; load_sae reads it), each folder written atomically

A checkpoint is written into a temp folder, every file fsynced, then renamed into place, so a crash leaves
the previous checkpoint intact; ``trainer_state.json`` records the SHA-256 of every file and of itself, and a
description of the data source. ``resume=True`` continues from the newest complete checkpoint with the same
data order (refusing a corrupt checkpoint, other settings or another source), trims ``log.jsonl`` back to
the checkpoint's step, and gives bit-for-bit the weights of an uninterrupted run.

Under ``torchrun`` (``torch.distributed`` initialised), seeds are sharded across ranks (each rank trains
``seeds[rank::world_size]`` on the same batches); with a single seed, training is data-parallel (each rank
takes a slice of every batch, gradients are summed).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from .. import distributed as dist_utils
from ..activations import ActivationSource, check_finite
from ..checkpoint import atomic_write, atomic_write_json
from ..sae import TopKSAE
from . import checkpointing
from .config import DTYPE_OF, TrainConfig
from .logging import LOG_FILE, RunLog
from .state import SeedState, check_finite_state, seed_optimizer
from .step import update


def _prefetch(iterator: Iterator[torch.Tensor], depth: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Read batches in a background thread (and pin them when copying to a GPU), ``depth`` ahead."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def worker() -> None:
        try:
            for batch in iterator:
                if device.type == "cuda":
                    batch = batch.pin_memory()
                while not stop.is_set():
                    try:
                        q.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    thread = threading.Thread(target=worker, daemon=True, name="sae_fast-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)



class Trainer:
    """Trains ``cfg.seeds`` TopK SAEs on ``source`` (see the module docstring); ``fit()`` runs it.

    Memory per seed: the SAE (2 F d + F + d parameters), its optimizer state (2 more copies for Adam) and an
    (F,) int64 dead-latent counter; per step one batch (batch_size, d) and the SAE's sparse activations.
    """

    def __init__(self, source: ActivationSource, cfg: TrainConfig) -> None:
        if not isinstance(source, ActivationSource):
            raise TypeError(f"source must be an ActivationSource, got {type(source).__name__}")
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        if cfg.d_in is not None and cfg.d_in != source.d_in:
            raise ValueError(f"cfg.d_in={cfg.d_in} but the source gives vectors of width {source.d_in}")
        self.source = source
        self.cfg = cfg
        self.d_in = source.d_in
        self.num_latents = cfg.resolved_num_latents(self.d_in)
        if cfg.k > self.num_latents:
            raise ValueError(f"k={cfg.k} must not exceed num_latents={self.num_latents}")
        self.lr = cfg.resolved_lr(self.num_latents)
        n_tokens = source.num_tokens
        if n_tokens is not None and cfg.batch_size > n_tokens:
            raise ValueError(f"batch_size={cfg.batch_size} is larger than the source ({n_tokens} tokens): use a "
                             "smaller batch size or more activations")
        self.k_aux = min(cfg.k_aux if cfg.k_aux is not None else max(1, self.d_in // 2), self.num_latents)
        self.dtype = DTYPE_OF[cfg.dtype]
        self.rank, self.world_size = dist_utils.get_rank(), dist_utils.get_world_size()
        self.data_parallel = self.world_size > 1 and len(cfg.seeds) == 1
        if self.world_size > 1 and not self.data_parallel and len(cfg.seeds) < self.world_size:
            raise ValueError(f"{len(cfg.seeds)} seeds cannot be sharded over {self.world_size} ranks: use at most "
                             f"{len(cfg.seeds)} processes, or one seed for data-parallel training")
        self.local_seeds = list(cfg.seeds) if self.data_parallel else dist_utils.shard(cfg.seeds)
        self.device = self._pick_device(cfg.device)
        self.output_dir = Path(cfg.output_dir)
        self.step = 0
        self.states = [self._new_state(seed) for seed in self.local_seeds]
        self.log = RunLog()

    # ------------------------------------------------------------------------------------------------------
    def _pick_device(self, device: str | None) -> torch.device:
        if device is not None:
            return torch.device(device)
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")

    def _new_state(self, seed: int) -> SeedState:
        sae = TopKSAE(self.d_in, self.num_latents, self.cfg.k, dtype=self.dtype, device=self.device, seed=seed)
        optimizer = seed_optimizer(self.cfg.optimizer, list(sae.parameters()), self.lr, self.cfg, seed=seed)
        counter = torch.zeros(self.num_latents, dtype=torch.int64, device=self.device)
        return SeedState(seed, sae, optimizer, counter)

    @property
    def saes(self) -> dict[int, Any]:
        """The SAEs this process trains, by seed (all seeds in a single process)."""
        return {st.seed: st.sae for st in self.states}

    @property
    def tokens_seen(self) -> int:
        return self.step * self.cfg.batch_size

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (linear warm-up, then constant)."""
        warm = self.cfg.lr_warmup_steps
        return self.lr * min(1.0, (step + 1) / warm) if warm > 0 else self.lr

    def owns_files(self) -> bool:
        """Whether this rank writes its seeds' files (every rank, except in data-parallel runs: rank 0)."""
        return not self.data_parallel or self.rank == 0

    # ------------------------------------------------------------------------------------------------------
    def fit(self, on_step: Callable[[Trainer], None] | None = None) -> dict[int, Any]:
        """Train to ``cfg.total_tokens``; ``on_step(trainer)`` runs after every step. Returns ``self.saes``."""
        self._prepare()
        try:
            if self.step < self.cfg.num_steps:
                self._run_steps(on_step)
            self.save_checkpoint()
            self.save_final()
        finally:
            self.log.stop()
        return self.saes

    def _prepare(self) -> None:
        """Resume (or refuse to overwrite a run), write config.json, open the logs; every rank waits for rank 0."""
        cfg, ckpts = self.cfg, self.output_dir / checkpointing.CHECKPOINTS
        if cfg.resume:
            self.load_checkpoint()
        elif ckpts.is_dir() and any(ckpts.glob("step_*")):
            raise FileExistsError(f"{self.output_dir} already holds checkpoints of a run: resume it (resume=True, "
                                  "--resume) or choose another output_dir")
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            checkpointing.remove_stale_temp_folders(self.output_dir)
            if cfg.resume:
                self._truncate_log()
            atomic_write_json(self.output_dir / "config.json", {
                "train_config": asdict(cfg), "source": self.source.describe(), "d_in": self.d_in,
                "num_latents": self.num_latents, "lr": self.lr, "world_size": self.world_size,
                "data_parallel": self.data_parallel})
            self.log.start(self)
        dist_utils.barrier()

    def _run_steps(self, on_step: Callable[[Trainer], None] | None) -> None:
        """The loop from ``self.step`` to the last step: train, log, checkpoint, keep history snapshots."""
        cfg, num_steps = self.cfg, self.cfg.num_steps
        batches = _prefetch(self.source.iter_batches(cfg.batch_size, seed=cfg.data_seed, start=self.step), 2,
                            self.device)
        last_log, last_log_step = time.perf_counter(), self.step
        next_ckpt = self._next_checkpoint_tokens()
        self._keep_history()
        try:
            for batch in batches:
                self._train_step(batch)
                self.step += 1
                if self.step % cfg.log_interval == 0 or self.step == num_steps:
                    now = time.perf_counter()
                    self.log.record(self, (self.step - last_log_step) * cfg.batch_size / max(now - last_log, 1e-9))
                    last_log, last_log_step = now, self.step
                self._keep_history()
                if self.step < num_steps and next_ckpt is not None and self.tokens_seen >= next_ckpt:
                    self.save_checkpoint()
                    next_ckpt = self._next_checkpoint_tokens()
                if on_step is not None:
                    on_step(self)
                if self.step >= num_steps:
                    break
        finally:
            batches.close()  # type: ignore[attr-defined]

    def _keep_history(self) -> None:
        if self.cfg.history == "log" and checkpointing.history_due(self.step, self.cfg.num_steps):
            checkpointing.save_history(self)

    def _truncate_log(self) -> None:
        """Keep only the log rows up to the resumed step (an interrupted run may have logged past it)."""
        log = self.output_dir / LOG_FILE
        if not log.is_file():
            return
        kept = []
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a row cut short by the interruption
            if isinstance(row, dict) and int(row.get("step", 0)) <= self.step:
                kept.append(line + "\n")
        atomic_write(log, lambda f: f.write("".join(kept).encode()))

    def _next_checkpoint_tokens(self) -> int | None:
        interval = self.cfg.checkpoint_interval
        if interval == 0:
            return None
        return (self.tokens_seen // interval + 1) * interval

    # ------------------------------------------------------------------------------------------------------
    def _train_step(self, batch: torch.Tensor) -> None:
        """One step of every local seed on ``batch`` (the whole batch, or this rank's slice when data-parallel)."""
        if batch.dim() != 2 or batch.shape[1] != self.d_in:
            raise ValueError(f"the source gave a batch of shape {tuple(batch.shape)}, expected (N, {self.d_in})")
        x = batch.to(self.device, non_blocking=True).to(self.dtype)
        check_finite(x, f"training batch {self.step}")
        if self.step == 0 and self.cfg.b_dec_init != "zeros":
            for st in self.states:
                st.sae.init_b_dec_from_data(x, method=self.cfg.b_dec_init)
        if self.data_parallel:
            # each rank's losses use the whole batch's variance: they sum over ranks to the global FVU / AuxK,
            # for any split (a 1-row or empty slice included)
            xf = x.float()
            total_variance = (xf - xf.mean(0)).pow(2).sum()
            x_local = torch.tensor_split(x, self.world_size)[self.rank]
        else:
            x_local, total_variance = x, None
        lr = self.lr_at(self.step)
        for st in self.states:
            self._seed_step(st, x_local, x.shape[0], total_variance, lr)

    def _seed_step(self, st: SeedState, x_local: torch.Tensor, n_tokens: int, total_variance: torch.Tensor | None,
                   lr: float) -> None:
        """Forward, backward, the update with decoder upkeep (:func:`~sae_fast.train.step.update`), dead-latent
        counters and metrics of one seed."""
        cfg, sae = self.cfg, st.sae
        use_aux = cfg.auxk_alpha > 0
        dead = st.tokens_since_fired >= cfg.dead_tokens_threshold if use_aux else None
        # the batch was checked above and the losses are checked at every log and checkpoint: no per-step
        # finiteness scans (host syncs) inside the encoder
        out = sae(x_local, dead_mask=dead, k_aux=self.k_aux, total_variance=total_variance, check_finite=False)
        fvu, auxk = out.fvu, out.auxk_loss
        loss = fvu + cfg.auxk_alpha * auxk if use_aux else fvu
        st.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        fired = torch.zeros(self.num_latents, dtype=torch.int32, device=self.device)
        fired.index_fill_(0, out.indices[out.values > 0].flatten(), 1)
        if self.data_parallel:
            self._all_reduce_grads(sae)
            dist_utils.all_reduce_sum_(fired)
        update(sae, st.optimizer, lr=lr)
        st.tokens_since_fired += n_tokens
        st.tokens_since_fired[fired > 0] = 0
        with torch.no_grad():
            l0 = (out.values > 0).sum(dim=1).float().mean() if out.values.shape[0] else fvu.new_zeros(())
            if self.data_parallel:
                l0 = l0 * (x_local.shape[0] / n_tokens)  # summed over ranks below: token-weighted mean
            self._accumulate(st, {"fvu": fvu.detach().float(), "auxk_loss": auxk.detach().float(), "l0": l0})

    def _all_reduce_grads(self, sae: torch.nn.Module) -> None:
        for p in sae.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist_utils.all_reduce_sum_(p.grad)

    @staticmethod
    def _accumulate(st: SeedState, values: dict[str, torch.Tensor]) -> None:
        for name, v in values.items():
            st.metrics[name] = st.metrics[name] + v if name in st.metrics else v.clone()
        st.metric_steps += 1

    # ------------------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write a complete checkpoint of every seed at the current step (atomically) and return its folder.

        ``trainer_state.json``, written last, records the SHA-256 of every file of the checkpoint and of
        itself; :meth:`load_checkpoint` checks them all (see :mod:`sae_fast.train.checkpointing`).
        """
        return checkpointing.save_checkpoint(self)

    def save_final(self) -> None:
        """Write each seed's SAE to ``output_dir/seed<s>`` (sparsify layout); FloatingPointError if one diverged."""
        check_finite_state(self.states, self.step)
        if self.owns_files():
            for st in self.states:
                checkpointing.save_final_sae(self, st)
        dist_utils.barrier()

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder in output_dir, or None."""
        return checkpointing.latest_checkpoint(self.output_dir)

    def load_checkpoint(self, path: str | os.PathLike[str] | None = None) -> None:
        """Restore every local seed from ``path`` (default: the newest complete checkpoint).

        Raises CheckpointError naming the file when any file fails its recorded SHA-256, and ValueError
        (:class:`~sae_fast.provenance.SettingsMismatch`) when the checkpoint was made with other settings or on
        another data source.
        """
        folder = Path(path) if path is not None else self.latest_checkpoint()
        if folder is None:
            raise FileNotFoundError(f"resume: no complete checkpoint under {self.output_dir / 'checkpoints'}")
        checkpointing.load_checkpoint(self, folder)


def train(source: ActivationSource, cfg: TrainConfig | None = None, **overrides: Any) -> dict[int, Any]:
    """Train one TopK SAE per seed of ``cfg`` on ``source``; returns {seed: TopKSAE} (this rank's seeds).

    Keyword ``overrides`` replace fields of ``cfg`` (or of the default TrainConfig).
    """
    base = asdict(cfg) if cfg is not None else {}
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown TrainConfig fields: {unknown}")
    return Trainer(source, TrainConfig(**{**base, **overrides})).fit()
