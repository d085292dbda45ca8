"""Where the per-objective gradients come from: each objective's backward passes routed into its row
of the gradient bank (the full mode), or the probe's gradients by autograd.grad (probe mode).

``with opt.objective(i):`` points every parameter's ``.grad`` at row i of the bank, so autograd (and
DDP, and FSDP2's reduce-scatter) accumulate objective i's gradient in place. Hooks on the parameters
refuse sparse gradients and backward passes that land outside any objective while rows are pending,
and remember which parameters an objective reached (the others keep ``.grad = None`` after the step,
as they would with a plain optimizer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mogd.arguments import resolve_probe
from mogd.bank import GradientBank, register_hooks
from mogd.distributed import average_into_shard, is_sharded

__all__ = ["Collector", "Probe"]


class Collector:
    """The full mode's bank, its hooks and the objective currently backpropagating."""

    def __init__(self) -> None:
        self.bank: GradientBank | None = None
        self.active: int | None = None
        self.reached: list[bool] = []
        self._signature: tuple = ()
        self._hooks: list[Any] = []

    @property
    def pending(self) -> bool:
        """Rows were written since the last step."""
        return self.bank is not None and bool(self.bank.live)

    def bank_for(
        self,
        params: Sequence[torch.Tensor],
        group_key: Callable[[torch.Tensor], tuple],
        k: int | None,
    ) -> GradientBank:
        """The bank over ``params``, rebuilt (between steps only) when the parameters changed."""
        if self.bank is not None and self.bank.live:
            return self.bank  # mid-accumulation: the parameter set cannot change now
        signature = tuple(id(p) for p in params)
        if self.bank is None or signature != self._signature:
            for handle in self._hooks:
                handle.remove()
            self.bank = None  # free the old buffers before allocating new ones
            self.bank = GradientBank(params, group_key, k)
            self._signature = signature
            self._hooks = register_hooks(self.bank, self._on_grad, self._on_incoming)
            self.reached = [False] * len(params)
        return self.bank

    def enter(self, i: int, bank: GradientBank) -> None:
        if self.active is not None:
            raise RuntimeError(f"objective({i}) entered inside objective({self.active})")
        with torch.no_grad():
            bank.ensure_row(i)
        bank.point_grads(i)
        self.active = i

    def exit(self, i: int, bank: GradientBank) -> None:
        self.active = None
        bank.adopt_foreign_grads(i)

    def close(self, bank: GradientBank, k: int | None) -> int:
        """Check that every objective 0..k-1 was backpropagated since the last step; return k."""
        if not bank.live:
            raise ValueError(
                "step() found no per-objective gradients: pass the losses, opt.step([loss_0, ...]), "
                "or backpropagate each inside `with opt.objective(i):` first"
            )
        k = k if k is not None else max(bank.live) + 1
        missing = [i for i in range(k) if i not in bank.live]
        if missing:
            raise ValueError(
                f"objective {missing[0]} was never backpropagated since the last step "
                f"(k = {k}); run `with opt.objective({missing[0]}): loss.backward()` first"
            )
        return k

    def point_at_direction(self, bank: GradientBank) -> None:
        """``.grad`` = row 0 (where d was written) for every parameter an objective reached."""
        bank.point_grads(0, only=self.reached)

    def reset(self) -> None:
        if self.bank is not None:
            self.bank.reset()
        self.reached = [False] * len(self.reached)

    def _on_grad(self, j: int) -> None:
        if self.active is None:
            if not self.pending:
                return  # nothing pending: not ours to guard (e.g. another optimizer's backward)
            raise RuntimeError(
                "a backward pass reached the parameters of a MOGD optimizer outside "
                "opt.objective(i) while per-objective gradients were pending: wrap each "
                "objective's backward in `with opt.objective(i):` or pass the losses to "
                "opt.step([loss_0, ...])"
            )
        self.reached[j] = True

    def _on_incoming(self, grad: torch.Tensor) -> None:
        if grad.is_sparse or grad.layout != torch.strided:
            raise TypeError(
                "a parameter received a sparse gradient; MOGD keeps dense per-objective gradients "
                "(use nn.Embedding(sparse=False))"
            )


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

    def collect(self, losses: Sequence[torch.Tensor], bank: GradientBank) -> None:
        """Row i of ``bank`` = the probe's gradient of losses[i]."""
        with torch.no_grad():
            for i in range(len(losses)):
                bank.ensure_row(i)
        for i, loss in enumerate(losses):
            bank.store(i, self.gradients(loss))

    @staticmethod
    def weighted_backward(weights: Sequence[Any], losses: Sequence[torch.Tensor]) -> None:
        """ONE backward of Σ_i w_i L_i through the whole model (zero Python weights left out)."""
        terms = [
            (w.to(loss.dtype) if isinstance(w, torch.Tensor) else w) * loss
            for w, loss in zip(weights, losses, strict=True)
            if isinstance(w, torch.Tensor) or w
        ]
        if terms:
            with torch.enable_grad():
                total = terms[0]
                for term in terms[1:]:
                    total = total + term
            total.backward()
