"""Behaviour on the tiny world: MOGD's weights are what moves the policy, and the single-objective
baselines improve their own objective over the SFT policy."""

from __future__ import annotations

import pytest
import torch

import mogd
from integrations.ppo.accumulate import accumulate_objectives, split
from integrations.ppo.rollout import decoding, forward_response, generate
from integrations.ppo.sampling import sample
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


def test_a_rollout_decoded_in_chunks_is_one_rollout(tmp_path) -> None:
    """--generation-batch 3: each chunk decodes its rows of the prompts padded together (what
    ``sample`` draws on those rows, in order), the responses are right-padded to the longest,
    and the update's forward over the merged rollout gives back the log-probs every token was
    sampled with (the padding changed no row's distribution: same prompt columns, pads after
    EOS only)."""
    setup = build_tiny_setup(tmp_path, seed=0, sft_steps=3)
    policy, tok = setup.policy, setup.tokenizer
    cfg = make_config("tiny", max_new_tokens=10, generation_batch=3)
    prompts = [setup.train_prompts[i] for i in (0, 5, 9, 14, 22, 31, 40, 47)]
    enc = tok([setup.format_prompt(p) for p in prompts], return_tensors="pt", padding=True)
    ids, attn = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():  # a 3-step SFT policy: EOS's logit about 2.5, so rows end apart
        h = policy(**enc, output_hidden_states=True).hidden_states[-1][:, -1].mean(0)
        policy.get_output_embeddings().weight[tok.eos_token_id] += 2.5 * h / h.norm() ** 2
    torch.manual_seed(0)
    ro = generate(setup, policy, prompts, cfg.rollout)
    assert torch.equal(ro.ids[:, : ro.prompt_len], ids) and ro.prompt_len == ids.shape[1]
    dec = decoding(cfg.rollout)
    torch.manual_seed(0)
    logp = torch.zeros(ro.mask.shape)
    for lo in range(0, 8, 3):
        part = sample(
            policy,
            ids[lo : lo + 3],
            attn[lo : lo + 3],
            max_new_tokens=10,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            decoding=dec,
        )
        width = part.mask.shape[1]
        assert torch.equal(ro.ids[lo : lo + 3, : ro.prompt_len + width], part.ids)
        assert torch.equal(ro.mask[lo : lo + 3, :width], part.mask)
        assert not ro.mask[lo : lo + 3, width:].any()
        assert (ro.ids[lo : lo + 3, ro.prompt_len + width :] == tok.pad_token_id).all()
        logp[lo : lo + 3, :width] = part.logp
    assert len({int(m.sum()) for m in ro.mask}) > 2, ro.mask.sum(-1)  # rows ended apart
    with torch.no_grad():
        again, _, _ = forward_response(policy, ro.ids, ro.attn, ro.prompt_len, dec)
    m = ro.mask.bool()
    torch.testing.assert_close(again[m], logp[m], atol=1e-4, rtol=1e-4)


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
