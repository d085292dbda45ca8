"""MOGDGRPOTrainer (integrations/trl.py): GAPO across the reward functions of TRL's GRPOTrainer.

A tiny Llama and a word-level tokenizer are built here (no download). Two reward functions pull the
policy apart: ``length_reward`` (more words) and ``positive_reward`` (a larger share of positive
words). The references are stock ``trl.GRPOTrainer`` runs on the same seed (so the same
completions), one reward at a time; stock GRPO on a reward that is the same for every completion,
whose advantages are all 0, so that it trains on TRL's regularizer alone (β·KL - entropy bonus);
and a float64 NumPy re-derivation of the group normalisation.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    TrainerCallback,
)

import mogd  # noqa: E402
from integrations.grpo import STD_EPS, check_trl_contract, group_advantages  # noqa: E402
from integrations.trl import MOGDGRPOTrainer  # noqa: E402

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
WORDS = "yes no good bad the a cat dog sun moon red blue one two three four".split()
PROMPTS = ["the cat", "a dog", "red sun", "blue moon"]
REPO = Path(__file__).resolve().parents[1]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=3,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def length_reward(completions, **kwargs):
    return [float(len(c.split())) for c in completions]


POSITIVE = {"yes", "good", "sun", "one"}


def positive_reward(completions, **kwargs):
    """The share of positive words: short answers can score high, so it pulls against length."""
    return [sum(w in POSITIVE for w in c.split()) / max(1, len(c.split())) for c in completions]


def constant_reward(completions, **kwargs):
    return [1.0 for _ in completions]


def flat_reward(completions, **kwargs):
    """No signal: the same score for every completion (and not a round number)."""
    return [0.7 for _ in completions]


def negative_length_reward(completions, **kwargs):
    return [-r for r in length_reward(completions)]


# TRL's terms beside the policy gradient: β·KL, and the entropy bonus where this TRL has one (the KL
# gradient is 0 at the first step, where the policy is the reference; the bonus's is not)
HAS_ENTROPY_BONUS = "entropy_coef" in trl.GRPOConfig.__dataclass_fields__
REGULARIZED = {"beta": 0.1, **({"entropy_coef": 0.01} if HAS_ENTROPY_BONUS else {})}


class Record(TrainerCallback):
    """At every optimizer step: the gradient the optimizer stepped along (flat, float64)."""

    def __init__(self) -> None:
        self.trainer = None
        self.grads: list[torch.Tensor] = []
        self.infos: list[mogd.StepInfo] = []

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if p.grad is None else p.grad)
                    .detach()
                    .double()
                    .reshape(-1)
                    for p in model.parameters()
                ]
            )
        )
        opt = getattr(self.trainer, "mogd_optimizer", None)
        if opt is not None:
            self.infos.append(opt.last_info)


def make_trainer(
    out: Path,
    reward_funcs,
    *,
    cls=MOGDGRPOTrainer,
    steps: int = 1,
    accumulation: int = 1,
    sgd_lr: float | None = None,
    seed: int = 0,
    **kwargs,
):
    """A trainer on the tiny model; ``sgd_lr`` swaps TRL's AdamW for plain SGD (the step is -lr·d)."""
    config = {
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 6,
        "max_steps": steps,
        "gradient_accumulation_steps": accumulation,
        "logging_steps": 1,
        "learning_rate": 1e-2 if sgd_lr is None else sgd_lr,
        "lr_scheduler_type": "constant",
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "seed": seed,
        "max_grad_norm": 0.0,
        # TRL's default bf16 autocast also runs on CPU, and rounds the LM head's gradient to bf16 in
        # every backward pass: k + 1 passes then add up to one pass only to 2^-8. In float32 they
        # agree to float32 rounding, which the comparisons with stock TRL below rely on.
        "bf16": False,
    }
    config.update(kwargs.pop("config", {}))
    model = tiny_model(seed)
    if config.get("beta", 0.0):
        # TRL builds the reference model from the policy's path: save it and load it from there
        path = Path(out) / "init"
        model.save_pretrained(path)
        model = LlamaForCausalLM.from_pretrained(path)
    optimizers: tuple[torch.optim.Optimizer | None, None] = (None, None)
    if sgd_lr is not None:
        optimizers = (torch.optim.SGD(model.parameters(), lr=sgd_lr), None)
    record = Record()
    trainer = cls(
        model=model,
        reward_funcs=reward_funcs,
        args=trl.GRPOConfig(**config),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
        processing_class=tiny_tokenizer(),
        callbacks=[record],
        optimizers=optimizers,
        **kwargs,
    )
    record.trainer = trainer
    return trainer, record


