"""The PPO math (integrations/ppo/advantages.py, surrogate.py, multipliers.py, optim.py) against hand-computed values and independent float64 references."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from integrations.ppo.advantages import (
    gae,
    kl_shaped_rewards,
    lagrangian_advantages,
    masked_whiten,
    sequence_kl,
)
from integrations.ppo.multipliers import Lagrangian
from integrations.ppo.optim import warmup_cosine
from integrations.ppo.surrogate import entropy_from_logits, policy_loss, value_loss

D = torch.float64


def t(*rows):
    return torch.tensor(rows, dtype=D)


# --------------------------------------------------------------------------- KL shaping


def test_kl_shaping_hand_computed():
    # r̂ = −β (logπ − logπ_ref) on real tokens, score added at the last real token, 0 on padding.
    scores = torch.tensor([2.0, -1.0], dtype=D)
    logp = t([-1.0, -2.0, -0.5], [-0.3, -0.7, -0.2])
    ref = t([-1.5, -1.0, -0.5], [-0.3, -0.2, -9.0])
    mask = t([1, 1, 0], [1, 1, 1])
    r = kl_shaped_rewards(scores, logp, ref, mask, beta=0.1)
    expected = t([-0.05, 0.1 + 2.0, 0.0], [0.0, 0.05, -0.88 - 1.0])
    torch.testing.assert_close(r, expected)


def test_kl_is_a_penalty_in_reward_and_cost_streams():
    # Paper Eq. 14 prints +β·KL in the harmlessness stream (a typo): moving π away from π_ref must
    # lower the shaped return of the helpfulness stream (score R) AND the harmlessness stream (−C).
    mask = t([1, 1, 1])
    ref = t([-1.0, -1.0, -1.0])
    near, far = t([-1.0, -1.0, -1.0]), t([-0.2, -0.1, -0.3])
    for score in (torch.tensor([1.5], dtype=D), -torch.tensor([0.7], dtype=D)):  # R, then −C
        ret_near = kl_shaped_rewards(score, near, ref, mask, beta=0.05).sum()
        ret_far = kl_shaped_rewards(score, far, ref, mask, beta=0.05).sum()
        assert ret_far < ret_near
        torch.testing.assert_close(ret_far, score[0] - 0.05 * (0.8 + 0.9 + 0.7))


def test_sequence_kl_sums_real_tokens():
    logp, ref, mask = t([-1.0, -2.0, 5.0]), t([-1.5, -1.0, 0.0]), t([1, 1, 0])
    torch.testing.assert_close(sequence_kl(logp, ref, mask), torch.tensor([-0.5], dtype=D))


def test_kl_shaping_rejects_empty_response_and_bad_shapes():
    with pytest.raises(ValueError, match="at least one token"):
        kl_shaped_rewards(t(1.0)[0:1], t([0.0, 0.0]), t([0.0, 0.0]), t([0, 0]), 0.1)
    with pytest.raises(ValueError, match="scores"):
        kl_shaped_rewards(t(1.0, 2.0), t([0.0, 0.0]), t([0.0, 0.0]), t([1, 1]), 0.1)


# --------------------------------------------------------------------------- GAE


def test_gae_hand_computed_with_padding():
    rewards = t([0.5, 1.0, 0.0])
    values = t([0.2, 0.4, 9.0])  # 9.0 sits on padding and must be ignored
    mask = t([1, 1, 0])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=1 (last real token): δ = 1.0 − 0.4 = 0.6;  t=0: δ = 0.5 + 0.9·0.4 − 0.2 = 0.66,
    # Â_0 = 0.66 + 0.9·0.8·0.6 = 1.092
    torch.testing.assert_close(adv, t([1.092, 0.6, 0.0]))
    torch.testing.assert_close(ret, t([1.292, 1.0, 0.0]))


def _gae_reference(rewards, values, length, gamma, lam):
    """Â_t = Σ_l (γλ)^l δ_{t+l} with V = 0 past the end, in plain float64 Python."""
    r = [float(x) for x in rewards[:length]]
    v = [float(x) for x in values[:length]] + [0.0]
    deltas = [r[i] + gamma * v[i + 1] - v[i] for i in range(length)]
    adv = [
        sum((gamma * lam) ** j * deltas[i + j] for j in range(length - i)) for i in range(length)
    ]
    return adv + [0.0] * (len(rewards) - length)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_gae_matches_direct_sum(lengths, gamma, lam, seed):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    rewards = torch.randn(len(lengths), T, generator=g, dtype=D)
    values = torch.randn(len(lengths), T, generator=g, dtype=D)
    mask = torch.zeros(len(lengths), T, dtype=D)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    adv, ret = gae(rewards * mask, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        expected = torch.tensor(_gae_reference(rewards[i], values[i], n, gamma, lam), dtype=D)
        torch.testing.assert_close(adv[i], expected)
        torch.testing.assert_close(ret[i], (expected + values[i]) * mask[i])


def test_gae_monte_carlo_limit():
    # γ = λ = 1: Â_t = Σ_{s ≥ t} r_s − V(s_t), the Monte-Carlo return minus the baseline.
    rewards, values, mask = t([1.0, -2.0, 3.0, 0.0]), t([0.5, 0.1, -0.3, 4.0]), t([1, 1, 1, 0])
    adv, _ = gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(adv, t([2.0 - 0.5, 1.0 - 0.1, 3.0 + 0.3, 0.0]))


def test_gae_rejects_bad_discount():
    with pytest.raises(ValueError, match="gamma"):
        gae(t([1.0]), t([0.0]), t([1]), gamma=1.5, lam=0.9)


# --------------------------------------------------------------------------- clipped surrogate


def test_clipped_surrogate_hand_computed_value_and_gradient():
    ratios = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.0], dtype=D)
    adv = t([1.0, 1.0, -1.0, -1.0, 2.0])
    old = t([-1.0, -2.0, -0.5, -1.5, -3.0])
    logp = (old + ratios.log()).requires_grad_(True)
    mask = torch.ones_like(old)
    loss, stats = policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # per token min(ρA, clip(ρ)A): 1.2, 0.5, −1.5, −0.8, 2.0 -> loss = −1.4 / 5
    torch.testing.assert_close(loss, torch.tensor(-0.28, dtype=D))
    loss.backward()
    # ∂/∂logπ of −ρA/N where the unclipped branch is active, 0 where the clip is active
    torch.testing.assert_close(logp.grad, t([0.0, -0.1, 0.3, 0.0, -0.4]))
    assert stats.clip_fraction == pytest.approx(0.8)
    kl = [(r - 1) - math.log(r) for r in (1.5, 0.5, 1.5, 0.5, 1.0)]
    assert stats.approx_kl == pytest.approx(sum(kl) / 5)


def test_clipped_surrogate_ignores_padding():
    old, adv = t([-1.0, -1.0]), t([1.0, 100.0])
    logp = t([-0.5, 3.0])
    loss, _ = policy_loss(logp, old, adv, t([1, 0]), clip_eps=0.1)
    torch.testing.assert_close(loss, torch.tensor(-1.1, dtype=D))


def test_value_loss_hand_computed():
    values, old, ret = t([1.0, 2.0, 7.0]), t([0.0, 2.5, 0.0]), t([3.0, 0.0, 0.0])
    mask = t([1, 1, 0])
    # token 0: max((1−3)², (0+0.5−3)²) = 6.25; token 1: max(4, (2.5−0.5−0)²) = 4
    expected_clipped, expected_plain = torch.tensor(2.5625, dtype=D), torch.tensor(2.0, dtype=D)
    torch.testing.assert_close(value_loss(values, old, ret, mask, 0.5), expected_clipped)
    torch.testing.assert_close(value_loss(values, old, ret, mask, None), expected_plain)


def test_whiten_and_entropy():
    x, mask = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])
    torch.testing.assert_close(masked_whiten(x, mask), t([-1.0, 0.0, 1.0, 0.0]), atol=1e-7, rtol=0)
    logits = torch.zeros(1, 2, 4, dtype=D)
    logits[0, 1] = torch.tensor([10.0, 0.0, 0.0, 0.0])  # padding token, must not count
    torch.testing.assert_close(
        entropy_from_logits(logits, t([1, 0])), torch.tensor(math.log(4.0), dtype=D)
    )


# --------------------------------------------------------------------------- PPO-Lagrangian


def test_lagrangian_update_hand_computed():
    lag = Lagrangian(threshold=0.0, lambda_init=1.0, lambda_lr=0.1, lambda_max=None, window=3)
    lag.record([0.5, 1.5])
    # log λ ← log λ + lr · λ · (C̄ − d) = 0 + 0.1 · 1 · 1.0
    assert lag.update(step=0) == pytest.approx(math.exp(0.1))
    lag.record(torch.tensor([-3.0, -3.0]))  # window of 3 keeps [1.5, −3, −3], C̄ = −1.5
    expected = 0.1 + 0.1 * math.exp(0.1) * (-1.5)
    assert lag.update(step=1) == pytest.approx(math.exp(expected))


def test_lagrangian_clamp_delay_and_state():
    lag = Lagrangian(threshold=0.2, lambda_init=1.0, lambda_lr=1.0, lambda_max=1.05, update_delay=2)
    lag.record([5.0])
    assert lag.update(step=1) == 1.0  # still inside the update delay
    assert lag.update(step=2) == pytest.approx(1.05)  # clamped at λ_max
    other = Lagrangian(window=128)
    other.load_state_dict(lag.state_dict())
    assert other.value == pytest.approx(1.05) and list(other.episode_costs) == [5.0]
    with pytest.raises(ValueError, match="lambda_init"):
        Lagrangian(lambda_init=0.0)
    with pytest.raises(ValueError, match="window"):
        Lagrangian(window=0)


def test_lagrangian_advantages_hand_computed():
    a_r, a_harmless = t([1.0, 2.0]), t([-1.0, 0.5])
    # (A_R + λ A_{−C}) / (1 + λ) with λ = 3
    torch.testing.assert_close(lagrangian_advantages([a_r], [a_harmless], [3.0]), t([-0.5, 0.875]))
    with pytest.raises(ValueError, match="one multiplier per constraint"):
        lagrangian_advantages([a_r], [a_harmless], [])


@pytest.mark.parametrize(("warmup", "total"), [(0, 10), (3, 100), (5, 5), (1, 2)])
def test_warmup_cosine_matches_transformers(warmup, total):
    from transformers import get_cosine_schedule_with_warmup

    def lrs(make):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
        sched = make(opt)
        out = []
        for _ in range(total + 3):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    ours = lrs(lambda o: warmup_cosine(o, warmup, total))
    reference = lrs(lambda o: get_cosine_schedule_with_warmup(o, warmup, total))
    assert ours == pytest.approx(reference, abs=1e-15)
