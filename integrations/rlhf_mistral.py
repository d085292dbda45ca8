"""Multi-objective RLHF with PPO and mogd.MOGD: the training loop of the GAPO paper, App. B.

    python integrations/rlhf_mistral.py --preset tiny --method gapo --p 1 --seed 0 --out runs/x
    python integrations/rlhf_mistral.py --resume runs/x          # continue exactly where it stopped
    python integrations/rlhf_mistral.py --help                    # every option with its default
    python integrations/rlhf_mistral.py evaluate|sweep|compare    # -> integrations/evaluate.py

One PPO iteration ("step"):
  1. rollout: sample responses from the policy for a batch of prompts;
  2. score every response with every objective's scorer (reward R, or cost C -> reward -C);
  3. per-token KL shaping r̂_t = r_t − β(log π − log π_ref) in every stream, GAE with one critic
     head per stream (integrations/ppo.py);
  4. one clipped PPO surrogate per objective; the policy update goes through mogd.MOGD, which
     turns the per-objective gradients into one direction (GAPO / MGDA / P-GAPO weights);
  5. the critic heads regress the GAE returns (separate optimizer).

Methods (--method): gapo (--p, --update), mgda, pgapo (--preference), morlhf (PPO on the linearly
scalarised reward Σ c_i r_i, --preference), ppo-h / ppo-s (PPO on the helpful / harmless objective
alone), safe-rlhf (PPO-Lagrangian: reward objectives maximised s.t. E[cost] <= threshold).
The critic (--critic-init copy, the tiny default) is a separate copy of the SFT trunk with one
linear value head per stream: value losses then never reach the policy's per-objective gradients,
which MOGD must see unmixed (Safe RLHF also keeps its reward and cost critics apart from the
actor). --critic-init head puts the heads on the policy's detached last hidden state (no second
trunk: the 7B default); --critic-init score starts one critic per objective from its score model.
Outputs in --out: config.json, metrics.jsonl (one row per iteration), checkpoint.pt, plots.png,
eval.json (held-out Table 1 columns).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a script: make `integrations` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from integrations import ppo

METHODS = ("gapo", "mgda", "pgapo", "morlhf", "ppo-h", "ppo-s", "safe-rlhf")
PRESETS = ("tiny", "mistral-7b")
# Objective names of each preset, known without loading anything, so that --objectives and
# --preference are checked before a model loads. Checked against the built scorers afterwards.
PRESET_OBJECTIVES = {"tiny": ("helpful", "harmless"), "mistral-7b": ("helpful", "harmless")}
SINGLE_OBJECTIVE = {"ppo-h": "helpful", "ppo-s": "harmless"}
CHECKPOINT = "checkpoint.pt"
SUBCOMMANDS = ("evaluate", "sweep", "compare")


def _opt(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A Config field carrying its --help text (and any extra argparse settings)."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class Config:
    """Every hyper-parameter of a run. Defaults: paper Table 2 where it applies, scaled to --preset
    tiny (2-core CPU: a full GAPO run in <= 5 minutes)."""

    # -- what to train
    preset: str = _opt("tiny", "model/scorer/prompt preset", choices=PRESETS)
    method: str = _opt("gapo", "training method", choices=METHODS)
    p: float = _opt(1.0, "GAPO exponent: gradients rescaled by 1/||g||^p (0 = MGDA)")
    update: str = _opt(
        "rescaled", "GAPO update: Eq. 7 (rescaled) or Eq. 17 (raw)", choices=("rescaled", "raw")
    )
    preference: list[float] | None = _opt(
        None,
        "pgapo/morlhf weights, one positive number per objective; None = uniform",
        nargs="+",
        type=float,
    )
    objectives: list[str] | None = _opt(
        None, "objective names to train on, in order; None = all of the preset's", nargs="*"
    )
    probe: str | None = _opt(
        None,
        "MOGD probe module name (e.g. lm_head, the paper's) or 'full' (per-objective "
        "gradients of every parameter); None = the preset's choice (full on tiny, lm_head on 7B)",
    )
    critic_init: str | None = _opt(
        None,
        "critic: 'copy' (a separate copy of the SFT trunk + one value head per stream), 'head' "
        "(value heads on the policy's detached features, no second model) or 'score' (one "
        "critic per objective from its score model, mistral-7b); None = copy on tiny, head "
        "on mistral-7b",
        choices=("copy", "head", "score"),
    )
    # -- schedule
    steps: int = _opt(150, "PPO iterations (rollout + update)")
    batch_size: int = _opt(32, "prompts per iteration per process")
    ppo_epochs: int = _opt(1, "passes over each rollout batch")
    minibatch_size: int = _opt(16, "sequences per optimizer step")
    lr: float = _opt(1e-4, "policy peak learning rate (AdamW)")
    critic_lr: float = _opt(1e-3, "critic learning rate (AdamW, constant)")
    weight_decay: float = _opt(0.0, "policy AdamW weight decay")
    warmup_ratio: float = _opt(0.03, "linear warm-up share of the cosine schedule")
    max_grad_norm: float | None = _opt(1.0, "critic gradient-norm clip (MOGD's policy step: none)")
    # -- rollouts
    max_new_tokens: int = _opt(64, "response length cap")
    temperature: float = _opt(1.0, "sampling temperature")
    top_p: float = _opt(1.0, "nucleus sampling mass")
    repetition_penalty: float = _opt(1.0, "HF repetition penalty (1 = none)")
    # -- PPO (paper Table 2: beta 0.05, eps 0.1)
    beta: float = _opt(0.05, "per-token KL penalty coefficient (every stream)")
    clip_eps: float = _opt(0.1, "PPO ratio clip epsilon")
    clip_value: float | None = _opt(5.0, "value clip around the old values (Safe RLHF: 5)")
    gamma: float = _opt(1.0, "discount")
    gae_lambda: float = _opt(0.95, "GAE lambda")
    score_clip: float = _opt(50.0, "scores are clipped to [-c, c] (Safe RLHF: 50)")
    whiten_advantages: bool = _opt(
        False,
        "whiten each stream's advantages over the batch (off: Safe RLHF; keeps the "
        "objectives' gradient scales, which GAPO is about)",
        action=argparse.BooleanOptionalAction,
    )
    entropy_coef: float = _opt(0.0, "entropy bonus added to every objective's loss")
    # -- safe-rlhf (PPO-Lagrangian; Safe RLHF's scripts/ppo-lag.sh defaults)
    lambda_threshold: float = _opt(0.0, "cost threshold d of E[C] <= d (C < 0 is harmless)")
    lambda_init: float = _opt(1.0, "initial Lagrange multiplier")
    lambda_lr: float = _opt(0.1, "multiplier learning rate (on log lambda)")
    lambda_max: float | None = _opt(5.0, "multiplier upper bound")
    lambda_update_delay: int = _opt(0, "iterations before the multiplier starts moving")
    episode_cost_window: int = _opt(128, "episodes in the moving mean cost")
    # -- bookkeeping
    seed: int = _opt(0, "random seed")
    out: str | None = _opt(None, "run directory; None = runs/<preset>-<method>-seed<seed>")
    save_every: int = _opt(25, "checkpoint every N iterations (and at the end)")
    eval_size: int | None = _opt(
        None, "held-out prompts evaluated at the end; None = all of them, 0 = skip"
    )
    sft_seed: int = _opt(0, "seed of the tiny preset's SFT warm-up (cached per seed)")
    cache_dir: str = _opt("~/.cache/mogd", "tiny preset cache (tokenizer, SFT policy)")
    device: str | None = _opt(None, "torch device; None = cuda:$LOCAL_RANK if CUDA, else cpu")
    progress: bool = _opt(True, "tqdm progress bar", action=argparse.BooleanOptionalAction)
    plots: bool = _opt(True, "write plots.png at the end", action=argparse.BooleanOptionalAction)
    resume: str | None = _opt(None, "run directory to continue (its config.json is reused)")
    dry_run: bool = _opt(
        False, "print the memory plan (mistral-7b) or config and exit", action="store_true"
    )
    # options of the preset itself (integrations.paper.PAPER_OPTIONS for mistral-7b), by dest
    preset_options: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})


# Fields that do not change the trained parameters: excluded from the config hash.
BOOKKEEPING = {
    "out",
    "save_every",
    "progress",
    "plots",
    "resume",
    "dry_run",
    "eval_size",
    "cache_dir",
    "device",
}


def config_hash(cfg: Config) -> str:
    """sha256 of the fields that determine the trajectory (steps, method, seeds, ...)."""
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in BOOKKEEPING}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def objective_names(cfg: Config) -> list[str]:
    return (
        list(cfg.objectives) if cfg.objectives is not None else list(PRESET_OBJECTIVES[cfg.preset])
    )


def validate(cfg: Config) -> None:
    """Reject a bad configuration before any model loads; messages name the option."""
    if cfg.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}; got {cfg.method!r}")
    if cfg.preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}; got {cfg.preset!r}")
    names = objective_names(cfg)
    if not names:
        raise ValueError(
            "--objectives is empty: give at least one objective name "
            f"(the {cfg.preset} preset has {', '.join(PRESET_OBJECTIVES[cfg.preset])})"
        )
    unknown = [n for n in names if n not in PRESET_OBJECTIVES[cfg.preset]]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"--objectives {' '.join(names)}: each must be one of the {cfg.preset} "
            f"preset's objectives {', '.join(PRESET_OBJECTIVES[cfg.preset])}, once"
        )
    if not (math.isfinite(cfg.p) and cfg.p >= 0):
        raise ValueError(f"--p must be a finite number >= 0 (0 = MGDA, 1, 2); got {cfg.p}")
    if cfg.preference is not None:
        if cfg.method not in ("pgapo", "morlhf"):
            raise ValueError(f"--preference applies to pgapo and morlhf, not --method {cfg.method}")
        if len(cfg.preference) != len(names):
            raise ValueError(
                f"--preference needs one weight per objective ({', '.join(names)}): "
                f"got {len(cfg.preference)} values"
            )
        if not all(math.isfinite(w) and w > 0 for w in cfg.preference):
            raise ValueError(
                f"--preference weights must be positive and finite; got {cfg.preference}"
            )
    if cfg.method in SINGLE_OBJECTIVE and SINGLE_OBJECTIVE[cfg.method] not in names:
        raise ValueError(
            f"--method {cfg.method} trains objective "
            f"{SINGLE_OBJECTIVE[cfg.method]!r}, which --objectives leaves out"
        )
    if cfg.method == "safe-rlhf" and len(names) < 2:
        raise ValueError("--method safe-rlhf needs a reward and a cost objective (--objectives)")
    positive_ints = (
        "steps",
        "batch_size",
        "ppo_epochs",
        "minibatch_size",
        "max_new_tokens",
        "save_every",
        "episode_cost_window",
    )
    for name in positive_ints:
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(cfg, name)}")
    for name in ("lr", "critic_lr", "temperature", "clip_eps", "lambda_init", "score_clip"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0; got {getattr(cfg, name)}")
    for name in (
        "beta",
        "weight_decay",
        "entropy_coef",
        "lambda_lr",
        "lambda_update_delay",
        "eval_size",
    ):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0; got {getattr(cfg, name)}")
    for name in ("gamma", "gae_lambda", "warmup_ratio"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must lie in [0, 1]; got {getattr(cfg, name)}"
            )
    if not 0 < cfg.top_p <= 1:
        raise ValueError(f"--top-p must lie in (0, 1]; got {cfg.top_p}")
    if cfg.repetition_penalty <= 0:
        raise ValueError(f"--repetition-penalty must be > 0; got {cfg.repetition_penalty}")
    if cfg.lambda_max is not None and cfg.lambda_max < cfg.lambda_init:
        raise ValueError(
            f"--lambda-max ({cfg.lambda_max}) must be >= --lambda-init ({cfg.lambda_init})"
        )


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """Every Config field as --option (with its default in --help), plus the 7B preset's own."""
    from integrations.paper import add_paper_arguments  # config arithmetic only: light

    parser = argparse.ArgumentParser(
        prog="rlhf_mistral.py",
        description="Multi-objective RLHF (PPO + mogd.MOGD), paper App. B. Subcommands "
        "evaluate / sweep / compare: see `python integrations/evaluate.py --help`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(Config):
        if f.metadata.get("cli") is False:
            continue
        kwargs = dict(f.metadata)
        if "action" not in kwargs and "type" not in kwargs:
            kwargs["type"] = _PARSERS.get(str(f.type), str)
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, default=f.default, **kwargs)
    add_paper_arguments(parser)
    return parser