def logged(trainer, key: str) -> list[float]:
    return [row[key] for row in trainer.state.log_history if key in row]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def stock_gradients(tmp_path: Path, rewards, **common) -> list[torch.Tensor]:
    """The gradient of stock GRPO's first optimizer step, for each reward function alone."""
    grads = []
    for i, reward in enumerate(rewards):
        stock, record = make_trainer(
            tmp_path / f"stock{i}", [reward], cls=trl.GRPOTrainer, **common
        )
        stock.train()
        grads.append(record.grads[0])
    return grads


# -- advantages per reward ------------------------------------------------------------------------


def reference_advantages(
    rewards: np.ndarray, groups: int, scale: str
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 re-derivation: per column, centre on the group mean, divide by a NaN-skipping
    sample std (+1e-4) of the group or the whole column; NaN rewards get 0.

    Also returns each entry's conditioning, max|r| / (std + 1e-4) · (1 + |A|): float32 arithmetic
    on rewards r is exact to a few ulps of max|r| before the division, which amplifies it by that
    factor (nearly equal rewards in a group make it large)."""
    n, k = rewards.shape
    out = np.zeros((n, k))
    cond = np.zeros((n, k))
    for j in range(k):
        col = rewards[:, j]
        every = col[~np.isnan(col)]
        for start in range(0, n, groups):
            block = col[start : start + groups]
            valid = block[~np.isnan(block)]
            centred = block - valid.mean() if valid.size else block
            if valid.size and (valid == valid[0]).all():
                centred = np.where(np.isnan(block), np.nan, 0.0)  # no signal: exactly 0
            denom = 1.0
            if scale == "group":
                std = valid.std(ddof=1) if valid.size > 1 else (0.0 if groups == 1 else np.nan)
                denom = std + STD_EPS
            elif scale == "batch":
                denom = every.std(ddof=1) + STD_EPS
            out[start : start + groups, j] = centred / denom
            top = np.abs(every).max() if every.size else 0.0
            cond[start : start + groups, j] = top / denom
    out = np.nan_to_num(out, nan=0.0)
    return out, np.nan_to_num(cond, nan=0.0) * (1 + np.abs(out))


@settings(max_examples=60, deadline=None)
@given(
    groups=st.sampled_from([2, 3, 4]),
    n_groups=st.integers(1, 3),
    k=st.integers(1, 3),
    scale=st.sampled_from(["group", "batch", "none"]),
    data=st.data(),
)
def test_group_advantages_match_float64_reference(groups, n_groups, k, scale, data):
    n = groups * n_groups
    values = data.draw(
        st.lists(
            st.one_of(st.floats(-100, 100, width=32), st.just(math.nan)),
            min_size=n * k,
            max_size=n * k,
        )
    )
    rewards = np.array(values, dtype=np.float32).reshape(n, k)
    got = group_advantages(torch.from_numpy(rewards), groups, scale).double().numpy()
    want, cond = reference_advantages(rewards.astype(np.float64), groups, scale)
    assert not np.isnan(got).any()
    assert (np.abs(got - want) <= 1e-6 + 1e-5 * np.abs(want) + 64 * 2.0**-24 * cond).all()


@settings(max_examples=40, deadline=None)
@given(shift=st.floats(-50, 50), scale=st.floats(0.5, 20), seed=st.integers(0, 10_000))
def test_each_reward_is_normalised_on_its_own(shift, scale, seed):
    """Rescaling or shifting one reward leaves the advantages of the others untouched; its own
    (group-scaled) advantages ignore the shift and scale by c (std + 1e-4) / (c std + 1e-4)."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    moved = rewards.clone()
    moved[:, 1] = moved[:, 1] * scale + shift
    a, b = group_advantages(rewards, 4), group_advantages(moved, 4)
    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=0)
    std = rewards[:, 1].view(2, 4).std(dim=1).repeat_interleave(4)
    guard = scale * (std + STD_EPS) / (scale * std + STD_EPS)
    torch.testing.assert_close(b[:, 1], a[:, 1] * guard, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(
        b.view(2, 4, 2).mean(1), torch.zeros(2, 2, dtype=torch.float64), atol=1e-9, rtol=0
    )


@settings(max_examples=60, deadline=None)
@given(
    value=st.floats(-1e6, 1e6, width=32),
    groups=st.integers(2, 9),
    scale=st.sampled_from(["group", "batch", "none"]),
)
def test_a_group_without_signal_has_advantages_exactly_zero(value, groups, scale):
    """Equal rewards in a group (e.g. 0.7 six times, whose float mean is not 0.7) give advantage
    0.0 exactly, not an ulp divided by the 1e-4 guard; the other group and column are untouched."""
    gen = torch.Generator().manual_seed(groups)
    rewards = torch.randn(2 * groups, 2, generator=gen)
    rewards[:groups, 0] = value
    rewards[1, 0] = math.nan if groups > 2 else value  # a None from the reward function, skipped
    got = group_advantages(rewards, groups, scale)
    assert (got[:groups, 0] == 0).all()
    assert (got[groups:, 0] != 0).all() and (got[:, 1] != 0).all()


def test_group_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="num_generations"):
        group_advantages(torch.zeros(6, 2), 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.zeros(4, 2), 4, "median")
    with pytest.raises(ValueError, match=r"\[N, k\]"):
        group_advantages(torch.zeros(4), 4)


