"""The paper's experiment (Li et al., ACL 2025, arXiv 2507.01915, §4 and App. B): ``--preset mistral-7b``.

Policy HuggingFaceH4/mistral-7b-sft-beta, helpfulness reward PKU-Alignment/beaver-7b-v1.0-reward,
harmlessness cost PKU-Alignment/beaver-7b-v1.0-cost, PKU-SafeRLHF prompts; any causal LM, score
model or prompt file can be swapped in through the options below. ``integrations/rlhf_mistral.py``
imports this module lazily and passes its argparse namespace; every option is read with
``getattr`` and the default in :data:`PAPER_OPTIONS`, so a namespace lacking some still works.

Entry points: :func:`build_paper_setup` (loads everything), :func:`paper_eval_sets` (the two
evaluation prompt sets), :func:`build_score_critics` (critics initialised from the score models),
:func:`dry_run` (parameter counts and per-GPU memory plan, no weights loaded).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from integrations.paper_data import HH_RLHF, PKU_SAFERLHF
from integrations.paper_plan import (
    DEFAULT_COST_MODEL,
    DEFAULT_POLICY,
    DEFAULT_REWARD_MODEL,
    PUBLISHED_CONFIGS,
    ModelShape,
    gib,
    lora_param_count,
    memory_plan,
    shape_from_config,
)

if TYPE_CHECKING:
    from integrations.common import Scorer, Setup
    from integrations.paper_models import ScoreCritic

__all__ = [
    "PAPER_OPTIONS",
    "add_paper_arguments",
    "build_paper_setup",
    "build_score_critics",
    "dry_run",
    "paper_eval_sets",
]


@dataclass(frozen=True)
class _Option:
    flag: str
    default: Any
    help: str
    type: Any = None
    choices: tuple[str, ...] | None = None
    action: str | None = None


# attribute name -> option; the CLI of rlhf_mistral.py exposes these (add_paper_arguments).
PAPER_OPTIONS: dict[str, _Option] = {
    o.flag[2:].replace("-", "_"): o
    for o in (
        _Option("--policy", DEFAULT_POLICY, "policy: causal LM hub id or local folder", str),
        _Option(
            "--reward-model", DEFAULT_REWARD_MODEL, "helpfulness reward model (LlamaForScore)", str
        ),
        _Option("--cost-model", DEFAULT_COST_MODEL, "harmlessness cost model (LlamaForScore)", str),
        _Option("--lora-r", 0, "LoRA rank on every decoder linear map; 0 = full fine-tuning", int),
        _Option("--lora-alpha", None, "LoRA alpha; None = 2 * rank", int),
        _Option("--load-in-8bit", False, "scorers in 8-bit (bitsandbytes)", action="store_true"),
        _Option(
            "--load-in-4bit", False, "scorers in 4-bit NF4 (bitsandbytes)", action="store_true"
        ),
        _Option(
            "--no-gradient-checkpointing",
            False,
            "turn gradient checkpointing off",
            action="store_true",
        ),
        _Option(
            "--critic-init",
            "head",
            "critics: value heads on the policy (head), a trained copy of the policy's trunk "
            "(copy) or one critic initialised from each score model (score, as Safe RLHF)",
            str,
            ("head", "copy", "score"),
        ),
        _Option(
            "--train-prompts",
            PKU_SAFERLHF,
            "PKU-SafeRLHF train prompts: hub id, folder or JSONL",
            str,
        ),
        _Option(
            "--eval-prompts",
            PKU_SAFERLHF,
            "PKU-SafeRLHF test prompts: hub id, folder or JSONL",
            str,
        ),
        _Option("--hh-prompts", HH_RLHF, "HH-RLHF test prompts: hub id, folder or JSONL", str),
        _Option("--max-train-prompts", 0, "keep the first N distinct train prompts (0 = all)", int),
        _Option(
            "--max-eval-prompts", 0, "keep the first N distinct prompts per eval set (0 = all)", int
        ),
        _Option("--score-batch-size", 16, "scorer batch size", int),
        _Option("--world-size", None, "GPUs for --dry-run; None = $WORLD_SIZE or 1", int),
        _Option("--micro-batch-size", 4, "sequences per GPU per forward, for --dry-run", int),
        _Option("--seq-len", 512, "prompt + response tokens, for --dry-run", int),
        _Option(
            "--device", None, "device; None = cuda:$LOCAL_RANK when CUDA exists, else cpu", str
        ),
    )
}


def add_paper_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the preset's options to ``parser`` (those it does not define already)."""
    group = parser.add_argument_group("--preset mistral-7b")
    existing = set(parser._option_string_actions)  # argparse's registry of defined flags
    for name, o in PAPER_OPTIONS.items():
        if o.flag in existing:
            continue
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": o.default,
            "help": o.help,
        }
        if o.action:
            kwargs["action"] = o.action
        else:
            kwargs.update(type=o.type, choices=o.choices)
        group.add_argument(o.flag, **kwargs)


