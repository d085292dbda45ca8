"""A lean sampling loop with a KV cache, and the log-probabilities of what it sampled.

``transformers.generate`` spends most of its time, for a small model, in per-token Python
overhead (stopping criteria, processor lists, cache bookkeeping, input preparation). PPO needs
far less: prefill the prompts once, then one forward of one token per step through the same
``DynamicCache``. :func:`sample` does that and draws every token from exactly the distribution
``generate(do_sample=True, ...)`` draws from, with the same processors in the same order
(``transformers.generation.utils._get_logits_processor``):

1. repetition penalty θ (CTRL, Keskar et al. 2019; HF ``RepetitionPenaltyLogitsProcessor``): every
   token already in the sequence (prompt, padding included, as HF does) has its logit ℓ
   replaced by ℓ·θ if ℓ < 0, else ℓ/θ;
2. temperature τ: ℓ/τ;
3. top-k (``top_k > 0``): all but the k largest set to −∞;
4. top-p (nucleus, Holtzman et al. 2020): sort ascending, drop the tokens whose cumulative
   probability is <= 1 − p, keep at least the largest;

then ``torch.multinomial(softmax(·), 1)``, the draw ``generate`` makes, so with the same seed
and the same logits both loops draw the same tokens. Finished rows get the pad token, as in
``generate``.

PPO's ratio π_θ(a)/π_old(a) must be a ratio of the probabilities the tokens were *sampled*
with: :func:`sample` returns each sampled token's log-probability under the processed
distribution, and :func:`response_logprobs` computes the same numbers (differentiably) from one
forward pass over whole sequences, which is what the update uses. With the plain
``log_softmax(logits / τ)`` a repetition penalty or a top-p cut would make the importance ratio
wrong even before the first update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel


@dataclass(frozen=True)
class Decoding:
    """Sampling settings (paper Table 2 uses τ = 0.7 and repetition penalty 1.05)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off (``generate``'s own default is 50: pass top_k explicitly there)
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def process_logits(
    logits: torch.Tensor, seen: torch.Tensor | None, decoding: Decoding
) -> torch.Tensor:
    """The sampling distribution's logits: penalty, temperature, top-k, top-p (see module doc).

    ``logits`` ``[..., V]`` float; ``seen`` ``[..., V]`` bool (tokens already in the sequence) or
    None when the penalty is off. Removed tokens get −∞. Differentiable in ``logits``.
    """
    if decoding.repetition_penalty != 1.0:
        if seen is None:
            raise ValueError("seen is required when repetition_penalty != 1")
        theta = decoding.repetition_penalty
        penalised = torch.where(logits < 0, logits * theta, logits / theta)
        logits = torch.where(seen, penalised, logits)
    if decoding.temperature != 1.0:
        logits = logits / decoding.temperature
    if decoding.top_k > 0 and decoding.top_k < logits.shape[-1]:
        kth = torch.topk(logits, decoding.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if decoding.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative <= 1 - decoding.top_p
        drop_sorted[..., -1:] = False  # keep at least the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@dataclass
class Sample:
    """Prompts and sampled responses, laid out as the PPO update reads them."""

    ids: torch.Tensor  # [B, P + T] left-padded prompt, then the response (pad after EOS)
    attn: torch.Tensor  # [B, P + T] 1 on prompt tokens and response tokens up to EOS
    mask: torch.Tensor  # [B, T] 1 on response tokens up to and including the first EOS
    logp: torch.Tensor  # [B, T] float32 log-prob each token was sampled with (0 off the mask)
    prompt_len: int


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding (0 on the pads themselves)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    decoding: Decoding,
    generator: torch.Generator | None = None,
    all_done: Callable[[torch.Tensor], bool] | None = None,
) -> Sample:
    """Sample up to ``max_new_tokens`` tokens per left-padded prompt with a KV cache.

    Stops early once ``all_done(done)`` (default: every row has emitted EOS; sharded models
    pass a test that agrees across processes). The draws come from the global RNG (as in
    ``generate``) unless ``generator`` is given.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError("input_ids and attention_mask must both be [batch, prompt_len]")
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    penalty = decoding.repetition_penalty != 1.0
    cache = DynamicCache(config=model.config)
    attn = attention_mask.long()
    out = model(
        input_ids=input_ids,
        attention_mask=attn,
        position_ids=positions(attn),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[:, -1].float()
    seen = None
    if penalty:
        seen = torch.zeros(batch, logits.shape[-1], dtype=torch.bool, device=device)
        seen.scatter_(1, input_ids, True)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, logps = [], []
    for step in range(max_new_tokens):
        scores = process_logits(logits, seen, decoding)
        probs = scores.softmax(-1)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        lp = torch.log_softmax(scores, -1).gather(1, nxt[:, None]).squeeze(1)
        logps.append(lp.masked_fill(done, 0.0))
        tokens.append(nxt)
        done = done | (nxt == eos_token_id)
        finished = all_done(done) if all_done is not None else bool(done.all())
        if finished or step + 1 == max_new_tokens:
            break
        if seen is not None:
            seen.scatter_(1, nxt[:, None], True)
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
        out = model(
            input_ids=nxt[:, None],
            attention_mask=attn,
            position_ids=attn.sum(-1, keepdim=True) - 1,
            cache=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1].float()

    response = torch.stack(tokens, 1)
    is_eos = response == eos_token_id
    # keep tokens up to and including the first EOS; everything after it is padding
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    mask = (~after_eos).long()
    response = response.masked_fill(after_eos, pad_token_id)
    logp = torch.stack(logps, 1).masked_fill(after_eos, 0.0)
    ids = torch.cat([input_ids, response], 1)
    full_attn = torch.cat([attention_mask.long(), mask], 1)
    return Sample(ids, full_attn, mask, logp, prompt_len)


def seen_before(ids: torch.Tensor, prompt_len: int, vocab_size: int) -> torch.Tensor:
    """``[B, T, V]`` bool: token v occurs in ``ids[b, : prompt_len + t]`` (what the penalty of
    response position t sees), from each token's first position in the row."""
    batch, length = ids.shape
    first = torch.full((batch, vocab_size), length, dtype=torch.long, device=ids.device)
    where = torch.arange(length, device=ids.device).expand(batch, length)
    first.scatter_reduce_(1, ids, where, reduce="amin")
    steps = torch.arange(prompt_len, length, device=ids.device)
    return first[:, None, :] < steps[None, :, None]


def response_logprobs(
    logits: torch.Tensor, ids: torch.Tensor, prompt_len: int, decoding: Decoding
) -> torch.Tensor:
    """Log-probs ``[B, T]`` of the response tokens ``ids[:, prompt_len:]`` under the processed
    sampling distribution, from the logits ``[B, T, V]`` of the states that emit them.

    Equal (up to float rounding) to what :func:`sample` returned for the same weights;
    differentiable, so the PPO update optimises the distribution it sampled from. A token that
    a top-k/top-p cut removes under the current weights has log-prob −∞.
    """
    seen = None
    if decoding.repetition_penalty != 1.0:
        seen = seen_before(ids, prompt_len, logits.shape[-1])
    scores = process_logits(logits.float(), seen, decoding)
    return torch.log_softmax(scores, -1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)
