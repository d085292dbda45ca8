"""GRPO's pieces that :class:`integrations.trl.MOGDGRPOTrainer` applies per objective.

Pure functions over TRL's tensors and names, kept apart from the trainer's plumbing: group-normalised
advantages per objective (TRL's ``scale_rewards`` applied to each reward column on its own), the
grouping of reward functions into named objectives, and the check of what the trainer relies on in
TRL and transformers.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import transformers
import trl
from trl.trainer.utils import nanstd

import mogd

__all__ = [
    "STD_EPS",
    "Objectives",
    "check_trl_contract",
    "constant_groups",
    "group_advantages",
    "group_objectives",
    "resolve_weighting",
    "unique_names",
]

# TRL's denominator guard in the group normalisation of GRPOTrainer (kept identical per objective).
STD_EPS = 1e-4

Objectives = Mapping[str, str | int | Sequence[str | int]]


def group_advantages(
    rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group"
) -> torch.Tensor:
    """Per-objective GRPO advantages, each reward column normalised on its own.

    For rewards ``[N, k]`` (N = groups × ``num_generations``, rows of one group adjacent, NaN where a
    reward function returned None) and every column j:
    A_j = r_j - mean_group(r_j), divided by std_group(r_j) + 1e-4 (``"group"``), by the batch std of
    r_j + 1e-4 (``"batch"``) or not at all (``"none"``): TRL's ``scale_rewards`` applied per stream.
    Means and stds skip NaNs; a NaN reward gets advantage 0, and so does every member of a group
    whose rewards are all equal (exactly 0, where the float mean could leave an ulp that the
    1e-4 denominator would blow up to a spurious signal).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N, k], got shape {tuple(rewards.shape)}")
    if num_generations < 1 or rewards.shape[0] % num_generations:
        raise ValueError(
            f"num_generations ({num_generations}) must divide the number of rows ({rewards.shape[0]})"
        )
    grouped = rewards.view(-1, num_generations, rewards.shape[1])
    centered = grouped - torch.nanmean(grouped, dim=1, keepdim=True)
    centered = torch.where(constant_groups(grouped).unsqueeze(1), 0.0, centered)
    if scale_rewards == "group":
        std = (
            nanstd(grouped, dim=1, keepdim=True)
            if num_generations > 1
            else torch.zeros_like(grouped[:, :1])
        )
        centered = centered / (std + STD_EPS)
    elif scale_rewards == "batch":
        std = nanstd(rewards, dim=0) if rewards.shape[0] > 1 else torch.zeros_like(rewards[0])
        centered = centered / (std + STD_EPS)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    return torch.nan_to_num(centered.reshape(rewards.shape), nan=0.0)


def constant_groups(grouped: torch.Tensor) -> torch.Tensor:
    """``[groups, k]``: the group's rewards (``grouped`` is ``[groups, size, k]``) that are not NaN
    are all equal (and there is at least one): the group gives objective j no signal."""
    nan = torch.isnan(grouped)
    top = torch.where(nan, -math.inf, grouped).amax(dim=1)
    bottom = torch.where(nan, math.inf, grouped).amin(dim=1)
    return top == bottom


def check_trl_contract() -> None:
    """What MOGDGRPOTrainer relies on in TRL and transformers, checked before anything is built.

    TRL's ``_compute_loss(model, inputs)`` reads ``inputs["advantages"]`` and the switches of its
    terms beside the policy gradient (``beta``, ``_entropy_bonus_enabled``, ``aux_loss_enabled``);
    the Trainer's gradient clipping lives in ``_clip_grad_norm`` / ``_get_grad_norm``. A TRL that
    changes these fails here (and tests/test_trl.py checks the split against stock TRL's loss)."""
    for name in ("_clip_grad_norm", "_get_grad_norm"):
        if not callable(getattr(transformers.Trainer, name, None)):
            raise ImportError(
                f"transformers {transformers.__version__} has no Trainer.{name}, which "
                "MOGDGRPOTrainer overrides to move gradient clipping onto the combined "
                "direction; install the versions of the mogd[trl] extra"
            )
    compute = getattr(trl.GRPOTrainer, "_compute_loss", None)
    parameters = list(inspect.signature(compute).parameters) if callable(compute) else None
    try:
        reads_advantages = 'inputs["advantages"]' in inspect.getsource(compute)  # type: ignore[arg-type]
    except (OSError, TypeError):  # no source shipped: the signature has to do
        reads_advantages = callable(compute)
    if parameters != ["self", "model", "inputs"] or not reads_advantages:
        raise ImportError(
            f"TRL {trl.__version__}: GRPOTrainer._compute_loss is not _compute_loss(model, inputs) "
            "reading inputs['advantages'], which MOGDGRPOTrainer splits into per-objective "
            "policy-gradient losses and a regularizer; install the versions of the mogd[trl] extra"
        )