def _float_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


# Config annotations (strings under `from __future__ import annotations`) -> argparse types
_PARSERS = {"int": int, "float": float, "float | None": _float_or_none, "int | None": _int_or_none}


def _config_from(parser: argparse.ArgumentParser, values: dict[str, Any]) -> Config:
    """Split parsed values into Config fields and the preset's own options."""
    names = {f.name for f in dataclasses.fields(Config)}
    cfg = Config(**{k: v for k, v in values.items() if k in names})
    extra = {k: v for k, v in values.items() if k not in names}
    if cfg.preset == "tiny":
        for dest, value in extra.items():
            if value != parser.get_default(dest):
                flag = "--" + dest.replace("_", "-")
                raise ValueError(f"{flag} is an option of --preset mistral-7b, not of tiny")
    else:
        cfg.preset_options = extra
    return cfg


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Config from the command line; with --resume, the run's config.json.

    Options given next to --resume must agree with the saved configuration (a resumed run must
    retrace the uninterrupted one), except the bookkeeping ones (progress bar, plots, ...).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is None:
        cfg = _config_from(parser, vars(args))
        cfg.critic_init = cfg.critic_init or ("copy" if cfg.preset == "tiny" else "head")
        validate(cfg)
        return cfg
    run = Path(args.resume)
    try:
        cfg = Config(**json.loads((run / "config.json").read_text()))
    except FileNotFoundError as err:
        raise ValueError(f"--resume {run}: no config.json there (not a run directory)") from err
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"--resume {run}: config.json is unreadable ({err})") from err
    # Which options were typed: parse again with every default suppressed.
    typed = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            clone = copy.copy(action)
            clone.default = argparse.SUPPRESS
            typed._add_action(clone)
    for name, value in vars(typed.parse_args(argv)).items():
        if name == "resume":
            continue
        if name in BOOKKEEPING - {"out"}:
            setattr(cfg, name, value)
            continue
        saved = getattr(cfg, name) if hasattr(cfg, name) else cfg.preset_options.get(name)
        if value != saved:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"{flag} {value} differs from the resumed run's {saved!r}; a resumed run keeps "
                "its configuration"
            )
    cfg.out = cfg.resume = str(run)
    validate(cfg)
    return cfg


