"""Several processes on one job (``torchrun``): which share is this process's, and one run per
run folder.

``torchrun --nproc_per_node N -m bodyfit.cli train|pseudo-gt ...`` starts N processes with
``RANK`` / ``WORLD_SIZE`` set; :func:`rank_and_world` joins their process group (gloo on CPU,
nccl with CUDA). Multi-node torchrun works the same way; on a SLURM cluster start it from the
scheduler (an ``srun torchrun ...`` job script, or Hydra's submitit launcher), not from bodyfit.
"""
from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from bodyfit.files import FolderLockedError, run_lock

__all__ = ["rank_and_world", "hold_run_folder", "barrier"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; joins the torchrun process group when there is one
    (``WORLD_SIZE`` > 1). (0, 1) for a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every process of the group (nothing to wait for in a plain process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextmanager
def hold_run_folder(out_dir: str | os.PathLike, what: str = "bodyfit run"):
    """Hold a run folder (:func:`bodyfit.files.run_lock`) for the ``with`` block: rank 0 takes
    the lock, every rank learns whether it got it, and all stop together if not (no rank is left
    waiting in a collective). Nested holds in one process are fine.

    Raises:
        FolderLockedError: another run holds the folder (on every rank); the message names the
            folder and the holder.
    """
    out = Path(out_dir)
    rank, world = rank_and_world()
    with ExitStack() as stack:
        error = None
        if rank == 0:
            try:
                stack.enter_context(run_lock(out, what))
            except FolderLockedError as e:
                error = e
        if world > 1:
            refused = torch.tensor([0 if error is None else 1])
            dist.broadcast(refused, 0)
            if int(refused) and error is None:
                error = FolderLockedError(f"{out} is in use by another run (rank 0 says which).", out, {})
        if error is not None:
            raise error
        yield
