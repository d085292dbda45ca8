"""``--dry-run``: parameter counts and the per-GPU memory plan of a run, from model configs only
(no weights loaded; the paper world's arithmetic is :mod:`integrations.worlds.paper.memory` and :mod:`~integrations.worlds.paper.shapes`). :func:`dry_run_plan` returns the plan as data (the ``plan`` of
``--dry-run --json``); :func:`format_plan` prints the paper preset's table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from ..ppo.methods import objective_count
from ..worlds.paper.memory import GPU_BUDGET_GIB, gib, memory_plan
from ..worlds.paper.shapes import (
    PUBLISHED_CONFIGS,
    ModelShape,
    lora_param_count,
    shape_from_config,
)
from .config import PAPER, Config, decoded_at_once, flag, fsdp_enabled
from .presets import objective_names

# a mode's critics: --critic-init, or none (group advantages)
CriticMode = Literal["copy", "head", "score", "none"]

NOTE = (
    "trained weights are fp32 masters with fp32 gradients and AdamW moments (bf16 compute: "
    "autocast copies under DDP, MixedPrecisionPolicy under FSDP2); frozen models bf16; FSDP2 "
    "shards every model but quantised scorers; activations are an estimate; fixed: CUDA context "
    "0.5 GiB, NCCL 0.5 GiB (world size > 1), allocator reserve 5 % of the tensors"
)


def model_shape(name_or_path: str, option: str) -> tuple[ModelShape, str]:
    """Shape of a model from its config only: local config.json, published table, or hub config."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        from transformers import AutoConfig

        return shape_from_config(AutoConfig.from_pretrained(path)), f"{path}/config.json"
    if name_or_path in PUBLISHED_CONFIGS:
        return shape_from_config(PUBLISHED_CONFIGS[name_or_path]), "published config (built in)"
    from transformers import AutoConfig

    from ..worlds.paper.models import resolve_pretrained

    local = resolve_pretrained(name_or_path, option=option)  # config only is read, no weights
    return shape_from_config(AutoConfig.from_pretrained(local)), f"{name_or_path} (hub config)"


