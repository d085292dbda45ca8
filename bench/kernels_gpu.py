"""GPU benchmark of the fused Gram and combine kernels (DESIGN §4).

Both passes are memory-bound, so the figure of merit is achieved bandwidth. For each dtype, k and n
the script measures, in the same process and on the same bank:

* copy:    a device-to-device copy of the bank (``dst.copy_(J)``: k·n elements read and written);
           its bytes moved / time is the device's copy bandwidth the kernels are held against;
* gram:    ``gram_triton(J)`` (k·n elements read) against ``J @ J.T`` on the bank, ``torch.stack``
           of the k gradients + matmul, and one ``torch.dot`` per pair;
* combine: ``combine_triton(J, w, out)`` (k·n read, n written) against ``w @ J`` (gemv on the bank),
           ``torch.stack`` + matmul, and a loop of k ``add_(alpha=w_i)`` passes.

GB/s = bytes moved / median time (``triton.testing.do_bench``, L2 flushed before every run), with
GB = 1e9 bytes. "x best" is the best torch baseline's time over the kernel's (> 1: kernel faster).
Targets at n >= 1e8: both kernels at >= 85 % of copy bandwidth and >= 2x the best baseline.

Usage: python bench/kernels_gpu.py [--quick] [--ks 2 4 8] [--sizes 1e7 1e8 5e8] [--sweep]
Without a CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
from collections.abc import Callable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEVICE = "cuda"


def _bench(fn: Callable[[], object]) -> float:
    """Median time of fn in seconds (CUDA events, L2 flushed between runs)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median") * 1e-3


