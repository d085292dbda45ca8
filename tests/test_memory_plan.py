"""The --dry-run memory plan (integrations/worlds/paper/memory.py, integrations/run/dry_run.py):
its arithmetic against an independent hand computation on a small config, and the 7B preset's
default mode within an 80 GB GPU's budget (76 GiB) at 8 GPUs."""

from __future__ import annotations

import warnings

import pytest

from integrations.run.dry_run import dry_run_plan, format_plan
from integrations.run.parse import make_config
from integrations.worlds.paper.memory import memory_plan
from integrations.worlds.paper.shapes import ModelShape

GIB = 1024**3
# policy: V=100, h=16, I=40, 2 layers, 4 heads x 4, 2 kv heads (kv width 8), untied LM head
POLICY = ModelShape(100, 16, 40, 2, 4, 2, 4)
# scorer: V=101, h=16, I=24, 2 layers, 4 heads, 4 kv heads, score head 16 -> 1 with bias
SCORER = ModelShape(101, 16, 24, 2, 4, 4, 4)
# one policy layer: q 16*16, k 8*16, v 8*16, o 16*16, gate/up/down 3*16*40, two norms 2*16
P_LAYER = 256 + 128 + 128 + 256 + 3 * 640 + 32  # 2720
P = 100 * 16 + 2 * P_LAYER + 16 + 100 * 16  # embed + layers + norm + LM head = 8656
S_LAYER = 4 * 256 + 3 * 16 * 24 + 32  # 2208
S_BACKBONE = 101 * 16 + 2 * S_LAYER + 16  # 6048
S = S_BACKBONE + 16 + 1  # 6065


def test_small_config_plan_by_hand():
    assert (POLICY.causal_lm_params(), SCORER.score_model_params()) == (P, S) == (8656, 6065)
    W, b, rollout, prompt, resp = 4, 2, 4, 6, 10
    seq = prompt + resp
    plan = memory_plan(
        POLICY,
        [SCORER, SCORER],
        world_size=W,
        sharding="fsdp2",
        probe=None,
        critic_init="score",
        micro_batch=b,
        rollout_batch=rollout,
        prompt_len=prompt,
        response_len=resp,
    )
    policy_root = 100 * 16 + 16 + 100 * 16  # embeddings, final norm, LM head
    scorer_root = 101 * 16 + 16
    resident = {
        "policy master weights (fp32)": 4 * P / W,
        "MOGD bank: k=2 x fp32 gradients": 2 * 4 * P / W,
        "AdamW moments (fp32, 2 per trainable parameter)": 8 * P / W,
        "reference policy (bf16)": 2 * P / W,
        "scorers x2 (bf16, sharded)": 2 * 2 * S / W,
        # fp32 master trunks (weight, gradient, 2 moments) sharded; fp32 heads replicated
        "critics: 2 score-model critics (trained)": 2 * (16 * S_BACKBONE / W + 16 * 17),
        "FSDP2 roots of the frozen models, gathered (bf16)": 2 * policy_root + 2 * 2 * scorer_root,
    }
    generation = 2 * 2 * 2 * 8 * rollout * seq + 2 * P  # K and V per layer + gathered policy
    train = (
        2 * b * seq * 16 * 2  # checkpointed layer inputs
        + 2 * b * seq * (6 * 16 + 2 * 8 + 4 * 40)  # one layer's working set
        + 2 * b * seq * 100  # bf16 logits
        + 24 * b * resp * 100  # the losses' six fp32 tensors at the response positions
        + 2 * (policy_root + 2 * P_LAYER)  # root + 2 layers gathered in bf16
        + 6 * policy_root  # the root's gradient: bf16 + fp32 reduce-scatter copy
    )
    critic = (
        2 * b * seq * 16 * 2
        + 2 * b * seq * (6 * 16 + 2 * 16 + 4 * 24)
        + 2 * (scorer_root + 2 * S_LAYER)
        + 6 * S_LAYER  # a scorer layer is larger than its root (no LM head)
    )
    optimizer = 4 * max(P / W, 2 * (S_BACKBONE / W + 17))  # foreach AdamW's sqrt(v)
    assert plan.phases == pytest.approx(
        {
            "generation": generation,
            "policy train pass": train,
            "critic train pass": critic,
            "optimizer step (foreach AdamW)": optimizer,
        }
    )
    tensors = sum(resident.values()) + max(generation, train, critic, optimizer)
    expected = {
        **resident,
        "transient peak (largest phase)": max(generation, train, critic, optimizer),
        "allocator reserve (5% of the tensors)": 0.05 * tensors,
        "CUDA context + NCCL buffers": 1.0 * GIB,
    }
    assert dict(plan.entries) == pytest.approx(expected)
    assert plan.total == pytest.approx(1.05 * tensors + GIB)

    # LoRA r=2 (replicated, one process: no NCCL), head critics, fp32 compute
    lora = 2 * 2 * (2 * 16 + 2 * (16 + 8) + 16 + 16 + 3 * (16 + 40))  # r*(in+out), 2 layers
    one = memory_plan(
        POLICY,
        [SCORER],
        world_size=1,
        sharding="ddp",
        lora_r=2,
        probe=None,
        precision="fp32",
        micro_batch=b,
        rollout_batch=rollout,
        prompt_len=prompt,
        response_len=resp,
    )
    assert one.get("policy: bf16 base + fp32 LoRA weights") == 2 * P + 4 * lora
    assert one.get("reference policy (bf16)") == 0  # the adapters disabled
    assert one.get("CUDA context + NCCL buffers") == 0.5 * GIB
    assert one.phases["generation"] == 2 * 2 * 2 * 8 * rollout * seq  # no gathered copy


