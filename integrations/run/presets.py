"""The presets: each world's objectives and the defaults it changes (:data:`PRESETS`), and
building the world a configuration names (:func:`build_setup`, :func:`select_scorers`,
:func:`score_critics`). The builders are imported only when called (the paper's pulls in peft,
datasets and 7B checkpoints)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..ppo.critics import reward_signed
from ..worlds.base import Scorer, Setup
from .config import Config, Preset, fsdp_enabled
from .dist import resolve_device

ObjectiveKind = Literal["reward", "cost"]


@dataclass(frozen=True)
class PresetSpec:
    """A preset as data: its objectives (name, kind) in order, and the options (by name, in the
    flat form of :class:`~.config.Config`) whose defaults it changes."""

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
            "max_new_tokens": 48,  # the longest corpus answer is ~45 tokens: nothing is cut
            "probe": "lm_head",  # the Gram where the half-batch cosine is signal (README)
            "advantage": "group",  # measured: unbiased credit, the signal of item 5 (README)
            "samples_per_prompt": 4,
            "critic_warmup": 512,
        },
    ),
    # The paper's Table 2 (Li et al. 2025, App. B), with Safe RLHF's critics from the score
    # models (make_config falls back to heads on the policy's features for morlhf and fast-rl,
    # whose scalarised stream has no score model of its own): micro-batches of 16 sequences, 8 accumulated per step, in
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
            "sync_every": 16,  # a host sync + all-reduce per 16 tokens, not per token
            "batch_size": 16,
            "grad_accum": 8,
            "steps": None,
            "epochs": 2.0,
            "lambda_lr": 0.01,
            "lambda_max": 10.0,
            "critic_init": "score",  # Safe RLHF: reward critic from R, cost critic from C
            "probe": "full",
            "micro_batch_size": 16,
            "precision": "bf16",
        },
    ),
}


def preset_default(preset: Preset, name: str) -> Any:
    """The default of option ``name`` under ``preset``."""
    spec = PRESETS[preset]
    if name in spec.defaults:
        return spec.defaults[name]
    return Config().get(name)


def objective_names(cfg: Config) -> list[str]:
    """The objectives trained, in order (known without loading anything)."""
    if cfg.algorithm.objectives is not None:
        return list(cfg.algorithm.objectives)
    return [name for name, _ in PRESETS[cfg.run.preset].objectives]


def build_setup(cfg: Config) -> Setup:
    """Load the world of ``cfg.run.preset`` (models, scorers, prompts) onto this process's device
    (and set ``--threads``, which every entry point that builds a world then runs with)."""
    if cfg.engine.threads is not None:
        torch.set_num_threads(cfg.engine.threads)
    device = resolve_device(cfg.engine.device)
    if cfg.run.preset == "tiny":
        from ..worlds.tiny.setup import build_tiny_setup

        cache = Path(cfg.tiny.cache_dir).expanduser()
        return build_tiny_setup(cache, seed=cfg.tiny.sft_seed, device=device)
    from ..worlds.paper.setup import build_paper_setup

    # FSDP2 shards from a CPU copy straight onto the devices (no rank holds a whole model)
    sharded = _sharded(cfg)
    return build_paper_setup(cfg.paper, device, load_on="cpu" if sharded else None, sharded=sharded)


def _sharded(cfg: Config) -> Any:
    """How the paper world loads its models under FSDP2 (a ``worlds.paper.loading.Sharded``):
    on the meta device, sharded in the run's precision (bf16 for frozen models), filled from
    rank 0's read; None without FSDP2."""
    if not fsdp_enabled(cfg, int(os.environ.get("WORLD_SIZE", "1"))):
        return None
    from ..worlds.paper.loading import Sharded
    from .dist import on_main
    from .sharding import ensure_process_group, shard_model, shard_trunks

    device = resolve_device(cfg.engine.device)
    ensure_process_group(device)
    precision = cfg.engine.precision

    def shard(model: nn.Module, trainable: bool) -> None:
        dtype = precision if trainable else "bf16"
        if getattr(model, "_no_split_modules", None):  # a causal LM: its root is a unit too
            shard_model(model, dtype)
        else:  # a score model or critic: its trunk; the float32 head stays replicated
            shard_trunks(model, dtype, None)

    return Sharded(shard=shard, on_main=on_main, device=device)


def select_scorers(cfg: Config, setup: Setup) -> list[Scorer]:
    """The scorers of ``cfg``'s objectives, in order (the names were checked before loading)."""
    by_name = {s.name: s for s in setup.scorers}
    missing = [n for n in objective_names(cfg) if n not in by_name]
    if missing:
        raise ValueError(
            f"--objectives {' '.join(missing)}: the {cfg.run.preset} preset built "
            f"scorers {', '.join(by_name)}"
        )
    return [by_name[n] for n in objective_names(cfg)]


def score_critics(cfg: Config, setup: Setup) -> dict[str, nn.Module] | None:
    """``--critic-init score``: one critic per objective from its score model (the paper's world
    builds them; validation allows it there only), each predicting its objective's reward (a
    cost model's critic predicts −C: :func:`~..ppo.critics.reward_signed`); None for the other
    critics and under ``--advantage group`` (no critic)."""
    if cfg.algorithm.critic_init != "score" or cfg.ppo.advantage == "group":
        return None
    from ..worlds.paper.setup import build_score_critics  # loads 7B score models

    kinds = dict(PRESETS[cfg.run.preset].objectives)
    device = resolve_device(cfg.engine.device)
    critics = build_score_critics(cfg.paper, setup, device, sharded=_sharded(cfg))
    return {name: reward_signed(critic, kinds[name]) for name, critic in critics.items()}
