"""Data-parallel training: ``num_gpus`` decides the world; DDP (NCCL on GPUs, gloo on CPUs) averages gradients.

How ``Trainer(num_gpus=N)`` maps onto processes (:func:`plan_world`):

* ``N == 0``: one process on the CPU.
* ``N >= 1`` in a plain ``python train.py``: the machine must have ``N`` visible CUDA devices (else
  :class:`DeviceError` names the devices it found). With ``N > 1`` the trainer launches ``N - 1`` more processes
  itself (``python -m agent_lightning_rl.follower``), one per GPU; this process is rank 0.
* Under ``torchrun`` (``WORLD_SIZE`` set): every process joins the group torchrun describes; ``N`` must equal the
  processes torchrun started on this machine (``--nproc_per_node``) or in all (``WORLD_SIZE``), and each needs its
  own GPU. ``N == 0`` under torchrun trains on CPUs with gloo (what the tests do).
* ``cpu_fallback=True`` in the algorithm's config turns a GPU shortage into ``N`` CPU processes joined with gloo
  (self-launched the same way): slower, but the same data-parallel run.

Rank 0 alone runs the rollouts (runners, the recording proxy, the policy server) and broadcasts each batch;
every rank trains on its share (:func:`shard_indices`); rank 0 publishes the new weights and writes checkpoints.
Runners scale out independently through a shared store (``postgresql://`` or ``redis://``).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """``num_gpus`` does not match the devices of this machine or the processes its launcher started."""


@dataclass(frozen=True)
class WorldPlan:
    """How many processes train, on what, and whether this process must start the others."""

    world_size: int = 1
    backend: Literal["gloo", "nccl"] = "gloo"
    device_type: Literal["cpu", "cuda"] = "cpu"
    launch: bool = False
    """Not under a launcher: this process is rank 0 and starts ranks ``1 … world_size - 1`` itself."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the world (a single process when ``world_size == 1``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    """This process created the process group (and destroys it when training ends)."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def describe_cuda_devices(count: int | None = None) -> str:
    """``"no CUDA device"`` or ``"2 CUDA devices (cuda:0 NVIDIA H100, cuda:1 NVIDIA H100)"``, with the mask if set."""
    count = (torch.cuda.device_count() if torch.cuda.is_available() else 0) if count is None else count
    if count == 0:
        text = "no CUDA device"
    else:
        names = []
        for index in range(count):
            try:
                names.append(f"cuda:{index} {torch.cuda.get_device_name(index)}")
            except Exception:  # a count given by a test, or a device that cannot be queried
                names.append(f"cuda:{index}")
        text = f"{count} CUDA device{'s' if count > 1 else ''} ({', '.join(names)})"
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{text}, CUDA_VISIBLE_DEVICES={mask!r}" if mask is not None else text


def plan_world(
    num_gpus: int,
    *,
    cpu_fallback: bool = False,
    environ: Mapping[str, str] | None = None,
    cuda_devices: int | None = None,
) -> WorldPlan:
    """Map ``num_gpus`` onto processes and devices (see the module docstring); raises :class:`DeviceError`.

    ``environ`` and ``cuda_devices`` default to this process's environment and visible CUDA devices.
    """
    if num_gpus < 0:
        raise ValueError(f"num_gpus must be >= 0, got {num_gpus}")
    env = os.environ if environ is None else environ
    if cuda_devices is None:
        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    available = cuda_devices
    found = describe_cuda_devices(available)
    if "WORLD_SIZE" in env:  # under torchrun (or another launcher that sets the env:// variables)
        world = int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_WORLD_SIZE", world))
        if num_gpus == 0:
            return WorldPlan(world_size=world)
        if num_gpus not in (local, world):
            raise DeviceError(
                f"num_gpus={num_gpus}, but the launcher started {local} process(es) on this machine "
                f"(WORLD_SIZE={world}): start one process per GPU (`torchrun --nproc_per_node {num_gpus} …`) "
                f"or pass num_gpus={local}"
            )
        if available < local:
            if cpu_fallback:
                logger.warning("num_gpus=%d: this machine has %s; training on CPUs with gloo", num_gpus, found)
                return WorldPlan(world_size=world)
            raise DeviceError(
                f"num_gpus={num_gpus}: the {local} process(es) on this machine need a CUDA device each, but it has "
                f"{found}; pass num_gpus=0 to train on CPUs, or cpu_fallback=True in the algorithm's config"
            )
        return WorldPlan(world_size=world, backend="nccl", device_type="cuda")
    if num_gpus == 0:
        return WorldPlan()
    if available < num_gpus:
        if not cpu_fallback:
            raise DeviceError(
                f"num_gpus={num_gpus}, but this machine has {found}. Pass num_gpus={available} "
                f"({'0 trains on the CPU' if available == 0 else 'or 0 for the CPU'}), or set cpu_fallback=True in "
                f"the algorithm's config to train data-parallel in {num_gpus} CPU processes (gloo)"
            )
        logger.warning("num_gpus=%d: this machine has %s; training in CPU processes (gloo)", num_gpus, found)
        return WorldPlan(world_size=num_gpus, launch=num_gpus > 1)
    return WorldPlan(world_size=num_gpus, backend="nccl", device_type="cuda", launch=num_gpus > 1)