def _opt(args: Any, name: str) -> Any:
    value = getattr(args, name, None)
    return PAPER_OPTIONS[name].default if value is None else value


def _quantization(args: Any) -> Literal["8bit", "4bit"] | None:
    eight, four = bool(_opt(args, "load_in_8bit")), bool(_opt(args, "load_in_4bit"))
    if eight and four:
        raise ValueError("--load-in-8bit and --load-in-4bit are exclusive: pick one")
    return "8bit" if eight else "4bit" if four else None


def _device(args: Any) -> str:
    import torch

    device = _opt(args, "device")
    if device:
        return str(device)
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def _limit(args: Any, name: str) -> int | None:
    n = int(_opt(args, name))
    if n < 0:
        raise ValueError(f"--{name.replace('_', '-')} must be >= 0 (0 = all), got {n}")
    return n or None


def _lora(args: Any) -> tuple[int, int | None]:
    r = int(_opt(args, "lora_r"))
    if r < 0:
        raise ValueError(f"--lora-r must be >= 0 (0 = full fine-tuning), got {r}")
    alpha = getattr(args, "lora_alpha", None)
    return r, None if alpha is None else int(alpha)


def _objectives(args: Any) -> list[tuple[str, Literal["reward", "cost"], str, str]]:
    """(name, kind, model, option) per objective, in objective order: R then C (paper App. B)."""
    return [
        ("helpful", "reward", str(_opt(args, "reward_model")), "--reward-model"),
        ("harmless", "cost", str(_opt(args, "cost_model")), "--cost-model"),
    ]


def build_paper_setup(args: Any) -> Setup:
    """Load the policy, reference, scorers and prompts of the paper preset onto this rank's device.

    Full fine-tuning loads a frozen reference copy and probes the LM head by default (the paper's
    memory saver); with ``--lora-r`` the reference is the policy with its adapters disabled
    (``Setup.reference = None``) and the default is full mode over the adapters (the LM head is
    frozen under LoRA, so it has no gradient to probe).
    """
    import torch

    from integrations.common import Setup
    from integrations.paper_data import load_pku_prompts
    from integrations.paper_models import (
        BeaverScorer,
        load_policy,
        load_reference,
        load_score_model,
    )

    quantization = _quantization(args)
    lora_r, lora_alpha = _lora(args)
    batch = int(_opt(args, "score_batch_size"))
    if batch < 1:
        raise ValueError(f"--score-batch-size must be >= 1, got {batch}")
    train_limit, eval_limit = _limit(args, "max_train_prompts"), _limit(args, "max_eval_prompts")
    # Prompts first: a bad prompt source fails before minutes of model loading.
    train = load_pku_prompts(_opt(args, "train_prompts"), "train", limit=train_limit)
    evals = load_pku_prompts(
        _opt(args, "eval_prompts"), "test", limit=eval_limit, option="--eval-prompts"
    )
    device = _device(args)
    checkpointing = not bool(_opt(args, "no_gradient_checkpointing"))
    policy_id = str(_opt(args, "policy"))
    policy, tokenizer, format_prompt = load_policy(
        policy_id,
        device=device,
        gradient_checkpointing=checkpointing,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
    )
    reference = None if lora_r > 0 else load_reference(policy_id, device=device)
    scorers: list[Scorer] = []
    for name, kind, model_id, option in _objectives(args):
        model, scorer_tokenizer = load_score_model(
            model_id, option=option, dtype=torch.bfloat16, device=device, quantization=quantization
        )
        scorers.append(
            BeaverScorer(
                name,
                kind,
                model,
                scorer_tokenizer,
                batch_size=batch,
                max_length=getattr(model.backbone.config, "max_position_embeddings", None),
            )
        )
    return Setup(
        policy=policy,
        reference=reference,
        tokenizer=tokenizer,
        scorers=scorers,
        train_prompts=train,
        eval_prompts=evals,
        format_prompt=format_prompt,
        probe_default=None if lora_r > 0 else "lm_head",
    )


