"""Step overhead of MOGD: time per step and peak extra memory of one multi-objective step.

An MLP with n ≈ 1e6 / 1e7 parameters and k ∈ {2, 4, 8} regression heads (one loss per output), batch
64 (--batch), AdamW, all measured in one process on the same data:

  adamw (sum)      plain AdamW on Σ_i L_i: one backward + one step (the floor)
  k bwd + adamw    k backward passes (retain_graph) accumulating into .grad + one AdamW step: the work
                   MOGD's full mode cannot avoid (target: MOGD full ≤ 1.15× this)
  mogd full        mogd.MOGD(AdamW, GAPO(p=1)).step(losses)
  mogd probe       the same with probe = the last layer (one weighted backward)
  naive            k × torch.autograd.grad, torch.cat + torch.stack into [k, n], J Jᵀ, mogd.min_norm,
                   d = w J split back into .grad, AdamW step
  torchjd mgda     TorchJD 0.18 documented API: torchjd.autojac.backward(losses), then
                   torchjd.autojac.jac_to_grad(params, MGDA()), AdamW step
                   (targets at n = 1e7: MOGD full ≥ 1.5× faster, ≤ 0.6× its peak extra memory)
  torchjd gramsum  the same with jac_to_grad(..., optimize_gramian_computation=True): the Gramian
                   summed per parameter, the Jacobian never concatenated (TorchJD's memory saver)
  torchjd autogram TorchJD's autogram engine: Engine(model, batch_dim=None).compute_gramian(losses),
                   MGDAWeighting() on it, losses.backward(weights), AdamW step (Jacobian never held)

Time: median wall time of the measured steps after warm-up steps; the methods take turns step by step
(each on its own model), so load from other processes hits them alike; CUDA is synchronised. Peak extra
memory, measured separately per method over 3 steps on a fresh model: on CUDA max_memory_allocated
above what was allocated before the method's optimizer existed; on CPU the resident-set high-water mark
(VmHWM, reset through /proc/self/clear_refs) above the resident set before, with glibc's mmap threshold
fixed so freed buffers leave the resident set. It counts AdamW's state and each method's buffers (bank,
Jacobian, ...) and the gradients. "over sum" is the peak above plain AdamW's (the extra memory a
method costs beyond plain training), "x tjd" that figure over TorchJD's. Ratio columns compare with
rows of the same (n, k) of this run.

    python bench/step_overhead.py            # n ∈ {1e6, 1e7}, k ∈ {2, 4, 8}
    python bench/step_overhead.py --quick    # n = 1e6, k ∈ {2, 4}, fewer steps
    python bench/step_overhead.py --fused --sizes 1e7 --ks 2 4 8   # the CUDA overhead target
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import statistics
import time
from collections.abc import Callable

import torch

import mogd

BATCH = 64  # default; small batches make the per-step passes over the parameters weigh most


def make_model(n: int, k: int, device: torch.device) -> torch.nn.Sequential:
    """Three hidden layers of width h (input width h) and k outputs: ≈ 3h² parameters."""
    h = int(math.sqrt(n / 3))
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(h, h),
        torch.nn.GELU(),
        torch.nn.Linear(h, h),
        torch.nn.GELU(),
        torch.nn.Linear(h, h),
        torch.nn.GELU(),
        torch.nn.Linear(h, k),
    ).to(device)


def losses_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    out = model(x)
    return [((out[:, i] - y[:, i]) ** 2).mean() for i in range(y.shape[1])]


# -- one step of each method ---------------------------------------------------------------------


def step_sum(model, opt, x, y):
    opt.zero_grad()
    sum(losses_of(model, x, y)).backward()
    opt.step()


def step_k_backward(model, opt, x, y):
    opt.zero_grad()
    losses = losses_of(model, x, y)
    for i, loss in enumerate(losses):
        loss.backward(retain_graph=i < len(losses) - 1)
    opt.step()


def step_mogd(model, opt, x, y):
    opt.zero_grad()
    opt.step(losses_of(model, x, y))


def step_naive(model, opt, x, y):
    opt.zero_grad()
    params = [p for p in model.parameters() if p.requires_grad]
    losses = losses_of(model, x, y)
    rows = []
    for i, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, params, retain_graph=i < len(losses) - 1)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    J = torch.stack(rows)
    w = mogd.min_norm((J.double() @ J.double().T).cpu()).weights.to(J)
    d = w @ J
    offset = 0
    for p in params:
        p.grad = d[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    opt.step()


def make_torchjd_step():
    from torchjd.aggregation import MGDA
    from torchjd.autojac import backward, jac_to_grad

    aggregator = MGDA()

    def step_torchjd(model, opt, x, y):
        opt.zero_grad()
        backward(losses_of(model, x, y))
        jac_to_grad([p for p in model.parameters() if p.requires_grad], aggregator)
        opt.step()

    return step_torchjd


def make_torchjd_gramsum_step():
    from torchjd.aggregation import MGDA
    from torchjd.autojac import backward, jac_to_grad

    aggregator = MGDA()

    def step_torchjd_gramsum(model, opt, x, y):
        opt.zero_grad()
        backward(losses_of(model, x, y))
        params = [p for p in model.parameters() if p.requires_grad]
        jac_to_grad(params, aggregator, optimize_gramian_computation=True)
        opt.step()

    return step_torchjd_gramsum


def make_torchjd_autogram_step():
    from torchjd.aggregation import MGDAWeighting
    from torchjd.autogram import Engine

    weighting = MGDAWeighting()
    engines: dict[int, Engine] = {}  # one engine per model, built before its first backward

    def step_torchjd_autogram(model, opt, x, y):
        opt.zero_grad()
        engine = engines.get(id(model))
        if engine is None:
            engine = engines[id(model)] = Engine(model, batch_dim=None)
        losses = torch.stack(losses_of(model, x, y))
        weights = weighting(engine.compute_gramian(losses))
        losses.backward(weights)
        opt.step()

    return step_torchjd_autogram


# -- measurement ---------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _fix_mmap_threshold() -> None:
    """Serve large CPU buffers by mmap at a fixed threshold (glibc's default raises it after the first
    free and keeps later buffers in the heap), so freed tensors leave the resident set and VmHWM
    measures what is live."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _data(
    n: int, k: int, device: torch.device, batch: int
) -> tuple[torch.nn.Sequential, torch.Tensor, torch.Tensor]:
    model = make_model(n, k, device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, model[0].in_features, generator=g).to(device)
    y = torch.randn(batch, k, generator=g).to(device)
    return model, x, y


