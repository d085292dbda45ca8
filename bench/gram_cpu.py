"""Gram-matrix benchmark on CPU: mogd.gram (torch backend) against the usual ways of forming
G = J J^T, and against the memory floor, at k = 4, n = 5e7, float32 by default.

Methods (all in one process, on the same data):
  floor            torch.sum over the [k, n] data: one read of k*n elements, the bandwidth bound
  mogd.gram        mogd.gram(J, backend="torch") on the [k, n] bank
  mogd.gram list   mogd.gram on k lists of per-parameter views (no concatenation)
  J @ J.T          plain float32 matmul of the bank
  stack+matmul     torch.stack of k separate flat gradients, then matmul
  cat+matmul       per objective torch.cat of the per-parameter pieces, stack, matmul
  per-pair dot     k(k+1)/2 torch.dot calls

Columns: median wall time, ratio to the floor, achieved read bandwidth (k*n*itemsize / time),
relative error max_ij |G_ij - G64_ij| / sqrt(G64_ii G64_jj) against a float64 reference, and peak
extra memory. Peak memory is measured from the kernel, because tracemalloc does not see torch's
allocations: /proc/self/clear_refs is written "5" to reset the resident-set high-water mark, the
method runs once, and extra = VmHWM - VmRSS-before (Linux only; large torch CPU buffers are mmap'd
and returned to the OS on free, so they show up here and nowhere else is double counted).

    python bench/gram_cpu.py                 # k = 4, n = 5e7, float32
    python bench/gram_cpu.py --quick         # n = 5e6, 3 repeats
    python bench/gram_cpu.py --n 10000000 --k 8 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mogd
from mogd.kernels.gram_torch import gram_reference


def read_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mb(fn) -> float:
    """Resident-set high-water mark during one call of fn, above the resident set before it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return float("nan")
    before = read_status_kb("VmRSS")
    fn()
    return max(0, read_status_kb("VmHWM") - before) / 1024


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rel_error(G: torch.Tensor, ref: torch.Tensor) -> float:
    d = ref.diagonal().sqrt()
    return float(((G.to(torch.float64) - ref).abs() / torch.outer(d, d)).max())


def parameter_sizes(n: int) -> list[int]:
    """Split n into transformer-like pieces: repeated [4m^2, m, m, 4m^2 ...] blocks plus a tail."""
    m = 1024
    pattern = [4 * m * m, m, 3 * m * m, m, 8 * m * m, 4 * m]
    sizes, total = [], 0
    while True:
        for s in pattern:
            if total + s > n:
                sizes.append(n - total)
                return [s for s in sizes if s > 0]
            sizes.append(s)
            total += s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=float, default=5e7, help="elements per objective (5e7)")
    parser.add_argument("--k", type=int, default=4, help="objectives (4)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="n = 5e6, 3 repeats")
    args = parser.parse_args()
    n = int(5e6) if args.quick else int(args.n)
    repeats = 3 if args.quick else args.repeats
    k, dtype = args.k, getattr(torch, args.dtype)

    g = torch.Generator().manual_seed(0)
    J = torch.randn(k, n, generator=g)
    J[: k // 2] += 1.0  # long one-signed sums, as gradients with a common component have
    J = J.to(dtype)
    ref = gram_reference(J)
    sizes = parameter_sizes(n)
    lists = [list(torch.split(J[i], sizes)) for i in range(k)]  # views, as params' .grad would be
    rows = [J[i].clone() for i in range(k)]  # k separate gradient tensors

    def pairs():
        G = torch.empty(k, k, dtype=torch.float64)
        for i in range(k):
            for j in range(i, k):
                G[i, j] = G[j, i] = float(torch.dot(J[i], J[j]))
        return G

    methods = {
        "floor (torch.sum)": lambda: J.sum(),
        "mogd.gram": lambda: mogd.gram(J, backend="torch"),
        "mogd.gram list": lambda: mogd.gram(lists, backend="torch"),
        "J @ J.T": lambda: J @ J.T,
        "stack+matmul": lambda: (lambda S: S @ S.T)(torch.stack(rows)),
        "cat+matmul": lambda: (lambda S: S @ S.T)(
            torch.stack([torch.cat([p.reshape(-1) for p in ps]) for ps in lists])
        ),
        "per-pair dot": pairs,
    }

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; k = {k}, n = {n:.3g}, "
        f"{args.dtype}, {len(sizes)} parameter pieces; median of {repeats}"
    )
    head = (
        f"{'method':<20}{'time ms':>10}{'x floor':>9}{'GB/s':>8}{'rel err':>11}"
        f"{'peak extra MB':>15}"
    )
    print(head)
    print("-" * len(head))
    nbytes = k * n * J.element_size()
    floor = None
    for name, fn in methods.items():
        t = median_seconds(fn, repeats)
        floor = floor or t
        mem = peak_extra_mb(fn)
        err = "" if name.startswith("floor") else f"{rel_error(fn(), ref):.1e}"
        gbs = nbytes / t / 1e9
        print(f"{name:<20}{t * 1e3:>10.1f}{t / floor:>9.2f}{gbs:>8.1f}{err:>11}{mem:>15.1f}")
    print(
        f"input {nbytes / 2**20:.0f} MB; rel err = max |G - G64| / sqrt(G64_ii G64_jj); "
        "peak extra = VmHWM - VmRSS before (see the module docstring)"
    )


if __name__ == "__main__":
    main()
