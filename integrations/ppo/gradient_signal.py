"""How much of a per-objective policy gradient is signal: the half-batch cosine.

Split an update batch in two halves A and B and take each objective's gradient on each half.
With g = s + n (the expected gradient s, zero-mean sampling noise n of variance σ² per half),
E⟨g_A, g_B⟩ = ‖s‖² while ‖g_A‖² ≈ ‖s‖² + σ², so

    cos(g_A, g_B) ≈ ‖s‖² / (‖s‖² + σ²) = SNR / (1 + SNR),   SNR = ‖s‖² / σ² per half batch,

a number in (−1, 1] that is about 0 when the gradient is noise and 1 when it is all signal. The
Gram matrix MOGD solves on is only meaningful when this is clearly above 0: otherwise the
weights GAPO and MGDA compute follow the noise. (The full batch has twice the half's SNR.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .accumulate import MicroBatch


def half_batch_cosines(
    losses_of: Callable[[MicroBatch], Sequence[torch.Tensor]],
    rows: torch.Tensor,
    params: Sequence[torch.Tensor],
) -> list[float]:
    """Per objective, cos(∇L_i(first half of ``rows``), ∇L_i(second half)).

    ``losses_of(MicroBatch(rows, 1.0))`` returns the k losses of those rows (a forward pass with
    autograd on), as the training step computes them.
    Gradients are taken with ``torch.autograd.grad`` on ``params``: nothing lands in ``.grad``,
    so the caller's optimizer state is untouched. NaN for an objective whose gradient is zero
    on either half.
    """
    if len(rows) < 2:
        raise ValueError(f"rows must hold at least 2 sequences to split in halves, got {len(rows)}")
    params = [p for p in params if p.requires_grad]
    half = len(rows) // 2
    grads: list[list[torch.Tensor]] = []
    for part in (rows[:half], rows[half:]):
        losses = list(losses_of(MicroBatch(part, 1.0)))
        flat = []
        for i, loss in enumerate(losses):
            g = torch.autograd.grad(
                loss, params, retain_graph=i < len(losses) - 1, allow_unused=True
            )
            flat.append(
                torch.cat(
                    [
                        (x if x is not None else torch.zeros_like(p)).reshape(-1).double()
                        for x, p in zip(g, params, strict=True)
                    ]
                )
            )
        grads.append(flat)
    out = []
    for a, b in zip(grads[0], grads[1], strict=True):
        denom = a.norm() * b.norm()
        out.append(float(a @ b / denom) if denom > 0 else float("nan"))
    return out
