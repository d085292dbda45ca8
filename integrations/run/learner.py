"""What the training loop's iterations work on (:class:`Learner`), built once per run by
:func:`build_learner`: the world's models in their precision and sharding, the method's plan,
MOGD around AdamW with the paper's schedule, the critics' optimizer, and the multipliers that
safe-rlhf and fast-rl update between policy updates."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import mogd

from ..ppo.critic_warmup import warm_up_critic
from ..ppo.critics import NoCritic, build_critic, disable_dropout
from ..ppo.methods import Plan, make_plan
from ..ppo.multipliers import Lagrangian, RewardWeights
from ..ppo.optim import find_module, warmup_cosine
from ..ppo.rollout import decoding
from ..ppo.sampling import Decoding
from ..worlds.base import Scorer, Setup
from . import presets
from .config import Config, fsdp_enabled
from .dist import Dist, process_group
from .sharding import (
    autocast,
    ensure_process_group,
    is_sharded_model,
    master_weights_fp32,
    shard_model,
    shard_trunks,
)


@dataclass
class Learner:
    """Everything the iterations work on, built once by :func:`build_learner`."""

    setup: Setup
    d: Dist  # this process's rank and the world size
    device: str
    scorers: list[Scorer]  # the trained objectives, in order
    plan: Plan  # the method's critic streams, policy losses and MOGD weighting
    policy: Any  # a transformers causal LM (peft- or FSDP2-wrapped)
    reference: nn.Module | None  # None: the LoRA policy with its adapters disabled
    critic: nn.Module  # NoCritic under --advantage group
    head_critic: bool  # the values read the policy's own hidden states
    trainable: list[nn.Parameter]
    probe: nn.Module | None
    fsdp: bool
    amp: Callable[[], Any]  # the forward's autocast context (bf16 in one process)
    dec: Decoding  # the sampling distribution, whose log-probs PPO's ratio uses
    opt: mogd.MOGD
    sched: Any
    critic_opt: torch.optim.Optimizer
    lagrangians: list[Lagrangian]  # safe-rlhf: one multiplier per cost stream
    reward_weights: RewardWeights | None  # fast-rl

    def state(self) -> dict[str, Any]:
        """What a checkpoint saves and restores (:func:`~integrations.run.runio.save_checkpoint`)."""
        return dict(
            policy=self.policy,
            critic=self.critic,
            opt=self.opt,
            sched=self.sched,
            critic_opt=self.critic_opt,
            lagrangians=self.lagrangians,
            reward_weights=self.reward_weights,
        )


def shard_world(cfg: Config, setup: Setup, scorers: list[Scorer], d: Dist, device: str) -> bool:
    """The world's models in the run's precision and sharding (training and ``evaluate.py``
    alike): the policy's trainable weights float32 masters, and with FSDP2 the policy, the
    reference and the scorers' backbones sharded (models a world loaded sharded stay as they
    are). Returns whether FSDP2 is on."""
    policy, reference = setup.policy, setup.reference
    fsdp = fsdp_enabled(cfg, d.world)
    precision = cfg.engine.precision
    if not is_sharded_model(policy):
        master_weights_fp32(policy)
    if not fsdp:
        return False
    ensure_process_group(device)
    if not is_sharded_model(policy):
        shard_model(policy, precision)
    if reference is not None and not is_sharded_model(reference):
        shard_model(reference, precision)
    for scorer in scorers:  # bf16 backbones, as they were trained; float32 score heads
        model = getattr(scorer, "model", None)
        if isinstance(model, nn.Module) and not is_sharded_model(model):
            shard_trunks(model, "bf16", device)
    return True


def warm_up(cfg: Config, critic: nn.Module, setup: Setup, scorers: list[Scorer], plan: Plan) -> Any:
    """The tiny world's critic warm-up with the run's options: ``--critic-warmup`` SFT rollouts,
    the rollout and PPO sections, the critic's lr; cached beside the SFT policy, like the SFT."""
    return warm_up_critic(
        critic,
        setup,
        scorers,
        plan,
        rollouts=cfg.tiny.critic_warmup,
        batch=cfg.batch.rollout_size,
        rollout=cfg.rollout,
        ppo=cfg.ppo,
        lr=cfg.optim.critic_lr,
        cache_dir=Path(cfg.tiny.cache_dir),
    )


def build_learner(cfg: Config, setup: Setup, steps: int, d: Dist, device: str) -> Learner:
    """The models (float32 masters, sharded with FSDP2 when on), the method's plan, MOGD around
    AdamW with the warm-up cosine schedule over ``steps`` iterations, the critic's optimizer and
    the multipliers of safe-rlhf and fast-rl."""
    algo = cfg.algorithm
    scorers = presets.select_scorers(cfg, setup)
    plan = make_plan(algo.method, scorers, p=algo.p, update=algo.update, preference=algo.preference)
    policy, reference = setup.policy, setup.reference
    disable_dropout(policy)  # the old and new log-probs of a sample must agree exactly
    group = cfg.ppo.advantage == "group"  # no critic: the prompt's other samples are the baseline
    if group:
        critic: nn.Module = NoCritic(len(plan.streams))
    else:
        score_critics = presets.score_critics(cfg, setup)
        critic = build_critic(algo.critic_init, policy, plan.streams, device, score_critics)
    if cfg.tiny.critic_warmup and not group and algo.critic_init != "score":
        warmup = warm_up(cfg, critic, setup, scorers, plan)
        if d.main:
            print(f"critic warm-up: {warmup}", file=sys.stderr)
    # precision and sharding (integrations/run/sharding.py): trained weights are float32 masters
    # at every precision; FSDP2 shards every transformer (policy, reference, scorers, critics)
    fsdp = shard_world(cfg, setup, scorers, d, device)
    precision = cfg.engine.precision
    if not is_sharded_model(critic):  # score critics may come sharded from their loader
        master_weights_fp32(critic)
        if fsdp:
            shard_trunks(critic, precision, device)  # value heads stay float32, replicated
    probe = None if algo.probe == "full" else find_module(policy, algo.probe, "--probe")

    optim, batch = cfg.optim, cfg.batch
    trainable = [p for p in policy.parameters() if p.requires_grad]
    inner = torch.optim.AdamW(trainable, lr=optim.lr, weight_decay=optim.weight_decay)
    opt = mogd.MOGD(
        inner,
        plan.weighting,
        probe=probe,
        max_norm=optim.max_grad_norm,  # clips the combined direction d, as Safe RLHF its step
        process_group=None if fsdp else process_group(d),  # DTensor shards carry their mesh
    )
    updates = steps * batch.ppo_epochs * math.ceil(batch.rollout_size / batch.update_size)
    reward_weights = None
    if algo.method == "fast-rl":  # the scalarised stream's weights move between updates
        reward_weights = RewardWeights(len(scorers), cfg.fast_rl.weight_lr)
    return Learner(
        setup=setup,
        d=d,
        device=device,
        scorers=scorers,
        plan=plan,
        policy=policy,
        reference=reference,
        critic=critic,
        head_critic=algo.critic_init == "head" and not group,
        trainable=trainable,
        probe=probe,
        fsdp=fsdp,
        amp=functools.partial(autocast, precision, device, fsdp),
        dec=decoding(cfg.rollout),
        opt=opt,
        sched=warmup_cosine(opt, round(optim.warmup_ratio * updates), updates),
        critic_opt=torch.optim.AdamW(critic.parameters(), lr=optim.critic_lr, weight_decay=0.0),
        lagrangians=[Lagrangian.from_options(cfg.safe_rlhf) for _ in plan.cost_streams],
        reward_weights=reward_weights,
    )
