"""The paper world's options (``--preset mistral-7b`` only): which models and prompt sets it loads,
LoRA, quantised scorers, gradient checkpointing, and the shapes of the ``--dry-run`` memory plan.

This is the ``cfg.paper`` section of :class:`integrations.run.config.Config`; the world's
builders (:mod:`.setup`) read nothing else of the run's configuration.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from ...ppo.options import option
from .data import HH_RLHF, PKU_SAFERLHF
from .shapes import DEFAULT_COST_MODEL, DEFAULT_POLICY, DEFAULT_REWARD_MODEL

__all__ = ["PaperOptions"]


@dataclass
class PaperOptions:
    """The paper's models and prompts (Li et al., ACL 2025, §4 and App. B), and --dry-run shapes."""

    policy: str = option(DEFAULT_POLICY, "policy: causal LM hub id or local folder")
    reward_model: str = option(DEFAULT_REWARD_MODEL, "helpfulness reward model (LlamaForScore)")
    cost_model: str = option(DEFAULT_COST_MODEL, "harmlessness cost model (LlamaForScore)")
    lora_r: int = option(0, "LoRA rank on every decoder linear map; 0 = full fine-tuning")
    lora_alpha: int | None = option(None, "LoRA alpha; None = 2 * rank")
    load_in_8bit: bool = option(False, "scorers in 8-bit (bitsandbytes)", action="store_true")
    load_in_4bit: bool = option(False, "scorers in 4-bit NF4 (bitsandbytes)", action="store_true")
    gradient_checkpointing: bool = option(
        True,
        "gradient checkpointing in the policy and trained critics",
        action=argparse.BooleanOptionalAction,
    )
    train_prompts: str = option(PKU_SAFERLHF, "PKU-SafeRLHF train prompts: hub id, folder or JSONL")
    eval_prompts: str = option(PKU_SAFERLHF, "PKU-SafeRLHF test prompts: hub id, folder or JSONL")
    hh_prompts: str = option(HH_RLHF, "HH-RLHF test prompts: hub id, folder or JSONL")
    max_train_prompts: int = option(0, "keep the first N distinct train prompts (0 = all)")
    max_eval_prompts: int = option(0, "keep the first N distinct prompts per eval set (0 = all)")
    score_batch_size: int = option(16, "scorer batch size")
    world_size: int | None = option(None, "GPUs for --dry-run; None = $WORLD_SIZE or 1")
    prompt_len: int = option(
        128,
        "longest prompt in tokens (chat template included), for --dry-run",
        bookkeeping=True,  # the memory plan's alone: nothing a run trains depends on it
        added_later=True,
    )
    seq_len: int = option(
        0, "prompt + response tokens for --dry-run; 0 = --prompt-len + --max-new-tokens"
    )

    @property
    def quantization(self) -> Literal["8bit", "4bit"] | None:
        """How the scorers are loaded: 8-bit, 4-bit NF4, or None (bf16)."""
        return "8bit" if self.load_in_8bit else "4bit" if self.load_in_4bit else None

    def objective_models(self) -> list[tuple[str, Literal["reward", "cost"], str, str]]:
        """(name, kind, model, option) per objective, in objective order: R then C (App. B)."""
        return [
            ("helpful", "reward", self.reward_model, "--reward-model"),
            ("harmless", "cost", self.cost_model, "--cost-model"),
        ]
