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

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..base import Scorer, Setup
from .models import resolve_pretrained
from .options import PaperOptions

if TYPE_CHECKING:
    from .loading import Sharded
    from .scorers import ScoreCritic

__all__ = ["build_paper_setup", "build_score_critics"]


def build_paper_setup(
    opts: PaperOptions, device: str, load_on: str | None = None, sharded: Sharded | None = None
) -> Setup:
    """Load the policy, reference, scorers and prompts of the paper world for this rank.

    Full fine-tuning loads a frozen reference copy; with ``--lora-r`` the reference is the policy
    with its adapters disabled (``Setup.reference = None``). ``load_on``: where the bf16/float32
    weights are read to (``device`` when None): ``"cpu"`` when FSDP2 will shard them, so no rank
    ever holds a whole float32 policy (or two 7B scorers) in GPU memory. Quantised scorers load
    on ``device``. ``sharded`` (FSDP2, full fine-tuning): every model is built on the meta
    device, sharded, and filled from rank 0's one read of its checkpoint (:mod:`.loading`).
    """
    import torch

    from .data import load_hh_prompts, load_pku_prompts
    from .models import format_chat, load_policy, load_reference, policy_tokenizer
    from .scorers import BeaverScorer, load_score_model

    # Prompts first: a bad prompt source fails before minutes of model loading.
    train = load_pku_prompts(opts.train_prompts, "train", limit=opts.max_train_prompts or None)
    evals = load_pku_prompts(
        opts.eval_prompts, "test", limit=opts.max_eval_prompts or None, option="--eval-prompts"
    )
    hh = load_hh_prompts(opts.hh_prompts, "test", limit=opts.max_eval_prompts or None)
    load_on = load_on or device
    if sharded is not None and opts.lora_r == 0:
        from .loading import load_policy_and_reference

        path = resolve_pretrained(opts.policy, option="--policy")
        policy, reference = load_policy_and_reference(
            path, sharded, gradient_checkpointing=opts.gradient_checkpointing, reference=True
        )
        tokenizer = policy_tokenizer(path, policy)
        format_prompt: Callable[[str], str] = functools.partial(format_chat, tokenizer)
    else:
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
        if sharded is not None and not opts.quantization:
            model, scorer_tokenizer = _sharded_score_model(model_id, option, sharded)
        else:
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


def _sharded_score_model(model_id: str, option: str, sharded: Sharded) -> tuple[Any, Any]:
    from transformers import AutoConfig

    from .loading import load_score_model_sharded
    from .scorers import score_normalizer, score_tokenizer

    path = resolve_pretrained(model_id, option=option)
    mean, std = score_normalizer(AutoConfig.from_pretrained(path))
    model = load_score_model_sharded(path, sharded, option=option, mean=mean, std=std)
    return model, score_tokenizer(path)


def build_score_critics(
    opts: PaperOptions, setup: Setup, device: str, sharded: Sharded | None = None
) -> dict[str, ScoreCritic]:
    """One trainable critic per objective, initialised from its score model (``--critic-init score``).

    critic_i(tokens)[t] = value of position t; it reads the policy's token ids directly (the score
    model's embeddings are transferred to the policy's vocabulary). LoRA follows ``--lora-r``.
    Keyed by objective name. ``sharded`` (full fine-tuning under FSDP2): float32 master shards
    filled from rank 0's read of each score checkpoint (:mod:`.loading`).
    """
    from .scorers import build_score_critic

    vocab = int(setup.policy.config.vocab_size)
    if sharded is not None and opts.lora_r == 0:
        from .loading import build_score_critic_sharded

        return {
            name: build_score_critic_sharded(
                resolve_pretrained(model_id, option=option),
                sharded,
                setup.tokenizer,
                option=option,
                num_embeddings=vocab,
                gradient_checkpointing=opts.gradient_checkpointing,
            )
            for name, _, model_id, option in opts.objective_models()
        }
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
