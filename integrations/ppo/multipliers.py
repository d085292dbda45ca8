"""The numbers two baselines update between policy updates, from the batch's scores: Safe RLHF's
Lagrange multiplier λ (:class:`Lagrangian`) and Fast RL's reward weights w (:class:`RewardWeights`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from .options import SafeRLHFOptions

__all__ = ["Lagrangian", "RewardWeights"]


class Lagrangian:
    """The Lagrange multiplier λ ≥ 0 of one cost constraint E[C] ≤ d (Safe RLHF's PPO-Lagrangian).

    λ = exp(log λ) and, once ``step >= update_delay``, one gradient-ascent step on the dual:
        log λ ← min(log λ + lr · λ · (C̄ − d), log λ_max),
    where C̄ is the mean cost of the last ``window`` episodes (sequence cost scores, before KL).
    This is Safe RLHF's update (SGD on −(C̄ − d)·exp(log λ) w.r.t. log λ, then clamping), whose
    defaults (``scripts/ppo-lag.sh``) are d = 0, λ_init = 1, lr = 0.1, λ_max = 5, delay 0,
    window 128. Pass ``lambda_max=None`` for no upper bound.
    """

    def __init__(
        self,
        threshold: float = 0.0,
        lambda_init: float = 1.0,
        lambda_lr: float = 0.1,
        lambda_max: float | None = 5.0,
        update_delay: int = 0,
        window: int = 128,
    ) -> None:
        if not lambda_init > 0:
            raise ValueError(f"lambda_init must be > 0 (λ = exp(log λ)), got {lambda_init}")
        if lambda_lr < 0:
            raise ValueError(f"lambda_lr must be >= 0, got {lambda_lr}")
        if lambda_max is not None and lambda_max < lambda_init:
            raise ValueError(f"lambda_max ({lambda_max}) must be >= lambda_init ({lambda_init})")
        if update_delay < 0:
            raise ValueError(f"update_delay must be >= 0, got {update_delay}")
        if window < 1:
            raise ValueError(f"window must be >= 1 episode, got {window}")
        self.threshold = float(threshold)
        self.lambda_lr = float(lambda_lr)
        self.log_lambda_max = None if lambda_max is None else math.log(lambda_max)
        self.update_delay = int(update_delay)
        self.log_lambda = math.log(lambda_init)
        self.episode_costs: deque[float] = deque(maxlen=int(window))

    @classmethod
    def from_options(cls, opts: SafeRLHFOptions) -> Lagrangian:
        """The multiplier of ``--method safe-rlhf`` with the options of its section."""
        return cls(
            threshold=opts.lambda_threshold,
            lambda_init=opts.lambda_init,
            lambda_lr=opts.lambda_lr,
            lambda_max=opts.lambda_max,
            update_delay=opts.lambda_update_delay,
            window=opts.episode_cost_window,
        )

    @property
    def value(self) -> float:
        """The current multiplier λ."""
        return math.exp(self.log_lambda)

    def record(self, costs: Sequence[float] | torch.Tensor) -> None:
        """Append this batch's episode costs C (one per response) to the window."""
        if isinstance(costs, torch.Tensor):
            costs = costs.detach().cpu().double().flatten().tolist()
        self.episode_costs.extend(float(c) for c in costs)

    def update(self, step: int) -> float:
        """One dual step (skipped before ``update_delay`` or with an empty window); returns λ."""
        if step >= self.update_delay and self.episode_costs:
            mean_cost = sum(self.episode_costs) / len(self.episode_costs)
            self.log_lambda += self.lambda_lr * self.value * (mean_cost - self.threshold)
            if self.log_lambda_max is not None:
                self.log_lambda = min(self.log_lambda, self.log_lambda_max)
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"log_lambda": self.log_lambda, "episode_costs": list(self.episode_costs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_lambda = float(state["log_lambda"])
        self.episode_costs.clear()
        self.episode_costs.extend(float(c) for c in state["episode_costs"])


class RewardWeights:
    """Fast RL's reward weights: Li et al., "Optimizing Language Models with Fair and Stable
    Reward Composition in Reinforcement Learning", EMNLP 2024 (the GAPO paper's Table 1 "Fast
    RL" baseline).

    The policy maximises the dynamic weighted sum Σ_i w_i r_i, and w (on the simplex, started
    at uniform, ½/½ for two objectives) and the policy are updated in turn. Li et al. update w
    by mirror descent rather than by gradients through the policy: here the entropic mirror
    (exponentiated-gradient) step on min_w Σ_i w_i r̄_i, which moves weight to the objectives
    that lag, the fairness their method is after:

        w_i ← w_i exp(−η r̄_i) / Σ_j w_j exp(−η r̄_j),

    r̄_i the mean reward of objective i (R, or −C) over the iteration's batch, η = --weight-lr.
    """

    def __init__(self, k: int, lr: float) -> None:
        if k < 1 or not lr > 0:
            raise ValueError(f"RewardWeights needs k >= 1 and lr > 0; got k={k}, lr={lr}")
        self.lr = lr
        self.weights = torch.full((k,), 1.0 / k, dtype=torch.float64)

    def update(self, mean_rewards: torch.Tensor) -> torch.Tensor:
        """One mirror-descent step from the batch's mean rewards ``[k]``; returns the new w."""
        if mean_rewards.shape != self.weights.shape or not torch.isfinite(mean_rewards).all():
            raise ValueError(f"mean_rewards must be {len(self.weights)} finite numbers")
        logits = self.weights.log() - self.lr * mean_rewards.to(torch.float64)
        self.weights = torch.softmax(logits, 0)
        return self.weights

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.weights = state["weights"].to(torch.float64).clone()

    def __repr__(self) -> str:
        return f"RewardWeights(weights={self.weights.tolist()}, lr={self.lr})"
