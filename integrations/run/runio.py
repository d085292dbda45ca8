"""What a run writes and reads back: ``config.json``, ``metrics.jsonl`` (one row per iteration),
``checkpoints/`` (sharded, atomic, for an exact ``--resume``), ``plots.png``, ``eval.json`` and,
at the end, ``policy/`` (Hugging Face format) and, with LoRA, ``adapter/``."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..ppo.methods import Plan
from ..ppo.multipliers import Lagrangian, RewardWeights
from ..ppo.rollout import harmless_ratio, objective_rewards
from ..worlds.base import Scorer, Setup
from . import checkpoint
from .config import Config, config_hash
from .dist import Dist, on_main, seed_everything
from .sharding import is_sharded_model

CHECKPOINTS = "checkpoints"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, sync it to disk and rename it (then sync the
    directory): a reader never sees half a file, and a crash leaves the old file or the new."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    checkpoint.fsync_dir(path.parent)


def write_config(out: Path, cfg: Config) -> None:
    """``config.json``: the flat JSON form of ``cfg`` (one key per option)."""
    atomic_write_text(out / "config.json", json.dumps(cfg.flat(), indent=2))


def write_eval(path: Path, result: dict[str, Any]) -> None:
    atomic_write_text(Path(path), json.dumps(result, indent=2))


def open_run(cfg: Config) -> dict[str, Any] | None:
    """Check the run directory before anything loads: the checkpoint to resume from (read and
    verified), or None for a fresh run, whose --out must not hold one. Raises ValueError."""
    run = cfg.run
    run.out = run.out or f"runs/{run.preset}-{cfg.algorithm.method}-seed{run.seed}"
    out = Path(run.out)
    if run.resume:
        return load_checkpoint(out, config_hash(cfg))
    if has_checkpoint(out):
        raise ValueError(
            f"--out {out} already holds a run; continue it with --resume {out} or "
            "choose another --out (nothing was overwritten)"
        )
    return None


# ----------------------------------------------------------------------------- checkpoints
# Sharded DCP checkpoints in OUT/checkpoints/step-NNNNNNNN/ (:mod:`.checkpoint`): tensors
# (trainable policy weights, critic, both optimizers' states, Fast RL's reward weights) through
# torch.distributed.checkpoint, the rest (schedule, multipliers, MOGD's own state) in meta.json.


def has_checkpoint(out: Path) -> bool:
    return checkpoint.latest_checkpoint(Path(out) / CHECKPOINTS) is not None


def _tensor_state(
    policy: nn.Module,
    critic: nn.Module,
    opt: Any,
    critic_opt: torch.optim.Optimizer,
    reward_weights: RewardWeights | None,
) -> dict[str, Any]:
    """The live state dicts a checkpoint is written from and loaded into (sharded as the models
    are: FSDP2 parameters and optimizer states are DTensors, each rank holding its shards)."""
    trained = StateDictOptions(ignore_frozen_params=True)
    state = {
        "policy": get_model_state_dict(policy, options=trained),
        "critic": get_model_state_dict(critic, options=trained),
        "optimizer": get_optimizer_state_dict(policy, opt.inner),
        "critic_optimizer": get_optimizer_state_dict(critic, critic_opt),
    }
    if reward_weights is not None:
        state["reward_weights"] = reward_weights.state_dict()
    return state


def save_checkpoint(
    out: Path,
    config_hash: str,
    step: int,
    policy: nn.Module,
    critic: nn.Module,
    opt: Any,
    sched: Any,
    critic_opt: torch.optim.Optimizer,
    lagrangians: list[Lagrangian],
    d: Dist,
    reward_weights: RewardWeights | None = None,
) -> None:
    """Everything a bit-exact continuation needs, as one atomic checkpoint (every rank calls
    this): trainable policy weights, critic, MOGD's inner AdamW and the critic optimizer, LR
    schedule, multipliers, MOGD's own state, Fast RL's reward weights, every rank's RNG states,
    step and ``config_hash`` (:func:`.config.config_hash`). Only the newest checkpoint is kept."""
    meta = {
        "config_hash": config_hash,
        "scheduler": sched.state_dict(),
        "lagrangians": [lag.state_dict() for lag in lagrangians],
        "mogd": opt.own_state_dict(),
    }
    state = _tensor_state(policy, critic, opt, critic_opt, reward_weights)
    checkpoint.save(Path(out) / CHECKPOINTS, step, state, meta)


def load_checkpoint(out: Path, config_hash: str) -> dict[str, Any]:
    """Find and check the newest checkpoint before any model loads: its ``meta.json`` record plus
    ``"path"``; it must have been written by the configuration of hash ``config_hash``. Raises
    ValueError; writes nothing."""
    path = checkpoint.latest_checkpoint(Path(out) / CHECKPOINTS)
    if path is None:
        raise ValueError(f"--resume {out}: no checkpoint in {out / CHECKPOINTS} (none saved yet)")
    try:
        meta = checkpoint.read_meta(path)
    except checkpoint.CheckpointError as err:
        raise ValueError(
            f"--resume {out}: {path} is corrupt or unreadable ({err}); nothing was overwritten"
        ) from err
    if meta.get("config_hash") != config_hash:
        raise ValueError(
            f"--resume {out}: {path} was written by another configuration (hash "
            f"{meta.get('config_hash')} != {config_hash} of config.json); nothing "
            "was overwritten"
        )
    return {**meta, "path": str(path)}


def read_checkpoint(out: Path) -> dict[str, Any]:
    """The newest checkpoint of run ``out`` as plain CPU data (for inspection and tests): its
    ``meta.json`` record and, by top-level name, the flat tensors (``policy``, ``critic``, ...)."""
    path = checkpoint.latest_checkpoint(Path(out) / CHECKPOINTS)
    if path is None:
        raise ValueError(f"{out}: no checkpoint in {out / CHECKPOINTS}")
    return {**checkpoint.read_meta(path), **checkpoint.read_tensors(path)}


def _load_policy(state: dict[str, Any], policy: nn.Module) -> None:
    checked = StateDictOptions(ignore_frozen_params=True, strict=True)
    try:
        set_model_state_dict(policy, state["policy"], options=checked)
    except (KeyError, RuntimeError) as err:
        raise ValueError(
            "checkpoint's policy parameters do not match the model built by the preset "
            f"(another preset or model version?): {err}"
        ) from err


def load_policy_weights(state: dict[str, Any], policy: nn.Module) -> None:
    """Load the trainable policy weights of checkpoint ``state`` (what :func:`load_checkpoint`
    returned) into ``policy``, built by the same preset (any sharding)."""
    trained = {
        "policy": get_model_state_dict(policy, options=StateDictOptions(ignore_frozen_params=True))
    }
    checkpoint.load(Path(state["path"]), trained)
    _load_policy(trained, policy)


def restore(
    state: dict[str, Any],
    policy: nn.Module,
    critic: nn.Module,
    opt: Any,
    sched: Any,
    critic_opt: torch.optim.Optimizer,
    lagrangians: list[Lagrangian],
    d: Dist,
    reward_weights: RewardWeights | None = None,
) -> None:
    """Put a run back in the state :func:`save_checkpoint` recorded (at any world size; the RNG
    streams continue exactly at the world size that wrote it, and are reseeded otherwise)."""
    path = Path(state["path"])
    live = _tensor_state(policy, critic, opt, critic_opt, reward_weights)
    checkpoint.load(path, live)
    _load_policy(live, policy)
    set_model_state_dict(
        critic, live["critic"], options=StateDictOptions(ignore_frozen_params=True)
    )
    set_optimizer_state_dict(policy, opt.inner, live["optimizer"])
    set_optimizer_state_dict(critic, critic_opt, live["critic_optimizer"])
    opt.check_own_state(state["mogd"])
    opt.load_own_state(state["mogd"])
    sched.load_state_dict(state["scheduler"])
    for lag, s in zip(lagrangians, state["lagrangians"], strict=True):
        lag.load_state_dict(s)
    if reward_weights is not None:
        reward_weights.load_state_dict(live["reward_weights"])
    if not checkpoint.restore_rng(path):
        warnings.warn(
            f"{path} was written by {state['world_size']} processes, resumed by {d.world}: the "
            "weights and optimizer state continue, the sampling streams are reseeded",
            RuntimeWarning,
            stacklevel=2,
        )
        seed_everything(int(state["step"]) * 1000 + d.rank)


def save_policy(out: Path, setup: Setup, policy: nn.Module, d: Dist) -> Path:
    """``out/policy/``: the policy in Hugging Face format (``save_pretrained``) with its
    tokenizer, in the dtype of its (master) weights, loadable by
    ``AutoModelForCausalLM.from_pretrained``; rank 0 writes it (every rank calls this, and every
    rank raises when rank 0's write failed). An FSDP2-sharded policy is gathered to rank 0's CPU
    first. A LoRA policy also writes its adapter to ``out/adapter/`` and saves the merged model;
    the merge happens in place, so this is the last thing a run does with its policy.

    Each folder is written to ``.NAME.tmp``, synced to disk and renamed over the previous
    export: a failure or a kill midway leaves the previous ``policy/`` (or none), never half."""
    path = out / "policy"
    full: dict[str, Any] | None = None
    if is_sharded_model(policy):  # every rank sends its shards (collective)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(policy, options=options)

    def export() -> None:
        model: Any = policy
        if full is not None:  # rank 0 saves an unwrapped twin holding the gathered weights
            from transformers import AutoModelForCausalLM

            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(policy.config)  # type: ignore[arg-type]
            model.load_state_dict(full, assign=True)
            model.generation_config = policy.generation_config  # type: ignore[assignment]
        elif hasattr(policy, "merge_and_unload"):  # peft: the adapter, then the merge
            _replace_dir(out / "adapter", lambda tmp: _save_pretrained(policy, setup, tmp))
            model = policy.merge_and_unload()  # type: ignore[operator]
        _replace_dir(path, lambda tmp: _save_pretrained(model, setup, tmp))

    on_main(export)
    return path


def _save_pretrained(model: Any, setup: Setup, folder: Path) -> None:
    model.save_pretrained(folder)
    setup.tokenizer.save_pretrained(folder)


def _replace_dir(final: Path, write: Any) -> None:
    """``write(tmp)`` into ``.NAME.tmp`` next to ``final``, sync it, and swap it in for
    ``final``: the old folder is renamed aside first and deleted last."""
    tmp = final.with_name(f".{final.name}.tmp")
    old = final.with_name(f".{final.name}.old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir(parents=True)
    write(tmp)
    checkpoint.fsync_tree(tmp)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    checkpoint.fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


# ----------------------------------------------------------------------------- metrics


def step_metrics(
    step: int,
    plan: Plan,
    scorers: Sequence[Scorer],
    raw: torch.Tensor,
    seq_kl: torch.Tensor,
    lengths: torch.Tensor,
    stats: dict[str, list[float]],
    multipliers: list[float],
    lr: float,
    seconds: float,
) -> dict[str, Any]:
    """One metrics.jsonl row. Per objective: reward mean/std (R, or −C), and for costs the mean
    cost and the harmless ratio (share of responses with C < 0, paper App. B)."""
    row: dict[str, Any] = {"step": step + 1, "lr": lr, "seconds": seconds}  # lr: first update's
    rewards = objective_rewards(scorers, raw)
    for k, s in enumerate(scorers):
        row[f"{s.name}/reward_mean"] = float(rewards[k].mean())
        row[f"{s.name}/reward_std"] = float(rewards[k].std()) if rewards.shape[1] > 1 else 0.0
        if s.kind == "cost":
            row[f"{s.name}/cost_mean"] = float(raw[k].mean())
            row[f"{s.name}/harmless_ratio"] = harmless_ratio(raw[k])
    row["kl"] = float(seq_kl.mean())
    row["response_length"] = float(lengths.mean())
    # minibatch means: policy loss / clip fraction / approx KL per loss, MOGD's weight/<name>,
    # norm/<name>, alpha/<name>, cosine/<a>/<b> (StepInfo.as_dict), value losses, entropy
    row.update({key: sum(v) / len(v) for key, v in stats.items()})
    names = plan.loss_names
    if len(names) == 2:  # the two-objective conflict indicator of the progress bar and plots
        row["cosine"] = row.get(f"cosine/{names[0]}/{names[1]}")
    for lam, j in zip(multipliers, plan.cost_streams, strict=True):
        row[f"lambda/{scorers[j].name}"] = lam  # the multiplier this iteration's update used
    return row


def record(stats: dict[str, list[float]], key: str, value: float) -> None:
    """One value of a per-iteration statistic (its mean goes to metrics.jsonl)."""
    stats.setdefault(key, []).append(value)


def weigh(sums: dict[str, float], key: str, weight: float, value: float) -> None:
    """Accumulate a micro-batch's token mean into the update batch's: Σ_c (N_c / N) x_c."""
    sums[key] = sums.get(key, 0.0) + weight * value


def append_metrics(out: Path, row: dict[str, Any]) -> None:
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics rows past the checkpoint (those iterations are redone)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if json.loads(r)["step"] <= step]
    atomic_write_text(path, "".join(r + "\n" for r in kept))


def progress_postfix(row: dict[str, Any], scorers: Sequence[Scorer]) -> dict[str, str]:
    """The progress bar's summary of a metrics row: each objective's R (or C), KL, cosine."""
    post = {}
    for s in scorers:
        if s.kind == "cost":
            post[f"{s.name[:4]}:C"] = f"{row[f'{s.name}/cost_mean']:.3f}"
        else:
            post[f"{s.name[:4]}:R"] = f"{row[f'{s.name}/reward_mean']:.3f}"
    post["KL"] = f"{row['kl']:.3f}"
    if row.get("cosine") is not None:
        post["cos"] = f"{row['cosine']:+.2f}"
    return post


def plot_metrics(out: Path) -> Path:
    """plots.png: rewards per objective, KL, gradient cosine, MOGD weights, lambda, entropy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(out / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    panels = [
        ("reward (R, or -C)", lambda k: k.endswith("/reward_mean")),
        ("KL to reference", lambda k: k == "kl"),
        ("gradient cosine", lambda k: k.startswith("cosine/")),
        ("MOGD weights", lambda k: k.startswith("weight/")),
        ("harmless ratio", lambda k: k.endswith("/harmless_ratio")),
        ("lambda / entropy", lambda k: k.startswith("lambda/") or k == "entropy"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (title, want) in zip(axes.flat, panels, strict=True):
        keys = sorted({k for r in rows for k in r if want(k)})
        for key in keys:
            ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=key)
        if title == "gradient cosine":
            ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("PPO iteration")
        if keys:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "plots.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
