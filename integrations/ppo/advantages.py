"""PPO math for multi-objective RLHF (Li et al., ACL 2025, arXiv 2507.01915, App. B).

Pure tensor functions, no models: the training loop in ``integrations/rlhf_mistral.py`` calls them
once per objective stream. Shapes: ``B`` sequences, ``T`` response tokens. ``mask`` is ``[B, T]``
with 1 on real response tokens (up to and including EOS) and 0 on the right padding after it;
every response is a contiguous prefix of its row.

Per objective i (App. B):

* KL-shaped token rewards  r̂_t = r_t − β (log π(a_t|s_t) − log π_ref(a_t|s_t)) (Eq. 14),
  with the sequence score at the last response token: R for helpfulness, −C for harmlessness.
* GAE(γ, λ) advantages from the objective's own critic V_i, returns Â + V.
* Clipped surrogate  L_i = −E[min(ρ_t A_t, clip(ρ_t, 1−ε, 1+ε) A_t)],  ρ_t = π/π_old.
* Clipped value loss ½ E[max((V − Â)², (V_old + clip(V − V_old, ±ε_v) − Â)²)].

The Safe RLHF baseline (Dai et al., ICLR 2024) adds the PPO-Lagrangian multiplier
:class:`Lagrangian` and mixes the streams' advantages with :func:`lagrangian_advantages`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Lagrangian",
    "PolicyLossStats",
    "entropy_from_logits",
    "gae",
    "kl_shaped_rewards",
    "lagrangian_advantages",
    "last_token_index",
    "masked_mean",
    "masked_whiten",
    "policy_loss",
    "sequence_kl",
    "value_loss",
    "warmup_cosine",
]


def _check_mask(mask: torch.Tensor, like: torch.Tensor, name: str = "mask") -> torch.Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)}, got {tuple(mask.shape)}")
    return mask.to(like.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x·m / Σ m over ``dim`` (all elements when None); 0 where the mask is empty."""
    m = _check_mask(mask, x)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − μ) / sqrt(σ² + 1e-8) over the masked entries (μ kept if ``shift_mean`` is False).

    σ² is the unbiased masked variance, as in TRL/Safe RLHF's ``masked_whiten``; masked-out entries
    come back as 0 so padding never carries an advantage.
    """
    m = _check_mask(mask, x)
    n = m.sum()
    if n < 2:
        raise ValueError("masked_whiten needs at least 2 unmasked entries to estimate a variance")
    mean = (x * m).sum() / n
    var = (((x - mean) ** 2) * m).sum() / (n - 1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * m


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real response token of each row (``[B]`` long); rows must be non-empty."""
    lengths = mask.long().sum(-1)
    if (lengths == 0).any():
        raise ValueError("every response needs at least one token in mask (a row is all zeros)")
    return lengths - 1