def peak_extra_mb(
    make_opt: Callable, step: Callable, n: int, k: int, device: torch.device, batch: int
) -> float:
    """Peak memory above what was in use before the method's optimizer existed, over 3 steps."""
    model, x, y = _data(n, k, device, batch)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    elif not _reset_hwm():
        return float("nan")
    else:
        base = _status_kb("VmRSS") * 1024
    opt = make_opt(model)
    for _ in range(3):
        step(model, opt, x, y)
    _sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _status_kb("VmHWM") * 1024 - base
    del opt, model, x, y
    gc.collect()
    return peak / 2**20


def step_times_ms(
    runs: list[tuple[Callable, Callable]],
    n: int,
    k: int,
    device: torch.device,
    batch: int,
    warmup: int,
    steps: int,
) -> list[float]:
    """Median ms per step of each method. The methods take turns step by step, so that load from
    other processes on a shared machine hits them alike."""
    state = []
    for make_opt, step in runs:
        model, x, y = _data(n, k, device, batch)
        state.append((model, make_opt(model), x, y, step))
    times: list[list[float]] = [[] for _ in runs]
    for i in range(warmup + steps):
        for j, (model, opt, x, y, step) in enumerate(state):
            _sync(device)
            t0 = time.perf_counter()
            step(model, opt, x, y)
            _sync(device)
            if i >= warmup:
                times[j].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def methods(k: int, fused: bool) -> list[tuple[str, Callable, Callable]]:
    adamw = lambda m: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=fused or None)  # noqa: E731
    rows = [
        ("adamw (sum)", adamw, step_sum),
        ("k bwd + adamw", adamw, step_k_backward),
        ("mogd full", lambda m: mogd.MOGD(adamw(m), mogd.GAPO(p=1)), step_mogd),
        ("mogd probe", lambda m: mogd.MOGD(adamw(m), mogd.GAPO(p=1), probe=m[-1]), step_mogd),
        ("naive", adamw, step_naive),
    ]
    if importlib.util.find_spec("torchjd") is None:  # an offline machine without the bench extra
        print("torchjd is not installed (pip install 'mogd[bench]'): its rows are left out")
        return rows
    return rows + [
        ("torchjd mgda", adamw, make_torchjd_step()),
        ("torchjd gramsum", adamw, make_torchjd_gramsum_step()),
        ("torchjd autogram", adamw, make_torchjd_autogram_step()),
    ]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 1e6, k in {2, 4}, fewer steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=float, nargs="+", default=None)
    parser.add_argument("--ks", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=BATCH, help="rows per step (default 64)")
    parser.add_argument(
        "--fused",
        action="store_true",
        help="AdamW(fused=True) for every row: MOGD then skips non-finite steps on the device "
        "(found_inf) and a CUDA step never waits for the host",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    _fix_mmap_threshold()
    sizes = [int(s) for s in (args.sizes or ([1e6] if args.quick else [1e6, 1e7]))]
    ks = args.ks or ([2, 4] if args.quick else [2, 4, 8])
    steps = args.steps or (4 if args.quick else 10)
    warmup = 2 if args.quick else 3
    flavour = "fused AdamW" if args.fused else "AdamW"
    print(
        f"device {device}, batch {args.batch}, {warmup} warm-up + {steps} measured steps, {flavour}"
    )
    header = (
        f"{'n':>9} {'k':>2} {'method':<16} {'ms/step':>9} {'x floor':>8} {'x k-bwd':>8} "
        f"{'x torchjd':>9} {'peak MB':>9} {'over sum':>9} {'x tjd':>9}"
    )
    print(header)
    print("-" * len(header))
    for n in sizes:
        for k in ks:
            table = methods(k, args.fused)
            runs = [(m, st) for _, m, st in table]
            ms = step_times_ms(runs, n, k, device, args.batch, warmup, steps)
            rows = {
                name: (t, peak_extra_mb(make_opt, step, n, k, device, args.batch))
                for (name, make_opt, step), t in zip(table, ms, strict=True)
            }
            nan = (float("nan"), float("nan"))
            floor, kbwd = rows["adamw (sum)"], rows["k bwd + adamw"]
            tjd = rows.get("torchjd mgda", nan)
            params = sum(p.numel() for p in make_model(n, k, torch.device("cpu")).parameters())
            tjd_over = tjd[1] - floor[1]
            for name, (ms, mb) in rows.items():
                over = mb - floor[1]
                print(
                    f"{params:>9.2e} {k:>2} {name:<16} {ms:>9.2f} {_ratio(ms, floor[0]):>8.2f} "
                    f"{_ratio(ms, kbwd[0]):>8.2f} {_ratio(ms, tjd[0]):>9.2f} {mb:>9.1f} "
                    f"{over:>9.1f} {_ratio(over, tjd_over):>9.2f}"
                )
            print()


if __name__ == "__main__":
    main()
