"""A critic that knows the score before PPO starts (``--critic-warmup``, tiny preset).

Under ``--advantage gae`` a critic that starts at V = 0 hands token t only λ^(T−1−t) of the
score, so credit decays with the distance from the end and short answers (refusals) collect more
of it than long ones. :func:`warm_up_critic` fits the value heads (and the trunk of a ``copy``
critic) to the returns of SFT rollouts before the first iteration, cached per SFT policy as the
SFT is. (``--advantage group`` needs no critic: :func:`.advantages.group_advantages`.)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..worlds.base import Scorer, Setup
from .advantages import explained_variance, gae, kl_shaped_rewards
from .critics import Critic
from .methods import Plan
from .options import PPOOptions, RolloutOptions
from .rollout import decoding, forward_response, generate, objective_rewards, score
from .sampling import Decoding

__all__ = ["fit_critic", "fit_values", "sft_returns", "warm_up_critic", "warmup_key"]

# the warm-up regression: epochs over the SFT rollouts, minibatch, the share held out for the
# explained variance it reports; the sampling seed is fixed, so every run seed shares one cache
WARMUP_EPOCHS = 6
WARMUP_MINIBATCH = 32
WARMUP_HELD_OUT = 0.25
WARMUP_SEED = 4321
WARMUP_VERSION = 1

# (ids, attn, prompt_len, mask) of one batch of rollouts
Batch = tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]


def policy_digest(policy: nn.Module) -> str:
    """sha256 (16 hex digits) of the policy's weights."""
    h = hashlib.sha256()
    for name, p in sorted(policy.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def warmup_key(
    policy: nn.Module,
    critic: Critic,
    objectives: Sequence[str],
    rollouts: int,
    rollout: RolloutOptions,
    ppo: PPOOptions,
    lr: float,
) -> str:
    """What determines the warmed-up critic: the SFT weights, the critic kind, the rollouts'
    number and decoding, the objectives, γ and the regression's settings."""
    spec = {
        "version": WARMUP_VERSION,
        "policy": policy_digest(policy),
        "critic_init": "head" if critic.trunk is None else "copy",
        "rollouts": rollouts,
        "decoding": [
            rollout.temperature,
            rollout.top_p,
            rollout.repetition_penalty,
            rollout.max_new_tokens,
        ],
        "objectives": list(objectives),
        "gamma": ppo.gamma,
        "score_clip": ppo.score_clip,
        "lr": lr,
        "fit": [WARMUP_EPOCHS, WARMUP_MINIBATCH, WARMUP_HELD_OUT, WARMUP_SEED],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def sft_returns(
    setup: Setup,
    scorers: Sequence[Scorer],
    n: int,
    batch: int,
    rollout: RolloutOptions,
    ppo: PPOOptions,
) -> tuple[list[Batch], torch.Tensor]:
    """``n`` SFT rollouts on the train prompts, ``batch`` at a time: (ids, attn, prompt_len,
    mask) per batch, and the Monte-Carlo returns ``[K, n, T]`` of each objective (the policy is
    its own reference, so the KL term is 0: return_t = γ^(T−1−t) · score)."""
    gen = torch.Generator().manual_seed(WARMUP_SEED)
    prompts = setup.train_prompts
    order = torch.randperm(len(prompts), generator=gen).tolist()
    while len(order) < n:
        order += torch.randperm(len(prompts), generator=gen).tolist()
    rollouts, targets = [], []
    width = 0
    for lo in range(0, n, batch):
        chunk = [prompts[i] for i in order[lo : min(n, lo + batch)]]
        ro = generate(setup, setup.policy, chunk, rollout)
        clip = ppo.score_clip
        rewards = objective_rewards(scorers, score(scorers, ro)).clamp(-clip, clip)
        mask = ro.mask.float()
        per = []
        for k in range(len(scorers)):
            zero = torch.zeros_like(mask)
            r = kl_shaped_rewards(rewards[k].to(mask.device), zero, zero, mask, 0.0)
            ret, _ = gae(r, torch.zeros_like(r), mask, ppo.gamma, 1.0)
            per.append(ret)
        rollouts.append((ro.ids, ro.attn, ro.prompt_len, ro.mask))
        targets.append(torch.stack(per))
        width = max(width, mask.shape[1])
    padded = [torch.nn.functional.pad(t, (0, width - t.shape[-1])) for t in targets]
    return rollouts, torch.cat(padded, 1)


def fit_critic(
    critic: Critic,
    policy: nn.Module,
    rollouts: list[Batch],
    targets: torch.Tensor,
    lr: float,
    dec: Decoding,
) -> dict[str, float]:
    """Regress the critic's K heads (and trunk) on the returns: ½ E[(V − R)²] over real tokens,
    AdamW, :data:`WARMUP_EPOCHS` passes over the first 1 − :data:`WARMUP_HELD_OUT` of the
    batches; returns the explained variance per objective on the held-out batches."""
    offsets, lo = [], 0
    for _, _, _, m in rollouts:
        offsets.append((lo, lo + m.shape[0]))
        lo += m.shape[0]
    n_fit = max(1, round(len(rollouts) * (1 - WARMUP_HELD_OUT)))
    opt = torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(WARMUP_SEED + 1)
    critic.train()
    for _ in range(WARMUP_EPOCHS):
        for i in torch.randperm(n_fit, generator=gen).tolist():
            ids, attn, plen, mask = rollouts[i]
            a, b = offsets[i]
            rows = torch.randperm(mask.shape[0], generator=gen)
            for r0 in range(0, len(rows), WARMUP_MINIBATCH):
                sel = rows[r0 : r0 + WARMUP_MINIBATCH]
                sub_targets = targets[:, a:b][:, sel, : mask.shape[1]]
                v = fit_values(critic, policy, (ids[sel], attn[sel], plen, mask[sel]), dec)
                m = mask[sel].float()
                loss = 0.5 * ((v - sub_targets) ** 2 * m).sum() / (m.sum() * v.shape[0])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
                opt.step()
    critic.eval()
    held = range(n_fit, len(rollouts)) if n_fit < len(rollouts) else range(len(rollouts))
    with torch.no_grad():
        vs, ts, ms = [], [], []
        for i in held:
            a, b = offsets[i]
            mask = rollouts[i][3]
            vs.append(fit_values(critic, policy, rollouts[i], dec).flatten(1))
            ts.append(targets[:, a:b, : mask.shape[1]].flatten(1))
            ms.append(mask.float().flatten())
        v, t, m = torch.cat(vs, 1), torch.cat(ts, 1), torch.cat(ms)
    return {f"explained_variance/{k}": explained_variance(v[k], t[k], m) for k in range(v.shape[0])}


def fit_values(critic: Critic, policy: nn.Module, batch: Batch, dec: Decoding) -> torch.Tensor:
    """Values ``[K, B, T]`` of one batch (the policy's detached hidden states for a head critic)."""
    ids, attn, plen, _ = batch
    hidden = None
    if critic.trunk is None:
        with torch.no_grad():
            _, _, hidden = forward_response(policy, ids, attn, plen, dec, hidden=True)
    return critic(ids, attn, plen, hidden)


def warm_up_critic(
    critic: nn.Module,
    setup: Setup,
    scorers: Sequence[Scorer],
    plan: Plan,
    *,
    rollouts: int,
    batch: int,
    rollout: RolloutOptions,
    ppo: PPOOptions,
    lr: float,
    cache_dir: Path,
) -> dict[str, float]:
    """Fit ``critic`` (a :class:`~.critics.Critic`) to the returns of ``rollouts`` SFT rollouts
    (sampled ``batch`` at a time with the run's decoding ``rollout``) before PPO starts, with
    AdamW at ``lr``; cached under ``cache_dir``.

    One head per objective is fitted (with the trunk of a ``copy`` critic); a stream's head is
    then the plan's mix of them, w_s = Σ_k mix[s, k] w_k (exact: the value of Σ_k c_k r_k is
    Σ_k c_k V_k), so every method starts from the same fit. The training RNG is untouched.
    Returns the fit's held-out explained variance per objective."""
    if not isinstance(critic, Critic):
        raise ValueError("--critic-warmup fits a 'copy' or 'head' critic (Critic), not this one")
    names = [s.name for s in scorers]
    policy = setup.policy
    key = warmup_key(policy, critic, names, rollouts, rollout, ppo, lr)
    path = Path(os.path.expanduser(cache_dir)) / f"critic-{key}.pt"
    device = critic.heads.weight.device
    trunk = None if critic.trunk is None else copy.deepcopy(critic.trunk)
    fitted = Critic(trunk, critic.heads.in_features, len(names)).to(device)
    if path.is_file():
        state = torch.load(path, map_location=device, weights_only=True)
        fitted.load_state_dict(state["critic"])
        report = dict(state["report"])
    else:
        with torch.random.fork_rng(devices=[]):
            data, targets = sft_returns(setup, scorers, rollouts, batch, rollout, ppo)
            report = fit_critic(fitted, policy, data, targets, lr, decoding(rollout))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        torch.save({"critic": fitted.state_dict(), "report": report}, tmp)
        os.replace(tmp, path)
    with torch.no_grad():
        if critic.trunk is not None:
            assert fitted.trunk is not None
            critic.trunk.load_state_dict(fitted.trunk.state_dict())
        mix = plan.mix.to(fitted.heads.weight)
        critic.heads.weight.copy_(mix @ fitted.heads.weight)
        critic.heads.bias.copy_(mix @ fitted.heads.bias)
    return {f"{k.split('/')[0]}/{names[int(k.split('/')[1])]}": v for k, v in report.items()}