def dry_run_plan(cfg: Config) -> dict[str, Any]:
    """Parameter counts (policy, scorers, MOGD's k and probe) and, for the paper preset, the
    per-GPU memory of each component under DDP and FSDP2 (bytes, and GiB in ``total_gib``)."""
    algo, paper = cfg.algorithm, cfg.paper
    k = objective_count(algo.method, len(objective_names(cfg)))
    probe = None if algo.probe == "full" else algo.probe
    world = paper.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.run.preset not in PAPER:
        from ..worlds.tiny.setup import MODEL_CONFIG, VOCAB_SIZE

        shape = shape_from_config({**MODEL_CONFIG, "vocab_size": VOCAB_SIZE})
        n = shape.causal_lm_params()
        return {
            "world_size": world,
            "policy": {
                "parameters": n,
                "trainable": n,
                "source": "integrations/worlds/tiny/setup.py",
            },
            "mogd": {"k": k, "probe": algo.probe, "bank_elements": k * _bank(shape, probe, n)},
            "critic_init": algo.critic_init,
        }
    policy, policy_src = model_shape(paper.policy, "--policy")
    total = policy.causal_lm_params()
    trainable = lora_param_count(policy, paper.lora_r) if paper.lora_r > 0 else total
    quant: Literal["bf16", "8bit", "4bit"] = paper.quantization or "bf16"
    scorers = []
    shapes = []
    for name, kind, model_id, option in paper.objective_models():
        shape, src = model_shape(model_id, option)
        shapes.append(shape)
        scorers.append(
            {
                "name": name,
                "kind": kind,
                "model": model_id,
                "source": src,
                "parameters": shape.score_model_params(),
                "quantization": quant,
            }
        )
    seq = paper.seq_len or paper.prompt_len + cfg.rollout.max_new_tokens
    common: dict[str, Any] = dict(
        world_size=world,
        k=k,
        quant=quant,
        precision=cfg.engine.precision,
        micro_batch=cfg.batch.micro_batch_size or cfg.batch.update_size,
        rollout_batch=decoded_at_once(cfg),
        prompt_len=seq - min(cfg.rollout.max_new_tokens, seq - 1),
        response_len=min(cfg.rollout.max_new_tokens, seq - 1),
        gradient_checkpointing=paper.gradient_checkpointing,
    )
    # group advantages train no critic: the modes differ only in LoRA
    group = cfg.ppo.advantage == "group"
    critics: tuple[CriticMode, ...] = ("none",) if group else ("score", "head")
    critic: CriticMode = "none" if group else algo.critic_init
    configured = _mode_key(paper.lora_r, critic)
    memory: dict[str, Any] = {}
    for mode, lora_r, critic_init in _modes(paper.lora_r, critic, critics):
        sharding: Literal["ddp", "fsdp2"] = "fsdp2" if world > 1 and lora_r == 0 else "ddp"
        plan = memory_plan(
            policy,
            shapes,
            sharding=sharding,
            lora_r=lora_r,
            probe=None if lora_r > 0 else probe,
            critic_init=critic_init,
            **common,
        )
        memory[mode] = {
            "label": f"{_mode_label(lora_r, critic_init)} ({'FSDP2' if sharding == 'fsdp2' else 'DDP'})",
            "sharding": sharding,
            "bytes": dict(plan.entries),
            "phases": dict(plan.phases),
            "total_bytes": plan.total,
            "total_gib": round(gib(plan.total), 2),
            "fits": gib(plan.total) <= GPU_BUDGET_GIB,
            "notes": list(plan.notes),
            # what make_config passes to run this mode (no critic: --critic-init is moot)
            "options": {"lora_r": lora_r, **({} if group else {"critic_init": critic_init})},
        }
    fitting = [m for m in memory if memory[m]["fits"]]
    picked = configured if memory[configured]["fits"] or not fitting else fitting[0]
    conf, pick = memory[configured], memory[picked]
    why = None  # a sentence when the preset picks another mode than the configured one
    if picked != configured:
        flags = ", ".join(f"{flag(k)} {v}" for k, v in pick["options"].items())
        why = (
            f"{conf['label']} needs {conf['total_gib']:.2f} GiB per GPU at world size {world}, "
            f"over the {GPU_BUDGET_GIB:.0f} GiB budget: the preset picks {pick['label']} "
            f"({pick['total_gib']:.2f} GiB; {flags})"
        )
    return {
        "world_size": world,
        "sharding": "fsdp2" if fsdp_enabled(cfg, world) else "ddp",
        "policy": {
            "model": paper.policy,
            "source": policy_src,
            "parameters": total,
            "trainable": trainable,
            "lora_r": paper.lora_r,
        },
        "mogd": {
            "k": k,
            "probe": algo.probe,
            "bank_elements": k * _bank(policy, probe, trainable),
        },
        "scorers": scorers,
        "critic_init": critic,
        "memory": memory,
        "mode": {
            "configured": configured,
            "picked": picked,
            "budget_gib": GPU_BUDGET_GIB,
            "fits": memory[picked]["fits"],
            "options": pick["options"],
            "why": why,
        },
    }


def _modes(
    lora_r: int, critic: CriticMode, critics: tuple[CriticMode, ...]
) -> list[tuple[str, int, CriticMode]]:
    """(key, lora_r, critic_init) of each mode the plan compares, in the order the preset
    prefers them when the configured one (``lora_r``, ``critic``) does not fit: full
    fine-tuning with each of ``critics`` (score-model critics first, the default), then LoRA
    (r = --lora-r, or 16) with each; the configured mode first when its critics are none of
    these (copy critics)."""
    r = lora_r or 16
    modes = [(_mode_key(lora, c), lora, c) for lora in (0, r) for c in critics]
    if critic not in critics:
        modes.insert(0, (_mode_key(lora_r, critic), lora_r, critic))
    return modes


def _mode_key(lora_r: int, critic_init: str) -> str:
    """``full-score``, ``lora-16-head``, ``full-none`` (group advantages: no critic), ..."""
    return f"{f'lora-{lora_r}' if lora_r else 'full'}-{critic_init}"


