"""Held-out evaluation: the columns of the paper's Table 1 for one policy (used at the end of
every run and by ``evaluate.py``), and :func:`score_rows`, the audit of a world's scorers on any
``{"prompt", "response"}`` rows (``evaluate.py score``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..ppo.options import RolloutOptions
from ..ppo.rollout import generate, harmless_ratio, objective_rewards, score
from ..worlds.base import Scorer, Setup
from .dist import current, gather_objects
from .sharding import gathered

EVAL_SEED = 1234


@torch.no_grad()
def evaluate_policy(
    setup: Setup,
    policy: nn.Module,
    scorers: Sequence[Scorer],
    rollout: RolloutOptions,
    *,
    samples: int,
    batch: int,
    n_prompts: int | None = None,
) -> dict[str, Any]:
    """Table 1 columns of ``scorers``' objectives on the first ``n_prompts`` held-out prompts
    (all when None).

    ``samples`` responses per prompt (``--eval-samples``), sampled ``batch`` at a time with the
    run's decoding settings ``rollout`` (the training temperature) from a fixed seed. Returns ``{"prompts": n, "samples": per prompt,
    "objectives": {name: {"kind", "score", "se", "raw_mean", "per_prompt"}},
    "harmless_ratio": r | None,
    "average": mean of the scores, "groups": {group: the same columns}}``; "score" is R
    (reward) or −C (cost), "se" its standard error over prompts (the spread of the per-prompt
    means: a prompt's samples are not independent), "raw_mean" the scorer's own number (R or
    C), "per_prompt" the per-prompt mean scores in prompt order (every policy is evaluated on
    the same prompts, so two evaluations can be compared prompt by prompt), harmless ratio =
    share with C < 0 of the first cost objective; "groups" splits the
    prompts by ``setup.categories`` (tiny: benign / harmful). Further held-out sets
    (``setup.eval_sets``, mistral-7b: HH-RLHF test) add their own columns under ``"columns"``.
    Collective under torchrun: every rank calls it and gets the same result.
    """
    prompts = list(setup.eval_prompts[:n_prompts] if n_prompts else setup.eval_prompts)
    if not prompts:
        raise ValueError("the preset has no held-out prompts (Setup.eval_prompts is empty)")
    sample = Sampling(rollout, samples, batch)
    result = _columns(setup, policy, sample, scorers, prompts)
    extra = {
        name: _columns(setup, policy, sample, scorers, list(p[:n_prompts] if n_prompts else p))
        for name, p in setup.eval_sets.items()
        if p
    }
    return {**result, "columns": extra} if extra else result


@dataclass(frozen=True)
class Sampling:
    """How the evaluation samples: the decoding, responses per prompt, prompts per batch."""

    rollout: RolloutOptions
    samples: int
    batch: int


def _columns(
    setup: Setup, policy: nn.Module, sample: Sampling, scorers: Sequence[Scorer], prompts: list[str]
) -> dict[str, Any]:
    raw = _sample_and_score(setup, policy, sample, scorers, prompts)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        if p in setup.categories:
            groups.setdefault(setup.categories[p], []).append(i)
    return {
        "prompts": len(prompts),
        "samples": sample.samples,
        **table_columns(scorers, raw),
        "groups": {
            g: {"prompts": len(ix), **table_columns(scorers, raw[:, ix])}
            for g, ix in groups.items()
        },
    }


def _sample_and_score(
    setup: Setup, policy: nn.Module, sample: Sampling, scorers: Sequence[Scorer], prompts: list[str]
) -> torch.Tensor:
    """Raw scores ``[K, prompts, samples]``. Under torchrun every rank samples and scores every
    world-th response (its own seed); the shares are padded to one length, so sharded models
    run the same forward passes on every rank, and gathered back in order on every rank."""
    d = current()
    repeated = [p for p in prompts for _ in range(sample.samples)]
    share = -(-len(repeated) // d.world)  # ceil
    mine = [repeated[min(d.rank + j * d.world, len(repeated) - 1)] for j in range(share)]
    chunk = sample.batch
    was_training = policy.training
    policy.eval()
    raws = []
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):  # the training RNG stream stays untouched
        torch.manual_seed(EVAL_SEED + d.rank)
        for lo in range(0, len(mine), chunk):
            with gathered(policy):  # FSDP2: one all-gather per batch, not per token
                rollout = generate(setup, policy, mine[lo : lo + chunk], sample.rollout)
            raws.append(score(scorers, rollout))
    policy.train(was_training)
    parts = gather_objects(torch.cat(raws, 1), d)  # [K, share] per rank
    ordered = torch.stack(parts, 2).flatten(1)[:, : len(repeated)]  # rank r holds r + j*world
    return ordered.view(len(scorers), len(prompts), sample.samples)


def table_columns(scorers: Sequence[Scorer], raw: torch.Tensor) -> dict[str, Any]:
    """Table 1 columns of raw scores ``[K, prompts, samples]``: per objective its score (R or
    −C), standard error over prompts, raw mean and per-prompt means; the harmless ratio; the
    average score."""
    scores = objective_rewards(scorers, raw.flatten(1)).view(raw.shape)
    per_prompt = scores.mean(2)  # [K, prompts]
    n = per_prompt.shape[1]
    objectives = {
        s.name: {
            "kind": s.kind,
            "score": float(scores[k].mean()),
            "se": float(per_prompt[k].std() / n**0.5) if n > 1 else 0.0,
            "raw_mean": float(raw[k].mean()),
            "per_prompt": per_prompt[k].tolist(),
        }
        for k, s in enumerate(scorers)
    }
    costs = [k for k, s in enumerate(scorers) if s.kind == "cost"]
    return {
        "objectives": objectives,
        "harmless_ratio": harmless_ratio(raw[costs[0]].flatten()) if costs else None,
        "average": float(scores.mean((1, 2)).mean()),
    }


def score_rows(scorers: Sequence[Scorer], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"prompt", "response"}`` rows scored by ``scorers`` (an audit of the reward models):
    each gets ``"rewards": {objective: higher-is-better score}`` (R, or −C) and, for cost
    objectives, ``"cost"``: C (a number with one cost objective, else ``{objective: C}``)."""
    if not rows:
        return []
    prompts = [r["prompt"] for r in rows]
    responses = [r["response"] for r in rows]
    raw = torch.stack([s.score(prompts, responses).float().cpu() for s in scorers])
    rewards = objective_rewards(scorers, raw)
    costs = [k for k, s in enumerate(scorers) if s.kind == "cost"]
    out = []
    for j, row in enumerate(rows):
        row = {**row, "rewards": {s.name: float(rewards[k, j]) for k, s in enumerate(scorers)}}
        if len(costs) == 1:
            row["cost"] = float(raw[costs[0], j])
        elif costs:
            row["cost"] = {scorers[k].name: float(raw[k, j]) for k in costs}
        out.append(row)
    return out
