"""Probe mode (paper App. B): the weights from the per-objective gradients of a small probe (e.g. the
LM head), then ONE backward of Σ_i w_i L_i + R through the whole model.

:class:`Probe` computes the probe's per-objective gradients by autograd.grad into a probe-sized
gradient bank (:meth:`Probe.collect`; a regularizer's too, for StepInfo and the non-finite check) and
runs the one weighted backward (:meth:`Probe.weighted_backward`); inside ``step()``,
:func:`clip_final_gradient_` measures and clips the gradient that backward left in ``.grad``. The Gram
and the weights in between are the optimizer's, shared with the full mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from mogd import update
from mogd.arguments import resolve_probe
from mogd.bank import REGULARIZER, GradientBank
from mogd.distributed import Topology, average_into_shard, is_sharded, local_tensor
from mogd.weighting import WeightingResult

__all__ = ["Probe", "clip_final_gradient_"]


class Probe:
    """The probe of probe mode: the parameters whose per-objective gradients decide the weights.

    ``params`` are what the optimizer holds (and the bank stores). Plain parameters are
    differentiated directly. Sharded ones (FSDP2 ``fully_shard``) are not in the autograd graph:
    FSDP2 runs the forward on unsharded copies, which a forward pre-hook on the probe module records;
    their gradient (this rank's batch, full size) is averaged over the ranks straight into this
    rank's shard (one reduce-scatter per objective, what FSDP2 does to ``.grad``), so the Gram of the
    shards plus one k×k all-reduce is the exact Gram of the averaged gradients.
    """

    def __init__(self, probe: Any, trainable: Sequence[torch.Tensor]) -> None:
        self.params = resolve_probe(probe, trainable)
        self.sharded = any(is_sharded(p) for p in self.params)
        self._unsharded: list[torch.Tensor] | None = None
        if self.sharded:
            probe.register_forward_pre_hook(self._record)

    def _record(self, module: torch.nn.Module, args: Any) -> None:
        # the same selection and order as resolve_probe made from the sharded parameters
        unique: dict[int, torch.Tensor] = {}
        for p in module.parameters():
            if p.requires_grad:
                unique.setdefault(id(p), p)
        self._unsharded = list(unique.values())

    def gradients(self, loss: torch.Tensor) -> list[torch.Tensor | None]:
        """∂loss/∂params, as local tensors shaped like the bank's views (None: not reached)."""
        # autograd.grad, not backward(inputs=probe): it leaves .grad alone and does not fire DDP's
        # reducer hooks, so the one weighted backward after it is an ordinary (DDP/FSDP2) backward.
        if not self.sharded:
            return list(
                torch.autograd.grad(loss, self.params, retain_graph=True, allow_unused=True)
            )
        if self._unsharded is None or any(is_sharded(p) for p in self._unsharded):
            raise RuntimeError(
                "the probe module has not run a forward on unsharded (FSDP2) parameters since the "
                "optimizer was built; compute the losses with the model, then step"
            )
        grads = torch.autograd.grad(loss, self._unsharded, retain_graph=True, allow_unused=True)
        return [
            None if g is None else average_into_shard(g, p)
            for g, p in zip(grads, self.params, strict=True)
        ]

    def collect(
        self,
        losses: Sequence[torch.Tensor],
        regularizer: torch.Tensor | None,
        bank: GradientBank,
    ) -> None:
        """Row i of ``bank`` = the probe's gradient of losses[i]; the regularizer's row = the
        probe's gradient of R (for StepInfo and the non-finite check: it never enters the weights)."""
        rows = {i: loss for i, loss in enumerate(losses)}
        if regularizer is not None:
            rows = {REGULARIZER: regularizer} | rows  # first: the block is allocated with its row
        with torch.no_grad():
            for i in rows:
                bank.ensure_row(i)
        for i, loss in rows.items():
            bank.store(i, self.gradients(loss))

    @staticmethod
    def weighted_backward(
        losses: Sequence[torch.Tensor],
        regularizer: torch.Tensor | None,
        result: WeightingResult,
        bad: torch.Tensor,
        decided: bool,
        scaled: bool,
    ) -> None:
        """ONE backward of Σ_i w_i L_i + R through the whole model.

        ``decided``: the host reads ``bad`` (else a bad step travels as NaN weights, which the final
        gradient shows, to a GradScaler too). ``scaled``: a GradScaler must see a bad step's
        gradient; without one, a skipped step needs no backward at all.
        """
        weights: list[Any]
        if decided:
            # zero weights (all of a skipped step) are left out rather than multiplied:
            # 0 · (an Inf outside the probe) is NaN
            skip = bool(bad) and not scaled
            weights = [0.0 if skip else w for w in result.weights.tolist()]
            regularizer = None if skip else regularizer
        else:
            weights = list(torch.where(bad, math.nan, result.weights))
        terms = [
            (w.to(loss.dtype) if isinstance(w, torch.Tensor) else w) * loss
            for w, loss in zip(weights, losses, strict=True)
            if isinstance(w, torch.Tensor) or w
        ]
        if regularizer is not None:
            terms.append(regularizer)
        if terms:
            with torch.enable_grad():
                total = terms[0]
                for term in terms[1:]:
                    total = total + term
            total.backward()


def clip_final_gradient_(
    params: Sequence[torch.Tensor],
    topology: Topology,
    max_norm: float | None,
    scale: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """The weighted backward's ``.grad`` made the update: averaged over the ranks (replicated without
    DDP), unscaled (1/S of a GradScaler) and clipped as clip_grad_norm_ would. Returns its global
    float64 norm before clipping (non-finite: the step must be skipped)."""
    grads = [p.grad for p in params if p.grad is not None]
    topology.average_grads_(grads)
    norm = topology.grad_norm(params, topology.group_key, device)
    if scale is not None:
        norm = norm / scale.to(norm)
    coef = update.clip_coef(norm, max_norm)
    if scale is not None:
        coef = coef / scale.to(coef)
    if grads and (scale is not None or max_norm is not None):
        with torch.no_grad():
            for g in grads:
                local_tensor(g).mul_(coef.to(g.device))
    return norm
