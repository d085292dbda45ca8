"""Per-objective gradient accumulation over micro-batches (integrations/ppo/accumulate.py): one MOGD
step accumulated over micro-batches equals the step on the whole batch in one forward (float64,
the PPO surrogate of integrations/ppo/surrogate.py on a small Mistral), for every micro-batch size."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mogd
from integrations.ppo.accumulate import accumulate_objectives, split
from integrations.ppo.surrogate import entropy_from_logits, policy_loss
from integrations.testing import toy_mistral

B, P, T = 7, 3, 6  # sequences, prompt and response length


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
