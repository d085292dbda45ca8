"""End-to-end GPU check of the RLHF pipeline at a few hundred million parameters.

No hub on the GPU machine, so everything is built here, offline, with fixed seeds, in a temp dir, by
``integrations/testing.py`` (the same builders the tests use): a random ``MistralForCausalLM``
(default ~370M parameters: hidden 1024, 24 layers, 16 heads / 8 KV heads, MLP 3072, vocabulary
32000) saved in bf16 with a word-level tokenizer and chat template; a reward and a cost model in
safe-rlhf's ``LlamaForScore`` layout (~30M parameters each) with their own BPE tokenizer, so the
scorers re-tokenise the policy's text as with beaver-7b; PKU-SafeRLHF-schema prompt files.

It then runs the real pipeline, ``integrations.rlhf_mistral.train`` with ``--preset mistral-7b``
pointing at those paths, GAPO (p = 1), for a few PPO steps in each mode:

* ``full``:  ``--probe full`` with ``MOGD_BACKEND=triton`` (per-objective gradients of every
  parameter, the fused Gram / combine Triton kernels);
* ``probe``: ``--probe lm_head`` (the paper's memory saver: per-objective gradients of the LM head,
  one backward of Σ w_i L_i through the model).

The step-time split is read from ``torch.profiler``: the ``record_function`` ranges of ``train()``
(rollout, score, advantages, policy_update, critic, log), of the micro-batch accumulation inside
the policy update (policy_forward, policy_backward) and of ``MOGD.step`` (mogd.gram, mogd.weights,
mogd.combine, mogd.clip, mogd.inner_step). Each range reports its host wall time and
the device time of the kernels launched inside it; the first step (Triton JIT, cuBLAS warm-up) and
the last (it writes the checkpoint, inside "log") are left out of the means when there are more.

Usage (repo root)::

    python bench/rlhf_gpu.py                 # GPU: full + probe, 4 steps each; table to $OUT
    python bench/rlhf_gpu.py --cpu-smoke     # CPU, toy sizes, 2 steps: checks the script end to end

Without CUDA (and without --cpu-smoke) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if "--cpu-smoke" in sys.argv[1:]:
    # The full mode runs the Triton kernels; on CPU that needs the interpreter, which must be
    # chosen before the first `import triton` (transformers imports it too).
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # the checkout's `integrations` (installed: mogd.integrations)

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

PHASES = ("rollout", "score", "advantages", "policy_update", "critic", "log")
# inside policy_update: integrations/ppo/accumulate.py's ranges, then MOGD.step's
MOGD_RANGES = (
    "policy_forward",
    "policy_backward",
    "mogd.gram",
    "mogd.weights",
    "mogd.combine",
    "mogd.clip",
    "mogd.inner_step",
)


@dataclass(frozen=True)
class Sizes:
    vocab: int = 32000
    hidden: int = 1024
    layers: int = 24
    heads: int = 16
    kv_heads: int = 8
    intermediate: int = 3072
    max_positions: int = 2048
    score_vocab: int = 8000
    score_hidden: int = 512
    score_layers: int = 8
    score_heads: int = 8
    score_intermediate: int = 1408
    score_max_positions: int = 1024
    prompts: int = 256


GPU_SIZES = Sizes()
SMOKE_SIZES = Sizes(
    vocab=1000,
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    intermediate=128,
    max_positions=256,
    score_vocab=300,
    score_hidden=32,
    score_layers=2,
    score_heads=4,
    score_intermediate=64,
    score_max_positions=512,
    prompts=16,
)


def build_world(root: Path, s: Sizes, device: str, seed: int = 0) -> dict[str, Any]:
    from integrations import testing

    words = testing.pseudo_words(s.vocab - len(testing.SPECIAL) - len(testing.TEMPLATE_WORDS), seed)
    p_tok = testing.policy_tokenizer([*testing.TEMPLATE_WORDS, *words])
    s_tok = testing.scorer_tokenizer([" ".join(testing.TEMPLATE_WORDS), *words], s.score_vocab)
    assert len(p_tok) == s.vocab, (len(p_tok), s.vocab)
    paths = {name: root / name for name in ("policy", "reward", "cost")}
    policy_size = testing.PolicySize(
        s.hidden, s.intermediate, s.layers, s.heads, s.kv_heads, s.max_positions
    )
    score_size = testing.ScorerSize(
        s.score_hidden, s.score_intermediate, s.score_layers, s.score_heads, s.score_max_positions
    )
    bf16 = torch.bfloat16
    policy = testing.save_policy(
        paths["policy"], p_tok, policy_size, seed=seed, dtype=bf16, device=device
    )
    policy_params = sum(p.numel() for p in policy.parameters())
    del policy
    scores = [
        testing.save_score_model(
            paths[kind], s_tok, score_size, seed=seed + i, kind=kind, dtype=bf16, device=device
        )
        for i, kind in ((1, "reward"), (2, "cost"))
    ]
    score_params = sum(p.numel() for p in scores[0].backbone.parameters()) + s.score_hidden + 1
    del scores
    paths["train"] = testing.save_pku_prompts(
        root / "train.jsonl", testing.random_pku_rows(words, s.prompts, seed + 3)
    )
    paths["test"] = testing.save_pku_prompts(
        root / "test.jsonl", testing.random_pku_rows(words, max(8, s.prompts // 8), seed + 4)
    )
    paths["hh"] = testing.save_hh_prompts(
        root / "hh.jsonl.gz", [r["prompt"] for r in testing.random_pku_rows(words, 8, seed + 5)]
    )
    return {
        "paths": paths,
        "policy_params": policy_params,
        "score_params": score_params,
        "score_vocab": len(s_tok),
    }


# ----------------------------------------------------------------------------- runs

MODES = {
    "full": ("full", {"MOGD_BACKEND": "triton"}),
    "probe": ("lm_head", {}),
}


def run_mode(mode: str, world: dict[str, Any], args: argparse.Namespace, tmp: Path) -> dict:
    """Train under the profiler; returns the per-step ranges and the run's metrics rows."""
    from integrations import rlhf_mistral
    from integrations.run.parse import parse_config
    from integrations.run.runio import read_metrics

    probe, env = MODES[mode]
    p = world["paths"]
    out = tmp / f"run-{mode}"
    argv = [
        "--preset", "mistral-7b", "--method", "gapo", "--p", "1", "--probe", probe,
        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--grad-accum", "1",
        "--minibatch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens),
        "--seed", "0", "--out", str(out), "--eval-size", "0",
        "--save-every", str(args.steps), "--no-plots", "--no-progress",
        "--policy", str(p["policy"]), "--reward-model", str(p["reward"]),
        "--cost-model", str(p["cost"]), "--train-prompts", str(p["train"]),
        "--eval-prompts", str(p["test"]), "--hh-prompts", str(p["hh"]),
        "--score-batch-size", str(args.batch_size),
    ]  # fmt: skip
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cfg = parse_config(argv)
        with profile(activities=activities) as prof:
            rlhf_mistral.train(cfg)
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"steps": split_steps(prof.events()), "metrics": read_metrics(out / "metrics.jsonl")}