def init_distributed(
    plan: WorldPlan,
    *,
    rank: int | None = None,
    local_rank: int | None = None,
    init_method: str | None = None,
) -> DistInfo:
    """Join the process group of ``plan`` (no-op for one process).

    Without ``rank``, the rank comes from the launcher's environment (``RANK``, ``LOCAL_RANK``) and the rendezvous
    from ``MASTER_ADDR``/``MASTER_PORT`` (``env://``).
    """
    if plan.world_size <= 1:
        return DistInfo()
    import torch.distributed as dist

    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local = rank if local_rank is None else local_rank
    owns = False
    if not dist.is_initialized():
        if plan.backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(
            backend=plan.backend, init_method=init_method or "env://", rank=rank, world_size=plan.world_size
        )
        owns = True
    elif dist.get_world_size() != plan.world_size:
        raise DeviceError(f"a process group of {dist.get_world_size()} exists, but {plan.world_size} were planned")
    return DistInfo(rank=rank, world_size=plan.world_size, local_rank=local, owns_group=owns)


def shutdown_distributed(info: DistInfo) -> None:
    """Destroy the process group if this process created it."""
    if info.enabled and info.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def choose_device(plan: WorldPlan, info: DistInfo) -> torch.device:
    """The device this rank trains on: ``cuda:<local rank>`` on GPUs, else the CPU."""
    if plan.device_type == "cuda":
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def shard_indices(n: int, info: DistInfo) -> tuple[list[int], int]:
    """This rank's share of ``n`` items (indices into them), and how many of its indices are padding.

    Ranks get contiguous blocks whose sizes differ by at most one. Every rank must run the same number of
    forward/backward passes and collectives, so a rank with the smaller block repeats an index (its last one,
    or 0 when its block is empty) until it holds ``ceil(n / world_size)``: the padding is the *last* ``padding``
    indices, and the caller trains on them with no loss (a masked copy). Nothing is dropped.
    """
    if n <= 0:
        raise ValueError("there are no samples to share between ranks")
    if not info.enabled:
        return list(range(n)), 0
    base, extra = divmod(n, info.world_size)
    start = info.rank * base + min(info.rank, extra)
    size = base + (1 if info.rank < extra else 0)
    indices = list(range(start, start + size))
    width = base + (1 if extra else 0)
    padding = width - size
    indices += [indices[-1] if indices else 0] * padding
    return indices, padding


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    import torch.distributed as tdist

    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as tdist

        tdist.barrier()


# ---------------------------------------------------------------------------- self-launched ranks
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Followers:
    """Ranks ``1 … world_size - 1`` started by rank 0 (``python -m agent_lightning_rl.follower SPEC RANK``)."""

    def __init__(self, spec_path: Path, world_size: int, *, threads: int | None = None) -> None:
        self.spec_path = spec_path
        env = dict(os.environ)
        env.pop("WORLD_SIZE", None)  # the follower takes its place from the spec, not from a launcher
        if threads is not None and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(threads)
        self.processes: list[subprocess.Popen[bytes]] = []
        for rank in range(1, world_size):
            command = [sys.executable, "-m", "agent_lightning_rl.follower", str(spec_path), str(rank)]
            self.processes.append(subprocess.Popen(command, env=env))
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watchdog, name="agl-follower-watch", daemon=True)
        self._watch.start()

    def _watchdog(self) -> None:
        reported: set[int] = set()
        while not self._stop.wait(1.0):
            for rank, process in enumerate(self.processes, start=1):
                code = process.poll()
                if code not in (None, 0) and rank not in reported:
                    reported.add(rank)
                    logger.error("rank %d (pid %d) exited with %s; rank 0 will fail or hang", rank, process.pid, code)

    def wait(self, timeout: float = 120.0) -> None:
        """Wait for every follower to finish; raises if one failed (or had to be killed)."""
        self._stop.set()
        failed = []
        for rank, process in enumerate(self.processes, start=1):
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            if code != 0:
                failed.append(f"rank {rank} exited with {code}")
        if failed:
            raise RuntimeError(f"data-parallel training failed: {'; '.join(failed)} (its error is above)")

    def terminate(self) -> None:
        """Stop every follower now (rank 0 failed)."""
        self._stop.set()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def importable_name(obj: type) -> str:
    """``module:qualname`` of a class another process can import; raises when it cannot."""
    module, qualname = obj.__module__, obj.__qualname__
    if module == "__main__" or "<locals>" in qualname:
        raise DeviceError(
            f"{qualname} is defined in {'the main script' if module == '__main__' else 'a function'}, so the processes "
            "this trainer starts for the other GPUs cannot import it: move it into a module, or launch every rank "
            "with torchrun"
        )
    return f"{module}:{qualname}"


def thread_share(world_size: int) -> int:
    """CPU threads per process when ``world_size`` processes share this machine (at least 1)."""
    return max(1, (os.cpu_count() or 1) // world_size)
