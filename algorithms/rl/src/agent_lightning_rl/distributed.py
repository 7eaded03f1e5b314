"""Multi-process training: ``torchrun`` sets the world; DDP (gloo on CPU, NCCL on GPUs) averages gradients.

Launch the same training script on every process, e.g. ``torchrun --nproc_per_node 8 train.py``: rank 0 runs the
rollouts (policy server, proxy) and broadcasts the samples; every rank trains on its shard of them; rank 0
publishes the new weights and writes checkpoints. Runners scale out independently through a shared store
(``postgresql://`` or ``redis://``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the world (a single process when ``world_size == 1``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if chosen == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=chosen)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def choose_device(num_gpus: int, dist: DistInfo) -> torch.device:
    """The device this rank trains on; warns when fewer GPUs exist than were asked for."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if num_gpus > available:
        where = f"{available} CUDA device(s)" if available else "no CUDA device"
        logger.warning(
            "num_gpus=%d was requested but this machine has %s; training on %s",
            num_gpus,
            where,
            "the available GPU(s)" if available else "the CPU",
        )
    if num_gpus > 1 and not dist.enabled and available > 1:
        logger.warning(
            "num_gpus=%d in a single process uses one GPU; launch with `torchrun --nproc_per_node %d script.py` "
            "for data-parallel training",
            num_gpus,
            min(num_gpus, available),
        )
    if available and num_gpus > 0:
        return torch.device("cuda", dist.local_rank % available)
    return torch.device("cpu")


def shard(items: Sequence[T], dist: DistInfo) -> list[T]:
    """This rank's equal share of ``items`` (the remainder that does not divide evenly is dropped)."""
    if not dist.enabled:
        return list(items)
    per_rank = len(items) // dist.world_size
    if per_rank == 0:
        raise ValueError(f"{len(items)} samples cannot be shared by {dist.world_size} ranks; raise batch_size")
    return list(items[dist.rank * per_rank : (dist.rank + 1) * per_rank])


def broadcast(obj: Any, dist: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist.enabled:
        return obj
    import torch.distributed as tdist

    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist: DistInfo) -> None:
    if dist.enabled:
        import torch.distributed as tdist

        tdist.barrier()
