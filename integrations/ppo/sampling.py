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
    sync_every: int = 1,
    agree: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Sample:
    """Sample up to ``max_new_tokens`` tokens per left-padded prompt with a KV cache.

    The loop looks at the host only every ``sync_every`` tokens: there it stops once every row
    has emitted EOS, and drops the finished rows from the batch and the cache, so that they stop
    costing. Between two checks it runs on the accelerator's queue alone (a check is one host
    sync, and one all-reduce under ``agree``); the price is up to ``sync_every − 1`` steps past
    the last EOS, whose columns are cut off again. Sharded models (FSDP) pass ``agree``, the MIN
    of an int flag vector over the processes, so that every process runs the same number of
    forward passes; a process with no row left keeps one finished row in the batch for them.

    Each token is ``torch.multinomial(probs, 1)``'s own draw, argmax p/q with q ~ Exp(1), and
    the q are drawn for every row of the original batch at every step: a row's tokens do not
    depend on which rows were dropped, and match ``generate``'s for the same seed. The draws
    come from the global RNG (as in ``generate``) unless ``generator`` is given.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if sync_every < 1:
        raise ValueError(f"sync_every must be >= 1, got {sync_every}")
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError("input_ids and attention_mask must both be [batch, prompt_len]")
    batch, prompt_len = input_ids.shape
    device = input_ids.device
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
    vocab = logits.shape[-1]
    seen = None
    if decoding.repetition_penalty != 1.0:
        seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)
        seen.scatter_(1, input_ids, True)
    response = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logp = torch.zeros(batch, max_new_tokens, device=device)
    rows = torch.arange(batch, device=device)  # the rows still in the batch (and the cache)
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # of those rows
    finite = torch.ones((), dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        scores = process_logits(logits, seen, decoding)
        probs = scores.softmax(-1)
        finite &= (torch.isfinite(probs).all(-1) | done).all()
        # torch.multinomial(probs, 1)'s draw, with q for every row of the original batch
        q = torch.empty(batch, vocab, dtype=probs.dtype, device=device)
        q = q.exponential_(1, generator=generator)
        nxt = (probs / q[rows]).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        lp = torch.log_softmax(scores, -1).gather(1, nxt[:, None]).squeeze(1)
        response[rows, step] = nxt
        logp[rows, step] = lp.masked_fill(done, 0.0)
        done = done | (nxt == eos_token_id)
        if step + 1 == max_new_tokens:
            break
        if (step + 1) % sync_every == 0:
            flags = torch.stack([done.all(), finite]).int()
            all_done, all_finite = (agree(flags) if agree is not None else flags).tolist()
            if not all_finite:
                raise FloatingPointError(
                    f"the model's next-token probabilities are not finite by step {step + 1} "
                    "(on this or another process): its logits overflowed or are NaN"
                )
            if all_done:
                break
            keep = (~done).nonzero().squeeze(1)
            if len(keep) == 0:  # the other processes still decode: keep one row for them
                keep = keep.new_zeros(1)
            if len(keep) < len(rows):
                rows, done, nxt, attn = rows[keep], done[keep], nxt[keep], attn[keep]
                seen = None if seen is None else seen[keep]
                cache.batch_select_indices(keep)
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

    is_eos = response == eos_token_id
    # keep tokens up to and including the first EOS; everything after it is padding
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    mask = (~after_eos).long()
    # columns past every row's EOS (the steps between the last EOS and the check that saw it)
    width = int(mask.any(0).nonzero().max()) + 1  # column 0 is always in
    mask = mask[:, :width]
    response = response[:, :width].masked_fill(after_eos[:, :width], pad_token_id)
    logp = logp[:, :width].masked_fill(after_eos[:, :width], 0.0)
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
