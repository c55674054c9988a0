"""Training many TopK SAEs that differ only in their seed, from one pass over the activations.

``train(source, TrainConfig(seeds=[0, 1, 2, 3]))`` trains one :class:`~sae_fast.sae.TopKSAE` per seed (the
loop and the output folder: :mod:`sae_fast.train.trainer`). Modules: ``config`` (:class:`TrainConfig`),
``trainer`` (:class:`Trainer`, the loop), ``step`` (the optimizer step with the decoder upkeep, also used by
:func:`sae_fast.analysis.pooling.refit`), ``state`` (what one seed owns), ``checkpointing`` (checkpoint and
history IO with SHA-256 checks, resume), ``logging`` (log.jsonl, tqdm, console, wandb).
"""

from __future__ import annotations

from .config import B_DEC_INITS, BASE_LR, DTYPE_OF, DTYPES, HISTORY_KINDS, OPTIMIZERS, TrainConfig, field_docs
from .logging import CONSOLE_LINES_PER_RUN
from .step import update
from .trainer import Trainer, train

__all__ = ["BASE_LR", "B_DEC_INITS", "CONSOLE_LINES_PER_RUN", "DTYPES", "DTYPE_OF", "HISTORY_KINDS", "OPTIMIZERS",
           "TrainConfig", "Trainer", "field_docs", "train", "update"]
