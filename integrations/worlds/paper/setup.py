"""The paper's world (Li et al., ACL 2025, arXiv 2507.01915, §4 and App. B): ``--preset mistral-7b``.

Policy HuggingFaceH4/mistral-7b-sft-beta, helpfulness reward PKU-Alignment/beaver-7b-v1.0-reward,
harmlessness cost PKU-Alignment/beaver-7b-v1.0-cost, PKU-SafeRLHF prompts; any causal LM, score
model or prompt file can be swapped in through the world's options (``--policy``,
``--reward-model``, ... in :class:`.options.PaperOptions`).

:func:`build_paper_setup` loads everything; :func:`build_score_critics` builds the critics
initialised from the score models (``--critic-init score``). The models are in :mod:`.models` and
:mod:`.scorers`, the prompt sets in :mod:`.data`, the ``--dry-run`` memory plan in :mod:`.memory`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..base import Scorer, Setup
from .options import PaperOptions

if TYPE_CHECKING:
    from .scorers import ScoreCritic

__all__ = ["build_paper_setup", "build_score_critics"]


def build_paper_setup(opts: PaperOptions, device: str, load_on: str | None = None) -> Setup:
    """Load the policy, reference, scorers and prompts of the paper world for this rank.

    Full fine-tuning loads a frozen reference copy; with ``--lora-r`` the reference is the policy
    with its adapters disabled (``Setup.reference = None``). ``load_on``: where the bf16/float32
    weights are read to (``device`` when None): ``"cpu"`` when FSDP2 will shard them, so no rank
    ever holds a whole float32 policy (or two 7B scorers) in GPU memory. Quantised scorers load
    on ``device``.
    """
    import torch

    from .data import load_hh_prompts, load_pku_prompts
    from .models import load_policy, load_reference
    from .scorers import BeaverScorer, load_score_model

    # Prompts first: a bad prompt source fails before minutes of model loading.
    train = load_pku_prompts(opts.train_prompts, "train", limit=opts.max_train_prompts or None)
    evals = load_pku_prompts(
        opts.eval_prompts, "test", limit=opts.max_eval_prompts or None, option="--eval-prompts"
    )
    hh = load_hh_prompts(opts.hh_prompts, "test", limit=opts.max_eval_prompts or None)
    load_on = load_on or device
    policy, tokenizer, format_prompt = load_policy(
        opts.policy,
        device=load_on,
        gradient_checkpointing=opts.gradient_checkpointing,
        lora_r=opts.lora_r,
        lora_alpha=opts.lora_alpha,
    )
    reference = None if opts.lora_r > 0 else load_reference(opts.policy, device=load_on)
    scorers: list[Scorer] = []
    for name, kind, model_id, option in opts.objective_models():
        model, scorer_tokenizer = load_score_model(
            model_id,
            option=option,
            dtype=torch.bfloat16,
            device=device if opts.quantization else load_on,
            quantization=opts.quantization,
        )
        scorers.append(
            BeaverScorer(
                name,
                kind,
                model,
                scorer_tokenizer,
                batch_size=opts.score_batch_size,
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


def build_score_critics(opts: PaperOptions, setup: Setup, device: str) -> dict[str, ScoreCritic]:
    """One trainable critic per objective, initialised from its score model (``--critic-init score``).

    critic_i(tokens)[t] = value of position t; it reads the policy's token ids directly (the score
    model's embeddings are transferred to the policy's vocabulary). LoRA follows ``--lora-r``.
    Keyed by objective name.
    """
    from .scorers import build_score_critic

    vocab = int(setup.policy.config.vocab_size)
    return {
        name: build_score_critic(
            model_id,
            setup.tokenizer,
            option=option,
            num_embeddings=vocab,
            device=device,
            lora_r=opts.lora_r,
            lora_alpha=opts.lora_alpha,
            gradient_checkpointing=opts.gradient_checkpointing,
        )
        for name, _, model_id, option in opts.objective_models()
    }