# -- training -------------------------------------------------------------------------------------


def test_trains_a_few_steps_and_logs_weights(tmp_path):
    trainer, record = make_trainer(
        tmp_path, [length_reward, positive_reward], steps=3, accumulation=2
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    names = ["length_reward", "positive_reward"]
    for name in names:
        assert len(logged(trainer, f"rewards/{name}/mean")) == 3
        assert len(logged(trainer, f"rewards/{name}/std")) == 3
    weights = np.array([logged(trainer, f"mogd/weight/{name}") for name in names])
    norms = np.array([logged(trainer, f"mogd/norm/{name}") for name in names])
    assert weights.shape == (2, 3) and np.isfinite(weights).all()
    assert len(logged(trainer, "mogd/cosine/length_reward/positive_reward")) == 3
    for name in names:  # per objective: what trains
        assert len(logged(trainer, f"frac_reward_zero_std/{name}")) == 3
        assert len(logged(trainer, f"advantage_std/{name}")) == 3
    # TRL's figures of its weighted sum, which does not train here, under their own names
    assert len(logged(trainer, "sum/frac_reward_zero_std")) == 3
    assert not logged(trainer, "frac_reward_zero_std") and not logged(trainer, "reward")
    # GAPO(p=1) with k = 2: α = (½, ½) on the unit-normalised gradients, so w_i ‖g_i‖ = ½
    live = (norms > 0).all(axis=0)
    assert live.any()
    np.testing.assert_allclose((weights * norms)[:, live], 0.5, rtol=1e-9)
    # the logged weights are those of the steps taken (StepInfo of every optimizer step)
    stepped = np.array([info.weights.numpy() for info in record.infos]).T
    np.testing.assert_allclose(weights, stepped, rtol=1e-12)
    assert any(
        not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)
    )
    assert trainer.mogd_optimizer.weighting.p == 1.0


