"""The paper preset at Mistral-7B scale on one GPU: steps/s, tokens/s and peak memory against the
``--dry-run`` memory plan.

Nothing is downloaded and nothing large is written: the Mistral-7B architecture (the published
config of HuggingFaceH4/mistral-7b-sft-beta) and two beaver-7b-layout score models (safe-rlhf's
``LlamaForScore``: a LLaMA-7B backbone and a float32 score head, as
``integrations.worlds.paper.scorers.BeaverScoreModel`` loads them) are built with random weights on the
device, with the offline tokenizers of ``integrations/testing.py``. ``presets.build_setup`` is pointed
at them, and the real loop, ``integrations.rlhf_mistral.train`` with ``--preset mistral-7b``
(GAPO p = 1, bf16 over float32 master weights, full MOGD mode), runs a few PPO steps in each mode:

* ``lora``: LoRA r=16 on every decoder linear map of the 32-layer policy, replicated (one
  process: bf16 autocast over float32 adapters); the reference is the base with adapters off;
* ``fsdp``: full fine-tuning with FSDP2 at world size 1 (``fully_shard`` per decoder layer,
  ``MixedPrecisionPolicy(bf16, fp32)``, the policy gathered once per rollout batch). Float32
  master weights, a k = 2 gradient bank and AdamW moments take 20 B per parameter, so on one GPU
  the policy keeps ``--fsdp-layers`` of its 32 decoder layers (12 by default: 2.9B parameters,
  about 90 GiB in all by the plan); the scorers keep all 32.

Per mode it prints the mean step time (the steps after the first), generated tokens/s, sequence
tokens/s (prompt + response), the measured peak (``torch.cuda.max_memory_allocated``) and the
plan's total for the same shapes (``integrations.worlds.paper.memory.memory_plan``), with their ratio. The
final export and checkpoint are skipped (they would time the disk, tens of GB).

Usage (repo root)::

    python bench/rlhf_7b_gpu.py                  # GPU: lora + fsdp, 3 steps each
    python bench/rlhf_7b_gpu.py --cpu-smoke      # CPU, toy shapes: checks the script end to end

Without CUDA (and without --cpu-smoke) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # run from a checkout: `integrations` next to `mogd`

import torch  # noqa: E402

GIB = 1024**3


def shapes(smoke: bool, fsdp_layers: int) -> dict[str, dict[str, Any]]:
    """transformers config fields of the policy and the score models (the published 7B ones, or
    toy ones for the CPU smoke run)."""
    from integrations.worlds.paper.shapes import (
        DEFAULT_POLICY,
        DEFAULT_REWARD_MODEL,
        PUBLISHED_CONFIGS,
    )

    policy = dict(PUBLISHED_CONFIGS[DEFAULT_POLICY])
    score = dict(PUBLISHED_CONFIGS[DEFAULT_REWARD_MODEL])
    if smoke:
        toy = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        policy.update(toy, vocab_size=1000, num_attention_heads=4, num_key_value_heads=2)
        score.update(toy, vocab_size=600, num_attention_heads=4, num_key_value_heads=4)
    return {
        "policy": policy,
        "fsdp_policy": {**policy, "num_hidden_layers": 2 if smoke else fsdp_layers},
        "score": score,
    }


def build_setup(
    cfg: Any, world: dict[str, Any], device: str, policy_fields: dict[str, Any], lora: int
) -> Any:
    """The Setup ``presets.build_setup`` returns for this bench: random models on ``device``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig, MistralConfig

    from integrations.worlds.base import Setup
    from integrations.worlds.paper.models import format_chat
    from integrations.worlds.paper.scorers import BeaverScoreModel, BeaverScorer
    from integrations.worlds.paper.shapes import LORA_TARGETS

    tok, s_tok = world["tokenizer"], world["score_tokenizer"]
    ids = dict(
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
    )
    config = MistralConfig(**{k: v for k, v in policy_fields.items() if k != "model_type"}, **ids)
    bf16 = torch.bfloat16  # as the checkpoints are stored and load_policy loads them
    torch.manual_seed(0)
    with torch.device(device):
        policy = AutoModelForCausalLM.from_config(config, dtype=bf16)
        reference = None
        if not lora:  # a frozen bf16 copy of the starting weights
            reference = AutoModelForCausalLM.from_config(config, dtype=bf16)
            reference.load_state_dict(policy.state_dict())
            reference.eval().requires_grad_(False)
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        policy.enable_input_require_grads()
        adapters = LoraConfig(r=lora, lora_alpha=2 * lora, target_modules=list(LORA_TARGETS))
        policy = get_peft_model(policy, adapters)
    policy.train()
    scorers = []
    score_fields = {k: v for k, v in world["shapes"]["score"].items() if k != "model_type"}
    for i, (name, kind) in enumerate((("helpful", "reward"), ("harmless", "cost"))):
        torch.manual_seed(1 + i)
        with torch.device(device):
            backbone = AutoModel.from_config(LlamaConfig(**score_fields), dtype=bf16)
            head = torch.nn.Linear(backbone.config.hidden_size, 1)  # float32, as loaded
        model = BeaverScoreModel(backbone, head).to(device).eval().requires_grad_(False)
        scorers.append(
            BeaverScorer(name, kind, model, s_tok, batch_size=cfg.paper.score_batch_size)
        )
    return Setup(
        policy=policy,
        reference=reference,
        tokenizer=tok,
        scorers=scorers,
        train_prompts=world["prompts"],
        eval_prompts=world["prompts"][:8],
        format_prompt=functools.partial(format_chat, tok),
    )


