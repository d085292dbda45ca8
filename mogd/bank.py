"""Per-objective gradient storage: one flat [k, n] buffer per (device, dtype, shard group).

While objective i backpropagates, every trainable parameter's ``.grad`` is a view of row i of its
buffer (the trick of DDP's ``gradient_as_bucket_view``), so autograd accumulates straight into the bank:
no copies, and gradient accumulation over micro-batches happens in the rows. The Gram pass reads the
[k, n] buffer once and the combine pass writes d = Σ_i w_i g_i over row 0, where the parameters' ``.grad``
point for the inner optimizer. Extra memory: exactly k × (trainable parameter bytes) per buffer, and
nothing beyond the plain ``.grad`` once the rows are consumed (row 0 doubles as that ``.grad``).

Parameters with ``requires_grad=False`` are not stored. A parameter that an objective does not reach
keeps zeros in that row: it counts as a zero gradient for that objective. Sharded parameters (DTensor,
as FSDP2 ``fully_shard`` makes them) store their local shard; their ``.grad`` views are DTensors over the
local rows, so FSDP2's ``grad._local_tensor += shard`` accumulates into the bank too.

A regularizer (:meth:`mogd.MOGD.regularizer`) gets one more row, under the key :data:`REGULARIZER`,
after the k objectives: the Gram of the [k + 1, n] block then holds ⟨g_i, r⟩ and ‖r‖² from the same
single pass. Once a regularizer has been seen the block keeps its k + 1 rows; a step without one
reads the first k.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

from mogd.distributed import is_sharded, local_tensor

__all__ = ["REGULARIZER", "GradientBank", "register_hooks"]

REGULARIZER = -1  # the row key of the regularizer's gradient r = ∇R (objectives are 0..k-1)


@dataclass
class _Slot:
    """One parameter's place in its group's buffer."""

    param: torch.Tensor
    offset: int
    numel: int
    local_shape: torch.Size


@dataclass
class _Group:
    """Parameters sharing one [k, n] buffer: same device, dtype and (for shards) reduction groups."""

    device: torch.device
    dtype: torch.dtype
    reduce_groups: tuple  # process groups to all-reduce this group's Gram over (empty: local)
    slots: list[_Slot] = field(default_factory=list)
    n: int = 0
    # Either one [k, n] block (k known; [k + 1, n] with the regularizer's row last) or k separate [n]
    # rows (first iteration of the objective() form, while k is still being discovered;
    # consolidated into a block once the rows are consumed).
    block: torch.Tensor | None = None
    rows: list[torch.Tensor | None] = field(default_factory=list)
    # the regularizer's row while the storage has no place for it: separate rows, or a k-row block
    # allocated before the first regularizer (until the next consolidation)
    extra: torch.Tensor | None = None
    views: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def row(self, i: int) -> torch.Tensor:
        if i == REGULARIZER and self.extra is not None:
            return self.extra
        if self.block is not None:
            return self.block[i]  # REGULARIZER = -1: the last row of a [k + 1, n] block
        row = self.rows[i]
        assert row is not None
        return row


class GradientBank:
    """Flat per-objective gradient buffers for a fixed list of trainable parameters.

    Args:
        params: the parameters to store (those with ``requires_grad=True``; others must be filtered
            out by the caller). Dense floating-point tensors or DTensors.
        group_key: maps a parameter to the process groups its Gram must be all-reduced over (empty
            for local or replicated parameters); parameters with different keys get separate buffers.
        k: the number of objectives when known; ``None`` lets rows appear one by one (see
            :meth:`ensure_row`) until :meth:`fix_k`.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        group_key: Callable[[torch.Tensor], tuple] = lambda p: (),
        k: int | None = None,
    ) -> None:
        groups: dict[Hashable, _Group] = {}
        for p in params:
            if p.is_sparse or p.layout != torch.strided:
                raise TypeError("MOGD stores dense gradients; sparse parameters are not supported")
            if not p.dtype.is_floating_point:
                raise TypeError(f"parameters must be floating point to be trained, got {p.dtype}")
            local = local_tensor(p)
            reduce_groups = group_key(p)
            key = (local.device, local.dtype, reduce_groups)
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(local.device, local.dtype, reduce_groups)
            group.slots.append(_Slot(p, group.n, local.numel(), local.shape))
            group.n += local.numel()
        self.groups: list[_Group] = list(groups.values())
        self.params: list[torch.Tensor] = [s.param for g in self.groups for s in g.slots]
        self.k: int | None = None
        self.regularized = False  # a regularizer row was ever used: blocks get k + 1 rows
        self.live: set[int] = set()  # rows zeroed and accumulating since the last reset()
        if k is not None:
            self.fix_k(k)

    @property
    def numel(self) -> int:
        """Trainable elements per objective (local shards for sharded parameters)."""
        return sum(g.n for g in self.groups)

    @property
    def rows_allocated(self) -> int:
        return max(
            (
                (g.block.shape[0] if g.block is not None else len(g.rows)) + (g.extra is not None)
                for g in self.groups
            ),
            default=0,
        )

    @property
    def has_regularizer(self) -> bool:
        """The regularizer's row was written since the last reset (it is part of this step)."""
        return REGULARIZER in self.live

    def nbytes(self) -> int:
        """Bytes held by the per-objective (and regularizer) buffers."""
        total = 0
        for g in self.groups:
            tensors = [g.block, *g.rows, g.extra]
            total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
        return total

    def fix_k(self, k: int) -> None:
        """Freeze the number of objectives; the next :meth:`ensure_row` after a reset uses one block."""
        self.k = k

    def ensure_row(self, i: int) -> None:
        """Make row i (an objective, or :data:`REGULARIZER`) live: allocated, zeroed once per
        accumulation cycle."""
        if i in self.live:
            return
        self.regularized |= i == REGULARIZER
        for g in self.groups:
            height = None if self.k is None else self.k + self.regularized
            if not self.live and height is not None and (g.block is None or len(g.block) != height):
                # No row is in use: swap the first-iteration rows (or a block without the
                # regularizer's row) for one block without ever holding both (the params' .grad
                # may still view the old rows: drop those too).
                for s in g.slots:
                    s.param.grad = None
                g.rows.clear()
                g.views.clear()
                g.block = g.extra = None
                g.block = torch.zeros(height, g.n, dtype=g.dtype, device=g.device)
            elif i == REGULARIZER and (g.block is None or len(g.block) == self.k):
                if g.extra is None:
                    g.extra = torch.zeros(g.n, dtype=g.dtype, device=g.device)
                    g.views.pop(i, None)
                else:
                    g.extra.zero_()
            elif g.block is not None:
                g.block[i].zero_()
            else:
                g.rows.extend([None] * (i + 1 - len(g.rows)))
                row = g.rows[i]
                if row is None:
                    g.rows[i] = torch.zeros(g.n, dtype=g.dtype, device=g.device)
                    g.views.pop(i, None)
                else:
                    row.zero_()
        self.live.add(i)

    def grads(self, i: int) -> list[torch.Tensor]:
        """The ``.grad`` tensors viewing row i, one per parameter (cached; DTensors for shards)."""
        out: list[torch.Tensor] = []
        for g in self.groups:
            views = g.views.get(i)
            if views is None:
                row = g.row(i)
                views = g.views[i] = [_grad_view(s, row) for s in g.slots]
            out.extend(views)
        return out

    def point_grads(self, i: int, only: Sequence[bool] | None = None) -> None:
        """Set every parameter's ``.grad`` to its view of row i (``None`` where ``only`` is False)."""
        for j, (p, view) in enumerate(zip(self.params, self.grads(i), strict=True)):
            p.grad = view if only is None or only[j] else None

    def adopt_foreign_grads(self, i: int) -> None:
        """Copy into row i any ``.grad`` that autograd replaced instead of accumulating in place.

        Autograd accumulates in place into an existing ``.grad`` except under ``create_graph=True``
        (out of place); whatever happened, the row must end up holding the gradient.
        """
        with torch.no_grad():
            for p, view in zip(self.params, self.grads(i), strict=True):
                grad = p.grad
                if grad is not None and grad is not view:
                    local_tensor(view).copy_(local_tensor(grad.detach()))
                    p.grad = view

    def store(self, i: int, grads: Sequence[torch.Tensor | None]) -> None:
        """Copy one gradient per parameter (None: not reached, stays zero) into row i."""
        with torch.no_grad():
            for view, g in zip(self.grads(i), grads, strict=True):
                if g is not None:
                    local_tensor(view).copy_(local_tensor(g))

    def matrices(self) -> list[torch.Tensor | list[list[torch.Tensor]]]:
        """Per group, the rows of this step as one [k, n] tensor (or as k one-tensor lists before
        consolidation): the k objectives', then the regularizer's when :attr:`has_regularizer`."""
        if self.k is None:
            raise RuntimeError("the number of objectives is not fixed yet")
        keys = [*range(self.k), *([REGULARIZER] if self.has_regularizer else [])]
        out: list[torch.Tensor | list[list[torch.Tensor]]] = []
        for g in self.groups:
            if g.block is not None and g.extra is None:
                out.append(g.block[: len(keys)])
            else:
                out.append([[g.row(i)] for i in keys])
        return out

    def row_tensors(self, i: int) -> list[torch.Tensor]:
        """Row i (an objective, or :data:`REGULARIZER`) of every group, as flat [n] tensors."""
        return [g.row(i) for g in self.groups]

    def all_tensors(self) -> list[torch.Tensor]:
        """The buffers of this step's rows (see :meth:`matrices`), each tensor once."""
        out: list[torch.Tensor] = []
        for matrix in self.matrices():
            if isinstance(matrix, torch.Tensor):
                out.append(matrix)
            else:
                out.extend(row for (row,) in matrix)
        return out

    def shard_keys(self) -> list[tuple]:
        """Per buffer, the process groups its Gram is summed over (empty: nothing to sum)."""
        return [g.reduce_groups for g in self.groups]

    def reset(self) -> None:
        """Mark every row consumed: the next objective starts from zero (lazily, on entry)."""
        self.live.clear()


