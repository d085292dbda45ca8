"""What a run writes and reads back: ``config.json``, ``metrics.jsonl`` (one row per iteration),
``checkpoint.pt`` (atomic, for an exact ``--resume``), ``plots.png``, ``eval.json`` and, at the
end, ``policy/`` (Hugging Face format) and, with LoRA, ``adapter/``."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import ppo
from .common import Scorer, Setup
from .config import Config, config_hash
from .dist import Dist, gather_objects, rng_state, set_rng_state
from .methods import Plan
from .rollout import harmless_ratio, objective_rewards

CHECKPOINT = "checkpoint.pt"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file and rename it: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(out: Path, cfg: Config) -> None:
    atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))


def write_eval(path: Path, result: dict[str, Any]) -> None:
    atomic_write_text(Path(path), json.dumps(result, indent=2))


def open_run(cfg: Config) -> dict[str, Any] | None:
    """Check the run directory before anything loads: the checkpoint to resume from (read and
    verified), or None for a fresh run, whose --out must not hold one. Raises ValueError."""
    cfg.out = cfg.out or f"runs/{cfg.preset}-{cfg.method}-seed{cfg.seed}"
    out = Path(cfg.out)
    if cfg.resume:
        return load_checkpoint(out, cfg)
    if (out / CHECKPOINT).exists():
        raise ValueError(
            f"--out {out} already holds a run; continue it with --resume {out} or "
            "choose another --out (nothing was overwritten)"
        )
    return None


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    out: Path,
    cfg: Config,
    step: int,
    policy: nn.Module,
    critic: nn.Module,
    opt: Any,
    sched: Any,
    critic_opt: torch.optim.Optimizer,
    lagrangians: list[ppo.Lagrangian],
    d: Dist,
) -> None:
    """Everything a bit-exact continuation needs, written atomically (tmp file + os.replace):
    trainable policy weights, critic, MOGD (incl. the inner AdamW) and critic optimizer states,
    LR schedule, multipliers, every rank's RNG states, step and config hash."""
    rngs = gather_objects(rng_state(), d)
    if not d.main:
        return
    state = {
        "format": 1,
        "step": step,
        "config_hash": config_hash(cfg),
        "policy": {n: p.detach().cpu() for n, p in policy.named_parameters() if p.requires_grad},
        "critic": critic.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "critic_optimizer": critic_opt.state_dict(),
        "lagrangians": [lag.state_dict() for lag in lagrangians],
        "rng": rngs,
    }
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)


def load_checkpoint(out: Path, cfg: Config) -> dict[str, Any]:
    """Read and check a checkpoint before any model loads; raises ValueError, writes nothing."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"--resume {out}: no {CHECKPOINT} there (the run saved none yet)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated/garbled files
        raise ValueError(
            f"--resume {out}: {path} is corrupt or unreadable ({type(err).__name__}: "
            f"{err}); nothing was overwritten"
        ) from err
    if not isinstance(state, dict) or state.get("format") != 1 or "step" not in state:
        raise ValueError(
            f"--resume {out}: {path} is not a checkpoint of this script; nothing was overwritten"
        )
    if state["config_hash"] != config_hash(cfg):
        raise ValueError(
            f"--resume {out}: {path} was written by another configuration (hash "
            f"{state['config_hash']} != {config_hash(cfg)} of config.json); nothing "
            "was overwritten"
        )
    return state


def load_policy_weights(state: dict[str, Any], policy: nn.Module) -> None:
    """Copy a checkpoint's trainable policy weights into ``policy`` (built by the same preset)."""
    params = dict(policy.named_parameters())
    if set(state["policy"]) != {n for n, p in params.items() if p.requires_grad}:
        raise ValueError(
            "checkpoint's policy parameters do not match the model built by the "
            "preset (another preset or model version?)"
        )
    with torch.no_grad():
        for name, value in state["policy"].items():
            params[name].copy_(value)


def restore(
    state: dict[str, Any],
    policy: nn.Module,
    critic: nn.Module,
    opt: Any,
    sched: Any,
    critic_opt: torch.optim.Optimizer,
    lagrangians: list[ppo.Lagrangian],
    d: Dist,
) -> None:
    """Put a run back in the state :func:`save_checkpoint` recorded."""
    load_policy_weights(state, policy)
    critic.load_state_dict(state["critic"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    critic_opt.load_state_dict(state["critic_optimizer"])
    for lag, s in zip(lagrangians, state["lagrangians"], strict=True):
        lag.load_state_dict(s)
    rngs = state["rng"]
    if len(rngs) != d.world:
        raise ValueError(
            f"checkpoint was written by {len(rngs)} processes, resuming with "
            f"{d.world}; relaunch with the same process count"
        )
    set_rng_state(rngs[d.rank])


def save_policy(out: Path, setup: Setup, policy: nn.Module) -> Path:
    """``out/policy/``: the policy in Hugging Face format (``save_pretrained``) with its
    tokenizer, in the dtype of its (master) weights, loadable by
    ``AutoModelForCausalLM.from_pretrained``. A LoRA policy also writes its adapter to
    ``out/adapter/`` and saves the merged model; the merge happens in place, so this is the last
    thing a run does with its policy."""
    path = out / "policy"
    model: Any = policy
    if hasattr(policy, "merge_and_unload"):  # peft: the adapter alone, then the merged model
        policy.save_pretrained(out / "adapter")  # type: ignore[operator]
        setup.tokenizer.save_pretrained(out / "adapter")
        model = policy.merge_and_unload()  # type: ignore[operator]
    model.save_pretrained(path)
    setup.tokenizer.save_pretrained(path)
    return path


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