def _try_bench(fn: Callable[[], object]) -> float:
    try:
        return _bench(fn)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # e.g. an op without a bf16 kernel
        print(f"    (baseline failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
        torch.cuda.empty_cache()
        return float("inf")


def _gram_rel_error(G: torch.Tensor, J: torch.Tensor, chunk: int = 1 << 24) -> float:
    """max |G - G64| / max |G64| with G64 accumulated in float64 chunk by chunk."""
    k, n = J.shape
    ref = torch.zeros(k, k, dtype=torch.float64, device=J.device)
    for start in range(0, n, chunk):
        block = J[:, start : start + chunk].double()
        ref += block @ block.T
    return ((G - ref).abs().max() / ref.abs().max()).item()


def _random_bank(k: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    J = torch.empty(k, n, dtype=dtype, device=DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(k * 1_000_003 + n)
    for i in range(k):  # row by row: no fp32 temporary the size of the whole bank
        J[i].normal_(generator=gen)
    return J


def _copy_time(J: torch.Tensor) -> float:
    """Time of a device-to-device copy of J (its bytes read once and written once)."""
    dst = torch.empty_like(J)
    return _bench(functools.partial(dst.copy_, J))


def _row(dtype_name: str, k: int, n: int) -> dict[str, float] | None:
    from mogd.kernels.combine_triton import combine_triton
    from mogd.kernels.gram_triton import gram_triton

    dtype = DTYPES[dtype_name]
    size = torch.tensor([], dtype=dtype).element_size()
    bank = k * n * size
    torch.cuda.empty_cache()  # the previous row's bank is garbage now; return it to the device
    free, _ = torch.cuda.mem_get_info()
    if 2.3 * bank > free:  # bank + one bank-sized temporary (copy / stack) + combine output
        print(f"{dtype_name:>5} {k:>2} {n:>11.3g}   skipped: needs ~{2.3 * bank / 1e9:.1f} GB")
        return None
    J = _random_bank(k, n, dtype)
    rows = list(J.unbind(0))
    w32 = torch.linspace(0.5, -0.25, k, device=DEVICE)
    w = w32.to(dtype)
    out = torch.empty(n, dtype=dtype, device=DEVICE)

    t_copy = _copy_time(J)

    def per_pair_dot() -> None:
        for i in range(k):
            for j in range(i, k):
                torch.dot(rows[i], rows[j])

    def axpy_loop() -> None:
        out.zero_()
        for i in range(k):
            out.add_(rows[i], alpha=float(w32[i]))

    res = {
        "copy_bw": 2 * bank / t_copy,
        "gram": _bench(lambda: gram_triton(J)),
        "gram_mm": _try_bench(lambda: J @ J.T),
        "gram_stack": _try_bench(lambda: (lambda S: S @ S.T)(torch.stack(rows))),
        "gram_dot": _try_bench(per_pair_dot),
        "comb": _bench(lambda: combine_triton(J, w32, out=out)),
        "comb_gemv": _try_bench(lambda: w @ J),
        "comb_stack": _try_bench(lambda: w @ torch.stack(rows)),
        "comb_axpy": _try_bench(axpy_loop),
        "err": _gram_rel_error(gram_triton(J), J),
    }
    res["gram_bw"] = bank / res["gram"]
    res["comb_bw"] = (k + 1) * n * size / res["comb"]
    res["gram_x"] = min(res["gram_mm"], res["gram_stack"], res["gram_dot"]) / res["gram"]
    res["comb_x"] = min(res["comb_gemv"], res["comb_stack"], res["comb_axpy"]) / res["comb"]
    ms = {
        key: 1e3 * res[key] for key in res if key.startswith(("gram", "comb")) and "bw" not in key
    }
    print(
        f"{dtype_name:>5} {k:>2} {n:>11.3g} {res['copy_bw'] / 1e9:>8.0f} "
        f"{res['gram_bw'] / 1e9:>8.0f} {100 * res['gram_bw'] / res['copy_bw']:>5.0f}% "
        f"{res['gram_x']:>6.2f}x {res['err']:>8.1e} "
        f"{res['comb_bw'] / 1e9:>8.0f} {100 * res['comb_bw'] / res['copy_bw']:>5.0f}% "
        f"{res['comb_x']:>6.2f}x   "
        f"gram {ms['gram']:.3f} | mm {ms['gram_mm']:.3f} stack {ms['gram_stack']:.3f} "
        f"dot {ms['gram_dot']:.3f} ; comb {ms['comb']:.3f} | gemv {ms['comb_gemv']:.3f} "
        f"stack {ms['comb_stack']:.3f} axpy {ms['comb_axpy']:.3f}"
    )
    return res


def _sweep(n: int) -> None:
    """Time a grid of launch configurations at one size (for retuning the defaults)."""
    from mogd.kernels import gram_triton as gram_mod
    from mogd.kernels.combine_triton import combine_triton
    from mogd.kernels.gram_triton import gram_triton

    print(
        f"\nsweep at n = {n:.3g} (defaults: gram num_warps={gram_mod.NUM_WARPS}, tile "
        f"{gram_mod.TILE_BYTES} B; programs: one resident wave)"
    )
    for (dtype_name, dtype), k in itertools.product(DTYPES.items(), (2, 8)):
        J = _random_bank(k, n, dtype)
        bank = J.numel() * J.element_size()
        results = []
        for warps, block in itertools.product((2, 4, 8), (32, 64, 128, 256)):
            try:
                t = _bench(functools.partial(gram_triton, J, block_n=block, num_warps=warps))
            except Exception as exc:  # noqa: BLE001 - a config may exceed registers/shared memory
                print(
                    f"  gram {dtype_name} k={k} warps={warps} block={block}: {type(exc).__name__}"
                )
                continue
            results.append((t, f"num_warps={warps} block_n={block}"))
        results.sort()
        for t, cfg in results[:3]:
            print(f"  gram    {dtype_name} k={k}: {bank / t / 1e9:7.0f} GB/s  {cfg}")
        out = torch.empty(n, dtype=dtype, device=DEVICE)
        w = torch.ones(k, device=DEVICE)
        results = []
        for warps, block in itertools.product((4, 8), (512, 1024, 2048, 4096)):
            t = _bench(
                functools.partial(combine_triton, J, w, out=out, block_n=block, num_warps=warps)
            )
            results.append((t, f"num_warps={warps} block_n={block}"))
        results.sort()
        for t, cfg in results[:3]:
            print(
                f"  combine {dtype_name} k={k}: {(k + 1) * n * J.element_size() / t / 1e9:7.0f} "
                f"GB/s  {cfg}"
            )
        del J, out  # free the bank before the next one is allocated
        torch.cuda.empty_cache()


def _table(dtype_names: list[str], ks: list[int], sizes: list[int]) -> None:
    """One row per (dtype, k, n), then the worst case at n >= 1e8 against the targets."""
    print(
        f"{'dtype':>5} {'k':>2} {'n':>11} {'copyGB/s':>8} {'gramGB/s':>8} {'%copy':>6} "
        f"{'x best':>7} {'rel err':>8} {'combGB/s':>8} {'%copy':>6} {'x best':>7}   times (ms)"
    )
    results = {}
    for dtype_name in dtype_names:
        for k in ks:
            for n in sizes:
                res = _row(dtype_name, k, n)
                if res is not None:
                    results[(dtype_name, k, n)] = res
    big = {key: r for key, r in results.items() if key[2] >= 100_000_000}
    if big:
        gram_frac = min(r["gram_bw"] / r["copy_bw"] for r in big.values())
        comb_frac = min(r["comb_bw"] / r["copy_bw"] for r in big.values())
        gram_x = min(r["gram_x"] for r in big.values())
        comb_x = min(r["comb_x"] for r in big.values())
        print(
            f"\nn >= 1e8 worst case: gram {100 * gram_frac:.0f} % of copy bandwidth, "
            f"{gram_x:.2f}x best torch; combine {100 * comb_frac:.0f} % of copy, {comb_x:.2f}x best "
            f"torch (targets: >= 85 % and >= 2x)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e7, 1e8, 5e8])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--quick", action="store_true", help="only n = 1e7 and 1e8")
    parser.add_argument("--sweep", action="store_true", help="also sweep launch configs at n=1e8")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels_gpu: no CUDA GPU on this machine; nothing to benchmark.")
        return 0
    import triton

    from mogd.kernels.gram_triton import INTERPRETED

    if INTERPRETED:
        print("kernels_gpu: TRITON_INTERPRET=1 is set; unset it to benchmark the compiled kernels.")
        return 0
    sizes = [1e7, 1e8] if args.quick else args.sizes
    props = torch.cuda.get_device_properties(0)
    print(
        f"# {props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB; "
        f"torch {torch.__version__}, triton {triton.__version__}"
    )
    _table(args.dtypes, args.ks, [int(n) for n in sizes])
    if args.sweep:
        _sweep(100_000_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
