"""Step overhead of MOGD (issue 3): time per step and peak extra memory of one multi-objective step.

An MLP with n ≈ 1e6 / 1e7 parameters and k ∈ {2, 4, 8} regression heads (one loss per output), batch
64, AdamW, all measured in one process on the same data:

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

Time: median wall time of the measured steps (after warm-up steps, which also allocate optimizer state,
the bank, ...); CUDA is synchronised. Peak extra memory: on CUDA max_memory_allocated above what was
allocated before the method's optimizer existed; on CPU the resident-set high-water mark (VmHWM, reset
through /proc/self/clear_refs) above the resident set before, over warm-up and measured steps, so it
counts AdamW's state and each method's buffers (bank, Jacobian, ...). Ratio columns compare with rows of
the same (n, k) measured in this run.

    python bench/step_overhead.py            # n ∈ {1e6, 1e7}, k ∈ {2, 4, 8}
    python bench/step_overhead.py --quick    # n = 1e6, k ∈ {2, 4}, fewer steps
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
from collections.abc import Callable

import torch

import mogd

BATCH = 64


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    make_opt: Callable, step: Callable, n: int, k: int, device: torch.device, warmup: int, steps: int
) -> tuple[float, float]:
    """(median ms per step, peak extra MB) for one method on a fresh model."""
    model = make_model(n, k, device)
    h = model[0].in_features
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, h, generator=g).to(device)
    y = torch.randn(BATCH, k, generator=g).to(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        hwm_ok = _reset_hwm()
        base = _status_kb("VmRSS") * 1024
    opt = make_opt(model)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        step(model, opt, x, y)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _status_kb("VmHWM") * 1024 - base if hwm_ok else float("nan")
    del opt, model, x, y
    gc.collect()
    return statistics.median(times) * 1e3, peak / 2**20


def methods(model_k: int):
    adamw = lambda m: torch.optim.AdamW(m.parameters(), lr=1e-4)  # noqa: E731
    return [
        ("adamw (sum)", adamw, step_sum),
        ("k bwd + adamw", adamw, step_k_backward),
        ("mogd full", lambda m: mogd.MOGD(adamw(m), mogd.GAPO(p=1)), step_mogd),
        ("mogd probe", lambda m: mogd.MOGD(adamw(m), mogd.GAPO(p=1), probe=m[-1]), step_mogd),
        ("naive", adamw, step_naive),
        ("torchjd mgda", adamw, make_torchjd_step()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 1e6, k in {2, 4}, fewer steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=float, nargs="+", default=None)
    parser.add_argument("--ks", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = [int(s) for s in (args.sizes or ([1e6] if args.quick else [1e6, 1e7]))]
    ks = args.ks or ([2, 4] if args.quick else [2, 4, 8])
    steps = args.steps or (4 if args.quick else 10)
    warmup = 2 if args.quick else 3
    print(f"device {device}, batch {BATCH}, {warmup} warm-up + {steps} measured steps, AdamW")
    header = (
        f"{'n':>9} {'k':>2} {'method':<14} {'ms/step':>9} {'x floor':>8} {'x k-bwd':>8} "
        f"{'x torchjd':>9} {'peak MB':>9} {'mem x tjd':>9}"
    )
    print(header)
    print("-" * len(header))
    for n in sizes:
        for k in ks:
            rows = {}
            for name, make_opt, step in methods(k):
                rows[name] = measure(make_opt, step, n, k, device, warmup, steps)
            floor, kbwd, tjd = rows["adamw (sum)"], rows["k bwd + adamw"], rows["torchjd mgda"]
            params = sum(p.numel() for p in make_model(n, k, torch.device("cpu")).parameters())
            for name, (ms, mb) in rows.items():
                print(
                    f"{params:>9.2e} {k:>2} {name:<14} {ms:>9.2f} {ms / floor[0]:>8.2f} "
                    f"{ms / kbwd[0]:>8.2f} {ms / tjd[0]:>9.2f} {mb:>9.1f} {mb / tjd[1]:>9.2f}"
                )
            print()


if __name__ == "__main__":
    main()