def split_steps(events: Any) -> list[dict[str, Any]]:
    """Per PPO step: wall seconds from one "rollout" range to the next (the last ends with its
    "log"), and per range the host seconds and the device seconds of its kernels; plus which
    Gram / combine kernels ran."""
    names = set(PHASES) | set(MOGD_RANGES)
    ranges = sorted(
        (e for e in events if e.name in names and e.device_type.name == "CPU"),
        key=lambda e: e.time_range.start,
    )
    starts = [e.time_range.start for e in ranges if e.name == "rollout"]
    ends = [*starts[1:], max((e.time_range.end for e in ranges), default=0)]
    steps = []
    for lo, hi in zip(starts, ends, strict=True):
        host: dict[str, float] = {}
        device: dict[str, float] = {}
        for e in ranges:
            if lo <= e.time_range.start < hi:
                host[e.name] = host.get(e.name, 0.0) + (e.time_range.end - e.time_range.start) / 1e6
                device[e.name] = device.get(e.name, 0.0) + e.device_time_total / 1e6
        steps.append({"seconds": (hi - lo) / 1e6, "host": host, "device": device})
    kernels: dict[str, int] = {}
    for e in events:
        if e.device_type.name == "CUDA" and ("gram" in e.name or "combine" in e.name):
            kernels[e.name] = kernels.get(e.name, 0) + 1
    if steps:
        steps[0]["kernels"] = kernels
    return steps


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarise(mode: str, run: dict, peak: float | None, world: dict[str, Any], batch: int) -> dict:
    steps, rows = run["steps"], run["metrics"]
    measured = list(range(len(steps)))
    if len(measured) > 2:
        measured = measured[1:-1]  # not the warm-up, not the checkpointing step
    elif len(measured) == 2:
        measured = measured[1:]
    keys = [*PHASES, *MOGD_RANGES]
    host = {k: _mean([steps[i]["host"].get(k, 0.0) for i in measured]) for k in keys}
    device = {k: _mean([steps[i]["device"].get(k, 0.0) for i in measured]) for k in keys}
    step_s = _mean([steps[i]["seconds"] for i in measured])
    generated = _mean([rows[i]["response_length"] * batch for i in measured if i < len(rows)])
    return {
        "mode": mode,
        "params": world["policy_params"],
        "step_s": step_s,
        "first_step_s": steps[0]["seconds"] if steps else float("nan"),
        "measured_steps": len(measured),
        "gen_tok_s": generated / host["rollout"] if host["rollout"] else float("nan"),
        "host": host,
        "device": device,
        "other": step_s - sum(host[k] for k in PHASES),
        "peak_gib": peak,
        "kernels": steps[0].get("kernels", {}) if steps else {},
    }


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or x != x else format(x, spec)