def plan_bytes(cfg: Any, world: dict[str, Any], policy_fields: dict[str, Any], fsdp: bool) -> Any:
    from integrations.run.config import decoded_at_once
    from integrations.worlds.paper.memory import memory_plan
    from integrations.worlds.paper.shapes import shape_from_config

    return memory_plan(
        shape_from_config(policy_fields),
        [shape_from_config(world["shapes"]["score"])] * 2,
        world_size=1,
        sharding="fsdp2" if fsdp else "ddp",
        lora_r=cfg.paper.lora_r,
        probe=None,
        k=2,
        critic_init=cfg.algorithm.critic_init,
        precision=cfg.engine.precision,
        micro_batch=cfg.batch.micro_batch_size or cfg.batch.update_size,
        rollout_batch=decoded_at_once(cfg),
        prompt_len=world["prompt_tokens"],
        response_len=cfg.rollout.max_new_tokens,
    )


def run_mode(mode: str, world: dict[str, Any], args: argparse.Namespace, tmp: Path) -> dict:
    from integrations import rlhf_mistral
    from integrations.run import presets
    from integrations.run.parse import make_config
    from integrations.run.runio import read_metrics

    fsdp = mode == "fsdp"
    lora = 0 if fsdp else 16
    policy_fields = world["shapes"]["fsdp_policy" if fsdp else "policy"]
    cfg = make_config(
        "mistral-7b",
        out=str(tmp / f"run-{mode}"),
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=1,
        minibatch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        max_new_tokens=args.max_new_tokens,
        lora_r=lora,
        fsdp=fsdp,
        # score critics load from the scorers' checkpoint folders, which this bench never writes
        # (tens of GB): head critics on the policy, and the plan counts the same
        critic_init="head",
        eval_size=0,
        signal_every=0,
        progress=False,
        plots=False,
        device=world["device"],
        score_batch_size=args.batch_size,
    )
    device = world["device"]
    build = functools.partial(
        build_setup, world=world, device=device, policy_fields=policy_fields, lora=lora
    )
    saved = (presets.build_setup, rlhf_mistral.save_policy, rlhf_mistral.save_checkpoint)
    presets.build_setup = build
    rlhf_mistral.save_policy = lambda *a, **k: None  # type: ignore[assignment]
    rlhf_mistral.save_checkpoint = lambda *a, **k: None  # type: ignore[assignment]
    cuda = device.startswith("cuda")
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rlhf_mistral.train(cfg)
        peak = torch.cuda.max_memory_allocated() / GIB if cuda else None
    finally:
        presets.build_setup, rlhf_mistral.save_policy, rlhf_mistral.save_checkpoint = saved
    rows = read_metrics(Path(str(cfg.run.out)) / "metrics.jsonl")
    timed = rows[1:] if len(rows) > 1 else rows
    seconds = sum(r["seconds"] for r in timed) / len(timed)
    generated = sum(r["response_length"] for r in timed) / len(timed) * args.batch_size
    sequence = generated + world["prompt_tokens"] * args.batch_size
    plan = plan_bytes(cfg, world, policy_fields, fsdp)
    from integrations.worlds.paper.shapes import shape_from_config

    return {
        "mode": mode,
        "policy_params": shape_from_config(policy_fields).causal_lm_params(),
        "steps_per_s": 1 / seconds,
        "step_s": seconds,
        "first_step_s": rows[0]["seconds"],
        "generated_tok_s": generated / seconds,
        "sequence_tok_s": sequence / seconds,
        "peak_gib": peak,
        "plan_gib": plan.total / GIB,
        "plan": {name: b / GIB for name, b in plan.entries},
        "plan_notes": plan.notes,
    }


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def render(rows: list[dict], failures: dict[str, str], header: list[str]) -> str:
    lines = [*header, ""]
    lines.append(
        "| mode | policy params | steps/s | step s | first step s | generated tok/s | "
        "sequence tok/s | peak GiB | plan GiB | peak / plan |"
    )
    lines.append("|" + "---|" * 10)
    for r in rows:
        peak, plan = r["peak_gib"], r["plan_gib"]
        ratio = f"{peak / plan:.2f}" if peak is not None else "n/a"
        lines.append(
            f"| {r['mode']} | {_count(r['policy_params'])} | {r['steps_per_s']:.3f} | "
            f"{r['step_s']:.2f} | {r['first_step_s']:.2f} | {r['generated_tok_s']:.0f} | "
            f"{r['sequence_tok_s']:.0f} | {'n/a' if peak is None else f'{peak:.1f}'} | "
            f"{plan:.1f} | {ratio} |"
        )
    for r in rows:
        lines += ["", f"plan of {r['mode']} (GiB):"]
        lines += [f"  {name}: {gib:.2f}" for name, gib in r["plan"].items()]
        lines += [f"  note: {n}" for n in r["plan_notes"]]
    for mode, tb in failures.items():
        lines += ["", f"**{mode} FAILED**:", "```", *tb.rstrip().splitlines()[-25:], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="toy shapes on CPU, 2 steps")
    parser.add_argument("--modes", nargs="+", default=["lora", "fsdp"], choices=["lora", "fsdp"])
    parser.add_argument("--steps", type=int, default=None, help="PPO steps per mode (GPU: 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per step (GPU: 8)")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="(GPU: 4)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="(GPU: 64)")
    parser.add_argument("--fsdp-layers", type=int, default=12, help="policy layers in fsdp mode")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("bench/rlhf_7b_gpu.py: no CUDA device; nothing to measure (--cpu-smoke checks it)")
        return 0
    smoke = args.cpu_smoke
    args.steps = args.steps or (2 if smoke else 3)
    args.batch_size = args.batch_size or (4 if smoke else 8)
    args.micro_batch_size = args.micro_batch_size or (2 if smoke else 4)
    args.max_new_tokens = args.max_new_tokens or (8 if smoke else 64)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import transformers

    from integrations import testing
    from integrations.worlds.paper.models import format_chat

    transformers.utils.logging.disable_progress_bar()
    t_start = time.perf_counter()
    fields = shapes(smoke, args.fsdp_layers)
    vocab = fields["policy"]["vocab_size"]
    words = testing.pseudo_words(vocab - len(testing.SPECIAL) - len(testing.TEMPLATE_WORDS))
    tokenizer = testing.policy_tokenizer([*testing.TEMPLATE_WORDS, *words])
    assert len(tokenizer) == vocab, (len(tokenizer), vocab)
    tokenizer.padding_side = "left"
    score_tokenizer = testing.scorer_tokenizer(
        [" ".join(testing.TEMPLATE_WORDS), *words], min(fields["score"]["vocab_size"], 8000)
    )
    prompts = [r["prompt"] for r in testing.random_pku_rows(words, 64, seed=3)]
    prompt_tokens = max(len(tokenizer(format_chat(tokenizer, p))["input_ids"]) for p in prompts)
    world = {
        "shapes": fields,
        "tokenizer": tokenizer,
        "score_tokenizer": score_tokenizer,
        "prompts": prompts,
        "prompt_tokens": prompt_tokens,
        "device": "cpu" if smoke else "cuda:0",
    }
    name = torch.cuda.get_device_name() if cuda and not smoke else "CPU (smoke run, toy shapes)"
    header = [
        f"## Mistral-7B pipeline on {name}",
        "",
        f"torch {torch.__version__}, transformers {transformers.__version__}; GAPO p=1, bf16 "
        f"over fp32 master weights, full MOGD mode (k=2); {args.steps} PPO steps per mode, "
        f"{args.batch_size} prompts (<= {prompt_tokens} tokens) per step, micro-batches of "
        f"{args.micro_batch_size}, {args.max_new_tokens} new tokens; two beaver-7b-layout "
        f"scorers (bf16). Random weights, built on the device.",
    ]
    rows: list[dict] = []
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mogd-rlhf-7b-") as tmp_name:
        for mode in args.modes:
            if mode == "lora" and importlib.util.find_spec("peft") is None:
                failures[mode] = "skipped: peft is not installed (pip install peft)"
                print(failures[mode], flush=True)
                continue
            t_mode = time.perf_counter()
            print(f"--- mode {mode}", flush=True)
            try:
                rows.append(run_mode(mode, world, args, Path(tmp_name)))
                print(json.dumps(rows[-1], indent=1, default=str), flush=True)
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
        (Path(out) / "rlhf_7b_gpu.md").write_text(text)
        (Path(out) / "rlhf_7b_gpu.json").write_text(
            json.dumps({"rows": rows, "failures": failures}, indent=1, default=str)
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