def test_default_7b_mode_fits_76_gib_at_8_gpus():
    plan = dry_run_plan(make_config("mistral-7b", world_size=8))
    mode, memory = plan["mode"], plan["memory"]
    assert mode == {
        "configured": "full-score",
        "picked": "full-score",
        "budget_gib": 76.0,
        "fits": True,
        "options": {"lora_r": 0, "critic_init": "score"},
        "why": None,
    }
    assert set(memory) == {"full-score", "full-head", "lora-16-score", "lora-16-head"}
    assert memory["full-score"]["sharding"] == "fsdp2"
    assert memory["lora-16-score"]["sharding"] == memory["lora-16-head"]["sharding"] == "ddp"
    assert memory["full-score"]["total_bytes"] / GIB <= 76
    # micro-batches of 16 x (128 prompt + 512 generated) tokens
    assert "micro-batch 16 x 640 tokens" in memory["full-score"]["notes"][0]
    text = format_plan(plan)
    assert "this run: full, score critics (FSDP2)" in text and "fits 76 GiB" in text


def test_a_mode_that_does_not_fit_is_replaced_and_said():
    plan = dry_run_plan(make_config("mistral-7b", world_size=8, lora_r=16))
    assert not plan["memory"]["lora-16-score"]["fits"]  # replicated 7B critics and scorers
    assert plan["mode"]["picked"] == "full-score"
    text = format_plan(plan)
    assert "LoRA r=16, score critics (DDP) needs" in text
    assert "the preset picks full, score critics (FSDP2)" in text


@pytest.mark.parametrize(
    ("world", "lora_r", "critic_init", "probe"),
    [(4, 0, "head", "full"), (1, 16, "head", "full"), (8, 0, "score", "full")],
)
def test_the_preset_runs_the_first_mode_that_fits(world, lora_r, critic_init, probe):
    """Without --critic-init and --lora-r the run itself takes the plan's pick, and says so;
    what the user gave is kept (the plan then says what would fit)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = make_config("mistral-7b", world_size=world)
    assert (cfg.paper.lora_r, cfg.algorithm.critic_init, cfg.algorithm.probe) == (
        lora_r,
        critic_init,
        probe,
    )
    said = [str(w.message) for w in caught if "the preset picks" in str(w.message)]
    assert len(said) == (world != 8)
    if said:
        assert f"world size {world}" in said[0] and f"--critic-init {critic_init}" in said[0]
    plan = dry_run_plan(cfg)
    assert plan["memory"][plan["mode"]["configured"]]["fits"]
    kept = make_config("mistral-7b", world_size=world, critic_init="score")
    assert kept.algorithm.critic_init == "score" and kept.paper.lora_r == 0


def test_group_advantages_plan_no_critic():
    """--advantage group trains no critic: no mode carries one, and each costs what the same
    mode with value heads costs less the heads (16 B per head parameter)."""
    group = dry_run_plan(
        make_config("mistral-7b", world_size=8, advantage="group", samples_per_prompt=4)
    )
    heads = dry_run_plan(make_config("mistral-7b", world_size=8, critic_init="head"))
    assert set(group["memory"]) == {"full-none", "lora-16-none"}
    assert group["critic_init"] == "none" and group["mode"]["picked"] == "full-none"
    for key, twin in (("full-none", "full-head"), ("lora-16-none", "lora-16-head")):
        mine, theirs = group["memory"][key], heads["memory"][twin]
        assert not any(name.startswith("critics") for name in mine["bytes"])
        assert mine["phases"]["critic train pass"] == 0
        value_heads = theirs["bytes"]["critics: 2 value heads (fp32)"]
        assert value_heads == 16 * 2 * (4096 + 1)
        assert mine["total_bytes"] < theirs["total_bytes"]
    assert "critics none (group advantages)" in format_plan(group)


def test_generation_batch_bounds_the_kv_cache():
    """--generation-batch 64 decodes half the rollout at a time: the generation phase loses 64
    rows of KV cache (bf16 keys and values, 32 layers x 8 KV heads x 128, 640 tokens each)."""
    whole = dry_run_plan(make_config("mistral-7b", world_size=8))["memory"]["full-score"]
    half = dry_run_plan(make_config("mistral-7b", world_size=8, generation_batch=64))
    half_mode = half["memory"]["full-score"]
    kv_per_row = 2 * 2 * 32 * (8 * 128) * 640
    assert whole["phases"]["generation"] - half_mode["phases"]["generation"] == 64 * kv_per_row
    assert half_mode["total_bytes"] < whole["total_bytes"]
    assert "decoded 64 at a time" in half_mode["notes"][0]
    more = dry_run_plan(make_config("mistral-7b", world_size=8, generation_batch=1000))
    assert more["memory"]["full-score"]["phases"] == whole["phases"]  # at most the rollout
