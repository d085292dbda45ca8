"""Credit assignment: the group (leave-one-out) baseline, the critics' explained variance and
the critic warm-up, against float64 hand references."""

import pytest
import torch

from integrations.ppo.advantages import (
    explained_variance,
    group_advantages,
    kl_shaped_rewards,
    leave_one_out_baseline,
    stream_advantages,
)
from integrations.ppo.critics import NoCritic
from integrations.ppo.methods import METHODS, make_plan
from integrations.ppo.rollout import group_indices
from integrations.run.parse import make_config


def loo_reference(scores: list[float], m: int) -> list[float]:
    out = []
    for i, s in enumerate(scores):
        g = i // m
        others = [scores[j] for j in range(g * m, g * m + m) if j != i]
        out.append(s - sum(others) / len(others))
    return out


def test_leave_one_out_hand_computed():
    s = torch.tensor([1.0, 2.0, 4.0, 7.0, -1.0, -1.0, 3.0, 0.5], dtype=torch.float64)
    b = leave_one_out_baseline(s, 4)
    assert b[0].item() == pytest.approx((2 + 4 + 7) / 3)
    assert b[6].item() == pytest.approx((-1 - 1 + 0.5) / 3)
    assert torch.allclose(s - b, torch.tensor(loo_reference(s.tolist(), 4), dtype=torch.float64))
    with pytest.raises(ValueError, match="group_size"):
        leave_one_out_baseline(s, 1)
    with pytest.raises(ValueError, match="multiple"):
        leave_one_out_baseline(s, 3)


def test_group_advantages_are_score_minus_loo_plus_kl_to_go():
    torch.manual_seed(0)
    B, T, m, beta = 6, 5, 3, 0.1
    lengths = [5, 2, 3, 1, 4, 5]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths], dtype=torch.float64)
    logp, ref = torch.randn(B, T, dtype=torch.float64), torch.randn(B, T, dtype=torch.float64)
    scores = torch.randn(B, dtype=torch.float64)
    r = kl_shaped_rewards(scores, logp, ref, mask, beta)
    adv = group_advantages(r, scores, mask, m, gamma=1.0)
    centred = loo_reference(scores.tolist(), m)
    for i, n in enumerate(lengths):
        for t in range(T):
            if t >= n:
                assert adv[i, t].item() == 0.0
                continue
            kl_to_go = -beta * sum((logp[i, u] - ref[i, u]).item() for u in range(t, n))
            assert adv[i, t].item() == pytest.approx(centred[i] + kl_to_go, abs=1e-12)


def test_group_advantages_keep_the_scale():
    """Never divided by a std: scaling the scores scales the advantages (without KL)."""
    mask = torch.ones(8, 3, dtype=torch.float64)
    zero = torch.zeros(8, 3, dtype=torch.float64)
    s = torch.randn(8, dtype=torch.float64)
    a1 = group_advantages(kl_shaped_rewards(s, zero, zero, mask, 0.0), s, mask, 4)
    a10 = group_advantages(kl_shaped_rewards(10 * s, zero, zero, mask, 0.0), 10 * s, mask, 4)
    assert torch.allclose(a10, 10 * a1)
    const = torch.full((8,), 3.0, dtype=torch.float64)  # equal scores: no advantage at all
    assert (
        group_advantages(kl_shaped_rewards(const, zero, zero, mask, 0.0), const, mask, 4)
        .abs()
        .max()
        == 0
    )


def test_explained_variance_hand_computed():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    ret = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, 5.0]])
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 3.0), ret, mask) == pytest.approx(0.0)
    v = torch.tensor([[1.5, 2.0, 0.0], [3.0, 4.0, 4.0]])
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    e = torch.tensor([-0.5, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    expected = 1 - e.var(unbiased=False) / r.var(unbiased=False)
    assert explained_variance(v, ret, mask) == pytest.approx(expected.item())


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_accepts_the_group_estimator(method):
    class FakeScorer:
        def __init__(self, name, kind):
            self.name, self.kind = name, kind

    cfg = make_config("tiny", method=method, advantage="group", samples_per_prompt=4)
    plan = make_plan(method, [FakeScorer("helpful", "reward"), FakeScorer("harmless", "cost")])
    B, T = 8, 4
    mask = torch.ones(B, T)
    zero = torch.zeros(B, T)
    scores = torch.randn(len(plan.streams), B)
    values = NoCritic(len(plan.streams))(torch.zeros(B, T + 2, dtype=torch.long), None, 2)
    assert values.shape == (len(plan.streams), B, T) and values.abs().max() == 0
    multipliers = [1.0] * len(plan.cost_streams)  # safe-rlhf mixes the streams with λ
    m = cfg.batch.samples_per_prompt
    adv, _ = stream_advantages(
        plan, scores, zero, zero, values, mask, cfg.ppo, multipliers, samples_per_prompt=m
    )
    assert len(adv) == len(plan.loss_names) and all(a.shape == (B, T) for a in adv)
    for a in adv:  # per group of 4 the advantages sum to zero
        assert a[:, 0].view(2, 4).sum(1).abs().max() < 1e-5


def test_group_estimator_options_are_checked():
    with pytest.raises(ValueError, match="--samples-per-prompt"):
        make_config("tiny", advantage="group", samples_per_prompt=1)
    with pytest.raises(ValueError, match="--samples-per-prompt"):
        make_config("tiny", samples_per_prompt=3)  # 64 sequences are not groups of 3
    assert group_indices([5, 2], 3) == [5, 5, 5, 2, 2, 2]
    # the paper preset: critics from the score models by default (Safe RLHF), heads for the
    # scalarised methods, which have no score model per stream
    assert make_config("mistral-7b", world_size=8).algorithm.critic_init == "score"
    assert make_config("mistral-7b", world_size=8, method="morlhf").algorithm.critic_init == "head"
    assert (
        make_config("mistral-7b", advantage="group", samples_per_prompt=4).ppo.advantage == "group"
    )


def test_score_critic_of_a_cost_model_predicts_the_streams_reward():
    """The harmless stream maximises −C: a critic from the cost model starts at −C."""
    from torch import nn

    from integrations.ppo.critics import reward_signed

    class Fake(nn.Module):
        def __init__(self):
            super().__init__()
            self.value_head = nn.Linear(3, 1)

    h = torch.randn(5, 3)
    for kind, sign in (("reward", 1.0), ("cost", -1.0)):
        critic = Fake()
        before = critic.value_head(h).detach()
        assert torch.allclose(reward_signed(critic, kind).value_head(h), sign * before)


def test_options_added_later_are_hashed_only_off_their_default():
    """Run directories written before --advantage, --samples-per-prompt and --critic-warmup
    existed resume: at their defaults (what those runs did) the options are not in the hash."""
    import hashlib
    import json

    from integrations.run.config import ADDED_LATER, BOOKKEEPING, config_hash

    cfg = make_config("tiny", advantage="gae", samples_per_prompt=1, critic_warmup=0)
    old = {k: v for k, v in cfg.flat().items() if k not in BOOKKEEPING | set(ADDED_LATER)}
    digest = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(cfg) == digest
    for name, value in (("samples_per_prompt", 2), ("advantage", "group"), ("critic_warmup", 8)):
        other = cfg.replace(
            **{name: value}, **({"samples_per_prompt": 2} if value == "group" else {})
        )
        assert config_hash(other) != config_hash(cfg), name