def group_objectives(
    objectives: Objectives | None, names: list[str], weights: list[float]
) -> dict[str, list[int]]:
    """``{objective: [function index, ...]}``; functions with reward weight 0 are monitor-only."""
    live = [j for j, w in enumerate(weights) if w != 0.0]
    if not live:
        raise ValueError(
            f"every reward weight is 0 ({weights}): nothing to train on; weight 0 marks a reward "
            "function as monitor-only"
        )
    if objectives is None:
        return {names[j]: [j] for j in live}
    if not isinstance(objectives, Mapping) or not objectives:
        raise TypeError(
            "objectives must be a non-empty mapping {objective name: reward function names or "
            f"indices}}, e.g. {{'quality': ['correct', 'format'], 'safety': 'toxicity'}}; got {objectives!r}"
        )
    grouped: dict[str, list[int]] = {}
    owner: dict[int, str] = {}
    for objective, members in objectives.items():
        if not isinstance(objective, str) or not objective:
            raise TypeError(f"objectives: names must be non-empty strings, got {objective!r}")
        listed = [members] if isinstance(members, (str, int)) else list(members)
        if not listed:
            raise ValueError(f"objectives[{objective!r}] lists no reward function")
        indices = []
        for member in listed:
            j = _function_index(member, names, objective)
            if j in owner:
                raise ValueError(
                    f"reward function {names[j]!r} is in objectives {owner[j]!r} and {objective!r}; "
                    "each function belongs to one objective"
                )
            if weights[j] == 0.0:
                raise ValueError(
                    f"reward function {names[j]!r} (objectives[{objective!r}]) has reward weight 0, "
                    "which means monitor-only; drop it from objectives= or give it a weight"
                )
            owner[j] = objective
            indices.append(j)
        grouped[objective] = indices
    missing = [names[j] for j in live if j not in owner]
    if missing:
        raise ValueError(
            f"reward functions {missing} are in no objective; add them to objectives= or give them "
            "reward weight 0 (monitor-only)"
        )
    return grouped


def _function_index(member: Any, names: list[str], objective: str) -> int:
    if isinstance(member, bool) or not isinstance(member, (str, int)):
        raise TypeError(
            f"objectives[{objective!r}]: reward functions are named by name or index, got {member!r}"
        )
    if isinstance(member, int):
        if not 0 <= member < len(names):
            raise ValueError(
                f"objectives[{objective!r}]: index {member} is out of range for {len(names)} "
                "reward functions"
            )
        return member
    if member not in names:
        raise ValueError(
            f"objectives[{objective!r}]: no reward function named {member!r}; they are {names}"
        )
    return names.index(member)


def unique_names(names: Sequence[str]) -> list[str]:
    """Reward names as log keys: repeated names get a suffix (``name_1``...)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        n = seen.get(name, 0)
        seen[name] = n + 1
        out.append(name if n == 0 else f"{name}_{n}")
    return out


def resolve_weighting(
    weighting: Any,
    objectives: dict[str, list[int]],
    function_weights: list[float],
    names: list[str],
) -> tuple[mogd.Weighting | Literal["sum"], list[float]]:
    """The trainer's weighting (``weighting=``, with ``args.reward_weights`` where it takes them),
    and the weights c_j of the functions inside their objectives' rewards r_o = Σ_{j ∈ o} c_j r_j.
    ``objectives`` is :func:`group_objectives`' map, ``names`` the functions' unique names."""
    k = len(objectives)
    if weighting == "sum":
        return "sum", function_weights
    if weighting is None:
        weighting = mogd.GAPO(p=1.0)
    if weighting in (mogd.PGAPO, mogd.Linear):
        grouped = [name for name, members in objectives.items() if len(members) > 1]
        if grouped:
            raise ValueError(
                f"weighting={weighting.__name__} takes one reward weight per objective, but "
                f"objective(s) {grouped} group several functions; pass an instance with one "
                f"entry per objective, e.g. mogd.{weighting.__name__}([...])"
            )
        vector = [function_weights[members[0]] for members in objectives.values()]
        try:
            return weighting(vector), [1.0] * len(function_weights)  # type: ignore[operator]
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"reward_weights cannot be the {weighting.__name__} weights: {err}"
            ) from err
    if not isinstance(weighting, mogd.Weighting):
        raise TypeError(
            "weighting must be a mogd weighting (mogd.GAPO(p=1), mogd.MGDA(), mogd.PGAPO([...]), "
            "mogd.Linear([...])), the class mogd.PGAPO / mogd.Linear to take "
            f'args.reward_weights, or "sum" for stock TRL GRPO; got {weighting!r}'
        )
    own = {mogd.PGAPO: "preference", mogd.Linear: "weights"}.get(type(weighting))
    entries = None if own is None else torch.as_tensor(getattr(weighting, own)).numel()
    if entries is not None and entries != k:
        raise ValueError(
            f"weighting {weighting!r} has {entries} entries but there are {k} objectives "
            f"{list(objectives)}"
        )
    for members in objectives.values():
        if len(members) == 1 and function_weights[members[0]] != 1.0:
            j = members[0]
            raise ValueError(
                f"reward_weights[{j}] = {function_weights[j]} on {names[j]!r}, alone in its "
                f"objective: under {weighting!r} a reward weight weighs functions inside an "
                "objective, and the group normalisation cancels it here. Use 1 (or 0 to "
                "monitor only); for a preference between objectives pass weighting=mogd.PGAPO "
                'or mogd.Linear (taking reward_weights), and weighting="sum" for stock GRPO'
            )
    return weighting, function_weights