def _grad_view(slot: _Slot, row: torch.Tensor) -> torch.Tensor:
    view = row[slot.offset : slot.offset + slot.numel].view(slot.local_shape)
    p = slot.param
    if is_sharded(p):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(
            view,
            p.device_mesh,  # type: ignore[attr-defined]
            p.placements,  # type: ignore[attr-defined]
            run_check=False,
            shape=p.shape,
            stride=p.stride(),
        )
    return view


def register_hooks(
    bank: GradientBank,
    on_grad: Callable[[int], None],
    on_incoming: Callable[[torch.Tensor], None],
) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks on every parameter of ``bank``: ``on_incoming(grad)`` before accumulation (plain
    parameters; sees sparse gradients) and ``on_grad(j)`` after ``.grad`` of parameter j was
    accumulated (also called by FSDP2 for sharded parameters). Both hold the callbacks weakly
    through their owner, so a dropped optimizer leaves inert hooks behind."""
    handles = []
    on_grad_ref = weakref.WeakMethod(on_grad)  # type: ignore[arg-type]
    on_incoming_ref = weakref.WeakMethod(on_incoming)  # type: ignore[arg-type]

    for j, p in enumerate(bank.params):

        def post(_: torch.Tensor, j: int = j) -> None:
            fn = on_grad_ref()
            if fn is not None:
                fn(j)

        def pre(grad: torch.Tensor) -> None:
            fn = on_incoming_ref()
            if fn is not None:
                fn(grad)

        handles.append(p.register_post_accumulate_grad_hook(post))
        if not is_sharded(p):
            # a sharded (FSDP2) parameter is not in the autograd graph: FSDP2 calls its
            # post-accumulate hooks itself, and reduce-scattered shards are dense anyway
            handles.append(p.register_hook(pre))
    return handles
