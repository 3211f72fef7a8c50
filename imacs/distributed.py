"""Attribution across processes, GPUs and nodes with ``torchrun``.

``torchrun --nproc-per-node N -m imacs analyze ...`` starts N copies of the same command.
Each one (a *rank*) loads the models and the data, then attributes its share of the chunks
that the attribution cache lacks, on its own device, straight into the shared cache. Rank 0
waits for every rank, then runs the cheap stages (patches, embedding, clustering,
comparison) from the cache and writes the run. Nothing travels between ranks but a list of
chunk numbers and barriers: the cache folder on shared storage is the hand-over, so a rank
that dies loses only its unfinished chunks and rerunning the same command resumes.

Process groups use ``torch.distributed`` (gloo on CPUs, nccl on GPUs) with the rendezvous
``torchrun`` sets up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import InputError, first_line

#: how long a rank waits at a barrier for the slowest rank's share of the attribution
BARRIER_TIMEOUT = timedelta(hours=48)


@dataclass(frozen=True)
class Ranks:
    """This process's place in a ``torchrun`` job."""

    rank: int
    world: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """The device this rank attributes on: with ``auto`` or ``cuda``, its local GPU."""
        if requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return requested

    def share(self, todo: list[int]) -> list[int]:
        """This rank's chunks: every world-th of the chunks rank 0 found missing."""
        box: list[object] = [todo if self.leader else None]
        dist.broadcast_object_list(box, src=0)
        agreed: list[int] = box[0]  # type: ignore[assignment]
        return agreed[self.rank :: self.world]

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def from_environment(device: str) -> Ranks | None:
    """Join the ``torchrun`` job this process belongs to; None when not under torchrun.

    Raises:
        InputError: the environment is incomplete or the group cannot form.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    try:
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise InputError(
            "WORLD_SIZE is set but RANK is not: start several processes with torchrun "
            "(torchrun --nproc-per-node N -m imacs analyze ...)"
        ) from None
    ranks = Ranks(rank, world, local)
    use_gpu = ranks.device(device).startswith("cuda")
    if use_gpu:
        torch.cuda.set_device(int(ranks.device(device).split(":")[1]))
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend="nccl" if use_gpu else "gloo", timeout=BARRIER_TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise InputError(
                f"rank {rank} of {world} cannot join the torchrun group ({first_line(exc)}); check "
                "MASTER_ADDR/MASTER_PORT or --rdzv-endpoint"
            ) from None
    return ranks