def test_linear_single_reward_matches_stock_grpo(tmp_path):
    """k = 1 with Linear([1]): the policy-gradient row plus the regularizer's row (β·KL and the
    entropy bonus, backpropagated apart) make stock trl.GRPOTrainer's loss, gradient and parameters,
    with gradient accumulation over two micro-batches."""
    common = {"steps": 2, "accumulation": 2, "sgd_lr": 0.5, "config": REGULARIZED}
    stock, stock_record = make_trainer(
        tmp_path / "stock", [length_reward], cls=trl.GRPOTrainer, **common
    )
    stock.train()
    ours, our_record = make_trainer(
        tmp_path / "ours", [length_reward], weighting=mogd.Linear, **common
    )
    ours.train()
    assert repr(ours.mogd_optimizer.weighting) == "Linear(weights=[1.0])"
    np.testing.assert_allclose(logged(ours, "loss"), logged(stock, "loss"), rtol=1e-5, atol=1e-7)
    assert logged(ours, "mogd/regularizer_norm")[-1] > 0  # KL's gradient: 0 at step 1 only
    assert len(our_record.grads) == len(stock_record.grads) == 2
    for g_ours, g_stock in zip(our_record.grads, stock_record.grads, strict=True):
        assert g_stock.norm() > 0
        assert relative_error(g_ours, g_stock) < 1e-5
    for p, q in zip(ours.model.parameters(), stock.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_sum_weighting_is_stock_multi_reward_grpo(tmp_path):
    """weighting="sum" is trl.GRPOTrainer itself: TRL's weighted sum of the rewards, TRL's KL and
    entropy terms, TRL's clipping; the same losses, gradients and parameters, bit for bit."""
    config = {**REGULARIZED, "reward_weights": [0.7, 0.3], "max_grad_norm": 0.05}
    common = {"steps": 2, "accumulation": 2, "sgd_lr": 0.5, "config": config}
    rewards = [length_reward, positive_reward]
    stock, stock_record = make_trainer(tmp_path / "stock", rewards, cls=trl.GRPOTrainer, **common)
    stock.train()
    ours, our_record = make_trainer(tmp_path / "ours", rewards, weighting="sum", **common)
    ours.train()
    assert ours.mogd_optimizer is None and not our_record.infos
    for key in ("loss", "grad_norm", "reward", "frac_reward_zero_std"):
        assert logged(ours, key) == logged(stock, key) and logged(stock, key)
    assert len(logged(ours, "frac_reward_zero_std/length_reward")) == 2  # ours, on top
    for g_ours, g_stock in zip(our_record.grads, stock_record.grads, strict=True):
        torch.testing.assert_close(g_ours, g_stock, rtol=0, atol=0)
    for p, q in zip(ours.model.parameters(), stock.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("loss_type", "scale_rewards"),
    [("grpo", "group"), ("dapo", "batch"), ("dr_grpo", "none"), ("cispo", "group")],
)
def test_objective_gradients_are_the_per_reward_grpo_gradients(tmp_path, loss_type, scale_rewards):
    """With β·KL and an entropy bonus: stock GRPO on one reward steps along p_i + r (its policy
    gradient and the regularizer's gradient r), and stock GRPO on a constant reward (advantages 0)
    along r alone. MOGD's Gram is that of the p_i, its regularizer row is r, and the step is
    Σ w_i p_i + r: TRL's loss_type and scale_rewards act on each objective as on stock GRPO's one
    stream, and the regularizer is counted once, outside the weights."""
    config = {"loss_type": loss_type, "scale_rewards": scale_rewards, **REGULARIZED}
    common = {"steps": 1, "accumulation": 2, "sgd_lr": 0.1, "config": config}
    ours, record = make_trainer(tmp_path / "ours", [length_reward, positive_reward], **common)
    ours.train()
    *singles, r = stock_gradients(
        tmp_path, [length_reward, positive_reward, constant_reward], **common
    )
    P = torch.stack(singles) - r  # [2, n] float64: the policy gradients alone
    info = record.infos[0]
    assert (info.norms > 0).all()
    if HAS_ENTROPY_BONUS:
        assert info.regularizer_norm == pytest.approx(r.norm().item(), rel=1e-5)
    scale = info.norms.max().item() ** 2
    torch.testing.assert_close(info.gram, P @ P.T, rtol=1e-5, atol=1e-6 * scale)
    assert relative_error(record.grads[0], info.weights @ P + r) < 1e-5


def test_probe_mode_weights_from_the_lm_head_and_one_weighted_backward(tmp_path):
    """probe="lm_head": the Gram is that of the per-reward policy gradients restricted to the LM
    head, and the step is Σ w_i p_i + r with the full gradients, from ONE backward of
    Σ w_i P_i + R (references as in the test above)."""
    common = {"steps": 1, "sgd_lr": 0.1, "config": REGULARIZED}
    ours, record = make_trainer(
        tmp_path / "ours", [length_reward, positive_reward], probe="lm_head", **common
    )
    ours.train()
    *singles, r = stock_gradients(
        tmp_path, [length_reward, positive_reward, constant_reward], **common
    )
    P = torch.stack(singles) - r
    start = 0
    for name, p in ours.model.named_parameters():
        if name == "lm_head.weight":
            head = slice(start, start + p.numel())
        start += p.numel()
    info = record.infos[0]
    assert (info.norms > 0).all()
    scale = info.norms.max().item() ** 2
    torch.testing.assert_close(info.gram, P[:, head] @ P[:, head].T, rtol=1e-5, atol=1e-6 * scale)
    assert relative_error(record.grads[0], info.weights @ P + r) < 1e-5


@pytest.mark.parametrize("weighting", [mogd.MGDA(), mogd.GAPO(p=1)], ids=repr)
def test_a_reward_without_signal_gets_weight_zero_at_every_step(tmp_path, weighting):
    """[happy, flat] at β = 0.05 with an entropy bonus and TRL's default bf16: the flat reward's
    advantages are 0, so its policy gradient is exactly 0 and it gets weight 0 at every step; the
    regularizer is the same update term whatever the weights (before the split, the flat reward's
    gradient was the regularizer's: MGDA gave it weight 1, GAPO weights up to 1e8)."""
    config = {"beta": 0.05, "bf16": True, **({"entropy_coef": 0.01} if HAS_ENTROPY_BONUS else {})}
    trainer, record = make_trainer(
        tmp_path, [positive_reward, flat_reward], steps=4, weighting=weighting, config=config
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert len(record.infos) == 4
    for info in record.infos:
        assert not info.skipped
        assert info.weights[1].item() == 0.0 and info.norms[1].item() == 0.0
        if info.norms[0] > 0:
            assert info.weights[0] > 0
    assert logged(trainer, "frac_reward_zero_std/flat_reward") == [1.0] * 4
    assert logged(trainer, "advantage_std/flat_reward") == [0.0] * 4
    regularizer = logged(trainer, "mogd/regularizer_norm")
    assert len(regularizer) == 4 and all(n > 0 for n in regularizer[1:])  # KL is 0 at step 1
    assert any(
        not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)
    )


def test_logs_describe_each_objective_not_trls_sum(tmp_path):
    """Rewards r and -r: both carry signal (frac_reward_zero_std/<name> < 1), while TRL's weighted
    sum is 0 for every completion (sum/frac_reward_zero_std = 1); the completions table holds each
    objective's advantages, and TRL's summed one as NaN."""
    trainer, _ = make_trainer(
        tmp_path, [length_reward, negative_length_reward], steps=2, config={"log_completions": True}
    )
    trainer.train()
    assert logged(trainer, "sum/frac_reward_zero_std") == [1.0, 1.0]
    ours = logged(trainer, "frac_reward_zero_std/length_reward")
    assert ours == logged(trainer, "frac_reward_zero_std/negative_length_reward")
    assert all(f < 1 for f in ours)
    assert all(s > 0 for s in logged(trainer, "advantage_std/length_reward"))
    table = trainer._logs
    assert all(math.isnan(a) for a in table["advantages"])
    a, b = (np.array(table["extra"][f"advantage/{n}"]) for n in trainer.objective_names)
    assert len(a) == len(table["prompt"]) and np.abs(a).max() > 0
    np.testing.assert_allclose(a, -b)


def test_max_grad_norm_clips_the_combined_direction(tmp_path):
    trainer, record = make_trainer(
        tmp_path, [length_reward, positive_reward], sgd_lr=1.0, config={"max_grad_norm": 1e-3}
    )
    assert trainer.max_norm == 1e-3
    trainer.train()
    (norm,) = logged(trainer, "mogd/direction_norm")
    assert norm > 1e-3
    assert "grad_norm" not in trainer.state.log_history[0]
    torch.testing.assert_close(record.grads[0].norm().item(), 1e-3, rtol=1e-5, atol=0)


def test_checkpoint_resume_continues_exactly(tmp_path):
    """TRL's checkpoint holds MOGD's state (inner AdamW + MOGD's own entry); resuming from step 1
    reproduces step 2 of an uninterrupted run: the same weights and the same parameters."""
    names = [length_reward, positive_reward]
    full, full_record = make_trainer(
        tmp_path / "full", names, steps=2, config={"save_strategy": "steps", "save_steps": 1}
    )
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-1"
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    assert "mogd" in saved  # MOGD's own entry beside the inner optimizer's state
    resumed, resumed_record = make_trainer(tmp_path / "resumed", names, steps=2)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert len(resumed_record.infos) == 1
    torch.testing.assert_close(resumed_record.infos[0].weights, full_record.infos[1].weights)
    for p, q in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_adaptive_entropy_controller_moves_once_per_step(tmp_path):
    """TRL's adaptive entropy controller sees the k per-objective losses of a micro-batch as TRL's
    one loss: it moves by one delta per optimizer step, as in stock GRPO on the same completions."""
    if "use_adaptive_entropy" not in trl.GRPOConfig.__dataclass_fields__:
        pytest.skip("this TRL has no adaptive entropy control")
    config = {
        "use_adaptive_entropy": True,
        "entropy_coef": 0.01,
        "entropy_coef_delta": 0.005,
        "entropy_target": 100.0,  # above any entropy here: the coefficient rises every step
    }
    common = {"steps": 1, "accumulation": 2, "config": config}
    stock, _ = make_trainer(tmp_path / "stock", [length_reward], cls=trl.GRPOTrainer, **common)
    stock.train()
    ours, _ = make_trainer(tmp_path / "ours", [length_reward, positive_reward], **common)
    ours.train()
    assert stock.entropy_coef == pytest.approx(0.015)
    assert ours.entropy_coef == pytest.approx(stock.entropy_coef)
    assert ours._last_world_entropy == pytest.approx(stock._last_world_entropy, rel=1e-6)


def test_lora_adapters_are_the_objectives_parameters(tmp_path):
    """With a peft LoraConfig only the adapters train: MOGD's gradients are theirs, and the KL
    reference is the base model with the adapters off (TRL's own arrangement)."""
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer, _ = make_trainer(
        tmp_path, [length_reward, positive_reward], steps=2, peft_config=lora, config={"beta": 0.1}
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n for n in moved)
    assert all(math.isfinite(w) for w in logged(trainer, "mogd/weight/length_reward"))


def test_evaluation_is_stock_grpo_evaluation(tmp_path):
    """Evaluation has no optimizer step: it reports TRL's own loss on its scalarised advantages."""
    losses = []
    for cls in (trl.GRPOTrainer, MOGDGRPOTrainer):
        trainer, _ = make_trainer(
            tmp_path / cls.__name__,
            [length_reward, positive_reward],
            cls=cls,
            eval_dataset=Dataset.from_dict({"prompt": PROMPTS}),
            config={"per_device_eval_batch_size": 4},
        )
        losses.append(trainer.evaluate()["eval_loss"])
    assert math.isfinite(losses[0]) and losses[1] == losses[0]


# -- TRL's loss, split -----------------------------------------------------------------------------

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]


