"""Weighted combine d = Σ_i w_i g_i of a [k, n] gradient bank, one pass over the data.

Each chunk of d is accumulated in a small buffer that stays in cache, so the gradients are read from
memory once and d written once; because a chunk is complete before it is copied out, ``out`` may
alias a row of J.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CHUNK = 1 << 20  # elements per objective per step (few, large ops: per-op overhead dominates)


def combine_reference(J: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Float64 reference: d = Σ_i w_i J[i] in float64."""
    return w.to(torch.float64) @ J.to(torch.float64)


def combine_torch(
    J: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """d = Σ_i w_i J[i] for a [k, n] tensor, in J's dtype with fp32 (or float64) arithmetic.

    Per chunk, the k rows are accumulated into a cache-resident buffer (axpy; a gemv with one output
    row takes a slow path on CPU) and the result is copied out once. The weights stay tensors (never
    read on the host), so this queues work without waiting for w on any device.
    """
    k, n = J.shape
    wide = torch.float64 if J.dtype == torch.float64 else torch.float32
    coeffs = w.reshape(-1).to(J.device, wide)
    if out is None:
        out = torch.empty(n, dtype=J.dtype, device=J.device)
    buf = torch.empty(min(CHUNK, max(n, 1)), dtype=wide, device=J.device)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        acc = buf[: stop - start]
        acc.copy_(J[0, start:stop]).mul_(coeffs[0])
        for i in range(1, k):
            acc.addcmul_(J[i, start:stop], coeffs[i])
        out[start:stop].copy_(acc)
    return out


def combine_torch_list(
    grads: Sequence[Sequence[torch.Tensor]],
    w: torch.Tensor,
    out: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Per-parameter combine for k lists of per-parameter tensors; returns (or fills) one list."""
    k = len(grads)
    results = []
    for j in range(len(grads[0])):
        pieces = [grads[i][j] for i in range(k)]
        target = torch.empty_like(pieces[0]) if out is None else out[j]
        flat = target.view(-1)
        wide = torch.float64 if target.dtype == torch.float64 else torch.float32
        coeffs = w.reshape(-1).to(target.device, wide)
        numel = flat.numel()
        for start in range(0, numel, CHUNK):
            stop = min(start + CHUNK, numel)
            acc = torch.zeros(stop - start, dtype=wide, device=target.device)
            for i, piece in enumerate(pieces):
                acc.addcmul_(piece.reshape(-1)[start:stop].to(wide), coeffs[i])
            flat[start:stop].copy_(acc)
        results.append(target)
    return results