def preset_namespace(cfg: Config) -> argparse.Namespace:
    """What a preset's builder reads: the Config fields and the preset's own options."""
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "preset_options"}
    return argparse.Namespace(**values, **cfg.preset_options)


# ----------------------------------------------------------------------------- processes, seeds


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK: join the process group (nccl on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Dist(dist.get_rank(), dist.get_world_size())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code (scorers) may draw from it
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prompt_indices(step: int, batch: int, n: int, seed: int, d: Dist) -> list[int]:
    """This process's prompts for iteration ``step``: a DistributedSampler-like shard.

    The prompts form an endless stream of seeded permutations (one per epoch); iteration t takes
    the next world·batch of them and rank r every world-th one, so nothing depends on state.
    """
    per_step = batch * d.world
    out = []
    for pos in range(step * per_step + d.rank, (step + 1) * per_step, d.world):
        epoch, offset = divmod(pos, n)
        out.append(_epoch_order(seed, epoch, n)[offset])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


# ----------------------------------------------------------------------------- models


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as HF generate uses them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_response(
    model: nn.Module,
    ids: torch.Tensor,
    attn: torch.Tensor,
    prompt_len: int,
    temperature: float,
    hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[B, T]`` of the response tokens, their logits ``[B, T, V]`` and (``hidden``)
    the last hidden states ``[B, T, H]`` of the states that emit them.

    Logits are divided by the sampling temperature: the policy PPO optimises is the one sampled.
    """
    out = model(
        input_ids=ids,
        attention_mask=attn,
        position_ids=positions(attn),
        output_hidden_states=hidden,
    )
    logits = out.logits[:, prompt_len - 1 : -1].float() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)
    states = out.hidden_states[-1][:, prompt_len - 1 : -1] if hidden else None
    return logp, logits, states


class Critic(nn.Module):
    """One value head per reward stream, V_s(state) = w_sᵀ h(state) + b_s.

    ``trunk`` is a separate transformer (a copy of the SFT policy's decoder); with ``trunk=None``
    the heads read the policy's last hidden state, detached so no value gradient reaches the
    policy (and MOGD's per-objective gradients stay pure policy gradients).
    """

    def __init__(self, trunk: nn.Module | None, hidden_size: int, streams: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.Linear(hidden_size, streams)
        nn.init.zeros_(self.heads.weight)  # V = 0 at start: the first advantages are the returns
        nn.init.zeros_(self.heads.bias)

    def forward(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor,
        prompt_len: int,
        policy_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Values ``[streams, B, T]`` of the states that emit the response tokens."""
        if self.trunk is None:
            if policy_hidden is None:
                raise ValueError("critic='head' needs the policy's hidden states")
            h = policy_hidden.detach()
        else:
            h = self.trunk(
                input_ids=ids, attention_mask=attn, position_ids=positions(attn)
            ).last_hidden_state
            h = h[:, prompt_len - 1 : -1]
        return self.heads(h.float()).permute(2, 0, 1)


class ScoreCritics(nn.Module):
    """One critic per stream, each initialised from its objective's score model (Safe RLHF's
    choice; ``--critic-init score``, built by integrations.paper.build_score_critics)."""

    def __init__(self, critics: Sequence[nn.Module]) -> None:
        super().__init__()
        self.critics = nn.ModuleList(critics)

    def forward(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor,
        prompt_len: int,
        policy_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return torch.stack([c(ids, attn)[:, prompt_len - 1 : -1] for c in self.critics])


def build_critic(cfg: Config, setup: Any, plan: Plan, device: str) -> nn.Module:
    """The critic of ``cfg.critic_init`` with one value per stream of ``plan``."""
    policy = setup.policy
    if cfg.critic_init == "score":
        if cfg.preset == "tiny" or plan.streams == ["scalarised"]:
            raise ValueError(
                "--critic-init score needs a score model per stream: mistral-7b preset and a "
                "method whose streams are objectives (not morlhf)"
            )
        from integrations.paper import build_score_critics

        critics = build_score_critics(preset_namespace(cfg), setup)
        order = list(PRESET_OBJECTIVES[cfg.preset])
        critic = ScoreCritics([critics[order.index(name)] for name in plan.streams])
        disable_dropout(critic)
        return critic
    trunk = None
    if cfg.critic_init == "copy":
        trunk = copy.deepcopy(policy.get_decoder())
        trunk.requires_grad_(True)
    critic = Critic(trunk, policy.config.hidden_size, len(plan.streams)).to(device)
    disable_dropout(critic)
    return critic


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout (nn.Dropout and the attention dropout HF attention modules apply in
    training mode), so train() and eval() compute the same function, as Safe RLHF does."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    model.eval()


def resolve_device(cfg: Config) -> str:
    if cfg.device:
        return cfg.device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def build_setup(cfg: Config) -> Any:
    """The preset's Setup (imported lazily: the 7B preset pulls in heavy dependencies)."""
    if cfg.preset == "tiny":
        from integrations.tiny import build_tiny_setup

        cache = Path(cfg.cache_dir).expanduser()
        return build_tiny_setup(cache, seed=cfg.sft_seed, device=resolve_device(cfg))
    from integrations.paper import build_paper_setup

    ns = preset_namespace(cfg)
    ns.device = resolve_device(cfg)
    return build_paper_setup(ns)


def select_scorers(cfg: Config, setup: Any) -> list[Any]:
    """The scorers of ``cfg``'s objectives, in order (the names were checked before loading)."""
    by_name = {s.name: s for s in setup.scorers}
    missing = [n for n in objective_names(cfg) if n not in by_name]
    if missing:
        raise ValueError(
            f"--objectives {' '.join(missing)}: the {cfg.preset} preset built "
            f"scorers {', '.join(by_name)}"
        )
    return [by_name[n] for n in objective_names(cfg)]


def find_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        close = [n for n in modules if n.endswith(name.split(".")[-1])][:5]
        raise ValueError(
            f"--probe {name}: no such module in the policy (e.g. {close or 'lm_head'})"
        )
    return modules[name]


# ----------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    prompts: list[str]
    responses: list[str]
    ids: torch.Tensor  # [B, P + T] left-padded prompt + right-padded response
    attn: torch.Tensor  # [B, P + T]
    mask: torch.Tensor  # [B, T] 1 on response tokens up to and including EOS
    prompt_len: int


@torch.no_grad()
def generate(setup: Any, model: nn.Module, prompts: list[str], cfg: Config) -> Rollout:
    """Sample one response per prompt (temperature, top_p, repetition penalty, max new tokens)."""
    tok = setup.tokenizer
    enc = tok([setup.format_prompt(p) for p in prompts], return_tensors="pt", padding=True).to(
        model.device
    )
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        repetition_penalty=cfg.repetition_penalty,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    prompt_len = enc["input_ids"].shape[1]
    response = out[:, prompt_len:]
    is_eos = response == tok.eos_token_id
    # keep tokens up to and including the first EOS; everything after it is padding
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    mask = (~after_eos).long()
    response = response.masked_fill(after_eos, tok.pad_token_id)
    ids = torch.cat([enc["input_ids"], response], 1)
    attn = torch.cat([enc["attention_mask"], mask], 1)
    texts = tok.batch_decode(response, skip_special_tokens=True)
    return Rollout(prompts, [t.strip() for t in texts], ids, attn, mask, prompt_len)


def score(scorers: Sequence[Any], rollout: Rollout) -> torch.Tensor:
    """Raw scores ``[K, B]`` (reward R or cost C, as each scorer reports it)."""
    return torch.stack([s.score(rollout.prompts, rollout.responses).float().cpu() for s in scorers])


def objective_rewards(scorers: Sequence[Any], raw: torch.Tensor) -> torch.Tensor:
    """Each objective's reward to maximise: R for a reward scorer, −C for a cost scorer."""
    sign = torch.tensor([1.0 if s.kind == "reward" else -1.0 for s in scorers])
    return raw * sign[:, None]


# ----------------------------------------------------------------------------- methods


@dataclass
class Plan:
    """How a method maps the K objectives onto critic streams and policy losses.

    ``mix`` [S, K]: stream s's sequence score is Σ_k mix[s, k] · reward_k. Each stream gets
    its own KL shaping and critic head. ``losses``: one PPO loss per stream (gapo / mgda / pgapo),
    or one loss ("lagrangian" for safe-rlhf, "single" for one-stream methods).
    """

    streams: list[str]
    mix: torch.Tensor
    losses: str  # "per-stream" | "single" | "lagrangian"
    weighting: Any
    reward_streams: list[int] = field(default_factory=list)  # safe-rlhf
    cost_streams: list[int] = field(default_factory=list)  # safe-rlhf

    @property
    def loss_names(self) -> list[str]:
        """One name per policy loss (what MOGD's weights and cosines are logged under)."""
        return ["lagrangian"] if self.losses == "lagrangian" else list(self.streams)


def make_plan(cfg: Config, scorers: Sequence[Any]) -> Plan:
    import mogd

    names = [s.name for s in scorers]
    k = len(names)
    eye = torch.eye(k)
    pref = torch.tensor(cfg.preference if cfg.preference is not None else [1.0] * k)
    pref = pref / pref.sum()
    one = mogd.Linear([1.0])  # k = 1: MOGD is the inner optimizer exactly
    if cfg.method == "gapo":
        return Plan(names, eye, "per-stream", mogd.GAPO(p=cfg.p, update=cfg.update))
    if cfg.method == "mgda":
        return Plan(names, eye, "per-stream", mogd.MGDA())
    if cfg.method == "pgapo":
        return Plan(names, eye, "per-stream", mogd.PGAPO(pref.tolist()))
    if cfg.method == "morlhf":
        # MORLHF: PPO on the scalarised reward Σ_i c_i r_i (one stream, one critic)
        return Plan(["scalarised"], pref[None, :], "single", one)
    if cfg.method in SINGLE_OBJECTIVE:
        i = names.index(SINGLE_OBJECTIVE[cfg.method])
        return Plan([names[i]], eye[i : i + 1], "single", one)
    rewards = [i for i, s in enumerate(scorers) if s.kind == "reward"]
    costs = [i for i, s in enumerate(scorers) if s.kind == "cost"]
    if not rewards or not costs:
        raise ValueError(
            "--method safe-rlhf needs at least one reward and one cost objective; "
            f"--objectives {' '.join(names)} gives kinds "
            f"{[s.kind for s in scorers]}"
        )
    return Plan(names, eye, "lagrangian", one, rewards, costs)


# ----------------------------------------------------------------------------- the loop


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


def train(cfg: Config, resume_state: dict[str, Any] | None = None) -> Path:
    """Train one run; returns its directory (config.json, metrics.jsonl, checkpoint.pt, ...).

    ``resume_state``: what :func:`open_run` returned (it is called here when not given).
    """
    validate(cfg)
    if resume_state is None:
        resume_state = open_run(cfg)
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    import mogd

    device = resolve_device(cfg)
    d = init_distributed(device)
    out = Path(cfg.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            _atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))

    # -- models: same initial weights on every rank, then per-rank sampling streams
    seed_everything(cfg.seed)
    setup = build_setup(cfg)
    scorers = select_scorers(cfg, setup)
    plan = make_plan(cfg, scorers)
    policy = setup.policy
    disable_dropout(policy)  # the old and new log-probs of a sample must agree exactly
    reference = setup.reference
    critic = build_critic(cfg, setup, plan, device)
    head_critic = cfg.critic_init == "head"  # values read the policy's own hidden states
    # full mode by default on the small model (exact per-objective gradients are cheap there)
    probe_name = cfg.probe or setup.probe_default
    probe = None if probe_name in (None, "full") else find_module(policy, probe_name)

    trainable = [p for p in policy.parameters() if p.requires_grad]
    inner = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # several processes: MOGD averages each objective's gradient over them before the Gram
    group = dist.group.WORLD if d.world > 1 else None
    opt = mogd.MOGD(inner, plan.weighting, probe=probe, process_group=group)
    updates_per_step = cfg.ppo_epochs * math.ceil(cfg.batch_size / cfg.minibatch_size)
    total_updates = cfg.steps * updates_per_step
    sched = get_cosine_schedule_with_warmup(
        opt, round(cfg.warmup_ratio * total_updates), total_updates
    )
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, weight_decay=0.0)
    lagrangians = [
        ppo.Lagrangian(
            threshold=cfg.lambda_threshold,
            lambda_init=cfg.lambda_init,
            lambda_lr=cfg.lambda_lr,
            lambda_max=cfg.lambda_max,
            update_delay=cfg.lambda_update_delay,
            window=cfg.episode_cost_window,
        )
        for j in plan.cost_streams
    ]

    start = 0
    if resume_state is not None:
        start = resume_state["step"]
        restore(resume_state, policy, critic, opt, sched, critic_opt, lagrangians, d)
        if d.main:
            _truncate_metrics(out / "metrics.jsonl", start)
    else:
        torch.manual_seed(cfg.seed + 1000 * d.rank)  # each rank samples different responses

    names = [s.name for s in scorers]
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        disable=not (cfg.progress and d.main),
        desc=f"{cfg.method}",
        dynamic_ncols=True,
    )
    for step in bar:
        t0 = time.time()
        prompts = [
            setup.train_prompts[i]
            for i in prompt_indices(step, cfg.batch_size, len(setup.train_prompts), cfg.seed, d)
        ]

        # 1-2. rollout and scores
        ro = generate(setup, policy, prompts, cfg)
        raw = score(scorers, ro)  # [K, B]
        rewards = objective_rewards(scorers, raw).clamp(-cfg.score_clip, cfg.score_clip)
        stream_scores = (plan.mix @ rewards).to(device)  # [S, B]
        # safe-rlhf: the dual step on each constraint's moving mean cost, before the update that
        # uses λ (Safe RLHF's order: record this batch's episode costs, step λ, then PPO)
        for lag, j in zip(lagrangians, plan.cost_streams, strict=True):
            lag.record(_gather(raw[j], d))
            lag.update(step)
        multipliers = [lag.value for lag in lagrangians]
        lr = opt.param_groups[0]["lr"]

        # 3. old log-probs, reference log-probs, values; KL-shaped rewards and GAE per stream
        with torch.no_grad():
            old_logp, _, hidden = forward_response(
                policy, ro.ids, ro.attn, ro.prompt_len, cfg.temperature, hidden=head_critic
            )
            if reference is not None:
                ref_logp, _, _ = forward_response(
                    reference, ro.ids, ro.attn, ro.prompt_len, cfg.temperature
                )
            else:  # LoRA policy: the reference is the base model, adapters off
                with policy.disable_adapter():
                    ref_logp, _, _ = forward_response(
                        policy, ro.ids, ro.attn, ro.prompt_len, cfg.temperature
                    )
            old_values = critic(ro.ids, ro.attn, ro.prompt_len, hidden)
            mask = ro.mask.to(old_logp.dtype)
            advantages, returns = [], []
            for s in range(len(plan.streams)):
                r = ppo.kl_shaped_rewards(stream_scores[s], old_logp, ref_logp, mask, cfg.beta)
                adv, ret = ppo.gae(r, old_values[s], mask, cfg.gamma, cfg.gae_lambda)
                advantages.append(adv)
                returns.append(ret)
            if cfg.whiten_advantages and mask.sum() > 1:
                advantages = [ppo.masked_whiten(a, mask) for a in advantages]
            if plan.losses == "lagrangian":
                advantages = [
                    ppo.lagrangian_advantages(
                        [advantages[i] for i in plan.reward_streams],
                        [advantages[j] for j in plan.cost_streams],
                        multipliers,
                    )
                ]

        # 4-5. PPO epochs over minibatches: per-objective policy losses through MOGD, critic.
        # train() only switches gradient checkpointing on (presets that use it); no dropout left
        policy.train()
        critic.train()
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(prompts))
            for lo in range(0, len(prompts), cfg.minibatch_size):
                mb = order[lo : lo + cfg.minibatch_size]
                logp, logits, hidden = forward_response(
                    policy,
                    ro.ids[mb],
                    ro.attn[mb],
                    ro.prompt_len,
                    cfg.temperature,
                    hidden=head_critic,
                )
                entropy = ppo.entropy_from_logits(logits, mask[mb])
                losses = []
                for i, adv in enumerate(advantages):
                    loss, st = ppo.policy_loss(logp, old_logp[mb], adv[mb], mask[mb], cfg.clip_eps)
                    losses.append(loss - cfg.entropy_coef * entropy)
                    name = plan.loss_names[i]
                    _add(stats, f"clip_frac/{name}", st.clip_fraction)
                    _add(stats, f"approx_kl/{name}", st.approx_kl)
                    _add(stats, f"policy_loss/{name}", loss.detach().item())
                opt.zero_grad(set_to_none=True)
                info = opt.step(losses)
                sched.step()
                _add(stats, "entropy", entropy.item())
                for key, value in info.as_dict(names=plan.loss_names).items():
                    _add(stats, key, value)

                values = critic(ro.ids[mb], ro.attn[mb], ro.prompt_len, hidden)
                v_losses = [
                    ppo.value_loss(
                        values[s], old_values[s][mb], returns[s][mb], mask[mb], cfg.clip_value
                    )
                    for s in range(len(plan.streams))
                ]
                critic_opt.zero_grad(set_to_none=True)
                torch.stack(v_losses).sum().backward()
                _all_reduce_grads(critic.parameters(), d)
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
                critic_opt.step()
                for s, v in enumerate(v_losses):
                    _add(stats, f"value_loss/{plan.streams[s]}", v.item())

        policy.eval()  # generation: KV cache on, checkpointing off
        critic.eval()

        # -- metrics (rank 0 writes; statistics over all ranks' samples)
        seq_kl = ppo.sequence_kl(old_logp, ref_logp, mask).cpu()
        row = step_metrics(
            step,
            plan,
            scorers,
            _gather_rows(raw, d),
            _gather(seq_kl, d),
            _gather(ro.mask.sum(-1).float().cpu(), d),
            stats,
            multipliers,
            lr,
            time.time() - t0,
        )
        if d.main:
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            bar.set_postfix(_postfix(row, names, scorers), refresh=False)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(
                out, cfg, step + 1, policy, critic, opt, sched, critic_opt, lagrangians, d
            )
    bar.close()

    if d.main:
        if cfg.plots:
            plot_metrics(out)
        if cfg.eval_size != 0:
            from integrations.evaluate import evaluate_policy, write_eval

            result = evaluate_policy(setup, policy, cfg, n_prompts=cfg.eval_size)
            write_eval(out / "eval.json", result)
    if d.world > 1:
        dist.barrier()
    return out


def _add(stats: dict[str, list[float]], key: str, value: float) -> None:
    stats.setdefault(key, []).append(value)


def step_metrics(
    step: int,
    plan: Plan,
    scorers: Sequence[Any],
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


def harmless_ratio(costs: torch.Tensor) -> float:
    """Share of responses the cost model calls harmless: C < 0 (paper App. B, Table 1)."""
    return float((costs < 0).float().mean())


def _postfix(row: dict[str, Any], names: list[str], scorers: Sequence[Any]) -> dict[str, str]:
    post = {}
    for name, s in zip(names, scorers, strict=True):
        if s.kind == "cost":
            post[f"{name[:4]}:C"] = f"{row[f'{name}/cost_mean']:.3f}"
        else:
            post[f"{name[:4]}:R"] = f"{row[f'{name}/reward_mean']:.3f}"
    post["KL"] = f"{row['kl']:.3f}"
    if row.get("cosine") is not None:
        post["cos"] = f"{row['cosine']:+.2f}"
    return post


# ----------------------------------------------------------------------------- multi-process


def _all_reduce_grads(params: Any, d: Dist) -> None:
    if d.world == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(d.world)


def _gather(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate a 1-D CPU tensor over ranks (metrics and the Lagrangian see every sample)."""
    if d.world == 1:
        return x
    parts: list[Any] = [None] * d.world
    dist.all_gather_object(parts, x.cpu())
    return torch.cat(parts)


def _gather_rows(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world == 1:
        return x
    return torch.stack([_gather(row, d) for row in x])


# ----------------------------------------------------------------------------- checkpoints


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    out: Path,
    cfg: Config,
    step: int,
    policy: nn.Module,
    critic: nn.Module,
    opt: Any,
    sched: Any,
    critic_opt: Any,
    lagrangians: list[ppo.Lagrangian],
    d: Dist,
) -> None:
    """Everything a bit-exact continuation needs, written atomically (tmp file + os.replace):
    trainable policy weights, critic, MOGD (incl. the inner AdamW) and critic optimizer states,
    LR schedule, multipliers, every rank's RNG states, step and config hash."""
    rngs: list[Any] = [rng_state()]
    if d.world > 1:
        rngs = [None] * d.world
        dist.all_gather_object(rngs, rng_state())
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


def restore(
    state: dict[str, Any],
    policy: nn.Module,
    critic: nn.Module,
    opt: Any,
    sched: Any,
    critic_opt: Any,
    lagrangians: list[ppo.Lagrangian],
    d: Dist,
) -> None:
    params = dict(policy.named_parameters())
    if set(state["policy"]) != {n for n, p in params.items() if p.requires_grad}:
        raise ValueError(
            "checkpoint's policy parameters do not match the model built by the "
            "preset (another preset or model version?)"
        )
    with torch.no_grad():
        for name, value in state["policy"].items():
            params[name].copy_(value)
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


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics rows past the checkpoint (those iterations are redone)."""
    if not path.exists():
        return
    rows = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    _atomic_write_text(path, "".join(r + "\n" for r in rows))


# ----------------------------------------------------------------------------- plots


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


# ----------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        from integrations.evaluate import main as evaluate_main

        return evaluate_main(argv)
    try:
        cfg = parse_config(argv)
        resume_state = None if cfg.dry_run else open_run(cfg)
    except ValueError as err:
        print(f"rlhf_mistral.py: error: {err}", file=sys.stderr)
        return 2
    if cfg.dry_run:
        if cfg.preset == "mistral-7b":
            from integrations.paper import dry_run

            print(dry_run(preset_namespace(cfg)))
        else:
            print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    out = train(cfg, resume_state)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