def test_trl_contract_is_checked(monkeypatch):
    """The TRL interface the split relies on is checked when a trainer is built: a TRL whose
    GRPOTrainer._compute_loss takes other arguments, or no longer reads inputs["advantages"],
    is refused by name instead of training on a wrong split."""
    check_trl_contract()

    def other_signature(self, model, inputs, advantages):
        return inputs["advantages"]

    def no_advantages(self, model, inputs):
        return inputs["rewards"]

    for replacement in (other_signature, no_advantages):
        monkeypatch.setattr(trl.GRPOTrainer, "_compute_loss", replacement)
        with pytest.raises(ImportError, match="_compute_loss"):
            check_trl_contract()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_split_adds_up_to_stock_trl_loss(tmp_path, loss_type):
    """The guard on TRL's _compute_loss contract (what lets the trl extra go without an upper pin):
    on one batch, one step away from the reference (so that KL and its gradient are not 0), for
    every loss_type this TRL has, with β·KL and an entropy bonus:
    P(A) + R is stock TRL's loss on A, value and gradient; P(0) has a gradient of exactly 0.
    A TRL that adds a term beside the policy gradient without a switch here, or makes the policy
    term nonlinear in A, fails this test."""
    try:
        trainer, _ = make_trainer(
            tmp_path,
            [length_reward],
            weighting=mogd.Linear,
            config={**REGULARIZED, "loss_type": loss_type},
        )
    except ValueError as err:
        pytest.skip(f"TRL {trl.__version__} has no loss_type {loss_type!r}: {err}")
    trainer.train()
    model = trainer.model
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    columns = inputs["objective_advantages"]
    assert columns.abs().max() > 0
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient(loss):
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).double().reshape(-1)
                for p, g in zip(params, grads, strict=True)
            ]
        )

    stock = trl.GRPOTrainer.compute_loss(trainer, model, {**inputs, "advantages": columns[:, 0]})
    (policy,), regularizer = trainer.split_losses(model, inputs)
    torch.testing.assert_close(policy + regularizer, stock, rtol=1e-5, atol=1e-7)
    want = gradient(stock)
    assert gradient(regularizer).norm() > 0
    (policy,), regularizer = trainer.split_losses(model, inputs)
    assert relative_error(gradient(policy + regularizer), want) < 1e-5
    (zero,), _ = trainer.split_losses(model, {**inputs, "objective_advantages": 0 * columns})
    assert gradient(zero).abs().max() == 0


