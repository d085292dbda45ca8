"""Where one PPO iteration of the tiny preset spends its time, phase by phase (CPU).

    python bench/rlhf_tiny_phases.py                  # GAPO p=1, 6 iterations
    python bench/rlhf_tiny_phases.py --method mgda --steps 10

Runs the real training loop (``integrations.rlhf_mistral.train``) on the tiny preset under
``torch.profiler`` and reads back the ``record_function`` ranges the loop and MOGD open: rollout
(sampling), score, advantages (old/reference log-probs, values, GAE), the half-batch gradient
cosine (every --signal-every iterations), the policy update's forward and backward passes, MOGD's
own work (Gram, weights, combine, inner AdamW step), the critic, and logging/checkpoints. The same run without the profiler is the baseline the profiled one is
compared with (the profiler's own overhead). A second table times the rollout alone: the lean
KV-cache loop of ``integrations.ppo.sampling`` against ``transformers.generate`` on the same prompts,
same decoding settings, in the same process.

The SFT policy is built once (cached under --cache-dir) before anything is timed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after site-packages: hides nothing

import torch
from torch.profiler import ProfilerActivity, profile

# Top-level ranges of one iteration, in loop order, then MOGD's ranges inside the update.
PHASES = (
    "rollout",
    "score",
    "advantages",
    "signal",
    "policy_forward",
    "policy_backward",
    "policy_update",
    "mogd",
    "critic",
    "log",
)
MOGD_RANGES = ("mogd.gram", "mogd.weights", "mogd.clip", "mogd.combine", "mogd.inner_step")


def run(method: str, steps: int, cache_dir: str, profiled: bool) -> tuple[float, dict]:
    from integrations.rlhf_mistral import train
    from integrations.run.parse import make_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(
            "tiny",
            method=method,
            steps=steps,
            out=str(Path(tmp) / "run"),
            cache_dir=cache_dir,
            progress=False,
            plots=False,
            eval_size=0,
            save_every=10**6,
        )
        if not profiled:
            start = time.perf_counter()
            train(cfg)
            return time.perf_counter() - start, {}
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            train(cfg)
            wall = time.perf_counter() - start
    totals = {e.key: (e.cpu_time_total / 1e6, e.count) for e in prof.key_averages()}
    return wall, totals


def bench_rollout(cache_dir: str, repeats: int) -> list[tuple[str, float]]:
    from integrations.ppo.sampling import Decoding, sample
    from integrations.worlds.tiny.setup import build_tiny_setup

    setup = build_tiny_setup(Path(cache_dir).expanduser(), seed=0)
    tok, policy = setup.tokenizer, setup.policy
    prompts = setup.train_prompts[:64]
    enc = tok([setup.format_prompt(p) for p in prompts], return_tensors="pt", padding=True)
    d = Decoding(temperature=0.7, repetition_penalty=1.05)
    common = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)

    def hf() -> None:
        policy.generate(
            **enc,
            do_sample=True,
            max_new_tokens=64,
            temperature=d.temperature,
            top_k=0,
            repetition_penalty=d.repetition_penalty,
            **common,
        )

    def lean() -> None:
        sample(
            policy,
            enc["input_ids"],
            enc["attention_mask"],
            max_new_tokens=64,
            decoding=d,
            **common,
        )

    out = []
    for name, fn in (("transformers.generate (baseline)", hf), ("integrations.ppo.sampling", lean)):
        fn()  # warm-up
        times = []
        for seed in range(repeats):
            torch.manual_seed(seed)
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out.append((name, sorted(times)[len(times) // 2]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="gapo")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5, help="rollout timings (median)")
    ap.add_argument("--cache-dir", default="~/.cache/mogd")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.method, 1, args.cache_dir, profiled=False)  # builds/loads the SFT cache, warms up

    base, _ = run(args.method, args.steps, args.cache_dir, profiled=False)
    wall, totals = run(args.method, args.steps, args.cache_dir, profiled=True)
    print(
        f"\n{args.method}, {args.steps} iterations, torch threads {torch.get_num_threads()}: "
        f"{base:.2f} s unprofiled ({base / args.steps:.3f} s/iteration, incl. setup), "
        f"{wall:.2f} s profiled (x{wall / base:.2f})\n"
    )
    print("| phase | s / iteration | share of the profiled iteration |")
    print("|---|---|---|")
    per_iter = {k: v[0] / args.steps for k, v in totals.items()}
    # policy_update encloses the update's forward, backward and MOGD ranges where they are open
    nested = {"policy_forward", "policy_backward", "mogd"} if "policy_update" in per_iter else set()
    loop = sum(per_iter.get(k, 0.0) for k in PHASES if k not in nested)
    for name in PHASES:
        if name in per_iter:
            indent = "&nbsp;&nbsp;" if name in nested else ""
            print(f"| {indent}{name} | {per_iter[name]:.3f} | {per_iter[name] / loop:.1%} |")
    for name in MOGD_RANGES:
        if name in per_iter:
            print(f"| &nbsp;&nbsp;{name} | {per_iter[name]:.4f} | {per_iter[name] / loop:.1%} |")
    print(f"| iteration (sum of phases) | {loop:.3f} | 100% |")

    print("\n| rollout of 64 prompts, 64 new tokens, τ 0.7, rep. penalty 1.05 | median s | ratio |")
    print("|---|---|---|")
    rows = bench_rollout(args.cache_dir, args.repeats)
    for name, t in rows:
        print(f"| {name} | {t:.3f} | {rows[0][1] / t:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