def paper_eval_sets(args: Any) -> dict[str, list[str]]:
    """The paper's two evaluation columns: PKU-SafeRLHF test and HH-RLHF test prompts."""
    from integrations.paper_data import load_hh_prompts, load_pku_prompts

    limit = _limit(args, "max_eval_prompts")
    return {
        "pku-saferlhf": load_pku_prompts(
            _opt(args, "eval_prompts"), "test", limit=limit, option="--eval-prompts"
        ),
        "hh-rlhf": load_hh_prompts(_opt(args, "hh_prompts"), "test", limit=limit),
    }


def build_score_critics(args: Any, setup: Setup) -> list[ScoreCritic]:
    """One trainable critic per objective, initialised from its score model (``--critic-init score``).

    critic_i(tokens)[t] = value of position t; it reads the policy's token ids directly (the score
    model's embeddings are transferred to the policy's vocabulary). LoRA follows ``--lora-r``.
    """
    from integrations.paper_models import build_score_critic

    lora_r, lora_alpha = _lora(args)
    vocab = int(setup.policy.config.vocab_size)
    checkpointing = not bool(_opt(args, "no_gradient_checkpointing"))
    return [
        build_score_critic(
            model_id,
            setup.tokenizer,
            option=option,
            num_embeddings=vocab,
            device=_device(args),
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            gradient_checkpointing=checkpointing,
        )
        for _, _, model_id, option in _objectives(args)
    ]


def _shape(name_or_path: str, option: str) -> tuple[ModelShape, str]:
    """Shape of a model from its config only: local config.json, published table, or hub config."""
    from pathlib import Path

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        from transformers import AutoConfig

        return shape_from_config(AutoConfig.from_pretrained(path)), f"{path}/config.json"
    if name_or_path in PUBLISHED_CONFIGS:
        return shape_from_config(PUBLISHED_CONFIGS[name_or_path]), "published config (built in)"
    from integrations.paper_models import resolve_pretrained

    local = resolve_pretrained(name_or_path, option=option)  # config only is read, no weights
    from transformers import AutoConfig

    return shape_from_config(AutoConfig.from_pretrained(local)), f"{name_or_path} (hub config)"


def _probe(args: Any, lora_r: int) -> str | None:
    probe = getattr(args, "probe", None)
    if probe is None:
        return None if lora_r > 0 else "lm_head"
    return None if str(probe).lower() in ("none", "full", "") else str(probe)


def _objective_count(args: Any) -> int:
    """k, the gradients MOGD keeps: one per objective for gapo / mgda / pgapo; one for the
    single-loss methods (ppo-h, ppo-s, morlhf's scalarised reward, safe-rlhf's Lagrangian)."""
    if getattr(args, "method", None) in ("ppo-h", "ppo-s", "morlhf", "safe-rlhf"):
        return 1
    names = getattr(args, "objectives", None)
    return len(names) if names else len(_objectives(args))


