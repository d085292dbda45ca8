"""Fused Gram pass G = J Jᵀ over a [k, n] gradient bank, as a Triton kernel (DESIGN §4).

G_ij = Σ_c J[i, c] J[j, c] = ⟨g_i, g_j⟩ is the only thing the weightings need (GAPO paper, Li et al.
ACL 2025, arXiv 2507.01915, Eq. 6–7). The pass is memory-bound: its cost is one read of the k·n
gradient elements, so the kernel reads each element exactly once and does every product on the
tensor cores, where k(k+1)/2 dot products per element are free next to the load.

Layout of the work (all sizes are ``constexpr``):

* A persistent grid (one full wave: as many programs as are resident at once, from the compiled
  kernel's registers and shared memory) strides over *blocks* of ``BATCH·FOLD·BLOCK`` consecutive
  columns; each program keeps its accumulator in registers and writes one partial at the end.
* Each block is loaded as one ``[BATCH, ROWS, BLOCK]`` tile. ``tl.dot`` needs M, N, K ≥ 16, so with
  few objectives the tile is *folded*: ROWS = 16 tile rows hold FOLD = 16 / KP column chunks of each
  of the KP = next_pow2(k) rows (tile row m = r·FOLD + s holds chunk s of gradient r). The dot then
  computes cross products of chunks too; only the FOLD diagonal KP×KP blocks are kept (summed on
  the host), the rest is wasted tensor-core work, never wasted memory traffic. Folding beats padding
  J to 16 rows: padded rows would cost no DRAM traffic either, but they would fill registers,
  shared memory and the layout conversions feeding the MMA with zeros (8× for k = 2).
  For 17 <= k <= 32 the tile has ROWS = 32 and no folding; larger k is refused (``MAX_K``).
* The leading BATCH (= num_warps) axis makes the dot a batched one, which Triton maps one batch per
  warp (``warpsPerTileV2`` returns [num_warps, 1, 1] for rank 3): every warp multiplies its own
  slice, none repeats another's MMAs as a 16×16 2-D dot split over 4 warps would.
* Why ``tl.dot`` and not elementwise products + ``tl.sum``: the elementwise form needs a
  [KP, KP, BLOCK] product tensor (KP²·BLOCK/threads registers, 512 per thread at k = 16 with
  BLOCK = 1024) or a cross-thread reduction per pair per block; its FMA count (k² per column) would
  also make k ≥ 8 fp32 compute-bound on the CUDA cores. The tensor cores do it for free.
* Precision: 16-bit tiles go to the tensor cores as they are (bf16·bf16 and fp16·fp16 products
  are exact in fp32, summed in fp32). fp32 tiles are split into three bf16 parts, hi + mid + lo,
  which carry all 24 mantissa bits, and multiplied in four bf16 MMAs (hi·hi, and hi·mid + hi·lo +
  ½ mid·mid, whose transpose supplies the mirrored terms): fp32-exact products on the tensor cores.
  The default ``tl.dot`` precision for fp32, TF32, keeps 10 bits (≈1e-3 relative error per
  product); "ieee" would run the padded 16×16·K product on the FMA units, compute-bound for small
  k; Triton's own "bf16x6" needs six MMAs and splits both operands of x·xᵀ separately. The split
  written out here also runs in the CPU interpreter, so the tests check it.
* Accumulation: each block's dot is summed in fp32 over BLOCK columns only, then added to a float64
  accumulator (a few fp64 adds per thread per block), so the error does not grow with n (a single
  fp32 accumulator over 5e7 elements is ~2 % off, DESIGN §4). The small split terms have their own
  accumulator, so hi·hi's rounding does not swallow them.
* Loads: the full blocks carry no column mask, so the loop issues 16-byte ``cp.async`` copies,
  software-pipelined over NUM_STAGES; the ragged last block is masked and done once.
  (Compiled for sm_90 with Triton 3.7: 114–168 registers, no spills for k <= 16, 32 KiB of
  shared memory, ``mma.sync`` (M = 16 is below wgmma's 64): four dots per fp32 tile, one per
  16-bit tile.)
* Determinism: every program writes its own float64 partials (no atomics); the host sums them
  over the programs with one fixed-order torch reduction, forms sym + cross + crossᵀ, extracts the
  folded diagonal blocks and mirrors the upper triangle (so G is exactly symmetric). Same input,
  device and launch configuration: same bits, every run.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .gram_torch import gram_reference

__all__ = ["MAX_K", "INTERPRETED", "gram_reference", "gram_triton"]

MAX_K = 32  # largest k one tile holds (ROWS = 32); larger banks take the torch path
TILE_BYTES = 16384  # bytes of J per block: BLOCK = TILE_BYTES / (BATCH·ROWS·itemsize)
NUM_WARPS = 4  # also the batch size of the dot: one batch slice per warp
NUM_STAGES = 3  # software-pipelined loads in flight per program
INTERPRETER_PROGRAMS = 4  # grid size under TRITON_INTERPRET=1 (no SMs to count)

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _mma(a, b, UPCAST: tl.constexpr):
    """Batched a @ bᵀ with fp32 accumulation; 16-bit a, b are multiplied exactly."""
    if UPCAST:  # Triton's interpreter multiplies bf16 as raw bits: widen (exact) there
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, tl.trans(b, 0, 2, 1))


@triton.jit
def _zero_nan(x):
    return tl.where(x != x, 0.0, x)


@triton.jit
def _block_gram(ptrs, mask, SPLIT: tl.constexpr, UPCAST: tl.constexpr):
    """Float64 [BATCH, ROWS, ROWS] partial Grams of one tile: (symmetric part, cross part).

    The block's Gram is sym + cross + crossᵀ. 16-bit tiles are multiplied as they are. fp32 tiles
    are split x = hi + mid + lo into bf16 parts (each residual is exact in fp32, so hi + mid + lo
    carries all 24 bits) and x xᵀ = hi hiᵀ + cross + crossᵀ with cross = hi midᵀ + hi loᵀ +
    ½ mid midᵀ, up to the mid·lo and lo·lo terms (below 2^-24 relative): fp32-exact products in
    four bf16 MMAs. The small terms are summed apart from hi hiᵀ, so its fp32 rounding does not
    swallow them. As in Triton's own bf16x6 split, NaNs of the small terms are dropped, so that
    an infinite gradient entry gives inf (through hi hiᵀ), not NaN.
    """
    x = tl.load(ptrs, mask=mask, other=0.0)
    if SPLIT:
        hi = x.to(tl.bfloat16)
        rest = x - hi.to(tl.float32)
        mid = rest.to(tl.bfloat16)
        lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)
        cross = _mma(hi, mid, UPCAST) + _mma(hi, lo, UPCAST) + 0.5 * _mma(mid, mid, UPCAST)
        return _mma(hi, hi, UPCAST).to(tl.float64), _zero_nan(cross).to(tl.float64)
    sym = _mma(x, x, UPCAST)
    return sym.to(tl.float64), tl.zeros_like(sym).to(tl.float64)


# Runtime sizes are not specialized (on divisibility by 16 or == 1): they vary from call to call
# and would only cost recompilations; the vectorized loads do not depend on them.
@triton.jit(do_not_specialize=["n", "num_full", "tail_owner"])
def _gram_partials_kernel(
    J,
    stride_row,
    partials,
    k,
    n,
    num_full,
    tail_owner,
    BATCH: tl.constexpr,
    ROWS: tl.constexpr,
    FOLD: tl.constexpr,
    BLOCK: tl.constexpr,
    SPLIT: tl.constexpr,
    UPCAST: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    b = tl.arange(0, BATCH)[:, None, None]
    m = tl.arange(0, ROWS)[None, :, None]
    c = tl.arange(0, BLOCK)[None, None, :]
    row = m // FOLD  # gradient held by tile row m
    row_ok = row < k
    chunk = (b * FOLD + m % FOLD) * BLOCK + c  # column of the element inside its block
    first = J + row.to(tl.int64) * stride_row + chunk  # the tile of block 0
    cols_per_block = BATCH * FOLD * BLOCK
    acc_sym = tl.zeros([BATCH, ROWS, ROWS], dtype=tl.float64)
    acc_cross = tl.zeros([BATCH, ROWS, ROWS], dtype=tl.float64)
    # Full blocks carry no column mask: a mask that varies along the contiguous axis (n is rarely
    # a multiple of 16) would stop Triton from vectorizing the loads (16-byte cp.async).
    # int64 offsets: n·itemsize may exceed 2**31 for a 7B-parameter bank.
    for blk in tl.range(pid, num_full, num_programs, num_stages=NUM_STAGES):
        offset = tl.cast(blk, tl.int64) * cols_per_block
        sym, cross = _block_gram(first + offset, row_ok, SPLIT, UPCAST)
        acc_sym += sym
        acc_cross += cross
    if pid == tail_owner:  # the ragged last block, masked; -1 when n is a multiple of the block
        offset = tl.cast(num_full, tl.int64) * cols_per_block
        sym, cross = _block_gram(first + offset, row_ok & (offset + chunk < n), SPLIT, UPCAST)
        acc_sym += sym
        acc_cross += cross
    i = tl.arange(0, ROWS)
    out = partials + pid * 2 * ROWS * ROWS + i[:, None] * ROWS + i[None, :]
    tl.store(out, tl.sum(acc_sym, axis=0))
    tl.store(out + ROWS * ROWS, tl.sum(acc_cross, axis=0))


INTERPRETED = isinstance(_gram_partials_kernel, InterpretedFunction)
"""True when TRITON_INTERPRET=1 was set before triton was imported (kernels run on CPU tensors)."""


_RESIDENT: dict[tuple, int] = {}  # (device, dtype, launch config) -> programs resident per SM


def _resident_programs(J: torch.Tensor, args: tuple, meta: dict) -> int:
    """Persistent grid size: the programs that fit on the device at once (one full wave).

    Sized from the compiled kernel's registers and shared memory (as in Triton's fused-softmax
    tutorial), so that no program waits for a second wave and finishes late.
    """
    index = J.device.index if J.device.index is not None else torch.cuda.current_device()
    key = (index, J.dtype, tuple(sorted(meta.items())))
    if key not in _RESIDENT:
        compiled = _gram_partials_kernel.warmup(*args, **meta, grid=(1,))
        threads = 32 * meta["num_warps"]
        by_threads = 2048 // threads  # resident threads per SM on sm_80 / sm_90
        if compiled is None:  # asynchronous compilation: no binary to inspect yet
            _RESIDENT[key] = min(4, by_threads)
        else:
            compiled._init_handles()
            props = triton.runtime.driver.active.utils.get_device_properties(index)
            by_regs = props["max_num_regs"] // max(1, compiled.n_regs * threads)
            by_smem = props["max_shared_mem"] // max(1, compiled.metadata.shared)
            _RESIDENT[key] = max(1, min(by_regs, by_smem, by_threads))
    sms = torch.cuda.get_device_properties(index).multi_processor_count
    return _RESIDENT[key] * sms


def _check_power_of_two(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {minimum}, got {value!r}")


def check_bank(J: torch.Tensor, dtypes: tuple[torch.dtype, ...], who: str) -> None:
    """Validate a [k, n] bank for the kernels: shape, dtype, unit column stride and device."""
    if not isinstance(J, torch.Tensor) or J.dim() != 2:
        shape = tuple(J.shape) if isinstance(J, torch.Tensor) else type(J).__name__
        raise ValueError(f"J must be a [k, n] tensor, got {shape}")
    if J.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"J has dtype {J.dtype}; {who} takes {names} (use backend='torch')")
    if J.shape[1] > 1 and J.stride(1) != 1:
        raise ValueError("J must have unit stride along its last dim; call .contiguous() first")
    if J.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"J is on {J.device}: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 "
            "set before triton is first imported); use backend='torch' for CPU tensors"
        )


def gram_triton(
    J: torch.Tensor,
    *,
    block_n: int | None = None,
    num_warps: int | None = None,
    programs: int | None = None,
) -> torch.Tensor:
    """Gram matrix G = J Jᵀ of a [k, n] bank in one fused pass (paper Eq. 6–7: G feeds the QP).

    Args:
        J: [k, n] tensor, 1 <= k <= ``MAX_K``, fp32 / bf16 / fp16, unit stride along n (any row
            stride), on CUDA (or CPU under the Triton interpreter).
        block_n: columns per tile chunk (power of two >= 16). Default: ``TILE_BYTES`` of J per
            block. Tests shrink it to reach several blocks with a small n.
        num_warps: warps per program, also the batch size of the dot (power of two). Default 4.
        programs: size of the persistent grid. Default on CUDA: as many programs as are resident
            at once (from the compiled kernel's registers and shared memory).

    Returns:
        float64 [k, k] tensor on J.device, exactly symmetric. Products are fp32-exact, sums are fp32
        within a block of columns and float64 across blocks; bit-identical across runs on the same
        device and configuration.
    """
    check_bank(J, _DTYPES, "gram_triton")
    k, n = J.shape
    if k > MAX_K:
        raise ValueError(f"gram_triton takes k <= {MAX_K} rows, got k = {k}; use backend='torch'")
    if k == 0 or n == 0:
        return torch.zeros(k, k, dtype=torch.float64, device=J.device)

    warps = NUM_WARPS if num_warps is None else num_warps
    _check_power_of_two("num_warps", warps, 1)
    kp = triton.next_power_of_2(k)
    rows = max(16, kp)
    fold = rows // kp
    block = block_n
    if block is None:
        block = max(16, TILE_BYTES // (warps * rows * J.element_size()))
    _check_power_of_two("block_n", block, 16)
    cols_per_block = warps * fold * block
    num_full, tail = divmod(n, cols_per_block)
    num_blocks = num_full + (tail > 0)
    meta = {
        "BATCH": warps,
        "ROWS": rows,
        "FOLD": fold,
        "BLOCK": block,
        "SPLIT": J.dtype == torch.float32,
        "UPCAST": INTERPRETED,
        "NUM_STAGES": NUM_STAGES,
        "num_warps": warps,
    }
    on_cuda = J.device.type == "cuda"
    with torch.cuda.device(J.device) if on_cuda else contextlib.nullcontext():
        if programs is None:
            if on_cuda and not INTERPRETED:
                scratch = torch.empty(1, dtype=torch.float64, device=J.device)
                args = (J, J.stride(0), scratch, k, n, num_full, -1)
                programs = _resident_programs(J, args, meta)
            else:
                programs = INTERPRETER_PROGRAMS
        if not isinstance(programs, int) or programs < 1:
            raise ValueError(f"programs must be a positive int, got {programs!r}")
        grid = min(programs, num_blocks)
        # The ragged block goes to the program next in line after the full blocks.
        tail_owner = num_full % grid if tail else -1
        partials = torch.empty(grid, 2, rows, rows, dtype=torch.float64, device=J.device)
        _gram_partials_kernel[(grid,)](J, J.stride(0), partials, k, n, num_full, tail_owner, **meta)
    sym, cross = partials.sum(0)  # fixed-order float64 reduction over the programs' partials
    folded = sym + cross + cross.T
    G = folded.view(kp, fold, kp, fold).diagonal(dim1=1, dim2=3).sum(-1)[:k, :k]
    return torch.triu(G) + torch.triu(G, 1).mT  # exactly symmetric (MMA sums need not be)
