"""Gram matrix G = J Jᵀ of a [k, n] gradient bank, blocked for accuracy and memory.

A single fp32 ``J @ J.T`` over n = 5e7 sums each dot product in a handful of long fp32 chains and
is ~2 % off. Here every dot product is split into segments of ``SEGMENT`` elements, each summed in
fp32 by a batched matmul (fast, and its rounding error is that of a short sum), and the segments'
partial Grams are added in float64. The data is read once, chunk by chunk; the extra memory is the
[m, k, k] partials of one chunk, never O(k·n).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SEGMENT = 1024  # elements per fp32 partial dot product
CHUNK = 1 << 22  # elements per objective per batched matmul (amortises the call overhead)


def gram_reference(J: torch.Tensor) -> torch.Tensor:
    """Float64 reference: G = J Jᵀ computed entirely in float64, a chunk at a time (bounded memory)."""
    k, n = J.shape
    G = torch.zeros(k, k, dtype=torch.float64, device=J.device)
    for start in range(0, n, CHUNK):
        block = J[:, start : start + CHUNK].to(torch.float64)
        G += block @ block.T
    return G


def _accumulate(block: torch.Tensor, acc: torch.Tensor) -> None:
    """acc += block blockᵀ for a [k, L] block, fp32 segments summed in float64."""
    if block.dtype not in (torch.float32, torch.float64):
        block = block.float()
    L = block.shape[1]
    m = L // SEGMENT
    body = m * SEGMENT
    if m:
        seg = block[:, :body].unflatten(1, (m, SEGMENT)).transpose(0, 1)  # [m, k, SEGMENT] view
        acc += torch.bmm(seg, seg.transpose(1, 2)).sum(0, dtype=torch.float64)
    if body < L:
        tail = block[:, body:]
        acc += (tail @ tail.T).to(torch.float64)


def gram_torch(J: torch.Tensor) -> torch.Tensor:
    """G = J Jᵀ for a [k, n] tensor, as float64 [k, k] on J's device.

    fp16/bf16 inputs are widened chunk by chunk (fp32 products and sums); float64 stays float64.
    """
    k, n = J.shape
    acc = torch.zeros(k, k, dtype=torch.float64, device=J.device)
    for start in range(0, n, CHUNK):
        _accumulate(J[:, start : start + CHUNK], acc)
    return acc


def gram_torch_list(grads: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """G for k objectives given as k lists of per-parameter tensors (same shapes across objectives).

    Parameters are visited one chunk at a time: the k pieces of a chunk are copied into one reused
    [k, CHUNK] buffer (cache-sized), so nothing of size k·n is ever concatenated or stacked.
    """
    k = len(grads)
    first = grads[0]
    device = first[0].device if len(first) else torch.device("cpu")
    acc = torch.zeros(k, k, dtype=torch.float64, device=device)
    buffers: dict[torch.dtype, torch.Tensor] = {}
    for j in range(len(first)):
        pieces = [grads[i][j].reshape(-1) for i in range(k)]
        numel = pieces[0].numel()
        dtype = pieces[0].dtype
        if dtype not in buffers:
            buffers[dtype] = torch.empty(k, min(CHUNK, max(numel, 1)), dtype=dtype, device=device)
        buf = buffers[dtype]
        if buf.shape[1] < min(CHUNK, numel):
            buf = buffers[dtype] = torch.empty(k, min(CHUNK, numel), dtype=dtype, device=device)
        for start in range(0, numel, CHUNK):
            stop = min(start + CHUNK, numel)
            block = buf[:, : stop - start]
            for i, piece in enumerate(pieces):
                block[i].copy_(piece[start:stop])
            _accumulate(block, acc)
    return acc
