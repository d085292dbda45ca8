"""Per-objective gradient accumulation over micro-batches (integrations/ppo/accumulate.py): one MOGD
step accumulated over micro-batches equals the step on the whole batch in one forward (float64,
the PPO surrogate of integrations/ppo/surrogate.py on a small Mistral), for every micro-batch size."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mogd
from integrations.ppo.accumulate import MicroBatch, accumulate_objectives, split
from integrations.ppo.rollout import forward_response
from integrations.ppo.sampling import Decoding
from integrations.ppo.surrogate import entropy_from_logits, policy_loss
from integrations.testing import toy_mistral

B, P, T = 7, 3, 6  # sequences, prompt and response length
PAD = 0


def make_model():
    return toy_mistral(50, max_position_embeddings=32).double()


def rollout():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 50, (B, P + T), generator=g)
    lengths = torch.tensor([6, 1, 4, 0, 6, 2, 5])  # ragged responses, one empty
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    old_logp = -torch.rand(B, T, generator=g, dtype=torch.float64) - 3.0
    advantages = [torch.randn(B, T, generator=g, dtype=torch.float64) for _ in range(2)]
    return ids, mask, old_logp, advantages


def step(micro_batch_size, probe=False, bonus=0.0):
    model = make_model()
    ids, mask, old_logp, advantages = rollout()
    opt = mogd.MOGD(
        torch.optim.SGD(model.parameters(), lr=0.1),
        mogd.GAPO(p=1),
        probe=model.lm_head if probe else None,
    )

    def losses_of(chunk):
        rows = chunk.rows
        logits = model(input_ids=ids[rows]).logits[:, P - 1 : -1]
        logp = torch.log_softmax(logits, -1).gather(-1, ids[rows, P:, None]).squeeze(-1)
        losses = [
            policy_loss(logp, old_logp[rows], adv[rows], mask[rows], 0.2)[0] for adv in advantages
        ]
        if not bonus:
            return losses, None
        return losses, -bonus * entropy_from_logits(logits, mask[rows])

    chunks = split(torch.arange(B), mask, micro_batch_size)
    info = accumulate_objectives(opt, chunks, losses_of, probe=probe)
    return info, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("bonus", [0.0, 0.3])
@pytest.mark.parametrize("size", [1, 2, 3, 6])
def test_accumulated_step_equals_the_whole_batch(size, bonus):
    # with an entropy bonus, its gradient accumulates in MOGD's regularizer alike
    whole_info, whole = step(None, bonus=bonus)
    info, params = step(size, bonus=bonus)
    if bonus:
        assert info.regularizer_norm == pytest.approx(whole_info.regularizer_norm, rel=1e-10)
    torch.testing.assert_close(info.gram, whole_info.gram, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(info.weights, whole_info.weights, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(params, whole, rtol=0, atol=1e-12)
    initial = torch.cat([p.detach().reshape(-1) for p in make_model().parameters()])
    assert (params - initial).abs().max() > 1e-4  # the step moved the weights


def test_probe_mode_needs_one_micro_batch():
    step(None, probe=True)  # the whole batch: fine
    with pytest.raises(ValueError, match="probe mode takes the losses of the whole update batch"):
        step(2, probe=True)


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 5), min_size=1, max_size=12),
    size=st.one_of(st.none(), st.integers(1, 13)),
)
def test_micro_batches_partition_the_rows_by_token_share(lengths, size):
    mask = (torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]).float()
    rows = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(len(lengths)))
    chunks = split(rows, mask, size)
    assert torch.equal(torch.cat([c.rows for c in chunks]), rows)
    assert all(len(c.rows) <= (size or len(rows)) for c in chunks)
    assert sum(c.weight for c in chunks) == pytest.approx(1.0)
    if sum(lengths):
        for c in chunks:
            assert c.weight == pytest.approx(float(mask[c.rows].sum()) / sum(lengths))


@settings(max_examples=15, deadline=None)
@given(
    pads=st.lists(st.integers(0, 4), min_size=6, max_size=6),
    lengths=st.lists(st.integers(0, 6), min_size=6, max_size=6),
    size=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_trimmed_micro_batches_take_the_untrimmed_step(pads, lengths, size, seed):
    """Cutting a micro-batch to its rows' columns (shared left padding, positions past its
    longest response) changes no loss: each objective's accumulated gradient and the entropy
    bonus's are those of the same rows forwarded with every column (float64, left-padded
    prompts, ragged responses, the pipeline's forward)."""
    g = torch.Generator().manual_seed(seed)
    n, prompt_len, width = 6, 6, 6
    prompt_attn = (torch.arange(prompt_len)[None, :] >= torch.tensor(pads)[:, None]).long()
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    attn = torch.cat([prompt_attn, mask], 1)
    ids = torch.randint(3, 50, (n, prompt_len + width), generator=g).masked_fill(attn == 0, PAD)
    old_logp = -torch.rand(n, width, generator=g, dtype=torch.float64) - 3.0
    advantages = [torch.randn(n, width, generator=g, dtype=torch.float64) for _ in range(2)]
    dec = Decoding(temperature=0.7, repetition_penalty=1.2)
    model = make_model()
    params = list(model.parameters())

    def gradients(chunks):
        """Σ_c w_c ∇L_i(c) per objective, then Σ_c w_c ∇R(c), flattened."""
        total = torch.zeros(3, sum(p.numel() for p in params), dtype=torch.float64)
        for chunk in chunks:
            logp, logits, _ = forward_response(model, *chunk.inputs(ids, attn, prompt_len), dec)
            m = chunk.cut(mask).double()
            losses = [
                policy_loss(logp, chunk.cut(old_logp), chunk.cut(a), m, 0.2)[0] for a in advantages
            ]
            for i, loss in enumerate([*losses, -0.1 * entropy_from_logits(logits, m)]):
                grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                flat = [
                    torch.zeros_like(p) if x is None else x
                    for x, p in zip(grads, params, strict=True)
                ]
                total[i] += chunk.weight * torch.cat([x.reshape(-1) for x in flat])
        return total

    chunks = split(torch.randperm(n, generator=g), mask, size, prompt_attn)
    for c in chunks:  # one column of the shared padding stays (the penalty sees the pad)
        assert c.start == max(int(torch.tensor(pads)[c.rows].min()) - 1, 0)
        assert c.width == max(1, int(torch.tensor(lengths)[c.rows].max()))
    untrimmed = [MicroBatch(c.rows, c.weight) for c in chunks]  # every column
    torch.testing.assert_close(gradients(chunks), gradients(untrimmed), rtol=1e-12, atol=1e-15)


def test_bad_micro_batch_size_is_refused():
    with pytest.raises(ValueError, match="--micro-batch-size must be >= 1"):
        split(torch.arange(3), torch.ones(3, 2), 0)


def test_the_entropy_bonus_stays_out_of_the_weights():
    # the weights are solved on the objectives' Gram alone: a bonus changes the update, not them
    plain, plain_params = step(None)
    bonus, bonus_params = step(None, bonus=0.3)
    torch.testing.assert_close(bonus.gram, plain.gram, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(bonus.weights, plain.weights, rtol=1e-12, atol=1e-15)
    assert plain.regularizer_norm is None and bonus.regularizer_norm > 0
    assert not torch.allclose(bonus_params, plain_params)
    probe_plain, _ = step(None, probe=True)
    probe_bonus, _ = step(None, probe=True, bonus=0.3)
    torch.testing.assert_close(probe_bonus.weights, probe_plain.weights, rtol=1e-12, atol=1e-15)
