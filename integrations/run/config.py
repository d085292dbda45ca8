"""Every option of a run, declared once, and the presets as tables of defaults.

:class:`Config` is the whole configuration: each field is one ``--option`` of the command line
(its help text and argparse settings sit in the field's metadata). A preset is a row of
:data:`PRESETS`: its objectives and the fields whose defaults it changes; its builder (the models,
scorers and prompts) is in :mod:`integrations.presets`. :func:`make_config` resolves field
defaults < preset defaults < the options a user gave, and checks the result.

Adding an option: add one field with :func:`option` below (a help text, and ``presets=`` when it
only means something for some presets); read it as ``cfg.<name>`` where it is used. The command
line, ``--help``, ``config.json``, ``--dry-run --json``, ``--resume`` and the config hash follow.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .methods import METHODS, Method, Update
from .paper_data import HH_RLHF, PKU_SAFERLHF
from .paper_plan import DEFAULT_COST_MODEL, DEFAULT_POLICY, DEFAULT_REWARD_MODEL

Preset = Literal["tiny", "mistral-7b"]
CriticInit = Literal["copy", "head", "score"]
Precision = Literal["fp32", "bf16"]
ObjectiveKind = Literal["reward", "cost"]
PAPER: tuple[Preset, ...] = ("mistral-7b",)


def option(
    default: Any, help: str, *, presets: Sequence[Preset] | None = None, **argparse_kwargs: Any
) -> Any:
    """A Config field with its --help text, the presets it applies to (None: all) and any extra
    argparse settings (type, choices, nargs, action)."""
    meta = {"help": help, "presets": presets, **argparse_kwargs}
    return field(default=default, metadata=meta)


@dataclass
class Config:
    """Every hyper-parameter of a run. Field defaults are the tiny preset's (a full GAPO run in
    about 5 minutes on 2 CPU cores); :data:`PRESETS` holds what other presets change (mistral-7b:
    the paper's Table 2). Build one with :func:`make_config` to get a preset's defaults."""

    # -- what to train
    preset: Preset = option("tiny", "model/scorer/prompt preset", choices=("tiny", "mistral-7b"))
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
    # -- schedule
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
    # -- precision and sharding (integrations/sharding.py)
    precision: Precision = option(
        "fp32",
        "fp32, or bf16 compute over float32 master weights and optimizer state (FSDP2 "
        "MixedPrecisionPolicy, or autocast in one process)",
        choices=("fp32", "bf16"),
    )
    fsdp: bool | None = option(
        None,
        "shard the policy, reference, scorers and trained critics with FSDP2 (fully_shard per "
        "decoder layer); None = on for full fine-tuning of mistral-7b under torchrun",
        action=argparse.BooleanOptionalAction,
    )
    minibatch_size: int = option(16, "sequences per optimizer step (per accumulation step)")
    lr: float = option(1e-4, "policy peak learning rate (AdamW)")
    critic_lr: float = option(1e-3, "critic learning rate (AdamW, constant)")
    weight_decay: float = option(0.0, "policy AdamW weight decay")
    warmup_ratio: float = option(0.03, "linear warm-up share of the cosine schedule")
    max_grad_norm: float | None = option(
        1.0,
        "global L2 clip of the policy's combined direction (MOGD max_norm) and of the critics' "
        "gradients (Safe RLHF: 1); None = no clipping",
    )
    # -- rollouts
    max_new_tokens: int = option(64, "response length cap")
    temperature: float = option(1.0, "sampling temperature")
    top_p: float = option(1.0, "nucleus sampling mass")
    repetition_penalty: float = option(1.0, "HF repetition penalty (1 = none)")
    # -- PPO (paper Table 2: beta 0.05, eps 0.1)
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
    entropy_coef: float = option(0.0, "entropy bonus added to every objective's loss")
    # -- safe-rlhf (PPO-Lagrangian; Safe RLHF's scripts/ppo-lag.sh defaults)
    lambda_threshold: float = option(0.0, "cost threshold d of E[C] <= d (C < 0 is harmless)")
    lambda_init: float = option(1.0, "initial Lagrange multiplier")
    lambda_lr: float = option(0.1, "multiplier learning rate (on log lambda)")
    lambda_max: float | None = option(5.0, "multiplier upper bound")
    lambda_update_delay: int = option(0, "iterations before the multiplier starts moving")
    episode_cost_window: int = option(128, "episodes in the moving mean cost")
    # -- fast-rl (Li et al., EMNLP 2024: mirror descent on the reward weights)
    weight_lr: float = option(0.1, "fast-rl: mirror-descent step size of the reward weights")
    # -- bookkeeping
    seed: int = option(0, "random seed")
    out: str | None = option(None, "run directory; None = runs/<preset>-<method>-seed<seed>")
    save_every: int = option(25, "checkpoint every N iterations (and at the end)")
    eval_size: int | None = option(
        None, "held-out prompts evaluated at the end; None = all of them, 0 = skip"
    )
    eval_samples: int = option(4, "responses sampled per held-out prompt in the evaluation")
    signal_every: int = option(
        5,
        "log each objective's half-batch gradient cosine (signal/<name>) every N iterations; "
        "0 = never (it costs one extra forward and k backward passes of the first minibatch)",
    )
    device: str | None = option(None, "torch device; None = cuda:$LOCAL_RANK if CUDA, else cpu")
    threads: int | None = option(
        None,
        "torch intra-op CPU threads; None = torch's default (tiny: 1, whose small matrices gain "
        "nothing from more and lose much to spin-waits on a shared machine)",
    )
    progress: bool = option(True, "tqdm progress bar", action=argparse.BooleanOptionalAction)
    plots: bool = option(True, "write plots.png at the end", action=argparse.BooleanOptionalAction)
    resume: str | None = option(None, "run directory to continue (its config.json is reused)")
    dry_run: bool = option(
        False,
        "print the parameter counts and memory plan (mistral-7b) or the config, and exit",
        action="store_true",
    )
    json: bool = option(
        False,
        "with --dry-run: print one JSON object {config, plan}",
        action="store_true",
    )
    # -- the tiny preset
    sft_seed: int = option(0, "seed of the SFT warm-up (cached per seed)", presets=("tiny",))
    cache_dir: str = option(
        "~/.cache/mogd", "cache of the tokenizer and SFT policy", presets=("tiny",)
    )
    # -- the paper's preset: models, prompts, and the memory plan of --dry-run
    policy: str = option(DEFAULT_POLICY, "policy: causal LM hub id or local folder", presets=PAPER)
    reward_model: str = option(
        DEFAULT_REWARD_MODEL, "helpfulness reward model (LlamaForScore)", presets=PAPER
    )
    cost_model: str = option(
        DEFAULT_COST_MODEL, "harmlessness cost model (LlamaForScore)", presets=PAPER
    )
    lora_r: int = option(
        0, "LoRA rank on every decoder linear map; 0 = full fine-tuning", presets=PAPER
    )
    lora_alpha: int | None = option(None, "LoRA alpha; None = 2 * rank", presets=PAPER)
    load_in_8bit: bool = option(
        False, "scorers in 8-bit (bitsandbytes)", presets=PAPER, action="store_true"
    )
    load_in_4bit: bool = option(
        False, "scorers in 4-bit NF4 (bitsandbytes)", presets=PAPER, action="store_true"
    )
    gradient_checkpointing: bool = option(
        True,
        "gradient checkpointing in the policy and trained critics",
        presets=PAPER,
        action=argparse.BooleanOptionalAction,
    )
    train_prompts: str = option(
        PKU_SAFERLHF, "PKU-SafeRLHF train prompts: hub id, folder or JSONL", presets=PAPER
    )
    eval_prompts: str = option(
        PKU_SAFERLHF, "PKU-SafeRLHF test prompts: hub id, folder or JSONL", presets=PAPER
    )
    hh_prompts: str = option(
        HH_RLHF, "HH-RLHF test prompts: hub id, folder or JSONL", presets=PAPER
    )
    max_train_prompts: int = option(
        0, "keep the first N distinct train prompts (0 = all)", presets=PAPER
    )
    max_eval_prompts: int = option(
        0, "keep the first N distinct prompts per eval set (0 = all)", presets=PAPER
    )
    score_batch_size: int = option(16, "scorer batch size", presets=PAPER)
    world_size: int | None = option(
        None, "GPUs for --dry-run; None = $WORLD_SIZE or 1", presets=PAPER
    )
    seq_len: int = option(512, "prompt + response tokens, for --dry-run", presets=PAPER)


@dataclass(frozen=True)
class PresetSpec:
    """A preset as data: its objectives (name, kind) in order, and the Config fields whose
    defaults it changes. The builder that loads it is :func:`integrations.presets.build_setup`."""

    objectives: tuple[tuple[str, ObjectiveKind], ...]
    defaults: Mapping[str, Any]


PRESETS: dict[Preset, PresetSpec] = {
    # Table 2's decoding; each optimizer step on 64 sequences (4 x 16: the per-objective
    # gradients of 16 are noise, see the README); a Safe RLHF threshold below the SFT policy's
    # E[C] (about -0.5 with the hinged cost), so the constraint binds.
    "tiny": PresetSpec(
        objectives=(("helpful", "reward"), ("harmless", "cost")),
        defaults={
            "temperature": 0.7,
            "repetition_penalty": 1.05,
            "grad_accum": 4,
            "batch_size": 16,
            "steps": 15,
            "lr": 2e-4,
            "lambda_threshold": -0.8,
            "threads": 1,
        },
    ),
    # The paper's Table 2 (Li et al. 2025, App. B), with Safe RLHF's critic on the policy's
    # features (no second 7B trunk): micro-batches of 16 sequences, 8 accumulated per step, in
    # bf16 over fp32 master weights. Each objective's gradient is accumulated in full mode:
    # under FSDP2 its bank costs one more gradient shard (3.4 GiB per GPU at 8 GPUs), while the
    # LM-head probe (--probe lm_head) needs all 128 sequences in one forward (about 77 GiB of
    # activations and logits; see --dry-run).
    "mistral-7b": PresetSpec(
        objectives=(("helpful", "reward"), ("harmless", "cost")),
        defaults={
            "lr": 1e-6,
            "critic_lr": 5e-7,
            "temperature": 0.7,
            "repetition_penalty": 1.05,
            "max_new_tokens": 512,
            "batch_size": 16,
            "grad_accum": 8,
            "steps": None,
            "epochs": 2.0,
            "lambda_lr": 0.01,
            "lambda_max": 10.0,
            "critic_init": "head",
            "probe": "full",
            "micro_batch_size": 16,
            "precision": "bf16",
        },
    ),
}

# Fields that do not change the trained parameters: excluded from the config hash, and free to
# change when a run is resumed.
BOOKKEEPING = {
    "out",
    "save_every",
    "progress",
    "plots",
    "resume",
    "dry_run",
    "json",
    "eval_size",
    "signal_every",
    "cache_dir",
    "device",
}


def preset_default(preset: Preset, name: str) -> Any:
    """The default of field ``name`` under ``preset``."""
    spec = PRESETS[preset]
    if name in spec.defaults:
        return spec.defaults[name]
    return next(f.default for f in dataclasses.fields(Config) if f.name == name)


def make_config(preset: Preset = "tiny", **given: Any) -> Config:
    """The Config of ``preset`` with the options in ``given`` (field name -> value), checked.

    Defaults come from the preset's row of :data:`PRESETS`, then from the field. Giving
    ``steps`` or ``epochs`` drops the other one's preset default; with LoRA the probe defaults
    to full mode (the LM head is frozen, so there is nothing to probe).
    """
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    scopes: dict[str, Sequence[str] | None] = {
        f.name: f.metadata.get("presets") for f in dataclasses.fields(Config)
    }
    for name in given:
        if name not in scopes:
            raise TypeError(f"make_config: no option {name!r}")
        scope = scopes[name]
        if scope is not None and preset not in scope:
            raise ValueError(
                f"{flag(name)} is an option of --preset {' / '.join(scope)}, not of {preset}"
            )
    if "steps" in given and "epochs" in given and None not in (given["steps"], given["epochs"]):
        raise ValueError("give --steps or --epochs, not both (--steps is derived from --epochs)")
    values = dict(PRESETS[preset].defaults)
    if "steps" in given:
        values["epochs"] = None
    if "epochs" in given:
        values["steps"] = None
    if "probe" not in given and given.get("lora_r", 0) > 0:
        values["probe"] = "full"
    if given.get("probe", "full") != "full" and "micro_batch_size" not in given:
        values["micro_batch_size"] = None  # a probe takes the whole update batch in one step
    values.update(given)
    cfg = Config(preset=preset, **values)
    validate(cfg)
    return cfg


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_hash(cfg: Config) -> str:
    """sha256 of the fields that determine the trajectory (steps, method, seeds, ...)."""
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in BOOKKEEPING}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def objective_names(cfg: Config) -> list[str]:
    """The objectives trained, in order (known without loading anything)."""
    if cfg.objectives is not None:
        return list(cfg.objectives)
    return [name for name, _ in PRESETS[cfg.preset].objectives]


def total_steps(cfg: Config, n_prompts: int, world: int) -> int:
    """PPO iterations of the run: --steps, or --epochs passes over ``n_prompts`` train prompts
    at batch-size x grad-accum prompts per process per iteration."""
    if cfg.steps is not None:
        return cfg.steps
    assert cfg.epochs is not None  # validate() guarantees one of them
    return math.ceil(cfg.epochs * n_prompts / (cfg.batch_size * cfg.grad_accum * world))


def fsdp_enabled(cfg: Config, world: int) -> bool:
    """Whether the run shards its models with FSDP2: --fsdp / --no-fsdp, or by default full
    fine-tuning of the paper's preset with more than one process."""
    if cfg.fsdp is not None:
        return cfg.fsdp
    return cfg.preset in PAPER and cfg.lora_r == 0 and world > 1


def validate(cfg: Config) -> None:
    """Reject a bad configuration before any model loads; messages name the option."""
    if cfg.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}; got {cfg.method!r}")
    if cfg.preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}; got {cfg.preset!r}")
    if cfg.critic_init not in ("copy", "head", "score"):
        raise ValueError(f"--critic-init must be copy, head or score; got {cfg.critic_init!r}")
    spec = METHODS[cfg.method]
    known = [name for name, _ in PRESETS[cfg.preset].objectives]
    names = objective_names(cfg)
    if not names:
        raise ValueError(
            "--objectives is empty: give at least one objective name "
            f"(the {cfg.preset} preset has {', '.join(known)})"
        )
    if any(n not in known for n in names) or len(set(names)) != len(names):
        raise ValueError(
            f"--objectives {' '.join(names)}: each must be one of the {cfg.preset} "
            f"preset's objectives {', '.join(known)}, once"
        )
    if not (math.isfinite(cfg.p) and cfg.p >= 0):
        raise ValueError(f"--p must be a finite number >= 0 (0 = MGDA, 1, 2); got {cfg.p}")
    if cfg.preference is not None:
        if not spec.preference:
            with_pref = [m for m, s in METHODS.items() if s.preference]
            raise ValueError(
                f"--preference applies to {' and '.join(with_pref)}, not --method {cfg.method}"
            )
        if len(cfg.preference) != len(names):
            raise ValueError(
                f"--preference needs one weight per objective ({', '.join(names)}): "
                f"got {len(cfg.preference)} values"
            )
        if not all(math.isfinite(w) and w > 0 for w in cfg.preference):
            raise ValueError(
                f"--preference weights must be positive and finite; got {cfg.preference}"
            )
    if spec.streams not in ("objectives", "scalarised") and spec.streams not in names:
        raise ValueError(
            f"--method {cfg.method} trains objective {spec.streams!r}, which --objectives leaves out"
        )
    if spec.loss == "lagrangian" and len(names) < 2:
        raise ValueError(
            f"--method {cfg.method} needs a reward and a cost objective (--objectives)"
        )
    if (cfg.steps is None) == (cfg.epochs is None):
        raise ValueError("give exactly one of --steps and --epochs (the other is None)")
    if cfg.steps is not None and cfg.steps < 0:
        raise ValueError(f"--steps must be >= 0 (0 writes the starting policy); got {cfg.steps}")
    if cfg.epochs is not None and not (math.isfinite(cfg.epochs) and cfg.epochs > 0):
        raise ValueError(f"--epochs must be a finite number > 0; got {cfg.epochs}")
    positive_ints = (
        "batch_size",
        "grad_accum",
        "ppo_epochs",
        "minibatch_size",
        "max_new_tokens",
        "save_every",
        "episode_cost_window",
        "eval_samples",
        "score_batch_size",
        "seq_len",
    )
    for name in positive_ints:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{flag(name)} must be >= 1; got {getattr(cfg, name)}")
    for name in (
        "lr",
        "critic_lr",
        "temperature",
        "clip_eps",
        "lambda_init",
        "score_clip",
        "weight_lr",
    ):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{flag(name)} must be > 0; got {getattr(cfg, name)}")
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
    )
    for name in non_negative:
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise ValueError(f"{flag(name)} must be >= 0; got {getattr(cfg, name)}")
    for name in ("gamma", "gae_lambda", "warmup_ratio"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ValueError(f"{flag(name)} must lie in [0, 1]; got {getattr(cfg, name)}")
    if not 0 < cfg.top_p <= 1:
        raise ValueError(f"--top-p must lie in (0, 1]; got {cfg.top_p}")
    if cfg.repetition_penalty <= 0:
        raise ValueError(f"--repetition-penalty must be > 0; got {cfg.repetition_penalty}")
    if cfg.lambda_max is not None and cfg.lambda_max < cfg.lambda_init:
        raise ValueError(
            f"--lambda-max ({cfg.lambda_max}) must be >= --lambda-init ({cfg.lambda_init})"
        )
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"--threads must be >= 1 or None; got {cfg.threads}")
    if cfg.max_grad_norm is not None and not cfg.max_grad_norm > 0:
        raise ValueError(f"--max-grad-norm must be > 0 or None; got {cfg.max_grad_norm}")
    if cfg.load_in_8bit and cfg.load_in_4bit:
        raise ValueError("--load-in-8bit and --load-in-4bit are exclusive: pick one")
    if cfg.micro_batch_size is not None and cfg.micro_batch_size < 1:
        raise ValueError(
            f"--micro-batch-size must be >= 1 or None (one forward); got {cfg.micro_batch_size}"
        )
    update = cfg.minibatch_size * cfg.grad_accum
    if cfg.probe != "full" and cfg.micro_batch_size is not None and cfg.micro_batch_size < update:
        raise ValueError(
            f"--micro-batch-size {cfg.micro_batch_size} with --probe {cfg.probe}: probe mode takes "
            f"the losses of the whole update batch ({update} sequences) in one step; accumulate "
            "with --probe full"
        )
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"--precision must be fp32 or bf16; got {cfg.precision!r}")
    if cfg.fsdp and cfg.lora_r > 0:
        raise ValueError(
            "--fsdp shards full fine-tuning; a LoRA policy (--lora-r > 0) trains replicated "
            "(its frozen bf16 base fits one GPU): drop --fsdp"
        )
    if cfg.world_size is not None and cfg.world_size < 1:
        raise ValueError(f"--world-size must be >= 1; got {cfg.world_size}")
    if cfg.lora_r > 0 and cfg.probe == "lm_head":
        raise ValueError(
            "--probe lm_head with --lora-r > 0: the LM head is frozen under LoRA; use --probe full"
        )
    if cfg.critic_init == "score" and (cfg.preset not in PAPER or spec.streams == "scalarised"):
        raise ValueError(
            "--critic-init score needs a score model per stream: mistral-7b preset and a "
            "method whose streams are objectives (not morlhf)"
        )


