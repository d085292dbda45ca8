"""Precision and FSDP2 sharding of the pipeline's models.

Two precisions (``--precision``):

* ``fp32``: parameters, gradients, optimizer state and compute in float32.
* ``bf16``: bf16 compute over float32 *master* weights. AdamW then keeps float32 parameters and
  moments, so updates far below bf16's resolution (the paper's lr 1e-6 against weights of size
  1e-2: bf16's spacing there is 8e-5) still accumulate. Under FSDP2 this is
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` over float32 sharded parameters:
  the all-gather casts the shard to bf16 for the forward and backward, gradients are reduced in
  float32 and land in float32 shards. In one process without FSDP2 the parameters stay float32
  and the forward runs under ``torch.autocast(dtype=bf16)``.

Sharding (``--fsdp``): ``fully_shard`` on every transformer block (the classes a transformers
model names in ``_no_split_modules``, as accelerate's FSDP auto-wrap does) and then on the root,
so one block is gathered at a time. Frozen models (reference, scorers) are sharded the same way;
they keep their own dtype.

Generation decodes one token per forward: under FSDP2 every forward would all-gather every block
again, and ranks whose responses end early would stop calling the collectives the others wait in.
:func:`gathered` all-gathers each unit once for the whole rollout batch instead, so decoding runs
on plain local tensors with no collective at all.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .dist import PROCESS_GROUP_TIMEOUT

__all__ = [
    "PRECISIONS",
    "autocast",
    "clip_grad_norm_",
    "compute_dtype",
    "decoder_layers",
    "ensure_process_group",
    "gathered",
    "is_sharded_model",
    "master_weights_fp32",
    "shard_model",
    "shard_trunks",
    "shardable",
]

PRECISIONS = ("fp32", "bf16")


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the forward and backward run in for ``--precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return torch.bfloat16 if precision == "bf16" else torch.float32


def master_weights_fp32(model: nn.Module) -> nn.Module:
    """Cast the trainable floating-point parameters of ``model`` to float32 in place.

    A model loaded in bf16 (7B checkpoints are stored so) would otherwise be stepped by AdamW in
    bf16, which rounds away almost every update at small learning rates. Frozen parameters keep
    their dtype: they are never updated, so bf16 storage loses nothing.
    """
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model``: modules of the classes that a transformers model lists
    in ``_no_split_modules`` (e.g. ``MistralDecoderLayer``, ``LlamaDecoderLayer``)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} names no transformer block class in _no_split_modules; "
            "--fsdp shards transformers models (LLaMA, Mistral and their peft wrappers)"
        )
    return layers


def shard_model(model: nn.Module, precision: str, mesh: Any = None) -> nn.Module:
    """FSDP2: ``fully_shard`` every transformer block of ``model``, then its root (in place).

    Trainable parameters must already be float32 (:func:`master_weights_fp32`): they are the
    master weights, and the optimizer is built on the sharded parameters afterwards. ``mesh``:
    a 1-D device mesh (None: all ranks of the default process group).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    low = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if low:
        raise ValueError(
            f"trainable parameter {low[0]} is {dict(model.named_parameters())[low[0]].dtype}; "
            "master weights must be float32 (call master_weights_fp32 before sharding)"
        )
    # Compute dtype for bf16; None keeps each parameter's own dtype (fp32, or a frozen model's bf16).
    param_dtype = torch.bfloat16 if compute_dtype(precision) == torch.bfloat16 else None
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def shardable(model: object) -> bool:
    """Whether :func:`shard_model` applies to ``model``: a module with transformer blocks and no
    quantised (integer) weights, which bitsandbytes keeps in its own layout."""
    if not isinstance(model, nn.Module):
        return False
    if any(not p.is_floating_point() for p in model.parameters()):
        return False
    try:
        decoder_layers(model)
    except ValueError:
        return False
    return True


def shard_trunks(model: nn.Module, precision: str, device: str | torch.device | None) -> bool:
    """Shard each outermost transformers model inside ``model`` (a score model's backbone, a
    critic's trunk) with :func:`shard_model`, and move what stays replicated (score and value
    heads, buffers) to ``device`` (None: leave them, e.g. on the meta device until
    ``to_empty``): the heads keep their float32 weights and compute. Returns whether anything
    was sharded."""
    trunks: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(t + ".") for t in trunks) or not name:
            continue
        if getattr(module, "_no_split_modules", None) and shardable(module):
            trunks.append(name)
    for name in trunks:
        shard_model(model.get_submodule(name), precision)
    if device is None:
        return bool(trunks)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if not hasattr(tensor, "device_mesh"):  # not a DTensor shard
                tensor.data = tensor.data.to(device)
    return bool(trunks)


def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` over a model whose gradients are partly DTensor shards
    (FSDP2 trunks) and partly replicated tensors (heads): the global L2 norm of both, every
    gradient scaled by min(1, max_norm / (norm + 1e-6)). Returns the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    squares = []
    for part in (
        [g for g in grads if hasattr(g, "device_mesh")],
        [g for g in grads if not hasattr(g, "device_mesh")],
    ):
        if part:
            norm = torch.nn.utils.get_total_norm(part)
            full = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            squares.append(float(full) ** 2)
    total = sum(squares) ** 0.5
    scale = min(1.0, max_norm / (total + 1e-6))
    if scale < 1.0:
        with torch.no_grad():
            for g in grads:
                g.mul_(scale)
    return total


def is_sharded_model(model: nn.Module) -> bool:
    """True when ``fully_shard`` was applied to ``model`` or one of its submodules."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Keep every FSDP2 unit of ``model`` unsharded inside the block (one all-gather per unit).

    On exit the units are resharded and get back FSDP2's defaults: blocks reshard after their
    forward, the root does not (its parameters are needed first in the backward). Without
    FSDP2 units this does nothing.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(unit is not model, recurse=False)


def autocast(precision: str, device: str | torch.device, sharded: bool) -> Any:
    """The autocast context of a forward: bf16 over float32 parameters in one process; nothing
    under FSDP2, whose MixedPrecisionPolicy already computes in bf16, nor for fp32."""
    device_type = torch.device(device).type
    enabled = compute_dtype(precision) == torch.bfloat16 and not sharded
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=enabled)


def ensure_process_group(device: str | torch.device) -> None:
    """Join (or make) the default process group FSDP2 needs, also for a single process.

    Under torchrun the environment names the rendezvous; a plain ``python`` launch gets a
    one-process group over an in-memory store. nccl on CUDA devices, gloo otherwise.
    """
    if dist.is_initialized():
        return
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if "MASTER_ADDR" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
