"""Mixed precision with MOGD: what a ``torch.amp.GradScaler`` needs, in one place.

bf16 autocast needs nothing here: its gradients have float32's range, so MOGD's own non-finite check
suffices. fp16 needs a GradScaler, which assumes one gradient per parameter while MOGD keeps k of them,
so three things are arranged:

* **Unscaling.** MOGD declares ``_step_supports_amp_scaling``: ``scaler.step(opt)`` then hands it the
  scale S and the scaler's ``found_inf`` as attributes instead of unscaling ``.grad`` itself.
  :func:`scaler_state` reads them; the 1/S is folded into the float64 Gram (G / S²) and into the k
  weights, never a pass over the bank.
* **Seeing every objective.** The scaler checks ``.grad``, which shows only the last objective's row.
  :class:`ScalerGuard` folds a running max|g| over all rows into one element of the visible row, so a
  non-finite row anywhere makes the scaler skip and back off as it would with one gradient.
* **Scaled losses.** ``opt.backward(losses, scaler=scaler)`` multiplies each loss by S (read on the
  device by :func:`loss_scale`, no synchronisation) so that the per-objective gradients (or the probe's
  and the one weighted backward) are scaled like ``scaler.scale(loss).backward()`` would scale them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["ScalerGuard", "loss_scale", "scaler_state", "step_unless", "takes_found_inf"]


def scaler_state(optimizer: Any, losses: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(S, found_inf) as tensors when a GradScaler drives ``optimizer.step()``, else (None, None)."""
    found_inf = getattr(optimizer, "found_inf", None)
    if found_inf is None:
        return None, None
    scale = getattr(optimizer, "grad_scale", None)
    if scale is None:
        raise RuntimeError(
            "scaler.unscale_(optimizer) was called before scaler.step(optimizer); MOGD keeps one "
            "gradient per objective and unscales them all inside step(): drop the unscale_ call"
        )
    if losses is not None:
        raise RuntimeError(
            "with a GradScaler, run the backward passes before scaler.step(opt): "
            "opt.backward([loss_0, ...], scaler=scaler) or `with opt.objective(i): "
            "scaler.scale(loss_i).backward()`, then scaler.step(opt) without losses"
        )
    return torch.as_tensor(scale), torch.as_tensor(found_inf)


def takes_found_inf(optimizer: Any) -> bool:
    """The optimizer's step() skips on a ``found_inf`` tensor itself (fused Adam/AdamW/SGD)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def step_unless(optimizer: Any, bad: torch.Tensor | None) -> None:
    """``optimizer.step()``, skipped on the device where the 0-dim flag ``bad`` is set: it goes in as
    ``found_inf``, as a GradScaler hands it to an optimizer that :func:`takes_found_inf`, so the skip
    needs no host synchronisation. ``bad=None``: a plain step (the skip was decided on the host)."""
    if bad is None:
        optimizer.step()
        return
    optimizer.found_inf = bad.to(torch.float32)
    optimizer.grad_scale = None
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf, optimizer.grad_scale


def loss_scale(scaler: Any, device: torch.device) -> torch.Tensor:
    """The scaler's current scale S as a float32 0-dim tensor on ``device``, read without a sync."""
    if not callable(getattr(scaler, "scale", None)):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
    scaled = scaler.scale(torch.ones((), dtype=torch.float32, device=device))
    return scaled.detach()


class ScalerGuard:
    """Makes a non-finite row of any objective visible in the row a GradScaler inspects.

    The visible row's first element x becomes ``x · (1 + 0·flag)``: exactly x while every row is
    finite, NaN otherwise (flag = running Σ max|g| over the rows, summed over the ranks so that every
    scaler agrees). Guarding starts with the first objective and stops for good once a step has
    shown that no scaler drives the optimizer.
    """

    def __init__(self) -> None:
        self.scaler_seen: bool | None = None
        self.flag: torch.Tensor | None = None

    def observe(self, scaler_present: bool) -> None:
        if scaler_present:
            self.scaler_seen = True
        elif self.scaler_seen is None:
            self.scaler_seen = False

    def guard_(self, rows: Sequence[torch.Tensor], agree_: Callable[[torch.Tensor], None]) -> None:
        rows = [r for r in rows if r.numel()]
        if self.scaler_seen is False or not rows:
            return
        with torch.no_grad():
            flag = torch.stack(
                [
                    torch.linalg.vector_norm(r, math.inf).to(rows[0].device, torch.float32)
                    for r in rows
                ]
            ).sum()
            agree_(flag)
            self.flag = flag if self.flag is None else self.flag + flag
            for r in rows:
                r[:1].mul_(1 + 0 * self.flag.to(r.device))

    def reset(self) -> None:
        self.flag = None
