"""Where the full mode's per-objective gradients come from: each objective's backward passes routed
into its row of the gradient bank (probe mode's come from :mod:`mogd.probe`).

``with opt.objective(i):`` points every parameter's ``.grad`` at row i of the bank, so autograd (and
DDP, and FSDP2's reduce-scatter) accumulate objective i's gradient in place; ``with opt.regularizer():``
does the same for the regularizer's row (key :data:`mogd.bank.REGULARIZER`). Hooks on the parameters
refuse sparse gradients and backward passes that land outside any objective while rows are pending,
and remember which parameters an objective reached (the others keep ``.grad = None`` after the step,
as they would with a plain optimizer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mogd.bank import REGULARIZER, GradientBank, register_hooks

__all__ = ["Collector"]


def _context_name(i: int) -> str:
    """How the user wrote the context of row i: ``objective(i)`` or ``regularizer()``."""
    return "regularizer()" if i == REGULARIZER else f"objective({i})"


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
            raise RuntimeError(f"{_context_name(i)} entered inside {_context_name(self.active)}")
        with torch.no_grad():
            bank.ensure_row(i)
        bank.point_grads(i)
        self.active = i

    def exit(self, i: int, bank: GradientBank) -> None:
        self.active = None
        bank.adopt_foreign_grads(i)

    def close(self, bank: GradientBank, k: int | None) -> int:
        """Check that every objective 0..k-1 was backpropagated since the last step; return k."""
        objectives = bank.live - {REGULARIZER}
        if not objectives:
            raise ValueError(
                "step() found no per-objective gradients: pass the losses, opt.step([loss_0, ...]), "
                "or backpropagate each inside `with opt.objective(i):` first"
            )
        k = k if k is not None else max(objectives) + 1
        missing = [i for i in range(k) if i not in objectives]
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
                "objective's backward in `with opt.objective(i):` (a regularizer's in "
                "`with opt.regularizer():`) or pass the losses to opt.step([loss_0, ...])"
            )
        self.reached[j] = True

    def _on_incoming(self, grad: torch.Tensor) -> None:
        if grad.is_sparse or grad.layout != torch.strided:
            raise TypeError(
                "a parameter received a sparse gradient; MOGD keeps dense per-objective gradients "
                "(use nn.Embedding(sparse=False))"
            )
