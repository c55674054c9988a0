"""What a training run reports while it runs: log.jsonl rows, a tqdm bar, console lines, Weights & Biases.

Every ``log_interval`` steps each seed's mean FVU, AuxK loss and L0 since the last log, its dead fraction, the
learning rate and the throughput go to ``log.jsonl`` (one row per seed, rank 0 writes). A seed whose losses are
not finite stops the run (after its row is written, so the log shows it).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from .. import distributed as dist_utils
from .state import diverged_error

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from .trainer import Trainer

CONSOLE_LINES_PER_RUN = 10  # per-seed console lines over a run when there is no progress bar (every log -> jsonl)
LOG_FILE = "log.jsonl"
SUMMARY_KEYS = ("fvu", "explained_variance", "l0", "dead_fraction", "auxk_loss")


class RunLog:
    """The reporting of one :class:`~sae_fast.train.Trainer` (rank 0 shows and writes; every rank gathers)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.wandb: Any = None
        self.wandb_id: str | None = None  # saved in checkpoints: a resumed run continues the same wandb run
        self.console_step: int | None = None  # last step printed to the console (no progress bar)

    def start(self, trainer: Trainer) -> None:
        """Opens the progress bar and, when asked for and installed, the wandb run."""
        cfg = trainer.cfg
        if cfg.progress:
            self.bar = tqdm(total=cfg.num_steps * cfg.batch_size, initial=trainer.tokens_seen, unit="tok",
                            unit_scale=True, desc=f"training {len(cfg.seeds)} seeds", dynamic_ncols=True)
        if cfg.wandb_project:
            try:
                import wandb  # optional dependency
            except ImportError:
                print("sae-fast: wandb is not installed; logging to log.jsonl only")
            else:
                resume = {"id": self.wandb_id, "resume": "must"} if self.wandb_id else {}
                self.wandb = wandb.init(project=cfg.wandb_project, config=asdict(cfg), dir=str(trainer.output_dir),
                                        **resume)
                self.wandb_id = getattr(self.wandb, "id", None) or self.wandb_id

    def stop(self) -> None:
        """Closes the bar and the wandb run."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def record(self, trainer: Trainer, tokens_per_s: float) -> None:
        """Logs every seed's metrics since the last call (and resets them); FloatingPointError if one diverged."""
        rows, seen = _gather_rows(trainer, tokens_per_s)
        diverged = sorted(r["seed"] for r in seen if not (math.isfinite(r["fvu"]) and math.isfinite(r["auxk_loss"])))
        if trainer.rank != 0:
            if diverged:
                raise diverged_error(diverged, trainer.step)
            return
        rows.sort(key=lambda r: trainer.cfg.seeds.index(r["seed"]))
        with open(trainer.output_dir / LOG_FILE, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        if diverged:  # logged first, so that log.jsonl shows it
            raise diverged_error(diverged, trainer.step)
        self._show(trainer, rows, tokens_per_s)

    def _show(self, trainer: Trainer, rows: list[dict[str, Any]], tokens_per_s: float) -> None:
        """The bar's postfix, or a few console lines per run without a bar, and the wandb payload."""
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("fvu", "l0", "dead_fraction")}
        if self.bar is not None:
            self.bar.n = trainer.tokens_seen
            self.bar.set_postfix(fvu=f"{mean['fvu']:.4f}", l0=f"{mean['l0']:.1f}",
                                 dead=f"{100 * mean['dead_fraction']:.1f}%", tok_s=f"{tokens_per_s:,.0f}")
        elif not trainer.cfg.progress and self._console_due(trainer.step, trainer.cfg.num_steps):
            for r in rows:
                print(f"step {trainer.step}/{trainer.cfg.num_steps} seed {r['seed']}: fvu {r['fvu']:.4f}  "
                      f"L0 {r['l0']:.1f}  dead {100 * r['dead_fraction']:.1f}%  {tokens_per_s:,.0f} tok/s", flush=True)
        if self.wandb is not None:
            payload = {f"seed{r['seed']}/{k}": r[k] for r in rows for k in SUMMARY_KEYS}
            payload["tokens_per_s"] = tokens_per_s
            self.wandb.log(payload, step=trainer.step)

    def _console_due(self, step: int, num_steps: int) -> bool:
        """Without a progress bar, per-seed lines about ten times a run (and at its last step), not every log."""
        every = max(1, math.ceil(num_steps / CONSOLE_LINES_PER_RUN))
        last = self.console_step
        if step < num_steps and last is not None and step - last < every:
            return False
        self.console_step = step
        return True


def _gather_rows(trainer: Trainer, tokens_per_s: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows rank 0 writes, rows every rank checks for divergence): one per seed, its metrics reset."""
    rows = []
    for st in trainer.states:
        n = max(st.metric_steps, 1)
        values = torch.stack([st.metrics.get(k, torch.zeros((), device=trainer.device)) / n
                              for k in ("fvu", "auxk_loss", "l0")]).float()
        if trainer.data_parallel:
            dist_utils.all_reduce_sum_(values)
        dead = (st.tokens_since_fired >= trainer.cfg.dead_tokens_threshold).float().mean()
        fvu, auxk, l0 = values.tolist()
        rows.append({"step": trainer.step, "tokens": trainer.tokens_seen, "seed": st.seed, "fvu": fvu,
                     "explained_variance": 1.0 - fvu, "l0": l0, "dead_fraction": float(dead), "auxk_loss": auxk,
                     "lr": trainer.lr_at(trainer.step - 1), "tokens_per_s": tokens_per_s})
        st.metrics, st.metric_steps = {}, 0
    if trainer.data_parallel:
        return (rows if trainer.rank == 0 else []), rows  # all-reduced: the same on every rank
    everyone = [r for part in dist_utils.all_gather_objects(rows) for r in part]
    return everyone, everyone
