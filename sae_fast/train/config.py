"""The settings of a multi-seed training run (:class:`TrainConfig`) and the docs written under its fields."""

from __future__ import annotations

import ast
import inspect
import itertools
import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

import torch

DTYPE_OF = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Optimizers: name -> base learning rate at 2**14 latents (scaled by 1/sqrt(num_latents / 2**14)).
BASE_LR = {"adam": 2e-4, "low_memory_adam": 2e-4, "signum": 5e-3}
OPTIMIZERS = tuple(BASE_LR)
DTYPES = tuple(DTYPE_OF)
B_DEC_INITS = ("geometric_median", "mean", "zeros")
HISTORY_KINDS = ("none", "log")  # TrainConfig.history: no snapshots, or SAE weights at steps 0, 1, 2, 4, 8, ...


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

    history: str = "none"
    """'log' keeps every seed's SAE at steps 0, 1, 2, 4, 8, ... and the last, in seed<s>/history/step<N>/."""

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
        if self.optimizer not in BASE_LR:
            raise ValueError(f"optimizer must be one of {sorted(BASE_LR)}, got {self.optimizer!r}")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # type: ignore[assignment]
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be positive, got {self.adam_eps!r}")
        if not (self.auxk_alpha >= 0 and math.isfinite(self.auxk_alpha)):
            raise ValueError(f"auxk_alpha must be a non-negative number, got {self.auxk_alpha!r}")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init must be 'geometric_median', 'mean' or 'zeros', got {self.b_dec_init!r}")
        if self.history not in HISTORY_KINDS:
            raise ValueError(f"history must be one of {HISTORY_KINDS}, got {self.history!r}")
        if self.dtype not in DTYPE_OF:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_OF)}, got {self.dtype!r}")

    def resolved_num_latents(self, d_in: int) -> int:
        """F for inputs of width ``d_in``."""
        return self.num_latents if self.num_latents is not None else self.expansion_factor * d_in

    def resolved_lr(self, num_latents: int) -> float:
        """The learning rate, with the 1/sqrt(F / 2**14) scaling when ``lr`` is None."""
        return self.lr if self.lr is not None else BASE_LR[self.optimizer] / math.sqrt(num_latents / 2**14)

    @property
    def num_steps(self) -> int:
        """Optimizer steps of the whole run."""
        return -(-self.total_tokens // self.batch_size)


# Fields that must match between a checkpoint and the run that resumes from it.
RESUME_FIELDS = ("num_latents", "expansion_factor", "k", "seeds", "batch_size", "lr", "lr_warmup_steps", "optimizer",
                  "adam_betas", "adam_eps", "auxk_alpha", "k_aux", "dead_tokens_threshold", "b_dec_init", "dtype",
                  "data_seed")
# Compared through their resolved values (num_latents, lr) rather than as given.
RESOLVED_FIELDS = ("num_latents", "expansion_factor", "lr")


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