# ----------------------------------------------------------------------------- command line


def _none_or(parse: Any) -> Any:
    def parse_optional(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")
    return parse_optional


# Config annotations (strings under `from __future__ import annotations`) -> argparse types
PARSERS = {
    "int": int,
    "float": float,
    "str": str,
    "float | None": _none_or(float),
    "int | None": _none_or(int),
    "str | None": str,
}


def build_parser(prog: str = "rlhf_mistral.py") -> argparse.ArgumentParser:
    """Every Config field as --option; defaults are left out of the namespace (SUPPRESS) so that
    the parse says which options were given, and --help shows each preset's default."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Multi-objective RLHF (PPO + mogd.MOGD), paper App. B. Subcommands "
        "evaluate / sweep / compare: `python integrations/evaluate.py --help`.",
        argument_default=argparse.SUPPRESS,
    )
    groups = {
        None: parser,
        ("tiny",): parser.add_argument_group("--preset tiny"),
        PAPER: parser.add_argument_group("--preset mistral-7b"),
    }
    for f in dataclasses.fields(Config):
        meta = dict(f.metadata)
        scope = meta.pop("presets")
        if "action" not in meta and "type" not in meta:
            meta["type"] = PARSERS.get(str(f.type), str)
        default = f"(default: {f.default}"
        for preset in PRESETS:
            if f.name in PRESETS[preset].defaults:
                default += f"; {preset}: {PRESETS[preset].defaults[f.name]}"
        meta["help"] = f"{meta['help']} {default})"
        groups[tuple(scope) if scope else None].add_argument(flag(f.name), dest=f.name, **meta)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Config from the command line; with --resume, the run's config.json.

    Options given next to --resume must agree with the saved configuration (a resumed run must
    retrace the uninterrupted one), except the bookkeeping ones (progress bar, plots, ...).
    """
    given = vars(build_parser().parse_args(argv))
    if "resume" not in given:
        return make_config(**given)
    run = Path(given.pop("resume"))
    try:
        cfg = Config(**json.loads((run / "config.json").read_text()))
    except FileNotFoundError as err:
        raise ValueError(f"--resume {run}: no config.json there (not a run directory)") from err
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"--resume {run}: config.json is unreadable ({err})") from err
    for name, value in given.items():
        if name in BOOKKEEPING - {"out"}:
            setattr(cfg, name, value)
        elif value != getattr(cfg, name):
            raise ValueError(
                f"{flag(name)} {value} differs from the resumed run's {getattr(cfg, name)!r}; "
                "a resumed run keeps its configuration"
            )
    cfg.out = cfg.resume = str(run)
    validate(cfg)
    return cfg
