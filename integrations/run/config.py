"""Every option of a run, declared once, in sections: :class:`Config`.

A section is a dataclass whose fields are command-line options (declared with
:func:`~integrations.ppo.options.option`: help text and argparse settings in the field's
metadata). Each part of the pipeline receives the section it reads:

    cfg.run        RunOptions        preset, seed, run directory, resume, outputs  (here)
    cfg.algorithm  AlgorithmOptions  method, objectives, MOGD weighting and probe, critic
    cfg.batch      BatchOptions      iterations, prompts and sequences per step, micro-batches
    cfg.optim      OptimOptions      learning rates, schedule, weight decay, clipping
    cfg.rollout    RolloutOptions    the sampling distribution
    cfg.ppo        PPOOptions        KL penalty, clipping, GAE or group baseline, whitening, ...
    cfg.safe_rlhf  SafeRLHFOptions   the Lagrange multiplier of --method safe-rlhf
    cfg.fast_rl    FastRLOptions     the reward weights of --method fast-rl
    cfg.engine     EngineOptions     device, threads, precision, FSDP2               (here)
    cfg.eval       EvalOptions       held-out evaluation, the gradient-signal probe  (here)
    cfg.tiny       TinyOptions       the tiny world (--preset tiny only)
    cfg.paper      PaperOptions      the paper's world (--preset mistral-7b only)

The algorithm's sections live in :mod:`integrations.ppo.options`, each world's in its own
``options`` module. Option names are unique across sections: ``--lr`` is ``cfg.optim.lr``.

**The JSON form.** ``config.json`` of a run directory and the ``"config"`` object of
``--dry-run --json`` are flat: one key per option, its name as in the command line with
underscores (``{"preset": "tiny", "method": "gapo", "lr": 0.0002, ...}``), the form run
directories have always had; :meth:`Config.flat` writes it and :meth:`Config.from_flat` reads it
(a missing key takes the option's default). :data:`SECTIONS` says which section each key
belongs to. The config hash of a checkpoint is computed from the same flat form, so run
directories written before the options had sections resume.

Adding an option: one field in the section of the part that reads it, read there as
``opts.<name>``. The command line, ``--help`` (grouped by section), ``config.json``,
``--dry-run --json``, ``--resume`` and the config hash follow. A preset that changes its default
adds it to :data:`integrations.run.presets.PRESETS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..ppo.options import (
    AlgorithmOptions,
    BatchOptions,
    FastRLOptions,
    OptimOptions,
    PPOOptions,
    RolloutOptions,
    SafeRLHFOptions,
    option,
)
from ..worlds.paper.options import PaperOptions
from ..worlds.tiny.options import TinyOptions

Preset = Literal["tiny", "mistral-7b"]
Precision = Literal["fp32", "bf16"]
PRESET_NAMES: tuple[Preset, ...] = ("tiny", "mistral-7b")
PAPER: tuple[Preset, ...] = ("mistral-7b",)


@dataclass
class RunOptions:
    """The run: its world, seed and directory, checkpoints, and what it prints and plots."""

    preset: Preset = option(
        "tiny", "world: models, scorers and prompts, and their defaults", choices=PRESET_NAMES
    )
    seed: int = option(0, "random seed")
    out: str | None = option(
        None, "run directory; None = runs/<preset>-<method>-seed<seed>", bookkeeping=True
    )
    save_every: int = option(25, "checkpoint every N iterations (and at the end)", bookkeeping=True)
    resume: str | None = option(
        None, "run directory to continue (its config.json is reused)", bookkeeping=True
    )
    progress: bool = option(
        True, "tqdm progress bar", bookkeeping=True, action=argparse.BooleanOptionalAction
    )
    plots: bool = option(
        True, "write plots.png at the end", bookkeeping=True, action=argparse.BooleanOptionalAction
    )
    dry_run: bool = option(
        False,
        "print the parameter counts and memory plan (mistral-7b) or the config, and exit",
        bookkeeping=True,
        action="store_true",
    )
    json: bool = option(
        False,
        "with --dry-run: print one JSON object {config, plan}",
        bookkeeping=True,
        action="store_true",
    )


@dataclass
class EngineOptions:
    """Where and in which precision the models run, and whether FSDP2 shards them."""

    device: str | None = option(
        None, "torch device; None = cuda:$LOCAL_RANK if CUDA, else cpu", bookkeeping=True
    )
    threads: int | None = option(
        None,
        "torch intra-op CPU threads; None = torch's default (tiny: 1, whose small matrices gain "
        "nothing from more and lose much to spin-waits on a shared machine)",
    )
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


@dataclass
class EvalOptions:
    """What the run measures besides its training metrics."""

    eval_size: int | None = option(
        None,
        "held-out prompts evaluated at the end; None = all of them, 0 = skip",
        bookkeeping=True,
    )
    eval_samples: int = option(4, "responses sampled per held-out prompt in the evaluation")
    signal_every: int = option(
        5,
        "log each objective's half-batch gradient cosine (signal/<name>) every N iterations; "
        "0 = never (it costs one extra forward and k backward passes of the first minibatch)",
        bookkeeping=True,
    )


def section(kind: type, title: str, presets: tuple[Preset, ...] | None = None) -> Any:
    """A section of :class:`Config`: its dataclass, its ``--help`` title and the presets whose
    worlds read it (None: every preset)."""
    return field(default_factory=kind, metadata={"title": title, "presets": presets})


@dataclass
class Config:
    """Every hyper-parameter of a run, in sections (see the module docstring). Defaults are the
    tiny preset's (a full GAPO run in minutes on 2 CPU cores); build one with
    :func:`integrations.run.parse.make_config` to get a preset's defaults, checked."""

    run: RunOptions = section(RunOptions, "the run")
    algorithm: AlgorithmOptions = section(AlgorithmOptions, "what to train")
    batch: BatchOptions = section(BatchOptions, "batches and iterations")
    optim: OptimOptions = section(OptimOptions, "optimizers")
    rollout: RolloutOptions = section(RolloutOptions, "rollouts")
    ppo: PPOOptions = section(PPOOptions, "PPO")
    safe_rlhf: SafeRLHFOptions = section(
        SafeRLHFOptions, "safe-rlhf (PPO-Lagrangian; Safe RLHF's scripts/ppo-lag.sh defaults)"
    )
    fast_rl: FastRLOptions = section(FastRLOptions, "fast-rl (Li et al., EMNLP 2024)")
    engine: EngineOptions = section(EngineOptions, "devices, precision and sharding")
    eval: EvalOptions = section(EvalOptions, "evaluation and diagnostics")
    tiny: TinyOptions = section(TinyOptions, "--preset tiny", presets=("tiny",))
    paper: PaperOptions = section(
        PaperOptions, "--preset mistral-7b: models, prompts, --dry-run shapes", presets=PAPER
    )

    def flat(self) -> dict[str, Any]:
        """The JSON form: ``{option name: value}`` over every section, in declaration order."""
        return {f.name: getattr(getattr(self, s), f.name) for s, f in options()}

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> Config:
        """The Config of a flat ``{option name: value}`` mapping (config.json, keyword options);
        options it leaves out keep their defaults. ``TypeError`` names an unknown key."""
        unknown = [name for name in values if name not in SECTIONS]
        if unknown:
            raise TypeError(f"no option {', '.join(map(repr, unknown))}")
        cfg = cls()
        for name, value in values.items():
            setattr(getattr(cfg, SECTIONS[name]), name, value)
        return cfg

    def replace(self, **values: Any) -> Config:
        """A copy with the options in ``values`` (by option name) changed; not validated."""
        return Config.from_flat({**self.flat(), **values})

    def get(self, name: str) -> Any:
        """The value of option ``name`` (for code that loops over option names)."""
        return getattr(getattr(self, SECTIONS[name]), name)


