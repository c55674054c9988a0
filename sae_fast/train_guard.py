"""A training run's output folder: finished SAEs are never overwritten unasked, and two runs never share it.

`claim_output_dir(output_dir, resume=..., overwrite=...)` is what `sae-fast train` (and any Python caller of the
trainer) enters before training: the folder is checked writable and locked against a second run (see
:func:`sae_fast.outdir.claim`). Without ``resume``, a folder holding trained SAEs (``seed*/sae.safetensors``) or
checkpoints or the log of an earlier run is refused, unless ``overwrite``, which first removes everything that
earlier run wrote (seed folders, checkpoints, ``log.jsonl``, ``config.json``, ``wandb/``) so nothing stale survives.
With ``resume``, the earlier run is what is continued; the trainer checks its checkpoint matches.

Memory and time: O(number of entries in the folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputDirError, UsageError
from .outdir import LOCK_FILE, claim

FINISHED = ("seed[0-9]*/sae.safetensors", "checkpoints/step_*", "log.jsonl")
"""Files whose presence means the folder holds (part of) a training run (a log alone: a run killed before its
first checkpoint, whose log a new run would otherwise continue)."""
RUN_FILES = ("seed[0-9]*", "checkpoints", "log.jsonl", "config.json", "wandb")
"""What a training run writes into its folder: removed by an overwrite."""


def earlier_run(output_dir: str | os.PathLike[str]) -> list[str]:
    """The files of an earlier training run in ``output_dir`` (relative paths, sorted; empty if none)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for pattern in FINISHED for p in folder.glob(pattern))


def _claimed_here(output_dir: str | os.PathLike[str]) -> bool:
    """Whether this very process holds the folder's lock."""
    try:
        info = json.loads((Path(output_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname()


@contextlib.contextmanager
def claim_output_dir(output_dir: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False,
                     what: str = "--output-dir") -> Iterator[Path]:
    """Check, lock and (with ``overwrite``) clear a training output folder for the ``with`` block.

    A claim nested inside another by the same process (the command, then the trainer) is a no-op. Raises
    UsageError for ``resume`` with ``overwrite``, and OutputDirError for a folder that is not writable,
    in use by another run, or holding an earlier run when neither ``resume`` nor ``overwrite`` is given.
    """
    if resume and overwrite:
        raise UsageError("--resume continues the run in the output folder and --overwrite deletes it: give one")
    if _claimed_here(output_dir):  # nested (the command claimed it, then the trainer): already checked
        yield Path(output_dir)
        return
    found = earlier_run(output_dir)
    if found and not (resume or overwrite):
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        finished = any(name.endswith("sae.safetensors") for name in found)
        raise OutputDirError(
            f"{what} {output_dir} already holds {'trained SAEs' if finished else 'an earlier run'} ({shown}); "
            "pass --resume to continue that run, --overwrite to delete it and train anew, or choose another folder")
    created = not Path(output_dir).exists()
    try:
        with claim(output_dir, kind="a training run", finished=() if resume else FINISHED, overwrite=overwrite,
                   remove=RUN_FILES, what=what) as folder:
            yield folder
    except BaseException:
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                Path(output_dir).rmdir()
        raise
