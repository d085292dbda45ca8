"""The policies ``evaluate.py`` evaluates without training: a run's newest checkpoint
(:func:`evaluate_run`), the world's SFT policy (:func:`evaluate_sft`) and a Rewarded Soup of two
runs (:func:`evaluate_soup`), each on the held-out prompts as the run's configuration samples
them (:func:`evaluate`, over :func:`.heldout.evaluate_policy`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..worlds.base import Setup
from . import presets
from .config import Config, config_hash
from .dist import current, init_distributed, resolve_device, seed_everything
from .heldout import evaluate_policy
from .learner import shard_world
from .parse import parse_config
from .runio import load_checkpoint, load_policy_weights, read_checkpoint, write_config, write_eval


def evaluate(cfg: Config, setup: Setup, policy: nn.Module, n_prompts: int | None) -> dict[str, Any]:
    """Table 1 columns of ``policy`` on ``n_prompts`` held-out prompts of ``setup``, sampled as
    ``cfg`` samples its evaluation."""
    return evaluate_policy(
        setup,
        policy,
        presets.select_scorers(cfg, setup),
        cfg.rollout,
        samples=cfg.eval.eval_samples,
        batch=cfg.batch.rollout_size,
        n_prompts=n_prompts,
    )


def evaluate_run(run: Path, n_prompts: int | None = None) -> dict[str, Any]:
    """Evaluate the policy of ``run``'s newest checkpoint (its config.json decides the preset)."""
    cfg = parse_config(["--resume", str(run), "--no-progress"])
    state = load_checkpoint(Path(run), config_hash(cfg))
    device = resolve_device(cfg.engine.device)
    d = init_distributed(device)  # under torchrun: every rank evaluates its share
    seed_everything(cfg.run.seed)
    setup = presets.build_setup(cfg)
    shard_world(cfg, setup, presets.select_scorers(cfg, setup), d, device)  # as training does
    load_policy_weights(state, setup.policy)  # DCP reads each rank's shards
    return evaluate(cfg, setup, setup.policy, n_prompts or cfg.eval.eval_size)


def check_same_run(out: Path, cfg: Config) -> None:
    """A directory reused by sweep/compare must hold a run of this very configuration."""
    path = out / "config.json"
    saved = Config.from_flat(json.loads(path.read_text())) if path.is_file() else None
    if saved is not None and config_hash(saved) != config_hash(cfg):
        raise ValueError(
            f"{out} holds a run of another configuration (other training options?); "
            "pass another --out or delete it"
        )


def evaluate_sft(cfg: Config, out: Path) -> dict[str, Any]:
    """The SFT policy (the preset's policy before any RL), written to ``out/eval.json``."""
    check_same_run(out, cfg)
    if (out / "eval.json").is_file():
        return json.loads((out / "eval.json").read_text())
    seed_everything(cfg.run.seed)
    setup = presets.build_setup(cfg)
    result = evaluate(cfg, setup, setup.policy, cfg.eval.eval_size)
    if current().main:  # under torchrun every rank evaluates its share; one writes
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg)
        write_eval(out / "eval.json", result)
    return result


def soup_weights(
    expert_a: dict[str, torch.Tensor], expert_b: dict[str, torch.Tensor], lam: float
) -> dict[str, torch.Tensor]:
    """Rewarded Soups (Ramé et al., NeurIPS 2023): θ(λ) = λ θ_a + (1 − λ) θ_b, the weight
    interpolation of two policies fine-tuned from the same start, one per objective."""
    if expert_a.keys() != expert_b.keys():
        raise ValueError("the two experts must have the same parameters (same preset and model)")
    return {n: lam * expert_a[n] + (1.0 - lam) * expert_b[n] for n in expert_a}


def evaluate_soup(
    cfg: Config, expert_a: Path, expert_b: Path, lam: float, out: Path
) -> dict[str, Any]:
    """Evaluate the soup of the checkpoints of runs ``expert_a`` (weight λ) and ``expert_b``,
    written to ``out/eval.json`` (reused when there)."""
    if (out / "eval.json").is_file():
        return json.loads((out / "eval.json").read_text())
    experts = []
    for run in (expert_a, expert_b):
        expert = parse_config(["--resume", str(run), "--no-progress"])
        load_checkpoint(run, config_hash(expert))  # checks it
        experts.append(read_checkpoint(run)["policy"])
    seed_everything(cfg.run.seed)
    setup = presets.build_setup(cfg)
    params = dict(setup.policy.named_parameters())
    soup = soup_weights(experts[0], experts[1], lam)
    if not soup.keys() <= params.keys():
        raise ValueError(
            f"{expert_a}: its policy does not match the {cfg.run.preset} preset's model"
        )
    with torch.no_grad():
        for name, value in soup.items():
            params[name].copy_(value)
    result = evaluate(cfg, setup, setup.policy, cfg.eval.eval_size)
    out.mkdir(parents=True, exist_ok=True)
    write_eval(out / "eval.json", result)
    return result
