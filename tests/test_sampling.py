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


@pytest.mark.parametrize("sync_every", [1, 3])
@pytest.mark.parametrize(
    "d",
    [
        Decoding(),
        Decoding(temperature=0.7, repetition_penalty=1.05),
        Decoding(temperature=0.8, top_p=0.9, top_k=10, repetition_penalty=1.3),
    ],
)
def test_sample_draws_what_generate_draws(
    model: MistralForCausalLM, d: Decoding, sync_every: int
) -> None:
    """Token for token, whichever rows the loop dropped along the way."""
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
            model,
            ids,
            attn,
            max_new_tokens=12,
            eos_token_id=EOS,
            pad_token_id=PAD,
            decoding=d,
            sync_every=sync_every,
        )
        assert torch.equal(got.ids, ref)  # the steps past the last EOS are cut off again
        assert got.mask.shape[1] == got.logp.shape[1] == ref.shape[1] - ids.shape[1]


def batch_sizes(model: MistralForCausalLM) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """The batch size of every forward pass of ``model`` from now on (and the hook to remove)."""
    seen: list[int] = []
    handle = model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    return seen, handle


def test_finished_rows_leave_the_batch_at_each_sync(model: MistralForCausalLM) -> None:
    """Rows that ended are dropped at the next sync (one host sync per ``sync_every`` tokens),
    and what every row samples is what the loop that never drops a row samples."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 40, (16, 4), generator=gen)
    attn = torch.ones_like(ids)
    kwargs = {"max_new_tokens": 24, "eos_token_id": EOS, "pad_token_id": PAD}
    syncs: list[int] = []

    def agree(flags: torch.Tensor) -> torch.Tensor:
        syncs.append(len(sizes))
        return flags

    sizes, handle = batch_sizes(model)
    torch.manual_seed(1)
    lean = sample(model, ids, attn, decoding=Decoding(), sync_every=4, agree=agree, **kwargs)
    handle.remove()
    torch.manual_seed(1)
    every_row = sample(model, ids, attn, decoding=Decoding(), sync_every=10**6, **kwargs)
    assert torch.equal(lean.ids, every_row.ids) and torch.equal(lean.mask, every_row.mask)
    torch.testing.assert_close(lean.logp, every_row.logp, atol=1e-5, rtol=1e-5)

    # token index of each row's EOS (never: 10**6)
    has_eos = (lean.ids[:, 4:] == EOS).any(-1)
    eos_at = torch.where(has_eos, lean.mask.sum(-1) - 1, 10**6)
    assert 1 < int(has_eos.sum()) and int((eos_at > 8).sum()) > 1, "rows must end at odd times"
    # the sync after token 4k-1 comes before forward 4k (forward 0 is the prefill)
    assert syncs == [4 * (k + 1) for k in range(len(syncs))]
    for f, size in enumerate(sizes):
        k = f // 4  # syncs so far: rows whose EOS came before token 4k have left
        assert size == max(int((eos_at >= 4 * k).sum()), 1), (f, sizes, eos_at)


def test_a_process_with_every_row_done_keeps_stepping_with_one_row(
    model: MistralForCausalLM,
) -> None:
    """Under FSDP every process must run the same forwards: when the others still decode, a
    process whose rows all ended keeps one (finished, padded) row in the batch."""
    ids, attn = prompts()
    kwargs = {"max_new_tokens": 20, "eos_token_id": EOS, "pad_token_id": PAD}
    for seed in range(100):  # a seed where every row ends early
        torch.manual_seed(seed)
        alone = sample(model, ids, attn, decoding=Decoding(), **kwargs)
        if alone.mask.shape[1] < 20:
            break
    assert alone.mask.shape[1] < 20, "the test needs every row to end early"

    def others_still_decode(flags: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros_like(flags[0]), flags[1]])

    sizes, handle = batch_sizes(model)
    torch.manual_seed(seed)
    lockstep = sample(model, ids, attn, decoding=Decoding(), agree=others_still_decode, **kwargs)
    handle.remove()
    assert len(sizes) == 20 and sizes[-1] == 1  # prefill + 19 steps, down to one row
    assert torch.equal(lockstep.ids, alone.ids) and torch.equal(lockstep.logp, alone.logp)


def test_non_finite_logits_stop_every_process(model: MistralForCausalLM) -> None:
    ids, attn = prompts()
    kwargs = {"max_new_tokens": 12, "eos_token_id": EOS, "pad_token_id": PAD}

    def nan_elsewhere(flags: torch.Tensor) -> torch.Tensor:
        return torch.stack([flags[0], torch.zeros_like(flags[1])])

    with pytest.raises(FloatingPointError, match="not finite by step 2"):
        sample(model, ids, attn, decoding=Decoding(), sync_every=2, agree=nan_elsewhere, **kwargs)
    broken = toy_mistral(40, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    with torch.no_grad():
        broken.lm_head.weight[7, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite by step 1"):
        sample(broken, ids, attn, decoding=Decoding(), **kwargs)
    with pytest.raises(ValueError, match="sync_every"):
        sample(model, ids, attn, decoding=Decoding(), sync_every=0, **kwargs)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_loop_waits_for_the_gpu_only_at_its_syncs_cuda() -> None:
    """Between two syncs the loop only queues work: with torch's sync debug mode on (the
    model's own forward excepted, its mask code is transformers'), a run of 24 tokens at
    --sync-every 4 syncs twice per check (flags, finished rows) and three times to cut the
    width at the end, not once per token."""
    import warnings

    model = toy_mistral(40, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS).cuda()
    with torch.no_grad():  # EOS all but impossible: every step runs
        model.lm_head.weight[EOS] -= 100.0
    forward = model.forward

    def forward_unwatched(*args: object, **kwargs: object) -> object:
        torch.cuda.set_sync_debug_mode(0)
        try:
            return forward(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("warn")

    model.forward = forward_unwatched  # type: ignore[method-assign]
    ids, attn = prompts()
    ids, attn = ids.cuda(), attn.cuda()
    for every, checks in [(4, 5), (1, 23)]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                s = sample(
                    model,
                    ids,
                    attn,
                    max_new_tokens=24,
                    eos_token_id=EOS,
                    pad_token_id=PAD,
                    decoding=Decoding(temperature=0.7, repetition_penalty=1.05),
                    sync_every=every,
                )
            finally:
                torch.cuda.set_sync_debug_mode(0)
        assert s.mask.shape[1] == 24
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) <= 2 * checks + 3, (every, [str(w.message) for w in syncs])
