"""Output folders: checked writable before any work, locked against a second run, never silently overwritten.

`claim(path, kind=..., finished=...)` is what every command that writes a folder calls first:

* the path must be a folder or not exist yet (a file there is an error), and must be writable (checked by
  creating and removing a probe file, so read-only mounts and permissions are caught before long work);
* a lock file ``.sae_fast.lock`` holding the process id, host and command is created with O_EXCL; a second
  run on the same folder gets an error naming the other run's process. A lock left by a process that no
  longer exists on this host (kill -9) is taken over;
* `finished` names files whose presence means the folder holds a finished result of this kind: then the call
  refuses unless `overwrite=True`, in which case those results (and everything else the earlier run wrote,
  listed by `remove`) are deleted first so nothing stale survives.

Memory and time: O(number of entries in the folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import OutputDirError

LOCK_FILE = ".sae_fast.lock"


def check_writable(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Create `path` (and parents) if needed and check a file can be written there; raise OutputDirError."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"{what} {p} is a file; expected a folder (or a path that does not exist yet)")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".sae_fast.write_probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"{what} {p} is not writable: {err.strerror or err}") from err
    return p


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}


def acquire_lock(folder: Path, command: str) -> Path:
    """Create ``folder/.sae_fast.lock`` atomically; raise OutputDirError if a live process holds it."""
    lock = folder / LOCK_FILE
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _read_lock(lock)
            pid, host = other.get("pid"), other.get("host")
            if isinstance(pid, int) and host == info["host"] and not _pid_alive(pid):
                lock.unlink(missing_ok=True)  # stale: its process is gone (killed), take it over
                continue
            raise OutputDirError(
                f"{folder} is in use by another run (process {pid} on {host}: {other.get('command', '?')}); "
                f"wait for it to finish, or remove {lock} if that process no longer exists") from None
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        return lock
    raise OutputDirError(f"could not take the lock {lock}")


def release_lock(lock: Path) -> None:
    """Remove a lock this process holds (a lock of another process is left alone)."""
    if _read_lock(lock).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


def clear(folder: Path, remove: Iterable[str]) -> None:
    """Delete the entries `remove` (names or glob patterns, relative to `folder`), files or folders."""
    for pattern in remove:
        for entry in folder.glob(pattern):
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)


@contextlib.contextmanager
def claim(path: str | os.PathLike[str], *, kind: str, finished: Iterable[str] = (), overwrite: bool = False,
          remove: Iterable[str] | None = None, what: str = "--out") -> Iterator[Path]:
    """Check, lock and (with `overwrite`) clear an output folder for the duration of the `with` block.

    Parameters
    ----------
    path : the output folder.
    kind : what the folder holds, for messages ("trained SAEs", "a study", ...).
    finished : names/globs whose presence means a finished result is there; refused unless `overwrite`.
    overwrite : delete the earlier result first (`remove`, default `finished`) instead of refusing.
    what : the argument name used in messages.
    """
    folder = check_writable(path, what)
    lock = acquire_lock(folder, " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]) or kind)
    try:
        present = sorted({str(e.relative_to(folder)) for pat in finished for e in folder.glob(pat)})
        if present and not overwrite:
            shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
            raise OutputDirError(f"{what} {folder} already holds {kind} ({shown}); "
                                 "choose another folder, or pass --overwrite to replace it")
        if present:
            clear(folder, finished if remove is None else remove)
        yield folder
    finally:
        release_lock(lock)
