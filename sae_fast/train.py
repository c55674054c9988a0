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

import ast
import hashlib
import inspect
import io
import itertools
import json
import math
import os
import queue
import shutil
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from . import distributed as dist_utils
from .activations import ActivationSource, check_finite
from .checkpoint import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write,
    atomic_write_json,
    fsync_dir,
    load_sae,
    load_safetensors,
    save_sae,
)

__all__ = ["TrainConfig", "Trainer", "field_docs", "train"]

_STATE_FORMAT = "sae_fast.train/2"  # /2: SHA-256 of every file and of the state itself, the data source
_LEGACY_FORMATS = ("sae_fast.train/1",)  # no checksums: still resumable
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONSOLE_LINES_PER_RUN = 10  # per-seed console lines over a run when there is no progress bar (every log -> jsonl)

# Optimizers: name -> base learning rate at 2**14 latents (scaled by 1/sqrt(num_latents / 2**14)).
_BASE_LR = {"adam": 2e-4, "low_memory_adam": 2e-4, "signum": 5e-3}
OPTIMIZERS = tuple(_BASE_LR)
DTYPES = tuple(_DTYPES)
B_DEC_INITS = ("geometric_median", "mean", "zeros")


@dataclass
class TrainConfig:
    """Hyperparameters of a multi-seed training run (every field is also a `sae-fast train` option).

    The defaults train small SAEs quickly on a CPU (4 seeds, 4x expansion, k = 16, 131k tokens); a study-scale run
    on a GPU sets e.g. num_latents=16384, k=64, batch_size=8192, total_tokens=50_000_000.
    """

    d_in: int | None = None
    """Width of the activations; None takes it from the source."""

    num_latents: int | None = None
    """Number of latents F; None means expansion_factor * d_in."""

    expansion_factor: int = 4
    """F = expansion_factor * d_in when num_latents is not given."""

    k: int = 16
    """Active latents per token (TopK)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    """One SAE per seed, all trained on the same batches; the init depends only on the seed."""

    batch_size: int = 1024
    """Activation vectors (tokens) per optimizer step."""

    total_tokens: int = 131_072
    """Tokens to train on (the run takes ceil(total_tokens / batch_size) steps; a cached source is cycled)."""

    lr: float | None = None
    """Learning rate; None means base / sqrt(num_latents / 2**14), base 2e-4 for Adam, 5e-3 for signum (sparsify)."""

    lr_warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 over this many steps."""

    optimizer: str = "adam"
    """'adam' (torch.optim.Adam, fused on CUDA), 'low_memory_adam' (bf16 moments) or 'signum' (sign descent)."""

    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's (beta1, beta2)."""

    adam_eps: float = 6.25e-10
    """Adam's epsilon (OpenAI's value)."""

    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss that revives dead latents; 0 turns it off."""

    k_aux: int | None = None
    """Dead latents used by AuxK per token; None means d_in // 2."""

    dead_tokens_threshold: int = 10_000_000
    """A latent is dead after this many tokens without firing."""

    b_dec_init: str = "geometric_median"
    """How b_dec is set from the first batch: 'geometric_median', 'mean' or 'zeros'."""

    dtype: str = "float32"
    """Parameter dtype: 'float32', 'bfloat16' or 'float16'."""

    device: str | None = None
    """'cuda', 'cuda:1', 'cpu', ...; None picks the rank's GPU when there is one, else the CPU."""

    data_seed: int = 0
    """Seed of the batch order (shared by all SAE seeds)."""

    checkpoint_interval: int = 10_000_000
    """Write a checkpoint every this many tokens (and always at the end); 0 writes only the final one."""

    keep_checkpoints: int = 1
    """How many complete checkpoints to keep on disk."""

    log_interval: int = 10
    """Log every this many steps."""

    output_dir: str = "runs/sae"
    """Folder for the SAEs, checkpoints and logs."""

    resume: bool = False
    """Continue from the newest complete checkpoint in output_dir (same data order, same result)."""

    progress: bool = True
    """Show a tqdm progress bar (rank 0 only)."""

    wandb_project: str | None = None
    """Also log to this Weights & Biases project (if wandb is installed)."""

    def __post_init__(self) -> None:
        def positive_int(name: str, value: Any, allow_none: bool = False, allow_zero: bool = False) -> None:
            if value is None and allow_none:
                return
            ok = isinstance(value, int) and not isinstance(value, bool) and (value > 0 or (allow_zero and value == 0))
            if not ok:
                raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} int, got {value!r}")

        positive_int("d_in", self.d_in, allow_none=True)
        positive_int("num_latents", self.num_latents, allow_none=True)
        positive_int("expansion_factor", self.expansion_factor)
        positive_int("k", self.k)
        positive_int("batch_size", self.batch_size)
        positive_int("total_tokens", self.total_tokens)
        positive_int("lr_warmup_steps", self.lr_warmup_steps, allow_zero=True)
        positive_int("k_aux", self.k_aux, allow_none=True)
        positive_int("dead_tokens_threshold", self.dead_tokens_threshold)
        positive_int("checkpoint_interval", self.checkpoint_interval, allow_zero=True)
        positive_int("keep_checkpoints", self.keep_checkpoints)
        positive_int("log_interval", self.log_interval)
        self.seeds = list(self.seeds)
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        for s in self.seeds:
            if not isinstance(s, int) or isinstance(s, bool) or s < 0:
                raise ValueError(f"seeds must be non-negative ints, got {s!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        if not isinstance(self.data_seed, int) or self.data_seed < 0:
            raise ValueError(f"data_seed must be a non-negative int, got {self.data_seed!r}")
        if self.num_latents is not None and self.k > self.num_latents:
            raise ValueError(f"k={self.k} must not exceed num_latents={self.num_latents}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number or None, got {self.lr!r}")
        if self.optimizer not in _BASE_LR:
            raise ValueError(f"optimizer must be one of {sorted(_BASE_LR)}, got {self.optimizer!r}")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # type: ignore[assignment]
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be positive, got {self.adam_eps!r}")
        if not (self.auxk_alpha >= 0 and math.isfinite(self.auxk_alpha)):
            raise ValueError(f"auxk_alpha must be a non-negative number, got {self.auxk_alpha!r}")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init must be 'geometric_median', 'mean' or 'zeros', got {self.b_dec_init!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")

    def resolved_num_latents(self, d_in: int) -> int:
        """F for inputs of width ``d_in``."""
        return self.num_latents if self.num_latents is not None else self.expansion_factor * d_in

    def resolved_lr(self, num_latents: int) -> float:
        """The learning rate, with the 1/sqrt(F / 2**14) scaling when ``lr`` is None."""
        return self.lr if self.lr is not None else _BASE_LR[self.optimizer] / math.sqrt(num_latents / 2**14)

    @property
    def num_steps(self) -> int:
        """Optimizer steps of the whole run."""
        return -(-self.total_tokens // self.batch_size)


# Fields that must match between a checkpoint and the run that resumes from it.
_RESUME_FIELDS = ("num_latents", "expansion_factor", "k", "seeds", "batch_size", "lr", "lr_warmup_steps", "optimizer",
                  "adam_betas", "adam_eps", "auxk_alpha", "k_aux", "dead_tokens_threshold", "b_dec_init", "dtype",
                  "data_seed")
# Compared through their resolved values (num_latents, lr) rather than as given.
_RESOLVED_FIELDS = ("num_latents", "expansion_factor", "lr")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _diverged(seeds: list[int], step: int) -> FloatingPointError:
    return FloatingPointError(
        f"training diverged: seed(s) {seeds} have non-finite losses or weights at step {step}; no checkpoint was "
        "written after it. Check the activations, or start a new run with a lower lr (a resume replays the same "
        "steps with the same settings)"
    )


def _file_digests(root: Path, folder: Path) -> dict[str, str]:
    """{path relative to root: SHA-256} of every (non-hidden) file under ``folder``."""
    return {str(p.relative_to(root)): _sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of a trainer state (without its own ``sha256`` entry), over canonical JSON."""
    body = {k: v for k, v in state.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (what `--help` shows)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


@dataclass
class _SeedState:
    """Everything one seed owns."""

    seed: int
    sae: Any
    optimizer: torch.optim.Optimizer
    tokens_since_fired: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    metric_steps: int = 0


def _make_optimizer(name: str, params: list[torch.nn.Parameter], lr: float, cfg: TrainConfig,
                    seed: int = 0) -> torch.optim.Optimizer:
    """The optimizer of one SAE; ``seed`` (the SAE's) seeds LowMemoryAdam's stochastic rounding."""
    from .optim import make_optimizer

    if name == "signum":
        return make_optimizer(name, params, lr)
    if name == "low_memory_adam":
        return make_optimizer(name, params, lr, betas=cfg.adam_betas, eps=cfg.adam_eps, seed=seed)
    return make_optimizer(name, params, lr, betas=cfg.adam_betas, eps=cfg.adam_eps)


def _rng_states(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """States of the generators an optimizer keeps outside its state_dict (LowMemoryAdam's stochastic rounding)."""
    generators = getattr(optimizer, "_generators", None) or {}
    return {f"rng/{device}": gen.get_state() for device, gen in generators.items()}


def _load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any], device: torch.device) -> None:
    """``optimizer.load_state_dict(saved)``, keeping each state tensor's saved dtype.

    torch casts floating-point state to the parameter's dtype on load, which would turn bf16 moments
    (LowMemoryAdam, signum) into fp32 ones and make a resumed run differ from an uninterrupted one.
    """
    optimizer.load_state_dict(saved)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, state in saved["state"].items():
        live = optimizer.state[params[int(index)]]
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and live[key].dtype != value.dtype:
                live[key] = value.to(device)


def _set_rng_states(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    make = getattr(optimizer, "_generator", None)
    for key, state in tensors.items():
        if key.startswith("rng/") and make is not None:
            gen = make(torch.device(key[4:]))
            if gen is not None:
                gen.set_state(state.cpu())


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
    """Trains ``cfg.seeds`` TopK SAEs on ``source`` (see the module docstring); ``fit()`` runs it."""

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
        self.dtype = _DTYPES[cfg.dtype]
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
        self._wandb: Any = None
        self._wandb_id: str | None = None
        self._console_step: int | None = None  # last step printed to the console (no progress bar)
        self._bar: Any = None

    # ------------------------------------------------------------------------------------------------------
    def _pick_device(self, device: str | None) -> torch.device:
        if device is not None:
            return torch.device(device)
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")

    def _new_state(self, seed: int) -> _SeedState:
        from .sae import TopKSAE

        sae = TopKSAE(self.d_in, self.num_latents, self.cfg.k, dtype=self.dtype, device=self.device, seed=seed)
        optimizer = _make_optimizer(self.cfg.optimizer, list(sae.parameters()), self.lr, self.cfg, seed=seed)
        counter = torch.zeros(self.num_latents, dtype=torch.int64, device=self.device)
        return _SeedState(seed, sae, optimizer, counter)

    @property
    def saes(self) -> dict[int, Any]:
        """The SAEs this process trains, by seed (all seeds in a single process)."""
        return {st.seed: st.sae for st in self.states}

    @property
    def tokens_seen(self) -> int:
        return self.step * self.cfg.batch_size

    def _lr_at(self, step: int) -> float:
        warm = self.cfg.lr_warmup_steps
        return self.lr * min(1.0, (step + 1) / warm) if warm > 0 else self.lr

    # ------------------------------------------------------------------------------------------------------
    def fit(self, on_step: Callable[[Trainer], None] | None = None) -> dict[int, Any]:
        """Train to ``cfg.total_tokens``; ``on_step(trainer)`` runs after every step. Returns ``self.saes``."""
        cfg = self.cfg
        if cfg.resume:
            self.load_checkpoint()
        elif (self.output_dir / "checkpoints").is_dir() and any((self.output_dir / "checkpoints").glob("step_*")):
            raise FileExistsError(f"{self.output_dir} already holds checkpoints of a run: resume it (resume=True, "
                                  "--resume) or choose another output_dir")
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temp_folders()
            if cfg.resume:
                self._truncate_log()
            atomic_write_json(self.output_dir / "config.json", {
                "train_config": asdict(cfg), "source": self.source.describe(), "d_in": self.d_in,
                "num_latents": self.num_latents, "lr": self.lr, "world_size": self.world_size,
                "data_parallel": self.data_parallel})
            self._start_logging()
        dist_utils.barrier()
        num_steps = cfg.num_steps
        try:
            if self.step < num_steps:
                batches = _prefetch(self.source.iter_batches(cfg.batch_size, seed=cfg.data_seed, start=self.step),
                                    2, self.device)
                last_log = time.perf_counter()
                last_log_step = self.step
                next_ckpt = self._next_checkpoint_tokens()
                try:
                    for batch in batches:
                        self._train_step(batch)
                        self.step += 1
                        if self.step % cfg.log_interval == 0 or self.step == num_steps:
                            now = time.perf_counter()
                            self._log((self.step - last_log_step) * cfg.batch_size / max(now - last_log, 1e-9))
                            last_log, last_log_step = now, self.step
                        if self.step < num_steps and next_ckpt is not None and self.tokens_seen >= next_ckpt:
                            self.save_checkpoint()
                            next_ckpt = self._next_checkpoint_tokens()
                        if on_step is not None:
                            on_step(self)
                        if self.step >= num_steps:
                            break
                finally:
                    batches.close()  # type: ignore[attr-defined]
            self.save_checkpoint()
            self.save_final()
        finally:
            self._stop_logging()
        return self.saes

    def _remove_stale_temp_folders(self) -> None:
        """Delete checkpoint temp folders left by a run that was killed while writing one."""
        ckpt_root = self.output_dir / "checkpoints"
        if ckpt_root.is_dir():
            for tmp in ckpt_root.glob(".tmp_step_*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def _truncate_log(self) -> None:
        """Keep only the log rows up to the resumed step (an interrupted run may have logged past it)."""
        log = self.output_dir / "log.jsonl"
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
        cfg = self.cfg
        if batch.dim() != 2 or batch.shape[1] != self.d_in:
            raise ValueError(f"the source gave a batch of shape {tuple(batch.shape)}, expected (N, {self.d_in})")
        x = batch.to(self.device, non_blocking=True).to(self.dtype)
        check_finite(x, f"training batch {self.step}")
        n_tokens = x.shape[0]
        if self.step == 0 and cfg.b_dec_init != "zeros":
            for st in self.states:
                st.sae.init_b_dec_from_data(x, method=cfg.b_dec_init)
        if self.data_parallel:
            # each rank's losses use the whole batch's variance: they sum over ranks to the global FVU / AuxK,
            # for any split (a 1-row or empty slice included)
            xf = x.float()
            total_variance = (xf - xf.mean(0)).pow(2).sum()
            x_local = torch.tensor_split(x, self.world_size)[self.rank]
        else:
            x_local, total_variance = x, None
        lr = self._lr_at(self.step)
        for st in self.states:
            sae = st.sae
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
            sae.remove_gradient_parallel_to_decoder_directions()
            for group in st.optimizer.param_groups:
                group["lr"] = lr
            st.optimizer.step()
            sae.set_decoder_norm_to_unit_norm()
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
    def _accumulate(st: _SeedState, values: dict[str, torch.Tensor]) -> None:
        for name, v in values.items():
            st.metrics[name] = st.metrics[name] + v if name in st.metrics else v.clone()
        st.metric_steps += 1

    # ------------------------------------------------------------------------------------------------------
    def _start_logging(self) -> None:
        if self.cfg.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.cfg.num_steps * self.cfg.batch_size, initial=self.tokens_seen, unit="tok",
                             unit_scale=True, desc=f"training {len(self.cfg.seeds)} seeds", dynamic_ncols=True)
        if self.cfg.wandb_project:
            try:
                import wandb
            except ImportError:
                print("sae-fast: wandb is not installed; logging to log.jsonl only")
            else:
                resume = {"id": self._wandb_id, "resume": "must"} if self._wandb_id else {}
                self._wandb = wandb.init(project=self.cfg.wandb_project, config=asdict(self.cfg),
                                         dir=str(self.output_dir), **resume)
                self._wandb_id = getattr(self._wandb, "id", None) or self._wandb_id

    def _stop_logging(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def _log(self, tokens_per_s: float) -> None:
        rows = []
        for st in self.states:
            n = max(st.metric_steps, 1)
            values = torch.stack([st.metrics.get(k, torch.zeros((), device=self.device)) / n
                                  for k in ("fvu", "auxk_loss", "l0")]).float()
            if self.data_parallel:
                dist_utils.all_reduce_sum_(values)
            dead = (st.tokens_since_fired >= self.cfg.dead_tokens_threshold).float().mean()
            fvu, auxk, l0 = values.tolist()
            rows.append({"step": self.step, "tokens": self.tokens_seen, "seed": st.seed, "fvu": fvu,
                         "explained_variance": 1.0 - fvu, "l0": l0, "dead_fraction": float(dead), "auxk_loss": auxk,
                         "lr": self._lr_at(self.step - 1), "tokens_per_s": tokens_per_s})
            st.metrics, st.metric_steps = {}, 0
        if self.data_parallel:
            all_rows = rows if self.rank == 0 else []
            seen = rows  # all-reduced: the same on every rank
        else:
            all_rows = seen = [r for part in dist_utils.all_gather_objects(rows) for r in part]
        diverged = sorted(r["seed"] for r in seen if not (math.isfinite(r["fvu"]) and math.isfinite(r["auxk_loss"])))
        if self.rank != 0:
            if diverged:
                raise _diverged(diverged, self.step)
            return
        all_rows.sort(key=lambda r: self.cfg.seeds.index(r["seed"]))
        with open(self.output_dir / "log.jsonl", "a") as f:
            for row in all_rows:
                f.write(json.dumps(row) + "\n")
        if diverged:  # logged first, so that log.jsonl shows it
            raise _diverged(diverged, self.step)
        mean = {k: sum(r[k] for r in all_rows) / len(all_rows) for k in ("fvu", "l0", "dead_fraction")}
        if self._bar is not None:
            self._bar.n = self.tokens_seen
            self._bar.set_postfix(fvu=f"{mean['fvu']:.4f}", l0=f"{mean['l0']:.1f}",
                                  dead=f"{100 * mean['dead_fraction']:.1f}%", tok_s=f"{tokens_per_s:,.0f}")
        elif not self.cfg.progress and self._console_due():
            for r in all_rows:
                print(f"step {self.step}/{self.cfg.num_steps} seed {r['seed']}: fvu {r['fvu']:.4f}  L0 {r['l0']:.1f}  "
                      f"dead {100 * r['dead_fraction']:.1f}%  {tokens_per_s:,.0f} tok/s", flush=True)
        if self._wandb is not None:
            payload = {f"seed{r['seed']}/{k}": r[k] for r in all_rows
                       for k in ("fvu", "explained_variance", "l0", "dead_fraction", "auxk_loss")}
            payload["tokens_per_s"] = tokens_per_s
            self._wandb.log(payload, step=self.step)

    def _console_due(self) -> bool:
        """Without a progress bar, per-seed lines about ten times a run (and at its last step), not every log."""
        every = max(1, math.ceil(self.cfg.num_steps / CONSOLE_LINES_PER_RUN))
        last = self._console_step
        if self.step < self.cfg.num_steps and last is not None and self.step - last < every:
            return False
        self._console_step = self.step
        return True

    # ------------------------------------------------------------------------------------------------------
    def _sae_metadata(self, seed: int) -> dict[str, Any]:
        return {"seed": seed, "step": self.step, "tokens": self.tokens_seen, "source": self.source.describe(),
                "train_config": {k: getattr(self.cfg, k) for k in _RESUME_FIELDS}, "lr": self.lr}

    def _owns_files(self) -> bool:
        return not self.data_parallel or self.rank == 0

    def save_checkpoint(self) -> Path:
        """Write a complete checkpoint of every seed at the current step (atomically) and return its folder.

        ``trainer_state.json``, written last, records the SHA-256 of every file of the checkpoint and of
        itself; :meth:`load_checkpoint` checks them all.
        """
        self._check_finite_state()
        ckpt_root = self.output_dir / "checkpoints"
        final = ckpt_root / f"step_{self.step:09d}"
        tmp = ckpt_root / f".tmp_step_{self.step:09d}"
        try:
            if self.rank == 0:
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir(parents=True)
            dist_utils.barrier()
            digests: dict[str, str] = {}
            if self._owns_files() and not final.exists():
                for st in self.states:
                    folder = tmp / f"seed{st.seed}"
                    save_sae(st.sae, folder, metadata=self._sae_metadata(st.seed))
                    buffer = io.BytesIO()
                    torch.save(st.optimizer.state_dict(), buffer)
                    atomic_write(folder / "optimizer.pt", lambda f, b=buffer: f.write(b.getvalue()))
                    atomic_save_safetensors({"tokens_since_fired": st.tokens_since_fired, **_rng_states(st.optimizer)},
                                            folder / "train_state.safetensors")
                    digests.update(_file_digests(tmp, folder))  # each writing rank hashes its own seeds
            files = {name: digest for part in dist_utils.all_gather_objects(digests) for name, digest in part.items()}
            if self.rank == 0:
                if final.exists():  # already written (resumed at the end of a finished run)
                    shutil.rmtree(tmp)
                else:
                    atomic_write_json(tmp / "trainer_state.json", self._trainer_state(files))
                    fsync_dir(tmp)
                    os.replace(tmp, final)
                    fsync_dir(ckpt_root)
                    complete = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
                    for old in complete[:-self.cfg.keep_checkpoints]:
                        shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        dist_utils.barrier()
        return final

    def _check_finite_state(self) -> None:
        """FloatingPointError on every rank when a seed's losses since the last log or its weights are not
        finite, so that no checkpoint of a diverged seed is ever written (a few host syncs per checkpoint)."""
        mine = [st.seed for st in self.states
                if not all(bool(torch.isfinite(v).all()) for v in st.metrics.values())
                or not all(bool(torch.isfinite(p).all()) for p in st.sae.parameters())]
        diverged = sorted({s for part in dist_utils.all_gather_objects(mine) for s in part})
        if diverged:
            raise _diverged(diverged, self.step)

    def _resume_config(self) -> dict[str, Any]:
        """The settings a resumed run must share, with F and the learning rate as resolved."""
        mine = {k: getattr(self.cfg, k) for k in _RESUME_FIELDS if k not in _RESOLVED_FIELDS}
        return json.loads(json.dumps(mine))

    def _trainer_state(self, files: dict[str, str]) -> dict[str, Any]:
        state = {"format": _STATE_FORMAT, "step": self.step, "tokens": self.tokens_seen, "seeds": self.cfg.seeds,
                 "config": self._resume_config(), "d_in": self.d_in, "num_latents": self.num_latents, "lr": self.lr,
                 "world_size": self.world_size, "source": self.source.fingerprint(),
                 "wandb_run_id": self._wandb_id, "files": files}
        return json.loads(json.dumps({**state, "sha256": _state_digest(state)}))

    def save_final(self) -> None:
        """Write each seed's SAE to ``output_dir/seed<s>`` (sparsify layout); FloatingPointError if one diverged."""
        self._check_finite_state()
        if self._owns_files():
            for st in self.states:
                save_sae(st.sae, self.output_dir / f"seed{st.seed}", metadata=self._sae_metadata(st.seed))
        dist_utils.barrier()

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder in output_dir, or None."""
        ckpt_root = self.output_dir / "checkpoints"
        found = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir()) if ckpt_root.is_dir() else []
        return found[-1] if found else None

    def load_checkpoint(self, path: str | os.PathLike[str] | None = None) -> None:
        """Restore every local seed from ``path`` (default: the newest complete checkpoint).

        Raises CheckpointError naming the file when any file fails its recorded SHA-256, and ValueError when
        the checkpoint was made with other settings or on another data source.
        """
        folder = Path(path) if path is not None else self.latest_checkpoint()
        if folder is None:
            raise FileNotFoundError(f"resume: no complete checkpoint under {self.output_dir / 'checkpoints'}")
        state = self._read_state(folder)
        self._check_compatible(folder, state)
        files = state.get("files")
        for st in self.states:
            seed_dir = folder / f"seed{st.seed}"
            if files is not None:
                self._verify_files(folder, files, f"seed{st.seed}/")
            sae = load_sae(seed_dir, device=self.device, dtype=self.dtype)
            with torch.no_grad():
                for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                    getattr(st.sae, name).copy_(getattr(sae, name))
            try:
                opt_state = torch.load(seed_dir / "optimizer.pt", map_location=self.device, weights_only=True)
                _load_optimizer_state(st.optimizer, opt_state, self.device)
            except Exception as exc:
                raise CheckpointError(f"resume: {seed_dir / 'optimizer.pt'} is missing or corrupt: {exc}") from exc
            counters = load_safetensors(seed_dir / "train_state.safetensors", device=self.device)
            st.tokens_since_fired.copy_(counters["tokens_since_fired"])
            _set_rng_states(st.optimizer, counters)
        self.step = int(state["step"])
        self._wandb_id = state.get("wandb_run_id")

    @staticmethod
    def _read_state(folder: Path) -> dict[str, Any]:
        state_file = folder / "trainer_state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"resume: {state_file} is missing or corrupt: {exc}") from exc
        if not isinstance(state, dict) or state.get("format") not in (_STATE_FORMAT, *_LEGACY_FORMATS):
            raise CheckpointError(f"resume: {state_file} is not a sae_fast training state (or is corrupt)")
        if state["format"] == _STATE_FORMAT and state.get("sha256") != _state_digest(state):
            raise CheckpointError(f"resume: {state_file} is corrupt: its contents do not match its SHA-256")
        return state

    @staticmethod
    def _verify_files(folder: Path, files: dict[str, str], prefix: str) -> None:
        for name, digest in files.items():
            if not name.startswith(prefix):
                continue
            file = folder / name
            if not file.is_file():
                raise CheckpointError(f"resume: checkpoint file {file} is missing")
            if _sha256_file(file) != digest:
                raise CheckpointError(f"resume: checkpoint file {file} is corrupt (SHA-256 mismatch)")
        if not any(name.startswith(prefix) for name in files):
            raise CheckpointError(f"resume: {folder / prefix} is not recorded in the checkpoint's trainer_state.json")

    def _check_compatible(self, folder: Path, state: dict[str, Any]) -> None:
        """ValueError naming every setting (and the data source) that differs from the checkpoint's."""
        theirs = state.get("config") or {}
        diff = {k: (theirs.get(k), v) for k, v in self._resume_config().items() if theirs.get(k) != v}
        for key, mine in (("d_in", self.d_in), ("num_latents", self.num_latents), ("lr", self.lr)):
            if key in state and state[key] != mine:
                diff[key] = (state[key], mine)
        if diff:
            raise ValueError(f"resume: the checkpoint {folder} was made with other settings: "
                             + ", ".join(f"{k}: {a!r} (checkpoint) vs {b!r} (now)" for k, (a, b) in diff.items()))
        saved, now = state.get("source"), json.loads(json.dumps(self.source.fingerprint()))
        if saved is not None and saved != now:
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ValueError(f"resume: the checkpoint {folder} was made on another data source (differs in "
                             + ", ".join(f"{k}: {saved.get(k)!r} (checkpoint) vs {now.get(k)!r} (now)"
                                         for k in changed) + ")")


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
