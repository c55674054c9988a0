"""Small torch.distributed helpers: who am I, split a work list across ranks, gather or sum the results.

Every helper works without an initialised process group (one process: rank 0 of 1), so library code can
call them unconditionally. Launch with `torchrun` (env:// rendezvous) or `torch.multiprocessing.spawn`;
on CPU use the gloo backend.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import OutputDirError
from .outdir import claim

T = TypeVar("T")


def is_initialized() -> bool:
    """True when torch.distributed is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return get_rank() == 0


def shard(items: Sequence[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """The items this rank owns: ``items[rank::world_size]`` (round-robin, so ranks get similar shares).

    Every item goes to exactly one rank; the union over ranks is ``items``.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(items[rank::world_size])


def barrier() -> None:
    """Waits for all ranks (no-op in one process)."""
    if is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sums ``tensor`` over ranks in place and returns it (unchanged in one process).

    Useful to merge results where each entry was written by exactly one rank and is zero elsewhere.
    With the NCCL backend a CPU tensor is reduced through a copy on the current CUDA device.
    """
    if is_initialized() and get_world_size() > 1:
        if dist.get_backend() == "nccl" and not tensor.is_cuda:
            staged = tensor.to(f"cuda:{torch.cuda.current_device()}")
            dist.all_reduce(staged, op=dist.ReduceOp.SUM)
            tensor.copy_(staged.cpu())
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself in one process)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def init_from_environment() -> bool:
    """Joins the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1): nccl when
    CUDA is available (on the device ``LOCAL_RANK``), else gloo. Returns True when it initialised the group
    here (the caller then destroys it with :func:`destroy`), False in one process or when already joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def destroy() -> None:
    """Leaves the process group (no-op without one)."""
    if is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def claim_on_main(path: str | os.PathLike[str], **claim_kwargs: Any) -> Iterator[Path]:
    """:func:`sae_fast.outdir.claim` of a folder all ranks write to, taken by rank 0 only (the others would
    find its lock): rank 0's error, if any, is raised on every rank, so no rank starts work alone."""
    if get_world_size() == 1:
        with claim(path, **claim_kwargs) as folder:
            yield folder
        return
    with contextlib.ExitStack() as stack:
        error = None
        if is_main_process():
            try:
                stack.enter_context(claim(path, **claim_kwargs))
            except OutputDirError as err:
                error = str(err)
        error = broadcast_object(error)
        if error is not None:
            raise OutputDirError(error)
        yield Path(path)