# -- objectives and reward weights ----------------------------------------------------------------


def test_objectives_group_reward_functions(tmp_path):
    """objectives= sums a group's rewards with their reward_weights before normalising: one objective
    of [length, positive] with weights [2, 1] under Linear([1]) is stock GRPO on that weighted sum."""
    config = {**REGULARIZED, "reward_weights": [2.0, 1.0]}
    common = {"steps": 1, "accumulation": 2, "sgd_lr": 0.1, "config": config}
    rewards = [length_reward, positive_reward]
    stock, stock_record = make_trainer(tmp_path / "stock", rewards, cls=trl.GRPOTrainer, **common)
    stock.train()
    ours, record = make_trainer(
        tmp_path / "ours",
        rewards,
        weighting=mogd.Linear([1.0]),
        objectives={"quality": ["length_reward", 1]},
        **common,
    )
    ours.train()
    assert ours.objective_names == ["quality"]
    assert len(logged(ours, "mogd/weight/quality")) == 1
    assert len(logged(ours, "frac_reward_zero_std/quality")) == 1
    assert relative_error(record.grads[0], stock_record.grads[0]) < 1e-5


def test_a_zero_reward_weight_means_monitor_only(tmp_path):
    """reward_weights [1, 0] under GAPO: positive_reward is scored and logged but is no objective;
    the step is that of length_reward alone (k = 1: the inner optimizer's step on stock GRPO's
    gradient, DESIGN §1)."""
    common = {"steps": 1, "sgd_lr": 0.1}
    ours, record = make_trainer(
        tmp_path / "ours",
        [length_reward, positive_reward],
        config={"reward_weights": [1.0, 0.0]},
        **common,
    )
    ours.train()
    assert ours.objective_names == ["length_reward"]
    assert len(logged(ours, "rewards/positive_reward/mean")) == 1
    assert not logged(ours, "mogd/weight/positive_reward")
    (g,) = stock_gradients(tmp_path, [length_reward], **common)
    assert relative_error(record.grads[0], g) < 1e-5


