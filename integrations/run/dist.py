"""Processes, devices and random state: what the loop needs to run under ``torchrun`` as well as
in one process (every helper is the identity when there is one process)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | None) -> str:
    """``device``, or cuda:$LOCAL_RANK when CUDA exists, else cpu."""
    if device:
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def init_distributed(device: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK: join the process group (nccl on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Dist(tdist.get_rank(), tdist.get_world_size())


def close_distributed() -> None:
    """Leave the process group before the interpreter exits: a gloo group left to static
    destructors can abort a rank at exit ("terminate called without an active exception")."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def current() -> Dist:
    """This process's rank and the world size of the default process group (one process when
    there is none)."""
    if tdist.is_available() and tdist.is_initialized():
        return Dist(tdist.get_rank(), tdist.get_world_size())
    return Dist()


def barrier(d: Dist) -> None:
    if d.world > 1:
        tdist.barrier()


def process_group(d: Dist) -> Any:
    """MOGD's process group: the world with several processes (each objective's gradient is
    averaged over them before the Gram), None with one."""
    return tdist.group.WORLD if d.world > 1 else None


def all_reduce_grads(params: Iterable[torch.Tensor], d: Dist) -> None:
    """Average ``.grad`` over the processes (the critics are replicated)."""
    if d.world == 1:
        return
    for p in params:
        if p.grad is not None:
            tdist.all_reduce(p.grad)
            p.grad.div_(d.world)


def gather(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate a 1-D CPU tensor over ranks (metrics and the Lagrangian see every sample)."""
    if d.world == 1:
        return x
    parts: list[Any] = [None] * d.world
    tdist.all_gather_object(parts, x.cpu())
    return torch.cat(parts)


def gather_rows(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """:func:`gather` of each row of a ``[K, B]`` tensor."""
    if d.world == 1:
        return x
    return torch.stack([gather(row, d) for row in x])


def gather_objects(obj: Any, d: Dist) -> list[Any]:
    """One object per rank (on every rank)."""
    if d.world == 1:
        return [obj]
    parts: list[Any] = [None] * d.world
    tdist.all_gather_object(parts, obj)
    return parts


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code (scorers) may draw from it
    torch.manual_seed(seed)
