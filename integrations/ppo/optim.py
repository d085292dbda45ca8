"""The policy's optimizer around MOGD: the probe module it takes its weights from, and the
paper's learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["find_module", "warmup_cosine"]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The paper's schedule (Table 2: cosine, 3 % warm-up): lr · t / warmup for t < warmup, then
    lr · ½ (1 + cos(π (t − warmup) / (total − warmup))), floored at 0; the same factors as
    transformers' ``get_cosine_schedule_with_warmup``, whose module would import peft (seconds)
    on every run of the tiny preset."""

    def factor(t: int) -> float:
        if t < warmup:
            return t / max(1, warmup)
        progress = (t - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def find_module(model: nn.Module, name: str, option: str = "probe") -> nn.Module:
    """The submodule called ``name`` (MOGD's probe), or the only one whose dotted name ends with
    ``.name`` (wrappers such as peft's add prefixes); ``option`` names the setting in errors."""
    named = dict(model.named_modules())
    if name in named:
        return named[name]
    matches = [m for n, m in named.items() if n.endswith("." + name)]
    if len(matches) != 1:
        found = "no module" if not matches else f"{len(matches)} modules"
        raise ValueError(
            f"{option} {name!r}: the model has {found} of that name; name one of "
            f"{[n for n in named if n][-3:]} (e.g. lm_head), or pass the module itself"
        )
    return matches[0]
