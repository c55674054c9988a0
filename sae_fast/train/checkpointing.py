"""Checkpoints of a training run: written atomically with the SHA-256 of every file, read back verified.

Layout under ``output_dir``::

    checkpoints/step_000001234/   the last complete checkpoint(s): trainer_state.json and, per seed,
                                  seed<s>/{sae.safetensors, cfg.json, optimizer.pt, train_state.safetensors}
    seed<s>/history/step<N>/      with ``history="log"``: the SAE of seed s after N steps (sae.safetensors,
                                  cfg.json), N = 0 (the initialisation, before b_dec is set from the first
                                  batch), 1, 2, 4, 8, ... and the last step

A checkpoint is written into a temp folder, every file fsynced, then renamed into place, so a crash leaves the
previous checkpoint intact; ``trainer_state.json`` (written last) records the SHA-256 of every file, of itself
and a fingerprint of the data source. Loading refuses a corrupt file (naming it), other settings or another
source (:func:`sae_fast.provenance.require_same`). History snapshots are written the same way (temp folder, then
rename), so a folder ``step<N>`` is always complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import distributed as dist_utils
from ..checkpoint import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write,
    atomic_write_json,
    fsync_dir,
    load_sae,
    load_safetensors,
    save_sae,
)
from ..provenance import require_same, sha256_file, to_jsonable
from .config import RESOLVED_FIELDS, RESUME_FIELDS
from .state import check_finite_state

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from .trainer import Trainer

STATE_FORMAT = "sae_fast.train/2"  # /2: SHA-256 of every file and of the state itself, the data source
LEGACY_FORMATS = ("sae_fast.train/1",)  # no checksums: still resumable
CHECKPOINTS = "checkpoints"
HISTORY = "history"


def file_digests(root: Path, folder: Path) -> dict[str, str]:
    """{path relative to root: SHA-256} of every (non-hidden) file under ``folder``."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of a trainer state (without its own ``sha256`` entry), over canonical JSON."""
    body = {k: v for k, v in state.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def rng_states(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """States of the generators an optimizer keeps outside its state_dict (LowMemoryAdam's stochastic rounding)."""
    generators = getattr(optimizer, "_generators", None) or {}
    return {f"rng/{device}": gen.get_state() for device, gen in generators.items()}


def set_rng_states(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Restores what :func:`rng_states` saved (keys ``rng/<device>``; other keys are ignored)."""
    make = getattr(optimizer, "_generator", None)
    for key, state in tensors.items():
        if key.startswith("rng/") and make is not None:
            gen = make(torch.device(key[4:]))
            if gen is not None:
                gen.set_state(state.cpu())


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any], device: torch.device) -> None:
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


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint folder in ``output_dir``, or None."""
    root = output_dir / CHECKPOINTS
    found = sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []
    return found[-1] if found else None


def remove_stale_temp_folders(output_dir: Path) -> None:
    """Delete checkpoint temp folders left by a run that was killed while writing one."""
    root = output_dir / CHECKPOINTS
    if root.is_dir():
        for tmp in root.glob(".tmp_step_*"):
            shutil.rmtree(tmp, ignore_errors=True)


def resume_config(trainer: Trainer) -> dict[str, Any]:
    """The settings a resumed run must share, with F and the learning rate as resolved."""
    mine = {k: getattr(trainer.cfg, k) for k in RESUME_FIELDS if k not in RESOLVED_FIELDS}
    return to_jsonable(mine)


def sae_metadata(trainer: Trainer, seed: int) -> dict[str, Any]:
    """What a saved SAE records of its run (``cfg.json["sae_fast"]``)."""
    return {"seed": seed, "step": trainer.step, "tokens": trainer.tokens_seen, "source": trainer.source.describe(),
            "train_config": {k: getattr(trainer.cfg, k) for k in RESUME_FIELDS}, "lr": trainer.lr}


def _write_seed_files(trainer: Trainer, tmp: Path) -> dict[str, str]:
    """Writes every local seed's SAE, optimizer and counters under ``tmp``; returns their SHA-256s."""
    digests: dict[str, str] = {}
    for st in trainer.states:
        folder = tmp / f"seed{st.seed}"
        save_sae(st.sae, folder, metadata=sae_metadata(trainer, st.seed))
        buffer = io.BytesIO()
        torch.save(st.optimizer.state_dict(), buffer)
        atomic_write(folder / "optimizer.pt", lambda f, b=buffer: f.write(b.getvalue()))
        atomic_save_safetensors({"tokens_since_fired": st.tokens_since_fired, **rng_states(st.optimizer)},
                                folder / "train_state.safetensors")
        digests.update(file_digests(tmp, folder))  # each writing rank hashes its own seeds
    return digests


def _trainer_state(trainer: Trainer, files: dict[str, str]) -> dict[str, Any]:
    state = {"format": STATE_FORMAT, "step": trainer.step, "tokens": trainer.tokens_seen, "seeds": trainer.cfg.seeds,
             "config": resume_config(trainer), "d_in": trainer.d_in, "num_latents": trainer.num_latents,
             "lr": trainer.lr, "world_size": trainer.world_size, "source": trainer.source.fingerprint(),
             "wandb_run_id": trainer.log.wandb_id, "files": files}
    state = to_jsonable(state)
    return {**state, "sha256": state_digest(state)}


def _publish(trainer: Trainer, tmp: Path, final: Path, files: dict[str, str]) -> None:
    """Rank 0: trainer_state.json into ``tmp``, ``tmp`` renamed to ``final``, older checkpoints pruned."""
    root = final.parent
    if final.exists():  # already written (resumed at the end of a finished run)
        shutil.rmtree(tmp)
        return
    atomic_write_json(tmp / "trainer_state.json", _trainer_state(trainer, files))
    fsync_dir(tmp)
    os.replace(tmp, final)
    fsync_dir(root)
    complete = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in complete[:-trainer.cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(trainer: Trainer) -> Path:
    """Writes a complete checkpoint of every seed at the trainer's step (atomically) and returns its folder."""
    check_finite_state(trainer.states, trainer.step)
    root = trainer.output_dir / CHECKPOINTS
    final = root / f"step_{trainer.step:09d}"
    tmp = root / f".tmp_step_{trainer.step:09d}"
    try:
        if trainer.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        dist_utils.barrier()
        digests = _write_seed_files(trainer, tmp) if trainer.owns_files() and not final.exists() else {}
        files = {name: digest for part in dist_utils.all_gather_objects(digests) for name, digest in part.items()}
        if trainer.rank == 0:
            _publish(trainer, tmp, final, files)
    except BaseException:
        if trainer.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist_utils.barrier()
    return final


def read_state(folder: Path) -> dict[str, Any]:
    """The checkpoint's trainer_state.json, checked against its own SHA-256; CheckpointError when corrupt."""
    state_file = folder / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"resume: {state_file} is missing or corrupt: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") not in (STATE_FORMAT, *LEGACY_FORMATS):
        raise CheckpointError(f"resume: {state_file} is not a sae_fast training state (or is corrupt)")
    if state["format"] == STATE_FORMAT and state.get("sha256") != state_digest(state):
        raise CheckpointError(f"resume: {state_file} is corrupt: its contents do not match its SHA-256")
    return state


def verify_files(folder: Path, files: dict[str, str], prefix: str) -> None:
    """CheckpointError naming the first file under ``prefix`` that is missing or fails its recorded SHA-256."""
    for name, digest in files.items():
        if not name.startswith(prefix):
            continue
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"resume: checkpoint file {file} is missing")
        if sha256_file(file) != digest:
            raise CheckpointError(f"resume: checkpoint file {file} is corrupt (SHA-256 mismatch)")
    if not any(name.startswith(prefix) for name in files):
        raise CheckpointError(f"resume: {folder / prefix} is not recorded in the checkpoint's trainer_state.json")


def check_compatible(trainer: Trainer, folder: Path, state: dict[str, Any]) -> None:
    """SettingsMismatch (a ValueError) naming every setting, and every field of the data source's fingerprint,
    that differs between the checkpoint and the run resuming from it."""
    saved = {**(state.get("config") or {}), **{k: state[k] for k in ("d_in", "num_latents", "lr") if k in state}}
    now = {**resume_config(trainer), **{k: getattr(trainer, k) for k in ("d_in", "num_latents", "lr") if k in state}}
    hint = "resume with the settings of the checkpoint, or choose another output_dir"
    require_same(saved, now, what="the training checkpoint", where=folder, hint=hint)
    source = state.get("source")
    if source is not None:
        require_same(source, to_jsonable(trainer.source.fingerprint()), what="the training checkpoint's data source",
                     where=folder, hint="resume on the data source the run was started on")


def load_checkpoint(trainer: Trainer, folder: Path) -> None:
    """Restores every local seed of ``trainer`` (weights, optimizer, counters, RNGs) and its step from ``folder``."""
    state = read_state(folder)
    check_compatible(trainer, folder, state)
    files = state.get("files")
    for st in trainer.states:
        seed_dir = folder / f"seed{st.seed}"
        if files is not None:
            verify_files(folder, files, f"seed{st.seed}/")
        sae = load_sae(seed_dir, device=trainer.device, dtype=trainer.dtype)
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(st.sae, name).copy_(getattr(sae, name))
        try:
            opt_state = torch.load(seed_dir / "optimizer.pt", map_location=trainer.device, weights_only=True)
            load_optimizer_state(st.optimizer, opt_state, trainer.device)
        except Exception as exc:
            raise CheckpointError(f"resume: {seed_dir / 'optimizer.pt'} is missing or corrupt: {exc}") from exc
        counters = load_safetensors(seed_dir / "train_state.safetensors", device=trainer.device)
        st.tokens_since_fired.copy_(counters["tokens_since_fired"])
        set_rng_states(st.optimizer, counters)
    trainer.step = int(state["step"])
    trainer.log.wandb_id = state.get("wandb_run_id")


def history_due(step: int, num_steps: int) -> bool:
    """True at the steps a ``history="log"`` run keeps: 0, the powers of two, and the last step."""
    return step == 0 or step == num_steps or (step & (step - 1)) == 0


def save_history(trainer: Trainer) -> None:
    """Writes every local seed's SAE at the current step to ``seed<s>/history/step<N>/`` (temp folder, then
    rename; a folder already there, e.g. from before a resume, is kept: the replayed step is bit-identical)."""
    check_finite_state(trainer.states, trainer.step)  # on every rank: it gathers
    if not trainer.owns_files():
        return
    for st in trainer.states:
        root = trainer.output_dir / f"seed{st.seed}" / HISTORY
        final = root / f"step{trainer.step}"
        if final.is_dir():
            continue
        tmp = root / f".tmp_step{trainer.step}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_sae(st.sae, tmp, metadata=sae_metadata(trainer, st.seed))
            fsync_dir(tmp)
            os.replace(tmp, final)
            fsync_dir(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def save_final_sae(trainer: Trainer, st: Any) -> Path:
    """Writes seed ``st.seed``'s SAE to ``output_dir/seed<s>`` (sparsify layout) and returns the folder."""
    return save_sae(st.sae, trainer.output_dir / f"seed{st.seed}", metadata=sae_metadata(trainer, st.seed))
