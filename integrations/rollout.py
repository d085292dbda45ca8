"""Rollouts: which prompts an iteration takes, sampling responses, scoring them, and the
log-probabilities PPO needs (paper App. B: one response per prompt, scored by every objective)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .common import Scorer, Setup
from .config import Config


def prompt_indices(step: int, batch: int, n: int, seed: int, rank: int, world: int) -> list[int]:
    """This process's prompts for iteration ``step``: a DistributedSampler-like shard.

    The prompts form an endless stream of seeded permutations (one per epoch); iteration t takes
    the next world·batch of them and rank r every world-th one, so nothing depends on state.
    """
    per_step = batch * world
    out = []
    for pos in range(step * per_step + rank, (step + 1) * per_step, world):
        epoch, offset = divmod(pos, n)
        out.append(epoch_order(seed, epoch, n)[offset])
    return out


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The seeded permutation of ``n`` prompts for one pass over them."""
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


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


@dataclass
class Rollout:
    prompts: list[str]
    responses: list[str]
    ids: torch.Tensor  # [B, P + T] left-padded prompt + right-padded response
    attn: torch.Tensor  # [B, P + T]
    mask: torch.Tensor  # [B, T] 1 on response tokens up to and including EOS
    prompt_len: int


@torch.no_grad()
def generate(setup: Setup, model: nn.Module, prompts: list[str], cfg: Config) -> Rollout:
    """Sample one response per prompt (temperature, top_p, repetition penalty, max new tokens)."""
    tok = setup.tokenizer
    enc = tok([setup.format_prompt(p) for p in prompts], return_tensors="pt", padding=True)
    enc = enc.to(next(model.parameters()).device)
    out = model.generate(  # type: ignore[operator]  # a transformers GenerationMixin
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


def score(scorers: Sequence[Scorer], rollout: Rollout) -> torch.Tensor:
    """Raw scores ``[K, B]`` (reward R or cost C, as each scorer reports it)."""
    return torch.stack([s.score(rollout.prompts, rollout.responses).float().cpu() for s in scorers])


def objective_rewards(scorers: Sequence[Scorer], raw: torch.Tensor) -> torch.Tensor:
    """Each objective's reward to maximise: R for a reward scorer, −C for a cost scorer."""
    sign = torch.tensor([1.0 if s.kind == "reward" else -1.0 for s in scorers])
    return raw * sign[:, None]


def harmless_ratio(costs: torch.Tensor) -> float:
    """Share of responses the cost model calls harmless: C < 0 (paper App. B, Table 1)."""
    return float((costs < 0).float().mean())
