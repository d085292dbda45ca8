"""The lean sampling loop: same distribution as transformers' generate, matching log-probs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import MistralForCausalLM
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from integrations.ppo.sampling import (
    Decoding,
    positions,
    process_logits,
    response_logprobs,
    sample,
    seen_before,
)
from integrations.testing import toy_mistral

PAD, BOS, EOS = 0, 1, 2


def hf_processors(d: Decoding) -> LogitsProcessorList:
    """generate's processors for these settings, in generate's order."""
    out = LogitsProcessorList()
    if d.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(d.repetition_penalty))
    if d.temperature != 1.0:
        out.append(TemperatureLogitsWarper(d.temperature))
    if d.top_k:
        out.append(TopKLogitsWarper(d.top_k))
    if d.top_p < 1.0:
        out.append(TopPLogitsWarper(d.top_p))
    return out


decodings = st.builds(
    Decoding,
    temperature=st.sampled_from([0.7, 1.0, 1.3]),
    top_p=st.sampled_from([0.5, 0.9, 1.0]),
    top_k=st.sampled_from([0, 5]),
    repetition_penalty=st.sampled_from([1.0, 1.05, 1.5]),
)


@settings(max_examples=40, deadline=None)
@given(decodings, st.integers(0, 2**31 - 1))
def test_process_logits_equals_transformers_processors(d: Decoding, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    vocab = 17
    scores = torch.randn(3, vocab, generator=gen) * 3
    ids = torch.randint(0, vocab, (3, 6), generator=gen)
    seen = torch.zeros(3, vocab, dtype=torch.bool).scatter_(1, ids, True)
    expected = hf_processors(d)(ids, scores.clone())
    got = process_logits(scores, seen, d)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-6, atol=1e-6)


def test_decoding_rejects_bad_settings() -> None:
    for kwargs, name in [
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ]:
        with pytest.raises(ValueError, match=name):
            Decoding(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seen"):
        process_logits(torch.zeros(2, 3), None, Decoding(repetition_penalty=1.1))


@pytest.fixture(scope="module")
def model() -> MistralForCausalLM:
    m = toy_mistral(40, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    with torch.no_grad():  # make EOS likely enough that some rows stop early
        m.lm_head.weight[EOS] += 0.3 * m.lm_head.weight.mean(0)
    return m


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[PAD, PAD, BOS, 5, 6], [BOS, 7, 8, 9, 10], [PAD, BOS, 11, 3, 3]])
    return ids, (ids != PAD).long()


@pytest.mark.parametrize(
    "d",
    [
        Decoding(),
        Decoding(temperature=0.7, repetition_penalty=1.05),
        Decoding(temperature=0.8, top_p=0.9, top_k=10, repetition_penalty=1.3),
    ],
)
def test_sample_draws_what_generate_draws(model: MistralForCausalLM, d: Decoding) -> None:
    ids, attn = prompts()
    for seed in range(4):
        torch.manual_seed(seed)
        ref = model.generate(
            input_ids=ids,
            attention_mask=attn,
            do_sample=True,
            max_new_tokens=12,
            temperature=d.temperature,
            top_p=d.top_p,
            top_k=d.top_k,
            repetition_penalty=d.repetition_penalty,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )
        torch.manual_seed(seed)
        got = sample(
            model, ids, attn, max_new_tokens=12, eos_token_id=EOS, pad_token_id=PAD, decoding=d
        )
        width = ref.shape[1]
        assert torch.equal(got.ids[:, :width], ref)
        assert (got.ids[:, width:] == PAD).all()


def test_sampled_logprobs_match_a_full_forward(model: MistralForCausalLM) -> None:
    ids, attn = prompts()
    d = Decoding(temperature=0.7, top_p=0.95, repetition_penalty=1.2)
    torch.manual_seed(3)
    s = sample(model, ids, attn, max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD, decoding=d)
    assert s.ids.shape == (3, 5 + s.mask.shape[1]) and s.prompt_len == 5
    logits = model(input_ids=s.ids, attention_mask=s.attn, position_ids=positions(s.attn)).logits
    lp = response_logprobs(logits[:, s.prompt_len - 1 : -1], s.ids, s.prompt_len, d)
    m = s.mask.bool()
    torch.testing.assert_close(lp[m], s.logp[m], atol=1e-4, rtol=1e-4)
    assert (s.logp[~m] == 0).all()
    # the plain temperature softmax is another distribution: the penalty really is in there
    plain = torch.log_softmax(logits[:, s.prompt_len - 1 : -1] / 0.7, -1)
    plain = plain.gather(-1, s.ids[:, s.prompt_len :, None]).squeeze(-1)
    assert (plain[m] - s.logp[m]).abs().max() > 1e-3


def test_seen_before_is_the_prefix_set() -> None:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 9, (4, 11), generator=gen)
    got = seen_before(ids, 5, 9)
    for b in range(4):
        for t in range(6):
            expected = torch.zeros(9, dtype=torch.bool)
            expected[ids[b, : 5 + t]] = True
            assert torch.equal(got[b, t], expected)
