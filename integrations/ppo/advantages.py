"""Advantages for multi-objective RLHF (Li et al., ACL 2025, arXiv 2507.01915, App. B).

Pure tensor functions, no models. Shapes: ``B`` sequences, ``T`` response tokens. ``mask`` is
``[B, T]`` with 1 on real response tokens (up to and including EOS) and 0 on the right padding
after it; every response is a contiguous prefix of its row.

Per objective stream i (App. B):

* KL-shaped token rewards  r̂_t = r_t − β (log π(a_t|s_t) − log π_ref(a_t|s_t)) (Eq. 14),
  with the sequence score at the last response token: R for helpfulness, −C for harmlessness.
* GAE(γ, λ) advantages from the stream's own critic V_i, returns Â + V (``--advantage gae``);
  or, with no critic (``--advantage group``), the score minus the leave-one-out mean of the
  prompt's other samples (:func:`group_advantages`), the KL shaping unchanged.

The Safe RLHF baseline (Dai et al., ICLR 2024) mixes the streams' advantages into one with
:func:`lagrangian_advantages`. :func:`stream_advantages` is what the loop calls: all of the above
for every stream of a batch. The losses that use the advantages are in :mod:`.surrogate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .methods import Plan
from .options import PPOOptions

__all__ = [
    "check_mask",
    "explained_variance",
    "gae",
    "group_advantages",
    "kl_shaped_rewards",
    "lagrangian_advantages",
    "last_token_index",
    "leave_one_out_baseline",
    "masked_mean",
    "masked_whiten",
    "sequence_kl",
    "stream_advantages",
]


def check_mask(mask: torch.Tensor, like: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """``mask`` in ``like``'s dtype, after checking that it has ``like``'s shape."""
    if mask.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)}, got {tuple(mask.shape)}")
    return mask.to(like.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x·m / Σ m over ``dim`` (all elements when None); 0 where the mask is empty."""
    m = check_mask(mask, x)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − μ) / sqrt(σ² + 1e-8) over the masked entries (μ kept if ``shift_mean`` is False).

    σ² is the unbiased masked variance, as in TRL/Safe RLHF's ``masked_whiten``; masked-out entries
    come back as 0 so padding never carries an advantage.
    """
    m = check_mask(mask, x)
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
    m = check_mask(mask, logprobs)
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
    m = check_mask(mask, logprobs)
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
    m = check_mask(mask, rewards)
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


def leave_one_out_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """b_i = (Σ_{j ∈ g(i)} s_j − s_i) / (m − 1): the mean score of the other m − 1 samples of
    row i's prompt (RLOO, Kool et al. 2019; Ahmadian et al. 2024). ``scores`` ``[B]`` hold
    B / m groups of m consecutive rows, one group per prompt. Unbiased: b_i does not depend on
    sample i, so E[(s_i − b_i) ∇log π(y_i)] is the policy gradient exactly."""
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 (a leave-one-out mean needs others), got {group_size}"
        )
    if scores.dim() != 1 or scores.shape[0] % group_size:
        raise ValueError(
            f"scores must be [B] with B a multiple of group_size {group_size}, "
            f"got {tuple(scores.shape)}"
        )
    groups = scores.view(-1, group_size)
    return ((groups.sum(1, keepdim=True) - groups) / (group_size - 1)).reshape(-1)


def group_advantages(
    rewards: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    gamma: float = 1.0,
) -> torch.Tensor:
    """Group-baseline advantages, no critic: A_t = Σ_{t' ≥ t} γ^{t'−t} r̂_{t'} − b_i.

    ``rewards`` are the KL-shaped token rewards of :func:`kl_shaped_rewards` (the score s_i at
    the last token, −β·KL on every token: the same shaping as GAE's), ``scores`` ``[B]`` the
    sequence scores, b_i their :func:`leave_one_out_baseline` over the prompt's other m − 1
    samples. With γ = 1 every token of sequence i gets s_i − b_i plus the KL still to come.
    Never divided by a standard deviation: GAPO reads the objectives' gradient scales. Equal
    to :func:`gae` with V = 0, λ = 1, minus b_i on the real tokens. Returns ``[B, T]``, 0 on
    padding.
    """
    m = check_mask(mask, rewards)
    returns, _ = gae(rewards, torch.zeros_like(rewards), m, gamma, 1.0)
    baseline = leave_one_out_baseline(scores.to(rewards.dtype), group_size)
    return (returns - baseline[:, None]) * m


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(R − V) / Var(R) over the real tokens: 1 for a critic that predicts the returns,
    0 for one no better than their mean, negative for worse (CleanRL's ``explained_var``)."""
    m = check_mask(mask, returns).bool()
    r, v = returns[m].double(), values[m].double()
    var = r.var(unbiased=False)
    if r.numel() < 2 or var <= 0:
        return float("nan")
    return float(1.0 - (r - v).var(unbiased=False) / var)


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


def stream_advantages(
    plan: Plan,
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    opts: PPOOptions,
    multipliers: Sequence[float] = (),
    samples_per_prompt: int = 1,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The advantages of each policy loss of ``plan`` and the critic targets of each stream.

    Per stream s: KL-shaped rewards of its sequence scores ``scores[s]`` (``[S, B]``), then
    GAE with its values ``values[s]`` (``[S, B, T]``; the targets are the GAE returns), or
    under ``--advantage group`` the :func:`group_advantages` over groups of
    ``samples_per_prompt`` consecutive rows (no critic: the targets are the advantages, unused);
    whitened over the batch with ``--whiten-advantages``; for safe-rlhf the streams' advantages
    are mixed into the one Lagrangian advantage with ``multipliers`` (one λ per cost stream).
    """
    advantages, returns = [], []
    for s in range(len(plan.streams)):
        rewards = kl_shaped_rewards(scores[s], logprobs, ref_logprobs, mask, opts.beta)
        if opts.advantage == "group":
            adv = group_advantages(rewards, scores[s], mask, samples_per_prompt, opts.gamma)
            ret = adv
        else:
            adv, ret = gae(rewards, values[s], mask, opts.gamma, opts.gae_lambda)
        advantages.append(adv)
        returns.append(ret)
    if opts.whiten_advantages and mask.sum() > 1:
        advantages = [masked_whiten(a, mask) for a in advantages]
    if plan.losses == "lagrangian":
        advantages = [
            lagrangian_advantages(
                [advantages[i] for i in plan.reward_streams],
                [advantages[j] for j in plan.cost_streams],
                multipliers,
            )
        ]
    return advantages, returns
