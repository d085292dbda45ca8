"""Processes, devices and random state: what the loop needs to run under ``torchrun`` as well as
in one process (every helper is the identity when there is one process)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as tdist

T = TypeVar("T")

# How long a rank waits in one collective before the process group gives up on its peers. The
# longest legitimate wait is a rank that sits in a broadcast while rank 0 does its share alone:
# writing the policy/ export of a 7B model (28 GB of float32 safetensors, ~2-5 minutes on a
# network file system) or reading 14 GB of bf16 weights before broadcasting them into the
# shards. 30 minutes covers those several times over, and bounds how long a rank whose peer
# died without a word (killed, OOM, hung driver) can hold its GPUs: NCCL's own default (10 min)
# would cut a slow export short, and no timeout at all would never free them. Failures that
# raise are shared at once (:func:`on_main`); this is the backstop for those that cannot.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


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
        backend = "nccl" if device.startswith("cuda") else "gloo"
        tdist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
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


class PeerFailure(RuntimeError):
    """Raised on every rank when the work one rank did alone (or any rank's share of a joint
    step) failed: the message is that rank's own error."""


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 alone and share its outcome: its return value on every rank, or its
    exception, re-raised on rank 0 and as :class:`PeerFailure` with rank 0's message on every
    other rank. Collective (one broadcast); just ``fn()`` with one process. Every piece of work
    rank 0 does alone between collectives goes through here, so no rank is left waiting in the
    next collective for a peer that already died."""
    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return fn()
    outcome: list[Any] = [None]
    error: BaseException | None = None
    if tdist.get_rank() == 0:
        try:
            outcome[0] = ("ok", fn())
        except BaseException as err:  # noqa: BLE001 - shared, then re-raised unchanged
            error = err
            outcome[0] = ("error", f"{type(err).__name__}: {err}")
    tdist.broadcast_object_list(outcome, src=0)
    if error is not None:
        raise error
    status, value = outcome[0]
    if status == "error":
        raise PeerFailure(f"rank 0 failed: {value}")
    return value  # type: ignore[no-any-return]


def on_every_rank(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank and agree on the outcome: when it raised on any rank, every rank
    raises (the failing rank its own error, the others :class:`PeerFailure` naming the first
    failing rank and its message). Collective (one all-gather)."""
    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return fn()
    error: BaseException | None = None
    result: Any = None
    try:
        result = fn()
    except BaseException as err:  # noqa: BLE001 - shared, then re-raised unchanged
        error = err
    mine = None if error is None else f"{type(error).__name__}: {error}"
    parts: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(parts, mine)
    if error is not None:
        raise error
    for rank, message in enumerate(parts):
        if message is not None:
            raise PeerFailure(f"rank {rank} failed: {message}")
    return result  # type: ignore[no-any-return]


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