def kl_shaped_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-token rewards r̂_t = r_t − β (log π − log π_ref) (paper App. B, Eq. 14).

    ``scores`` ``[B]`` is the objective's sequence-level reward, placed at the last response token
    (r_t = 0 elsewhere): the reward model's R for helpfulness, −C (the negated cost) for
    harmlessness. The KL term is a penalty in *every* stream. The paper's Eq. 14 prints the
    harmlessness stream with +β·KL; that is a sign typo: with the reward −C a +β·KL would pay the
    policy for drifting from π_ref. Safe RLHF (whose cost stream adds +β·KL to the *cost* C, i.e.
    −β·KL to −C) agrees with the sign used here.

    Returns ``[B, T]`` rewards, 0 on padding.
    """
    m = _check_mask(mask, logprobs)
    if ref_logprobs.shape != logprobs.shape:
        raise ValueError(
            f"ref_logprobs must have the shape of logprobs {tuple(logprobs.shape)}, "
            f"got {tuple(ref_logprobs.shape)}"
        )
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(f"scores must have shape [{logprobs.shape[0]}], got {tuple(scores.shape)}")
    rewards = -beta * (logprobs - ref_logprobs) * m
    last = last_token_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


def sequence_kl(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-sequence KL estimate Σ_t (log π − log π_ref) over the response (``[B]``).

    The sampled-sequence estimator of KL(π ‖ π_ref) whose per-token terms the shaping penalises.
    """
    m = _check_mask(mask, logprobs)
    return ((logprobs - ref_logprobs) * m).sum(-1)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), per objective as in paper App. B.

    δ_t = r̂_t + γ V(s_{t+1}) − V(s_t),   Â_t = δ_t + γλ Â_{t+1},
    with V(s_{t+1}) = 0 and Â_{t+1} = 0 after the last real token (the episode ends at EOS, and
    padding carries no value). Returns (advantages, returns = advantages + values), both ``[B, T]``
    and 0 on padding.
    """
    m = _check_mask(mask, rewards)
    if values.shape != rewards.shape:
        raise ValueError(
            f"values must have the shape of rewards {tuple(rewards.shape)}, "
            f"got {tuple(values.shape)}"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")
    T = rewards.shape[-1]
    values = values * m
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        # next_value / next_adv are already 0 when t is the last real token (mask[t+1] == 0).
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * m[:, t]
        advantages[:, t] = adv
        next_value = values[:, t]
        next_adv = adv
    return advantages, (advantages + values) * m


@dataclass(frozen=True)
class PolicyLossStats:
    """Diagnostics of one clipped-surrogate evaluation (detached floats)."""

    clip_fraction: float  # share of tokens with |ρ − 1| > ε (CleanRL's clipfrac)
    approx_kl: float  # E[(ρ − 1) − log ρ] ≥ 0, the k3 estimate of KL(π_old ‖ π)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """Clipped PPO surrogate of one objective (Schulman et al. 2017; paper App. B).

    L = −E_t[min(ρ_t Â_t, clip(ρ_t, 1−ε, 1+ε) Â_t)],  ρ_t = exp(log π − log π_old),
    the mean taken over real response tokens of the batch. ``advantages`` are constants.
    """
    m = _check_mask(mask, logprobs)
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    advantages = advantages.detach()
    log_ratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -masked_mean(torch.minimum(unclipped, clipped), m)
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip_eps).to(m.dtype), m)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, m)
    return loss, PolicyLossStats(float(clip_fraction), float(approx_kl))


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_value: float | None,
) -> torch.Tensor:
    """Clipped value loss ½ E[max((V − Â)², (V_clip − Â)²)], V_clip = V_old + clip(V − V_old, ±c).

    ``clip_value=None`` gives the plain ½ E[(V − Â)²]. Â are the GAE returns (constants).
    """
    m = _check_mask(mask, values)
    returns = returns.detach()
    loss = (values - returns) ** 2
    if clip_value is not None:
        if clip_value <= 0:
            raise ValueError(f"clip_value must be > 0 or None, got {clip_value}")
        old_values = old_values.detach()
        clipped = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, m)


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean token entropy H = −Σ_v p_v log p_v of the policy over real response tokens."""
    # bf16/fp16 logits would lose the small probabilities' contribution; fp32 and fp64 stay.
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return masked_mean(entropy, mask)


def lagrangian_advantages(
    reward_advantages: Sequence[torch.Tensor],
    constraint_advantages: Sequence[torch.Tensor],
    multipliers: Sequence[float],
) -> torch.Tensor:
    """PPO-Lagrangian advantage (Safe RLHF, Dai et al. ICLR 2024; the paper's Safe RLHF baseline).

    A = (Σ_r A_r + Σ_j λ_j A_j) / (1 + Σ_j λ_j),
    where A_j is the advantage of constraint j's *harmlessness* stream (reward −C_j, so
    A_j = −A^{C_j}, the negated cost advantage). With one reward and one cost this is Safe RLHF's
    (A^R − λ A^C) / (1 + λ); dividing by 1 + Σλ keeps the advantage scale fixed as λ grows.
    """
    if len(constraint_advantages) != len(multipliers):
        raise ValueError(
            f"need one multiplier per constraint: {len(constraint_advantages)} constraint streams, "
            f"{len(multipliers)} multipliers"
        )
    if not reward_advantages:
        raise ValueError("safe-rlhf needs at least one reward objective (kind='reward')")
    total = torch.stack(list(reward_advantages)).sum(0)
    for lam, adv in zip(multipliers, constraint_advantages, strict=True):
        total = total + lam * adv
    return total / (1.0 + float(sum(multipliers)))


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


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The paper's schedule (Table 2: cosine, 3 % warm-up): lr · t / warmup for t < warmup, then
    lr · ½ (1 + cos(π (t − warmup) / (total − warmup))), floored at 0; the same factors as
    transformers' ``get_cosine_schedule_with_warmup``, whose module would import peft (seconds)
    on every run of the tiny preset."""

    def factor(t: int) -> float:
        if t < warmup:
            return t / max(1, warmup)
        progress = (t - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