def _mode_label(lora_r: int, critic_init: str) -> str:
    critics = "no critic" if critic_init == "none" else f"{critic_init} critics"
    return f"{f'LoRA r={lora_r}' if lora_r else 'full'}, {critics}"


def _bank(shape: ModelShape, probe: str | None, trainable: int) -> int:
    """Elements of one objective's gradient in MOGD's bank: the probe's, or every trainable."""
    return shape.vocab_size * shape.hidden_size if probe == "lm_head" else trainable


def format_plan(plan: dict[str, Any]) -> str:
    """The human-readable table of the paper preset's :func:`dry_run_plan`."""
    pol, mg = plan["policy"], plan["mogd"]
    lora = pol["lora_r"]
    probe = mg["probe"]
    lines = [
        "mogd --preset mistral-7b --dry-run (no weights loaded)",
        f"policy  {pol['model']}  [{pol['source']}]",
        f"  parameters {pol['parameters']:,}; trainable {pol['trainable']:,}"
        + (f" (LoRA r={lora})" if lora > 0 else " (full fine-tuning)"),
        f"  MOGD: k={mg['k']} per-objective gradients, "
        + (
            f"probe {probe} ({mg['bank_elements'] // mg['k']:,} parameters)"
            if probe == "lm_head"
            else "full mode"
            if probe == "full"
            else f"probe {probe}"
        ),
    ]
    for s in plan["scorers"]:
        lines.append(f"{s['kind']:<6}  {s['model']}  [{s['source']}]")
        lines.append(f"  parameters {s['parameters']:,} ({s['name']}, {s['quantization']})")
    none = plan["critic_init"] == "none"
    lines.append(f"critics {plan['critic_init']}" + (" (group advantages)" if none else ""))
    memory, mode = plan["memory"], plan["mode"]
    picked = memory[mode["picked"]]
    verdict = (
        f"fits {mode['budget_gib']:.0f} GiB"
        if picked["fits"]
        else f"nothing fits {mode['budget_gib']:.0f} GiB"
    )
    lines += ["", f"per-GPU memory, world size {plan['world_size']} (GiB), one column per mode"]
    names = list(dict.fromkeys(n for m in memory.values() for n in m["bytes"]))
    last = ("transient peak", "allocator reserve", "CUDA context")  # after every component
    names.sort(key=lambda n: next((i + 1 for i, p in enumerate(last) if n.startswith(p)), 0))
    width = max(len(n) for n in names)
    for key, m in memory.items():
        lines.append(f"  [{key}] {m['label']}")
    lines.append(f"  {'component':<{width}}" + "".join(f"  {k:>12}" for k in memory))
    for name in names:
        cells = [
            f"{gib(m['bytes'][name]):12.2f}" if name in m["bytes"] else f"{'-':>12}"
            for m in memory.values()
        ]
        lines.append(f"  {name:<{width}}  " + "  ".join(cells))
    totals = "  ".join(f"{gib(m['total_bytes']):12.2f}" for m in memory.values())
    lines.append(f"  {'total':<{width}}  {totals}")
    lines.append("")
    if mode["picked"] == mode["configured"]:
        lines.append(f"this run: {picked['label']}: {picked['total_gib']:.2f} GiB, {verdict}")
    else:
        lines.append(f"this run: {mode['why']}")
    lines.extend(f"note [{k}]: {n}" for k, m in memory.items() for n in m["notes"])
    lines.append(f"note: {NOTE}")
    return "\n".join(lines)


def dry_run(cfg: Config) -> str:
    """What --dry-run prints: the preset's parameter counts and memory plan, no weights loaded;
    with --json one object {"config": every option (the flat form of config.json), "plan": ...}."""
    plan = dry_run_plan(cfg)
    if cfg.run.json:
        return json.dumps({"config": cfg.flat(), "plan": plan}, indent=2)
    if cfg.run.preset == "tiny":  # the tiny preset's plan is its configuration
        return json.dumps(cfg.flat(), indent=2)
    return format_plan(plan)