def options() -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    """(section name, option field) of every option, in declaration order."""
    defaults = Config()
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(defaults, sec.name)):
            yield sec.name, f


# option name -> the name of its section (option names are unique across sections: a test checks)
SECTIONS: dict[str, str] = {f.name: s for s, f in options()}

# Options that do not change the trained parameters: excluded from the config hash, and free to
# change when a run is resumed (``bookkeeping=True`` in their declaration).
BOOKKEEPING = frozenset(f.name for _, f in options() if f.metadata["bookkeeping"])


def option_presets(name: str) -> tuple[Preset, ...] | None:
    """The presets option ``name`` applies to (its section's), None for every preset."""
    return next(
        s.metadata["presets"] for s in dataclasses.fields(Config) if s.name == SECTIONS[name]
    )


def flag(name: str) -> str:
    """The command-line flag of option ``name``: ``--micro-batch-size``."""
    return "--" + name.replace("_", "-")


# Options added after run directories were written (``added_later=True``), with their declared
# defaults: what those runs did (one sample per prompt, GAE, no critic warm-up; the plan's prompt
# length, which nothing trained depends on). A run directory
# written before an option existed has no key for it; its config.json reads back with the
# default (Config.from_flat), and its checkpoint's hash was computed without it. Leaving such an
# option out of the hash while it has that default keeps those checkpoints resumable
# (tests/data/run_before_sections); any other value changes the trajectory, so it is hashed.
ADDED_LATER: dict[str, Any] = {
    f.name: f.default for _, f in options() if f.metadata.get("added_later")
}


def config_hash(cfg: Config) -> str:
    """sha256 of the options that determine the trajectory (steps, method, seeds, ...), over the
    flat JSON form (key order does not matter); an option of :data:`ADDED_LATER` counts only
    when it differs from its default."""
    data = {
        k: v
        for k, v in cfg.flat().items()
        if k not in BOOKKEEPING and not (k in ADDED_LATER and v == ADDED_LATER[k])
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def total_steps(batch: BatchOptions, n_prompts: int, world: int) -> int:
    """PPO iterations of the run: --steps, or --epochs passes over ``n_prompts`` train prompts
    at batch-size x grad-accum / samples-per-prompt distinct prompts per process per iteration."""
    if batch.steps is not None:
        return batch.steps
    assert batch.epochs is not None  # validate() guarantees one of them
    return math.ceil(batch.epochs * n_prompts / (batch.prompts_per_iteration * world))


def fsdp_enabled(cfg: Config, world: int) -> bool:
    """Whether the run shards its models with FSDP2: --fsdp / --no-fsdp, or by default full
    fine-tuning of the paper's preset with more than one process."""
    if cfg.engine.fsdp is not None:
        return cfg.engine.fsdp
    return cfg.run.preset in PAPER and cfg.paper.lora_r == 0 and world > 1


def decoded_at_once(cfg: Config) -> int:
    """Sequences one process decodes at once: its rollout, or --generation-batch of it."""
    rollout = cfg.batch.rollout_size
    return min(cfg.rollout.generation_batch or rollout, rollout)