def test_reward_weights_become_the_preference(tmp_path):
    config = {"reward_weights": [3.0, 1.0]}
    trainer, _ = make_trainer(
        tmp_path, [length_reward, positive_reward], weighting=mogd.PGAPO, config=config
    )
    assert repr(trainer.weighting) == "PGAPO(preference=[0.75, 0.25])"
    trainer, _ = make_trainer(
        tmp_path, [length_reward, positive_reward], weighting=mogd.Linear, config=config
    )
    assert repr(trainer.weighting) == "Linear(weights=[3.0, 1.0])"
    trainer, _ = make_trainer(
        tmp_path,
        [length_reward, positive_reward, constant_reward],
        weighting=mogd.PGAPO,
        config={"reward_weights": [3.0, 1.0, 0.0]},
    )
    assert repr(trainer.weighting) == "PGAPO(preference=[0.75, 0.25])"
    assert trainer.objective_names == ["length_reward", "positive_reward"]


# -- arguments ------------------------------------------------------------------------------------

AGGREGATION = "multi_objective_aggregation" in trl.GRPOConfig.__dataclass_fields__


@pytest.mark.parametrize(
    ("weighting", "config", "error", "match"),
    [
        (None, {"reward_weights": [2.0, 1.0]}, ValueError, "alone in its objective"),
        (mogd.Linear([1.0, 1.0]), {"reward_weights": [2.0, 1.0]}, ValueError, "alone in its"),
        (mogd.PGAPO([1.0, 1.0, 1.0]), {}, ValueError, "3 entries but there are 2 objectives"),
        (mogd.PGAPO, {"reward_weights": [1.0, -1.0]}, ValueError, "reward_weights"),
        (None, {"reward_weights": [0.0, 0.0]}, ValueError, "nothing to train on"),
        ("gapo", {}, TypeError, "weighting must be"),
        pytest.param(
            None,
            {"multi_objective_aggregation": "normalize_then_sum"},
            ValueError,
            'weighting="sum"',
            marks=pytest.mark.skipif(not AGGREGATION, reason="TRL without aggregation modes"),
        ),
    ],
)
def test_bad_weighting_arguments_are_refused(tmp_path, weighting, config, error, match):
    with pytest.raises(error, match=match):
        make_trainer(tmp_path, [length_reward, positive_reward], weighting=weighting, config=config)


@pytest.mark.skipif(not AGGREGATION, reason="TRL without aggregation modes")
def test_sum_takes_trls_aggregation(tmp_path):
    config = {"multi_objective_aggregation": "normalize_then_sum"}
    trainer, _ = make_trainer(
        tmp_path, [length_reward, positive_reward], weighting="sum", config=config
    )
    trainer.train()
    assert len(logged(trainer, "loss")) == 1
    with pytest.raises(ValueError, match="stock TRL GRPO"):
        make_trainer(tmp_path, [length_reward, positive_reward], weighting="sum", probe="lm_head")


