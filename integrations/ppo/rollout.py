"""Rollouts: which prompts an iteration takes, sampling responses, scoring them, and the
log-probabilities PPO needs (paper App. B: one response per prompt, scored by every objective)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..worlds.base import Scorer, Setup
from .options import RolloutOptions
from .sampling import Decoding, positions, response_logprobs, sample


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


def group_indices(indices: Sequence[int], samples_per_prompt: int) -> list[int]:
    """Each prompt index repeated ``samples_per_prompt`` times, consecutively (the groups
    :func:`.advantages.leave_one_out_baseline` expects)."""
    return [i for i in indices for _ in range(samples_per_prompt)]


def decoding(opts: RolloutOptions) -> Decoding:
    """The sampling distribution of the rollouts (temperature, top-p, repetition penalty)."""
    return Decoding(
        temperature=opts.temperature, top_p=opts.top_p, repetition_penalty=opts.repetition_penalty
    )


def forward_response(
    model: nn.Module,
    ids: torch.Tensor,
    attn: torch.Tensor,
    prompt_len: int,
    decoding: Decoding,
    hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[B, T]`` of the response tokens, their logits ``[B, T, V]`` and (``hidden``)
    the last hidden states ``[B, T, H]`` of the states that emit them.

    The log-probs are those of the distribution the tokens were sampled from (repetition
    penalty, temperature, top-p: :func:`.sampling.response_logprobs`), so the PPO
    ratio is one of sampling probabilities; the logits are divided by the temperature only
    (for the entropy bonus).
    """
    out = model(
        input_ids=ids,
        attention_mask=attn,
        position_ids=positions(attn),
        output_hidden_states=hidden,
    )
    raw = out.logits[:, prompt_len - 1 : -1].float()
    logp = response_logprobs(raw, ids, prompt_len, decoding)
    states = out.hidden_states[-1][:, prompt_len - 1 : -1] if hidden else None
    return logp, raw / decoding.temperature, states


@dataclass
class Rollout:
    prompts: list[str]
    responses: list[str]
    ids: torch.Tensor  # [B, P + T] left-padded prompt + right-padded response
    attn: torch.Tensor  # [B, P + T]
    mask: torch.Tensor  # [B, T] 1 on response tokens up to and including EOS
    prompt_len: int


def _agree(flags: torch.Tensor) -> torch.Tensor:
    """The MIN of the decoding loop's flags over the processes: sharded models (FSDP) need all
    ranks to run the same number of forward passes, so they stop together."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return flags


@torch.no_grad()
def generate(setup: Setup, model: nn.Module, prompts: list[str], opts: RolloutOptions) -> Rollout:
    """Sample one response per prompt with the lean KV-cache loop of
    :mod:`.sampling` (``generate``'s distribution: temperature, top-p, repetition
    penalty; at most ``--max-new-tokens``), ``--generation-batch`` prompts at a time.

    The prompts are padded together once and each chunk decodes its rows of that one batch, so
    every row sees the padding it would see in one decode (the repetition penalty counts the
    pad token); the chunks' responses are right-padded to the longest.
    """
    tok = setup.tokenizer
    enc = tok([setup.format_prompt(p) for p in prompts], return_tensors="pt", padding=True)
    enc = enc.to(next(model.parameters()).device)
    ids, attn = enc["input_ids"], enc["attention_mask"]
    size = opts.generation_batch or len(prompts)
    parts = [
        sample(
            model,  # type: ignore[arg-type]  # a transformers causal LM
            ids[lo : lo + size],
            attn[lo : lo + size],
            max_new_tokens=opts.max_new_tokens,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            decoding=decoding(opts),
            sync_every=opts.sync_every,
            agree=_agree,
        )
        for lo in range(0, len(prompts), size)
    ]
    width = max(p.mask.shape[1] for p in parts)

    def right_pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    response = torch.cat([right_pad(p.ids[:, p.prompt_len :], tok.pad_token_id) for p in parts])
    mask = torch.cat([right_pad(p.mask, 0) for p in parts])
    prompt_len = ids.shape[1]
    texts = tok.batch_decode(response, skip_special_tokens=True)
    return Rollout(
        prompts,
        [t.strip() for t in texts],
        torch.cat([ids, response], 1),
        torch.cat([attn.long(), mask], 1),
        mask,
        prompt_len,
    )


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
