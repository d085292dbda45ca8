"""The paper's experiment (Li et al., ACL 2025, arXiv 2507.01915, §4 and App. B): ``--preset mistral-7b``.

Policy HuggingFaceH4/mistral-7b-sft-beta, helpfulness reward PKU-Alignment/beaver-7b-v1.0-reward,
harmlessness cost PKU-Alignment/beaver-7b-v1.0-cost, PKU-SafeRLHF prompts; any causal LM, score
model or prompt file can be swapped in through the preset's options (``--policy``,
``--reward-model``, ... in :class:`integrations.config.Config`).

Entry points: :func:`build_paper_setup` (loads everything), :func:`paper_eval_sets` (the two
evaluation prompt sets), :func:`build_score_critics` (critics initialised from the score models).
The dry run's plan is :mod:`integrations.plan`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from .common import Scorer, Setup
from .config import Config, fsdp_enabled
from .dist import resolve_device

if TYPE_CHECKING:
    from .paper_models import ScoreCritic

__all__ = ["build_paper_setup", "build_score_critics", "objective_models", "paper_eval_sets"]


def objective_models(cfg: Config) -> list[tuple[str, Literal["reward", "cost"], str, str]]:
    """(name, kind, model, option) per objective, in objective order: R then C (paper App. B)."""
    return [
        ("helpful", "reward", cfg.reward_model, "--reward-model"),
        ("harmless", "cost", cfg.cost_model, "--cost-model"),
    ]


def quantization(cfg: Config) -> Literal["8bit", "4bit"] | None:
    return "8bit" if cfg.load_in_8bit else "4bit" if cfg.load_in_4bit else None


def build_paper_setup(cfg: Config) -> Setup:
    """Load the policy, reference, scorers and prompts of the paper preset onto this rank's device.

    Full fine-tuning loads a frozen reference copy; with ``--lora-r`` the reference is the policy
    with its adapters disabled (``Setup.reference = None``). The probe is ``cfg.probe`` (the
    preset's default: the LM head, or full mode under LoRA, where the head is frozen).
    """
    import torch

    from .paper_data import load_hh_prompts, load_pku_prompts
    from .paper_models import BeaverScorer, load_policy, load_reference, load_score_model

    # Prompts first: a bad prompt source fails before minutes of model loading.
    train = load_pku_prompts(cfg.train_prompts, "train", limit=cfg.max_train_prompts or None)
    evals = load_pku_prompts(
        cfg.eval_prompts, "test", limit=cfg.max_eval_prompts or None, option="--eval-prompts"
    )
    hh = load_hh_prompts(cfg.hh_prompts, "test", limit=cfg.max_eval_prompts or None)
    device = resolve_device(cfg.device)
    # FSDP2 shards from the CPU copy straight onto the devices: no rank ever holds a whole
    # float32 policy (or two 7B scorers) in GPU memory. Quantised scorers load on the device.
    load_on = "cpu" if fsdp_enabled(cfg, int(os.environ.get("WORLD_SIZE", "1"))) else device
    policy, tokenizer, format_prompt = load_policy(
        cfg.policy,
        device=load_on,
        gradient_checkpointing=cfg.gradient_checkpointing,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
    )
    reference = None if cfg.lora_r > 0 else load_reference(cfg.policy, device=load_on)
    scorers: list[Scorer] = []
    for name, kind, model_id, option in objective_models(cfg):
        model, scorer_tokenizer = load_score_model(
            model_id,
            option=option,
            dtype=torch.bfloat16,
            device=device if quantization(cfg) else load_on,
            quantization=quantization(cfg),
        )
        scorers.append(
            BeaverScorer(
                name,
                kind,
                model,
                scorer_tokenizer,
                batch_size=cfg.score_batch_size,
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
        eval_sets={"hh-rlhf": hh},
    )


def paper_eval_sets(cfg: Config) -> dict[str, list[str]]:
    """The paper's two evaluation columns: PKU-SafeRLHF test and HH-RLHF test prompts."""
    from .paper_data import load_hh_prompts, load_pku_prompts

    limit = cfg.max_eval_prompts or None
    return {
        "pku-saferlhf": load_pku_prompts(
            cfg.eval_prompts, "test", limit=limit, option="--eval-prompts"
        ),
        "hh-rlhf": load_hh_prompts(cfg.hh_prompts, "test", limit=limit),
    }


def build_score_critics(cfg: Config, setup: Setup) -> list[ScoreCritic]:
    """One trainable critic per objective, initialised from its score model (``--critic-init score``).

    critic_i(tokens)[t] = value of position t; it reads the policy's token ids directly (the score
    model's embeddings are transferred to the policy's vocabulary). LoRA follows ``--lora-r``.
    """
    from .paper_models import build_score_critic

    vocab = int(setup.policy.config.vocab_size)
    return [
        build_score_critic(
            model_id,
            setup.tokenizer,
            option=option,
            num_embeddings=vocab,
            device=resolve_device(cfg.device),
            lora_r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            gradient_checkpointing=cfg.gradient_checkpointing,
        )
        for _, _, model_id, option in objective_models(cfg)
    ]
