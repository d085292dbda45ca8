"""Held-out evaluation: the columns of the paper's Table 1 for one policy (used at the end of
every run and by ``evaluate.py``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .common import Setup
from .config import Config
from .presets import select_scorers
from .rollout import generate, harmless_ratio, objective_rewards, score

EVAL_SEED = 1234


@torch.no_grad()
def evaluate_policy(
    setup: Setup, policy: nn.Module, cfg: Config, n_prompts: int | None = None
) -> dict[str, Any]:
    """Table 1 columns on the first ``n_prompts`` held-out prompts (all when None).

    One response per prompt, sampled with the run's decoding settings from a fixed seed. Returns
    ``{"prompts": n, "objectives": {name: {"kind", "score", "raw_mean"}}, "harmless_ratio": r |
    None, "average": mean of the scores}``; "score" is R (reward) or −C (cost), "raw_mean" the
    scorer's own number (R or C), harmless ratio = share with C < 0 of the first cost objective.
    """
    prompts = list(setup.eval_prompts[:n_prompts] if n_prompts else setup.eval_prompts)
    if not prompts:
        raise ValueError("the preset has no held-out prompts (Setup.eval_prompts is empty)")
    scorers = select_scorers(cfg, setup)
    was_training = policy.training
    policy.eval()
    raws = []
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):  # the training RNG stream stays untouched
        torch.manual_seed(EVAL_SEED)
        for lo in range(0, len(prompts), cfg.batch_size):
            rollout = generate(setup, policy, prompts[lo : lo + cfg.batch_size], cfg)
            raws.append(score(scorers, rollout))
    policy.train(was_training)
    raw = torch.cat(raws, 1)  # [K, N]
    scores = objective_rewards(scorers, raw)
    objectives = {
        s.name: {"kind": s.kind, "score": float(scores[k].mean()), "raw_mean": float(raw[k].mean())}
        for k, s in enumerate(scorers)
    }
    costs = [k for k, s in enumerate(scorers) if s.kind == "cost"]
    return {
        "prompts": len(prompts),
        "objectives": objectives,
        "harmless_ratio": harmless_ratio(raw[costs[0]]) if costs else None,
        "average": float(scores.mean(1).mean()),
    }
