"""The PPO losses of one objective stream (Schulman et al. 2017; Li et al. 2025, App. B).

* Clipped surrogate  L_i = −E[min(ρ_t A_t, clip(ρ_t, 1−ε, 1+ε) A_t)],  ρ_t = π/π_old.
* Clipped value loss ½ E[max((V − Â)², (V_old + clip(V − V_old, ±ε_v) − Â)²)].
* The entropy of the policy over the response tokens (the entropy bonus).

Means are over the real response tokens (``mask``), as in :mod:`.advantages`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .advantages import check_mask, masked_mean

__all__ = ["PolicyLossStats", "entropy_from_logits", "policy_loss", "value_loss"]


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
    m = check_mask(mask, logprobs)
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
    m = check_mask(mask, values)
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
