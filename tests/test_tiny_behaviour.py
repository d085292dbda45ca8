"""Behaviour on the tiny world: MOGD's weights are what moves the policy, and the single-objective
baselines improve their own objective over the SFT policy."""

from __future__ import annotations

import pytest
import torch

import mogd
from integrations.ppo.accumulate import accumulate_objectives, split
from integrations.ppo.rollout import decoding, forward_response, generate
from integrations.ppo.surrogate import policy_loss
from integrations.rlhf_mistral import train
from integrations.run import presets
from integrations.run.config import config_hash
from integrations.run.heldout import evaluate_policy
from integrations.run.parse import make_config
from integrations.run.runio import load_checkpoint, load_policy_weights
from integrations.worlds.tiny.setup import SFT_CONFIG, build_tiny_setup


def test_mogd_weights_reach_the_policy_update(tmp_path) -> None:
    """One minibatch through the loop's update path (forward_response, PPO losses, micro-batch
    accumulation into MOGD, opt.step) moves the policy by exactly −lr Σ w_i g_i, with g_i the
    whole minibatch's gradients of the two objectives and w the P-GAPO weights λ_i / ‖g_i‖
    computed by hand."""
    setup = build_tiny_setup(tmp_path, seed=0, sft_steps=3)
    policy = setup.policy.double()
    cfg = make_config("tiny", max_new_tokens=12)
    torch.manual_seed(0)
    ro = generate(setup, policy, setup.train_prompts[:8], cfg.rollout)
    dec = decoding(cfg.rollout)
    with torch.no_grad():
        old_logp, _, _ = forward_response(policy, ro.ids, ro.attn, ro.prompt_len, dec)
    mask = ro.mask.double()
    gen = torch.Generator().manual_seed(1)
    advantages = [torch.randn(mask.shape, generator=gen, dtype=torch.float64) for _ in range(2)]
    params = [p for p in policy.parameters() if p.requires_grad]
    wobble = 0.2 * torch.sin(torch.arange(mask.numel(), dtype=torch.float64)).view(mask.shape)

    def losses(rows: torch.Tensor) -> list[torch.Tensor]:
        logp, _, _ = forward_response(policy, ro.ids[rows], ro.attn[rows], ro.prompt_len, dec)
        logp = logp + wobble[rows]  # ratios away from 1, so that clipping is exercised too
        return [policy_loss(logp, old_logp[rows], a[rows], mask[rows], 0.1)[0] for a in advantages]

    rows = torch.arange(len(ro.prompts))
    grads = []
    for loss in losses(rows):
        g = torch.autograd.grad(loss, params, retain_graph=True)
        grads.append(torch.cat([x.reshape(-1) for x in g]))
    lam = torch.tensor([0.3, 0.7], dtype=torch.float64)
    w = lam / torch.stack([g.norm() for g in grads])  # Eq. 8: w_i = λ_i / ‖g_i‖
    expected = -0.5 * (w[0] * grads[0] + w[1] * grads[1])

    before = torch.cat([p.detach().reshape(-1) for p in params]).clone()
    opt = mogd.MOGD(torch.optim.SGD(params, lr=0.5), mogd.PGAPO([0.3, 0.7]))
    opt.zero_grad()
    # the loop's update: two micro-batches, each objective's gradient accumulated token-weighted
    chunks = split(rows, ro.mask, 4)
    info = accumulate_objectives(opt, chunks, lambda c: (losses(c.rows), None), probe=False)
    after = torch.cat([p.detach().reshape(-1) for p in params])
    torch.testing.assert_close(info.weights.double(), w, rtol=1e-6, atol=0)
    torch.testing.assert_close(after - before, expected, rtol=1e-6, atol=1e-12)
    assert expected.norm() > 0


@pytest.fixture(scope="module")
def sft_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiny-sft")
    build_tiny_setup(cache, seed=0, sft_steps=int(SFT_CONFIG["steps"]))  # the real SFT policy
    return cache


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize(
    ("method", "objective", "steps"),
    # PPO-H's gain in R is small at the default 15 iterations (+0.10 ± 0.05 over three seeds in
    # the README's protocol): three times the budget separates it from the noise
    [("ppo-h", "helpful", 45), ("ppo-s", "harmless", 15)],
)
def test_single_objective_ppo_improves_its_objective(method, objective, steps, sft_cache, tmp_path):
    """PPO-H raises R and PPO-S raises −C over the SFT policy, on the held-out harmful
    prompts (where the two objectives are decided)."""
    cfg = make_config(
        "tiny",
        method=method,
        steps=steps,
        eval_samples=16,  # 54 harmful prompts x 16: standard errors of about 0.07
        cache_dir=str(sft_cache),
        out=str(tmp_path / method),
        eval_size=0,
        progress=False,
        plots=False,
    )
    out = train(cfg)
    setup = presets.build_setup(cfg)
    harmful = [p for p in setup.eval_prompts if setup.categories[p] == "harmful"]
    setup.eval_prompts = harmful
    scorers = presets.select_scorers(cfg, setup)
    sample = dict(samples=cfg.eval.eval_samples, batch=cfg.batch.rollout_size)
    sft = evaluate_policy(setup, setup.policy, scorers, cfg.rollout, **sample)
    load_policy_weights(load_checkpoint(out, config_hash(cfg)), setup.policy)
    trained = evaluate_policy(setup, setup.policy, scorers, cfg.rollout, **sample)
    # same prompts, same sampling seed: the gain must clear both standard errors
    sft, trained = sft["objectives"][objective], trained["objectives"][objective]
    assert trained["score"] - sft["score"] > 2 * (trained["se"] ** 2 + sft["se"] ** 2) ** 0.5, (
        sft,
        trained,
    )
