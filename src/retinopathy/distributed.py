"""Several processes as one training run: torchrun's environment, the process group, and what rank 0 shares.

A process started alone is ``SINGLE`` and every helper here is a no-op for it, so the training
loop reads the same on one CPU as under torchrun on eight GPUs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a torchrun job; the defaults describe a process running alone."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, logs and writes every file."""
        return self.rank == 0


SINGLE = Distributed()


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (which sets ``LOCAL_RANK`` for each worker)."""
    return "LOCAL_RANK" in os.environ


def torchrun_command(nproc: int, script: str | os.PathLike[str], args: Sequence[str]) -> list[str]:
    """The command that reruns ``script args`` as ``nproc`` processes on this machine under torchrun.

    ``--standalone`` picks a free local port, so several such runs (``dvc queue start -j N``) can
    share a machine. Multi-node runs call torchrun themselves with ``--nnodes`` and ``--rdzv-*``.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script),
            *args]


def _stop_with_launcher() -> None:
    """Have Linux end this worker when its torchrun dies: killed with SIGKILL, torchrun cannot stop
    its workers (each runs in a session of its own), which would otherwise train on as orphans."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the torchrun job described by the environment: gloo on CPU, NCCL with one GPU per process.

    Returns:
        This process's place in the job (``SINGLE`` outside torchrun) and the device it should use
        (``cuda:<LOCAL_RANK>`` on CUDA).

    Raises:
        RuntimeError: when there are more processes on this machine than CUDA devices.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE, device
    world = Distributed(rank=int(os.environ["RANK"]), local_rank=int(os.environ["LOCAL_RANK"]), world_size=world_size)
    _stop_with_launcher()
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"process {world.local_rank} of this machine needs its own GPU, but torch sees "
                f"{torch.cuda.device_count()}: "
                "lower nproc (or torchrun's --nproc_per_node) to the number of GPUs"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Rank 0 evaluates alone after each epoch while the others wait in the next collective:
        # allow that more than the default 10-30 minutes on large validation sets.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return world, device


def shutdown_distributed() -> None:
    """Leave the torchrun job, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any, world: Distributed = SINGLE) -> Any:
    """Rank 0's ``obj`` on every process (``obj`` itself when running alone)."""
    if not world.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, world: Distributed = SINGLE) -> list[Any]:
    """``obj`` from every process, in rank order (``[obj]`` when running alone)."""
    if not world.enabled:
        return [obj]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def distributed_sampler(dataset: Any, world: Distributed, *, seed: int) -> DistributedSampler | None:
    """This process's share of a permutation that depends on ``seed`` and the epoch only; None when alone."""
    if not world.enabled:
        return None
    return DistributedSampler(dataset, num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=seed)
