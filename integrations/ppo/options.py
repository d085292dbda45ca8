"""The algorithm's options, one dataclass per section: what to train, the batch, the optimizer,
the rollouts, the PPO losses, and the Safe RLHF and Fast RL baselines.

Each field is one command-line option, declared once with :func:`option` (its ``--help`` text
and argparse settings sit in the field's metadata). A part of the loop receives the section it
reads (``decoding(cfg.rollout)``, ``Lagrangian.from_options(cfg.safe_rlhf)``, ...). Field
defaults are the tiny preset's; :data:`integrations.run.presets.PRESETS` holds what other presets
change (mistral-7b: the paper's Table 2). :class:`integrations.run.config.Config` gathers these
sections with the run's and the worlds' own.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Literal

from .methods import METHODS, Method, Update

CriticInit = Literal["copy", "head", "score"]
Advantage = Literal["gae", "group"]


def option(
    default: Any,
    help: str,
    *,
    bookkeeping: bool = False,
    added_later: bool = False,
    **argparse_kwargs: Any,
) -> Any:
    """A field that is one ``--option``: its default, ``--help`` text and any argparse settings
    (type, choices, nargs, action). ``bookkeeping=True``: the option does not change the trained
    parameters (left out of the config hash, free to change when a run is resumed).
    ``added_later=True``: the option came after run directories were written, and its declared
    default is what those runs did; while it has that default it is left out of the config
    hash, so their checkpoints still match (:func:`integrations.run.config.config_hash`)."""
    meta = {"help": help, "bookkeeping": bookkeeping, "added_later": added_later}
    return field(default=default, metadata={**meta, **argparse_kwargs})


@dataclass
class AlgorithmOptions:
    """What to train: the method, its objectives and MOGD's weighting, probe and critic."""

    method: Method = option("gapo", "training method", choices=tuple(METHODS))
    p: float = option(1.0, "GAPO exponent: gradients rescaled by 1/||g||^p (0 = MGDA)")
    update: Update = option(
        "rescaled", "GAPO update: Eq. 7 (rescaled) or Eq. 17 (raw)", choices=("rescaled", "raw")
    )
    preference: list[float] | None = option(
        None,
        "pgapo/morlhf weights, one positive number per objective; None = uniform",
        nargs="+",
        type=float,
    )
    objectives: list[str] | None = option(
        None, "objective names to train on, in order; None = all of the preset's", nargs="*"
    )
    probe: str = option(
        "full",
        "MOGD probe module name (e.g. lm_head, the paper's) or 'full' (per-objective gradients "
        "of every parameter); mistral-7b with --lora-r > 0 defaults to full (the LM head is frozen)",
    )
    critic_init: CriticInit = option(
        "copy",
        "critic: 'copy' (a separate copy of the SFT trunk + one value head per stream), 'head' "
        "(value heads on the policy's detached features, no second model) or 'score' (one "
        "critic per objective from its score model, mistral-7b)",
        choices=("copy", "head", "score"),
    )


@dataclass
class BatchOptions:
    """How many iterations, and how many prompts and sequences each one takes."""

    steps: int | None = option(
        150,
        "PPO iterations (rollout + update); None = derived from --epochs over the train prompts",
    )
    epochs: float | None = option(
        None, "passes over the train prompts; sets --steps when --steps is not given"
    )
    batch_size: int = option(32, "prompts per rollout micro-batch per process")
    grad_accum: int = option(
        1,
        "gradient accumulation: each iteration samples grad_accum x batch-size prompts and each "
        "optimizer step sees grad_accum x minibatch-size sequences (in one forward pass)",
    )
    ppo_epochs: int = option(1, "passes over each rollout batch")
    micro_batch_size: int | None = option(
        None,
        "sequences per forward pass of the policy and critic updates: each objective's gradient "
        "is accumulated over the micro-batches (--probe full); None = the whole update batch "
        "in one forward",
    )
    minibatch_size: int = option(16, "sequences per optimizer step (per accumulation step)")
    samples_per_prompt: int = option(
        1,
        "responses sampled per prompt (consecutive rows); each iteration takes batch-size x "
        "grad-accum / M distinct prompts; --advantage group needs M >= 2",
        added_later=True,
    )

    @property
    def rollout_size(self) -> int:
        """Sequences sampled per iteration per process (--samples-per-prompt per prompt)."""
        return self.batch_size * self.grad_accum

    @property
    def prompts_per_iteration(self) -> int:
        """Distinct prompts per iteration per process (validation checks the division)."""
        return self.rollout_size // self.samples_per_prompt

    @property
    def update_size(self) -> int:
        """Sequences per optimizer step."""
        return self.minibatch_size * self.grad_accum