def dry_run(args: Any) -> str:
    """Parameter counts and the per-GPU memory plan (DDP and FSDP2) without loading weights."""
    lora_r, _ = _lora(args)
    quant: Literal["bf16", "8bit", "4bit"] = _quantization(args) or "bf16"
    world = getattr(args, "world_size", None)
    world = int(os.environ.get("WORLD_SIZE", 1) if world is None else world)
    if world < 1:
        raise ValueError(f"--world-size must be >= 1, got {world}")
    policy, policy_src = _shape(str(_opt(args, "policy")), "--policy")
    scorers = [_shape(m, opt) for _, _, m, opt in _objectives(args)]
    probe, k = _probe(args, lora_r), _objective_count(args)
    critic_init = _opt(args, "critic_init")
    if critic_init not in ("head", "copy", "score"):
        raise ValueError(f"--critic-init must be 'head', 'copy' or 'score', got {critic_init!r}")
    checkpointing = not bool(_opt(args, "no_gradient_checkpointing"))
    micro, seq = int(_opt(args, "micro_batch_size")), int(_opt(args, "seq_len"))

    total = policy.causal_lm_params()
    trainable = lora_param_count(policy, lora_r) if lora_r > 0 else total
    lines = [
        "mogd --preset mistral-7b --dry-run (no weights loaded)",
        f"policy  {_opt(args, 'policy')}  [{policy_src}]",
        f"  parameters {total:,}; trainable {trainable:,}"
        + (f" (LoRA r={lora_r})" if lora_r > 0 else " (full fine-tuning)"),
        f"  MOGD: k={k} per-objective gradients, "
        + (
            f"probe {probe} ({policy.vocab_size * policy.hidden_size:,} parameters)"
            if probe == "lm_head"
            else f"probe {probe}"
            if probe
            else "full mode"
        ),
    ]
    for (name, kind, model_id, _), (shape, src) in zip(_objectives(args), scorers, strict=True):
        lines.append(f"{kind:<6}  {model_id}  [{src}]")
        lines.append(f"  parameters {shape.score_model_params():,} ({name}, {quant})")
    lines.append(f"critics {critic_init}")
    plans = [
        memory_plan(
            policy,
            [s for s, _ in scorers],
            world_size=world,
            sharding=sharding,
            lora_r=lora_r,
            probe=probe,
            k=k,
            critic_init=critic_init,
            quant=quant,
            micro_batch=micro,
            seq_len=seq,
            gradient_checkpointing=checkpointing,
        )
        for sharding in ("ddp", "fsdp2")
    ]
    lines.append("")
    lines.append(f"per-GPU memory, world size {world} (GiB)")
    width = max(len(n) for n, _ in plans[0].entries + plans[1].entries)
    lines.append(f"  {'component':<{width}}  {'DDP':>8}  {'FSDP2':>8}")
    names = [n for n, _ in plans[1].entries]
    for name in names:
        cells = []
        for plan in plans:
            try:
                cells.append(f"{gib(plan.get(name)):8.2f}")
            except KeyError:
                cells.append(f"{'-':>8}")
        lines.append(f"  {name:<{width}}  {cells[0]}  {cells[1]}")
    lines.append(f"  {'total':<{width}}  {gib(plans[0].total):8.2f}  {gib(plans[1].total):8.2f}")
    lines.append("")
    lines.extend(f"note: {n}" for n in dict.fromkeys(plans[0].notes + plans[1].notes))
    lines.append(
        "note: bf16 weights; full fine-tuning keeps bf16 gradients and AdamW moments, LoRA adapters "
        "are fp32; the MOGD bank replaces the gradient buffer in full mode; FSDP2 shards weights, "
        "gradients, bank and moments, scorers stay replicated; activations are an estimate"
    )
    return "\n".join(lines)
