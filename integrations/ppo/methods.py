"""The training methods: how each maps the K objectives onto critic streams, policy losses and a
MOGD weighting. :data:`METHODS` is the one table every part of the pipeline reads (validation,
the loop, the dry run's memory plan, sweeps).

- gapo / mgda / pgapo: one critic stream and one PPO loss per objective; MOGD combines the k
  per-objective gradients with GAPO(p) (paper Eq. 6-7), MGDA or P-GAPO(λ) (Eq. 8).
- morlhf: PPO on the linearly scalarised reward Σ_i c_i r_i (one stream, one loss).
- fast-rl: PPO on Σ_i w_i r_i with reward weights w updated by mirror descent between policy
  updates (Li et al., EMNLP 2024; :class:`~.multipliers.RewardWeights`).
- ppo-h / ppo-s: PPO on the helpful / harmless objective alone.
- safe-rlhf: PPO-Lagrangian, one loss on the combined reward-minus-λ·cost advantage
  (:class:`~.multipliers.Lagrangian`).

The single-loss methods run through MOGD with k = 1 and ``mogd.Linear([1])``, which is the inner
optimizer exactly, so every method shares one update path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

import mogd

from ..worlds.base import Scorer

Method = Literal["gapo", "mgda", "pgapo", "morlhf", "fast-rl", "ppo-h", "ppo-s", "safe-rlhf"]
Update = Literal["rescaled", "raw"]
# (p, update, preference normalised to sum 1) -> the weighting MOGD uses
WeightingFactory = Callable[[float, Update, list[float]], mogd.Weighting]


def single_loss(p: float, update: Update, preference: list[float]) -> mogd.Weighting:
    """k = 1: weight 1, MOGD is the inner optimizer exactly."""
    return mogd.Linear([1.0])


@dataclass(frozen=True)
class MethodSpec:
    """``streams``: "objectives" (one critic stream per objective), "scalarised" (one stream on
    the preference-weighted sum of the rewards) or the name of the one objective trained.
    ``loss``: one PPO loss per stream ("per-stream"), one loss ("single"), or one loss on the
    Lagrangian advantage ("lagrangian"). ``preference``: whether --preference applies."""

    streams: str
    loss: Literal["per-stream", "single", "lagrangian"]
    weighting: WeightingFactory
    preference: bool = False


METHODS: dict[Method, MethodSpec] = {
    "gapo": MethodSpec("objectives", "per-stream", lambda p, u, _: mogd.GAPO(p=p, update=u)),
    "mgda": MethodSpec("objectives", "per-stream", lambda *_: mogd.MGDA()),
    "pgapo": MethodSpec(
        "objectives", "per-stream", lambda _p, _u, pref: mogd.PGAPO(pref), preference=True
    ),
    "morlhf": MethodSpec("scalarised", "single", single_loss, preference=True),
    "fast-rl": MethodSpec("scalarised", "single", single_loss),
    "ppo-h": MethodSpec("helpful", "single", single_loss),
    "ppo-s": MethodSpec("harmless", "single", single_loss),
    "safe-rlhf": MethodSpec("objectives", "lagrangian", single_loss),
}


def objective_count(method: Method, n_objectives: int) -> int:
    """k, the per-objective gradients MOGD keeps: one per objective for the per-stream methods,
    one for the single-loss ones."""
    return n_objectives if METHODS[method].loss == "per-stream" else 1


@dataclass
class Plan:
    """How a method maps the K objectives onto critic streams and policy losses.

    ``mix`` [S, K]: stream s's sequence score is Σ_k mix[s, k] · reward_k. Each stream gets its
    own KL shaping and critic head.
    """

    streams: list[str]
    mix: torch.Tensor
    losses: Literal["per-stream", "single", "lagrangian"]
    weighting: mogd.Weighting
    reward_streams: list[int] = field(default_factory=list)  # safe-rlhf
    cost_streams: list[int] = field(default_factory=list)  # safe-rlhf

    @property
    def loss_names(self) -> list[str]:
        """One name per policy loss (what MOGD's weights and cosines are logged under)."""
        return ["lagrangian"] if self.losses == "lagrangian" else list(self.streams)


def make_plan(
    method: Method,
    scorers: Sequence[Scorer],
    *,
    p: float = 1.0,
    update: Update = "rescaled",
    preference: Sequence[float] | None = None,
) -> Plan:
    """The :class:`Plan` of ``method`` on the objectives ``scorers`` (in order)."""
    spec = METHODS[method]
    names = [s.name for s in scorers]
    k = len(names)
    eye = torch.eye(k)
    pref = torch.tensor(list(preference) if preference is not None else [1.0] * k)
    pref = pref / pref.sum()
    weighting = spec.weighting(p, update, pref.tolist())
    if spec.streams == "scalarised":
        return Plan(["scalarised"], pref[None, :], spec.loss, weighting)
    if spec.streams != "objectives":
        i = names.index(spec.streams)
        return Plan([names[i]], eye[i : i + 1], spec.loss, weighting)
    if spec.loss != "lagrangian":
        return Plan(names, eye, spec.loss, weighting)
    rewards = [i for i, s in enumerate(scorers) if s.kind == "reward"]
    costs = [i for i, s in enumerate(scorers) if s.kind == "cost"]
    if not rewards or not costs:
        raise ValueError(
            f"--method {method} needs at least one reward and one cost objective; "
            f"--objectives {' '.join(names)} gives kinds {[s.kind for s in scorers]}"
        )
    return Plan(names, eye, spec.loss, weighting, rewards, costs)
