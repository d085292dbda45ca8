"""Checking a configuration before anything loads: :func:`validate` (ranges, and the options
that must agree with each other, the method and the preset). Every message names the option."""

from __future__ import annotations

import math

from ..ppo.methods import METHODS
from .config import PAPER, Config, flag
from .presets import PRESETS, objective_names


def validate(cfg: Config) -> None:
    """Reject a bad configuration before any model loads; messages name the option."""
    a, b = cfg.algorithm, cfg.batch
    if a.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}; got {a.method!r}")
    if cfg.run.preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}; got {cfg.run.preset!r}")
    if a.critic_init not in ("copy", "head", "score"):
        raise ValueError(f"--critic-init must be copy, head or score; got {a.critic_init!r}")
    spec = METHODS[a.method]
    known = [name for name, _ in PRESETS[cfg.run.preset].objectives]
    names = objective_names(cfg)
    if not names:
        raise ValueError(
            "--objectives is empty: give at least one objective name "
            f"(the {cfg.run.preset} preset has {', '.join(known)})"
        )
    if any(n not in known for n in names) or len(set(names)) != len(names):
        raise ValueError(
            f"--objectives {' '.join(names)}: each must be one of the {cfg.run.preset} "
            f"preset's objectives {', '.join(known)}, once"
        )
    if not (math.isfinite(a.p) and a.p >= 0):
        raise ValueError(f"--p must be a finite number >= 0 (0 = MGDA, 1, 2); got {a.p}")
    if a.preference is not None:
        if not spec.preference:
            with_pref = [m for m, s in METHODS.items() if s.preference]
            raise ValueError(
                f"--preference applies to {' and '.join(with_pref)}, not --method {a.method}"
            )
        if len(a.preference) != len(names):
            raise ValueError(
                f"--preference needs one weight per objective ({', '.join(names)}): "
                f"got {len(a.preference)} values"
            )
        if not all(math.isfinite(w) and w > 0 for w in a.preference):
            raise ValueError(
                f"--preference weights must be positive and finite; got {a.preference}"
            )
    if spec.streams not in ("objectives", "scalarised") and spec.streams not in names:
        raise ValueError(
            f"--method {a.method} trains objective {spec.streams!r}, which --objectives leaves out"
        )
    if spec.loss == "lagrangian" and len(names) < 2:
        raise ValueError(f"--method {a.method} needs a reward and a cost objective (--objectives)")
    if (b.steps is None) == (b.epochs is None):
        raise ValueError("give exactly one of --steps and --epochs (the other is None)")
    if b.steps is not None and b.steps < 0:
        raise ValueError(f"--steps must be >= 0 (0 writes the starting policy); got {b.steps}")
    if b.epochs is not None and not (math.isfinite(b.epochs) and b.epochs > 0):
        raise ValueError(f"--epochs must be a finite number > 0; got {b.epochs}")
    positive_ints = (
        "batch_size",
        "grad_accum",
        "ppo_epochs",
        "minibatch_size",
        "max_new_tokens",
        "sync_every",
        "save_every",
        "episode_cost_window",
        "eval_samples",
        "score_batch_size",
        "prompt_len",
    )
    for name in positive_ints:
        if cfg.get(name) < 1:
            raise ValueError(f"{flag(name)} must be >= 1; got {cfg.get(name)}")
    for name in (
        "lr",
        "critic_lr",
        "temperature",
        "clip_eps",
        "lambda_init",
        "score_clip",
        "weight_lr",
    ):
        if not cfg.get(name) > 0:
            raise ValueError(f"{flag(name)} must be > 0; got {cfg.get(name)}")
    non_negative = (
        "beta",
        "weight_decay",
        "entropy_coef",
        "lambda_lr",
        "lambda_update_delay",
        "eval_size",
        "signal_every",
        "lora_r",
        "max_train_prompts",
        "max_eval_prompts",
        "seq_len",
    )
    for name in non_negative:
        if cfg.get(name) is not None and cfg.get(name) < 0:
            raise ValueError(f"{flag(name)} must be >= 0; got {cfg.get(name)}")
    for name in ("gamma", "gae_lambda", "warmup_ratio"):
        if not 0 <= cfg.get(name) <= 1:
            raise ValueError(f"{flag(name)} must lie in [0, 1]; got {cfg.get(name)}")
    if not 0 < cfg.rollout.top_p <= 1:
        raise ValueError(f"--top-p must lie in (0, 1]; got {cfg.rollout.top_p}")
    if cfg.rollout.repetition_penalty <= 0:
        raise ValueError(f"--repetition-penalty must be > 0; got {cfg.rollout.repetition_penalty}")
    if (
        cfg.safe_rlhf.lambda_max is not None
        and cfg.safe_rlhf.lambda_max < cfg.safe_rlhf.lambda_init
    ):
        raise ValueError(
            f"--lambda-max ({cfg.safe_rlhf.lambda_max}) must be >= --lambda-init ({cfg.safe_rlhf.lambda_init})"
        )
    generation = cfg.rollout.generation_batch
    if generation is not None and generation < 1:
        raise ValueError(
            f"--generation-batch must be >= 1 or None (the whole rollout); got {generation}"
        )
    if cfg.engine.threads is not None and cfg.engine.threads < 1:
        raise ValueError(f"--threads must be >= 1 or None; got {cfg.engine.threads}")
    if cfg.optim.max_grad_norm is not None and not cfg.optim.max_grad_norm > 0:
        raise ValueError(f"--max-grad-norm must be > 0 or None; got {cfg.optim.max_grad_norm}")
    if cfg.paper.load_in_8bit and cfg.paper.load_in_4bit:
        raise ValueError("--load-in-8bit and --load-in-4bit are exclusive: pick one")
    if b.micro_batch_size is not None and b.micro_batch_size < 1:
        raise ValueError(
            f"--micro-batch-size must be >= 1 or None (one forward); got {b.micro_batch_size}"
        )
    update = b.update_size
    if a.probe != "full" and b.micro_batch_size is not None and b.micro_batch_size < update:
        raise ValueError(
            f"--micro-batch-size {b.micro_batch_size} with --probe {a.probe}: probe mode takes "
            f"the losses of the whole update batch ({update} sequences) in one step; accumulate "
            "with --probe full"
        )
    if cfg.engine.precision not in ("fp32", "bf16"):
        raise ValueError(f"--precision must be fp32 or bf16; got {cfg.engine.precision!r}")
    if cfg.engine.fsdp and cfg.paper.lora_r > 0:
        raise ValueError(
            "--fsdp shards full fine-tuning; a LoRA policy (--lora-r > 0) trains replicated "
            "(its frozen bf16 base fits one GPU): drop --fsdp"
        )
    if cfg.paper.world_size is not None and cfg.paper.world_size < 1:
        raise ValueError(f"--world-size must be >= 1; got {cfg.paper.world_size}")
    if cfg.paper.lora_r > 0 and a.probe == "lm_head":
        raise ValueError(
            "--probe lm_head with --lora-r > 0: the LM head is frozen under LoRA; use --probe full"
        )
    m = b.samples_per_prompt
    if m < 1 or b.rollout_size % m:
        raise ValueError(
            f"--samples-per-prompt {m} must be >= 1 and divide the {b.rollout_size} sequences "
            "of an iteration (batch-size x grad-accum)"
        )
    if cfg.ppo.advantage not in ("gae", "group"):
        raise ValueError(f"--advantage must be gae or group; got {cfg.ppo.advantage!r}")
    if cfg.ppo.advantage == "group" and m < 2:
        raise ValueError(
            f"--advantage group needs --samples-per-prompt >= 2 (a leave-one-out baseline); got {m}"
        )
    if cfg.tiny.critic_warmup < 0:
        raise ValueError(f"--critic-warmup must be >= 0; got {cfg.tiny.critic_warmup}")
    # (under --advantage group no critic is built, score models or not)
    if a.critic_init == "score" and (
        cfg.run.preset not in PAPER or (spec.streams == "scalarised" and cfg.ppo.advantage == "gae")
    ):
        raise ValueError(
            "--critic-init score needs a score model per stream: mistral-7b preset and a "
            "method whose streams are objectives (not morlhf)"
        )