def render(rows: list[dict], failures: dict[str, str], header: list[str]) -> str:
    lines = [*header, ""]
    lines.append(
        "| mode | params | step s | " + " | ".join(PHASES) + " | other | gen tok/s | peak GiB |"
    )
    lines.append("|" + "---|" * (len(PHASES) + 6))
    for r in rows:
        cells = [_fmt(r["host"][k]) for k in PHASES]
        lines.append(
            f"| {r['mode']} | {r['params'] / 1e6:.1f}M | {_fmt(r['step_s'])} | "
            + " | ".join(cells)
            + f" | {_fmt(r['other'])} | {_fmt(r['gen_tok_s'], '.0f')} | "
            f"{_fmt(r['peak_gib'], '.2f')} |"
        )
    lines.append("")
    lines.append(
        "Seconds per PPO step (host wall time of train()'s record_function ranges), mean over "
        "the steps after the first (warm-up) and before the last (it writes the checkpoint); "
        "other = step time minus the ranges. gen tok/s = sampled tokens / rollout time."
    )
    lines.append("")
    lines.append(
        "| mode | first step s | "
        + " | ".join(MOGD_RANGES)
        + " | policy_update device s | kernels |"
    )
    lines.append("|" + "---|" * (len(MOGD_RANGES) + 4))
    for r in rows:
        kernels = ", ".join(f"{k}×{v}" for k, v in sorted(r["kernels"].items())) or "-"
        cells = [f"{r['host'][k] * 1e3:.2f} ms" for k in MOGD_RANGES]
        lines.append(
            f"| {r['mode']} | {_fmt(r['first_step_s'])} | "
            + " | ".join(cells)
            + f" | {_fmt(r['device']['policy_update'])} | {kernels} |"
        )
    lines.append("")
    lines.append(
        "The policy update's ranges (host time); policy_update device s = GPU time "
        "of the kernels launched in the policy update; kernels = Gram / combine kernels run."
    )
    for mode, tb in failures.items():
        lines += ["", f"**{mode} FAILED**:", "```", *tb.rstrip().splitlines()[-25:], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on CPU, 2 steps")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=None, help="PPO steps per mode (GPU: 4)")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per step (GPU: 16)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="(GPU: 64)")
    parser.add_argument("--layers", type=int, default=None, help="policy layers (GPU: 24)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("bench/rlhf_gpu.py: no CUDA device; nothing to measure (use --cpu-smoke to check "
              "the script on CPU)")  # fmt: skip
        return 0
    smoke = args.cpu_smoke
    sizes = SMOKE_SIZES if smoke else GPU_SIZES
    if args.layers is not None:
        sizes = Sizes(**{**sizes.__dict__, "layers": args.layers})
    args.steps = args.steps or (2 if smoke else 4)
    args.batch_size = args.batch_size or (4 if smoke else 16)
    args.max_new_tokens = args.max_new_tokens or (8 if smoke else 64)
    device = "cpu" if smoke else "cuda"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on a network

    import transformers

    transformers.utils.logging.disable_progress_bar()
    t_start = time.perf_counter()
    name = torch.cuda.get_device_name() if cuda and not smoke else "CPU (smoke run, toy sizes)"
    header = [
        f"## RLHF pipeline on {name}",
        "",
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"triton {_version('triton')}; GAPO p=1, mistral-7b preset options, batch "
        f"{args.batch_size}, max new tokens {args.max_new_tokens}, {args.steps} PPO steps per "
        f"mode; policy: random Mistral (hidden {sizes.hidden}, {sizes.layers} layers, "
        f"{sizes.heads}/{sizes.kv_heads} heads, MLP {sizes.intermediate}, vocab {sizes.vocab}); "
        f"reward and cost: random beaver-layout LLaMA score models (hidden {sizes.score_hidden}, "
        f"{sizes.score_layers} layers).",
    ]
    rows: list[dict] = []
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mogd-rlhf-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        world = build_world(tmp / "models", sizes, device)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        header[-1] += (
            f" Policy {world['policy_params'] / 1e6:.1f}M parameters, each score model "
            f"{world['score_params'] / 1e6:.1f}M (scorer vocab {world['score_vocab']})."
        )
        print(f"built models in {time.perf_counter() - t_start:.1f}s", flush=True)
        for mode in args.modes:
            t_mode = time.perf_counter()
            print(f"--- mode {mode}", flush=True)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            try:
                run = run_mode(mode, world, args, tmp)
                peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
                rows.append(summarise(mode, run, peak, world, args.batch_size))
            except Exception:
                failures[mode] = traceback.format_exc()
                print(failures[mode], flush=True)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            print(f"--- mode {mode}: {time.perf_counter() - t_mode:.1f}s", flush=True)
    header += ["", f"Total wall time of the script: {time.perf_counter() - t_start:.0f} s."]
    text = render(rows, failures, header)
    print(text)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "rlhf_gpu.md").write_text(text)
        (Path(out) / "rlhf_gpu.json").write_text(
            json.dumps({"rows": rows, "failures": failures}, indent=1, default=str)
        )
    return 1 if failures else 0


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "absent"


if __name__ == "__main__":
    sys.exit(main())