@dataclass
class OptimOptions:
    """The policy's AdamW (inside MOGD) and its schedule, the critics' AdamW, clipping."""

    lr: float = option(1e-4, "policy peak learning rate (AdamW)")
    critic_lr: float = option(1e-3, "critic learning rate (AdamW, constant)")
    weight_decay: float = option(0.0, "policy AdamW weight decay")
    warmup_ratio: float = option(0.03, "linear warm-up share of the cosine schedule")
    max_grad_norm: float | None = option(
        1.0,
        "global L2 clip of the policy's combined direction (MOGD max_norm) and of the critics' "
        "gradients (Safe RLHF: 1); None = no clipping",
    )


@dataclass
class RolloutOptions:
    """The sampling distribution of the rollouts (and of the held-out evaluation)."""

    max_new_tokens: int = option(64, "response length cap")
    temperature: float = option(1.0, "sampling temperature")
    top_p: float = option(1.0, "nucleus sampling mass")
    repetition_penalty: float = option(1.0, "HF repetition penalty (1 = none)")
    sync_every: int = option(
        1,
        "tokens between the decoding loop's host syncs, where it stops once every response has "
        "ended and drops the ended rows from the batch; on a GPU each sync stalls the queue (and "
        "all-reduces under FSDP), while up to N-1 steps past the last EOS are wasted",
        added_later=True,
    )
    generation_batch: int | None = option(
        None,
        "sequences decoded at once per process: the rollout is sampled in chunks of this many "
        "(same prompt padding, so the same distribution), which bounds the KV cache and costs "
        "more decoding steps; None = the whole rollout at once",
        added_later=True,
    )


@dataclass
class PPOOptions:
    """The PPO losses and advantages of every stream (paper Table 2: beta 0.05, eps 0.1)."""

    beta: float = option(0.05, "per-token KL penalty coefficient (every stream)")
    clip_eps: float = option(0.1, "PPO ratio clip epsilon")
    clip_value: float | None = option(5.0, "value clip around the old values (Safe RLHF: 5)")
    gamma: float = option(1.0, "discount")
    gae_lambda: float = option(0.95, "GAE lambda")
    score_clip: float = option(50.0, "scores are clipped to [-c, c] (Safe RLHF: 50)")
    whiten_advantages: bool = option(
        False,
        "whiten each stream's advantages over the batch (off: Safe RLHF; keeps the "
        "objectives' gradient scales, which GAPO is about)",
        action=argparse.BooleanOptionalAction,
    )
    entropy_coef: float = option(
        0.0, "entropy bonus coef·H, MOGD's regularizer: added to the update outside the weighting"
    )
    advantage: Advantage = option(
        "gae",
        "advantage estimator: 'gae' (per-stream critics, GAE) or 'group' (score minus the "
        "leave-one-out mean of the prompt's other --samples-per-prompt samples; no critic, never "
        "divided by a std); the KL shaping is the same in both",
        choices=("gae", "group"),
        added_later=True,
    )


@dataclass
class SafeRLHFOptions:
    """--method safe-rlhf: the PPO-Lagrangian multiplier (Safe RLHF's scripts/ppo-lag.sh)."""

    lambda_threshold: float = option(0.0, "cost threshold d of E[C] <= d (C < 0 is harmless)")
    lambda_init: float = option(1.0, "initial Lagrange multiplier")
    lambda_lr: float = option(0.1, "multiplier learning rate (on log lambda)")
    lambda_max: float | None = option(5.0, "multiplier upper bound")
    lambda_update_delay: int = option(0, "iterations before the multiplier starts moving")
    episode_cost_window: int = option(128, "episodes in the moving mean cost")


@dataclass
class FastRLOptions:
    """--method fast-rl (Li et al., EMNLP 2024): mirror descent on the reward weights."""

    weight_lr: float = option(0.1, "fast-rl: mirror-descent step size of the reward weights")
