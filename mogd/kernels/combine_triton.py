"""Fused weighted combine d = Σ_i w_i J[i] over a [k, n] gradient bank, as a Triton kernel.

Every weighting (MGDA, GAPO Eq. 7, P-GAPO Eq. 8 of Li et al. ACL 2025, arXiv 2507.01915) ends in
d = Σ_i w_i g_i with weights on the raw gradients (DESIGN §1). The pass is memory-bound: the kernel
reads the k gradients once and writes d once, in J's dtype, with fp32 arithmetic (float64 for
float64 banks).

Each program owns BLOCK_N consecutive columns: it walks the k rows in a fixed, unrolled order
(``K`` is ``constexpr``) with one fused multiply-add per element into an fp32 register accumulator,
then stores its columns. No cross-thread reduction and no padding of k to a power of two are
needed, the sum order is fixed (deterministic bits), and because a program reads all k values of a
column before it writes that column (the store depends on every load), ``out`` may be a row of J:
the in-place update ``J[0] <- Σ_i w_i J[i]`` is race-free, each column being read and written by
the same program only. Only the last program masks its columns, so all others use 16-byte loads
and stores whatever n is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .combine_torch import combine_reference
from .gram_triton import check_bank

__all__ = ["combine_reference", "combine_triton"]

# 8 elements per thread per row with 4 warps: one or two 16-byte loads per row, ~40 registers
# (compiled for sm_90), so the SM is filled with threads keeping loads in flight; 2048 or more
# fp32 columns per program would take 114+ registers and a quarter of the threads.
BLOCK_N = 1024
NUM_WARPS = 4

_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@triton.jit
def _combine_columns(J, stride_row, w, out, col, n, K: tl.constexpr, MASKED: tl.constexpr):
    """out[col] = Σ_i w[i] J[i, col] for one program's columns, rows in a fixed order."""
    mask = col < n if MASKED else None
    acc = tl.zeros(col.shape, dtype=w.dtype.element_ty)
    row_ptr = J + col
    for i in tl.static_range(K):
        x = tl.load(row_ptr, mask=mask, other=0.0 if MASKED else None)
        acc += tl.load(w + i) * x.to(w.dtype.element_ty)
        row_ptr += stride_row
    tl.store(out + col, acc.to(out.dtype.element_ty), mask=mask)


# n is not specialized (divisibility by 16, == 1): it changes from call to call, and the full
# blocks, which carry no mask, are vectorized whatever it is.
@triton.jit(do_not_specialize=["n", "num_full"])
def _combine_kernel(J, stride_row, w, out, n, num_full, K: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    col = tl.cast(pid, tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # int64: n may exceed 2**31
    # Only the ragged last program masks its columns: a mask varying along the contiguous axis
    # would keep Triton from issuing 16-byte loads and stores.
    if pid < num_full:
        _combine_columns(J, stride_row, w, out, col, n, K, False)
    else:
        _combine_columns(J, stride_row, w, out, col, n, K, True)


def _check_alias(J: torch.Tensor, out: torch.Tensor) -> None:
    """Refuse an ``out`` that overlaps J other than as exactly one of its rows.

    A shifted or partial view of J would let one program write columns that another program has
    yet to read; a whole row is safe (each column is read and written by one program).
    """
    if out.untyped_storage().data_ptr() != J.untyped_storage().data_ptr():
        return
    k, n = J.shape
    size, stride = J.element_size(), J.stride(0)
    delta = out.data_ptr() - J.data_ptr()
    if delta % size == 0 and (k == 1 or stride >= n):  # J's rows are disjoint
        o = delta // size
        starts = [i * stride for i in range(k)]
        if o in starts or all(s + n <= o or o + n <= s for s in starts):
            return
    elif delta >= ((k - 1) * stride + n) * size or delta + n * size <= 0:
        return
    raise ValueError(
        "out overlaps grads without being one of its rows; pass a separate buffer or out=grads[i]"
    )


def combine_triton(
    J: torch.Tensor,
    w: torch.Tensor | Sequence[float],
    out: torch.Tensor | None = None,
    *,
    block_n: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """d = Σ_i w_i J[i] in one fused pass: the update direction of paper Eq. 7–8 (DESIGN §1).

    Args:
        J: [k, n] tensor, fp32 / bf16 / fp16 / float64, unit stride along n (any row stride), on
            CUDA (or CPU under the Triton interpreter).
        w: k weights, any dtype and device (moved to J.device as fp32; float64 for a float64 J).
        out: optional [n] tensor of J's dtype and device to write d into; may be a row of J
            (``out=J[0]``), any other overlap with J is refused.
        block_n: columns per program (power of two >= 16); default ``BLOCK_N`` = 1024.
        num_warps: warps per program (power of two); default 4.

    Returns:
        ``out`` (or a new [n] tensor) holding d, rounded once to J's dtype.
    """
    check_bank(J, _DTYPES, "combine_triton")
    k, n = J.shape
    wide = torch.float64 if J.dtype == torch.float64 else torch.float32
    weights = torch.as_tensor(w).detach().to(device=J.device, dtype=wide).reshape(-1)
    if weights.numel() != k:
        raise ValueError(f"w has {weights.numel()} entries but J has k = {k} rows")
    if out is None:
        out = torch.empty(n, dtype=J.dtype, device=J.device)
    else:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n,):
            raise ValueError(f"out must be a tensor of shape ({n},) for a [{k}, {n}] J")
        if out.dtype != J.dtype or out.device != J.device:
            raise ValueError(
                f"out must have J's dtype and device ({J.dtype}, {J.device}), "
                f"got ({out.dtype}, {out.device})"
            )
        if n > 1 and out.stride(0) != 1:
            raise ValueError("out must be contiguous; pass out.contiguous() and copy back")
        _check_alias(J, out)
    if n == 0:
        return out
    if k == 0:
        return out.zero_()

    block = BLOCK_N if block_n is None else block_n
    if not isinstance(block, int) or block < 16 or block & (block - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block!r}")
    warps = NUM_WARPS if num_warps is None else num_warps
    if not isinstance(warps, int) or warps < 1 or warps & (warps - 1):
        raise ValueError(f"num_warps must be a power of two >= 1, got {warps!r}")
    on_cuda = J.device.type == "cuda"
    with torch.cuda.device(J.device) if on_cuda else contextlib.nullcontext():
        _combine_kernel[(triton.cdiv(n, block),)](
            J, J.stride(0), weights, out, n, n // block, K=k, BLOCK_N=block, num_warps=warps
        )
    return out