@pytest.mark.parametrize(
    ("objectives", "kwargs", "error", "match"),
    [
        ({"q": ["length_reward", "nope"]}, {}, ValueError, "no reward function named 'nope'"),
        ({"a": 0, "b": [0, 1]}, {}, ValueError, "in objectives 'a' and 'b'"),
        ({"a": "length_reward"}, {}, ValueError, r"\['positive_reward'\] are in no objective"),
        ({"a": 5, "b": 1}, {}, ValueError, "out of range"),
        ([("a", 0)], {}, TypeError, "mapping"),
        ({"a": [0, 1]}, {"weighting": mogd.PGAPO}, ValueError, "group several"),
        ({"a": [0, 1]}, {"config": {"reward_weights": [1.0, 0.0]}}, ValueError, "monitor-only"),
    ],
)
def test_bad_objectives_are_refused(tmp_path, objectives, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_trainer(tmp_path, [length_reward, positive_reward], objectives=objectives, **kwargs)


def test_bad_probe_arguments_are_refused(tmp_path):
    with pytest.raises(TypeError, match="probe must be a module"):
        make_trainer(tmp_path, [length_reward, positive_reward], probe=3)
    trainer, _ = make_trainer(tmp_path, [length_reward, positive_reward], probe="no_such_head")
    with pytest.raises(ValueError, match="no module of that name"):
        trainer.train()
    trainer, _ = make_trainer(tmp_path, [length_reward, positive_reward], probe="q_proj")
    assert trainer.create_optimizer() is trainer.mogd_optimizer  # the only layer's q_proj
    trainer, _ = make_trainer(tmp_path, [length_reward, positive_reward], probe="proj")
    with pytest.raises(ValueError, match="no module of that name"):
        trainer.train()


def test_a_prewrapped_optimizer_is_refused(tmp_path):
    trainer, _ = make_trainer(tmp_path, [length_reward, positive_reward])
    trainer.optimizer = mogd.MOGD(torch.optim.SGD(trainer.model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="plain optimizer"):
        trainer.train()


def test_deepspeed_is_refused_naming_fsdp2(tmp_path, monkeypatch):
    original = trl.GRPOTrainer.__init__

    def as_if_deepspeed(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.is_deepspeed_enabled = True

    monkeypatch.setattr(trl.GRPOTrainer, "__init__", as_if_deepspeed)
    with pytest.raises(ValueError, match="FSDP2"):
        make_trainer(tmp_path, [length_reward, positive_reward])


# -- two processes --------------------------------------------------------------------------------

WORKER = """
import json, os, sys
sys.path.insert(0, {tests!r})
sys.path.append({repo!r})
import test_trl as t

for mode, probe in [("full", None), ("probe", "lm_head")]:
    out = os.path.join({out!r}, mode)
    trainer, record = t.make_trainer(
        out, [t.length_reward, t.positive_reward], steps=2, accumulation=2, probe=probe
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    flat = [p.detach().double().reshape(-1) for p in trainer.model.parameters()]
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
        json.dump({{
            "weights": [info.weights.tolist() for info in record.infos],
            "gram": [info.gram.tolist() for info in record.infos],
            "params": t.torch.cat(flat).tolist(),
            "optimizer": repr(trainer.mogd_optimizer),
            "world": trainer.accelerator.num_processes,
        }}, f)
"""


@pytest.mark.slow
def test_two_process_gloo_run_agrees_on_the_weights(tmp_path):
    """torchrun, 2 CPU processes: accelerate wraps the policy in DDP over gloo; MOGD averages the
    per-objective gradients (full mode) or the probe's (probe mode) across ranks, so both ranks log
    the same weights and stay in sync."""
    script = tmp_path / "worker.py"
    out = tmp_path / "run"
    out.mkdir()
    script.write_text(WORKER.format(tests=str(REPO / "tests"), repo=str(REPO), out=str(out)))
    env = dict(os.environ, TRITON_INTERPRET="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run = subprocess.run(
        [*command, str(script)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-4000:]
    for mode in ("full", "probe"):
        ranks = [json.loads((out / mode / f"rank{r}.json").read_text()) for r in range(2)]
        assert all(r["world"] == 2 for r in ranks)
        assert all("replicated(DDP, world_size=2)" in r["optimizer"] for r in ranks)
        assert len(ranks[0]["weights"]) == 2
        assert ranks[0]["weights"] == ranks[1]["weights"]
        assert ranks[0]["gram"] == ranks[1]["gram"]
        assert np.isfinite(ranks[0]["weights"]).all() and np.array(ranks[0]["weights"]).any()
        assert ranks[0]["params"] == ranks[1]["params"]
