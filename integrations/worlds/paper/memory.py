"""The per-GPU memory plan of the paper preset, from model shapes only (:mod:`.shapes`): what
``--dry-run`` prints, one plan per mode, without loading a weight."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .shapes import ModelShape, lora_param_count

__all__ = [
    "ALLOCATOR_RESERVE",
    "CUDA_CONTEXT_BYTES",
    "GPU_BUDGET_GIB",
    "NCCL_BYTES",
    "MemoryPlan",
    "logits_bytes",
    "memory_plan",
    "gib",
]

_GIB = 1024**3

Quant = Literal["bf16", "8bit", "4bit"]
# Bytes per weight of a quantised nn.Linear: LLM.int8 keeps int8 weights (its per-row scales are
# negligible); NF4 packs two weights per byte plus one fp32 absmax per block of 64 (no double quant).
_QUANT_LINEAR_BYTES = {"bf16": 2.0, "8bit": 1.0, "4bit": 0.5 + 4 / 64}


# Fixed costs outside PyTorch's tensors (nvidia-smi counts them, torch.cuda.memory_allocated
# does not). CUDA context: ~0.5 GiB per process on H100 with CUDA 12's lazy module loading (the
# driver context, torch's kernels, cuBLAS workspaces). NCCL: ~0.5 GiB for one communicator of 8
# ranks on NVLink (NCCL_BUFFSIZE 4 MiB per channel and peer, up to 32 channels, plus FSDP2's
# all-gather/reduce-scatter staging). Allocator reserve: the caching allocator's
# fragmentation (reserved - allocated), 5 % of the tensors' peak (less with
# PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True).
CUDA_CONTEXT_BYTES = 0.5 * _GIB
NCCL_BYTES = 0.5 * _GIB
ALLOCATOR_RESERVE = 0.05
# What a plan may use of an 80 GB GPU (79.6 GiB as nvidia-smi reports an H100/A100 80GB).
GPU_BUDGET_GIB = 76.0


@dataclass
class MemoryPlan:
    """Per-GPU bytes by component; ``phases`` the transient bytes of each phase of an iteration
    (only the largest counts: they do not overlap); ``notes`` say what each figure assumes."""

    sharding: str
    world_size: int
    entries: list[tuple[str, float]] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(b for _, b in self.entries)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda k: self.phases[k])

    def get(self, name: str) -> float:
        for n, b in self.entries:
            if n == name:
                return b
        raise KeyError(name)


def _activation_bytes(shape: ModelShape, batch: int, seq: int, *, checkpointing: bool) -> float:
    """Decoder activations of one training forward in bf16 (an estimate, not a measurement).

    With gradient checkpointing every decoder layer keeps only its input (2*b*s*h bytes per
    layer) and one layer at a time is recomputed: its saved tensors are about
    2*b*s*(6h + 2kv + 4I) bytes (two norms' in/out, q/k/v, attention out, SwiGLU's four
    I-wide tensors; SDPA/flash attention keeps no s*s matrix). Without checkpointing every
    layer keeps that working set.
    """
    h, i, kv = shape.hidden_size, shape.intermediate_size, shape.kv_width
    working = 2 * batch * seq * (6 * h + 2 * kv + 4 * i)
    if checkpointing:
        return 2 * batch * seq * h * shape.num_layers + working
    return working * shape.num_layers


def logits_bytes(shape: ModelShape, batch: int, seq: int, response: int) -> float:
    """The LM head's outputs in one policy forward of the update: bf16 logits at every position
    (2*b*s*V) and, at the response positions, the float32 tensors the PPO losses build from them
    (float copy, / temperature, log-softmax, and the entropy's log-softmax, exp and product:
    six fp32 tensors, 24*b*T*V bytes)."""
    return 2 * batch * seq * shape.vocab_size + 24 * batch * response * shape.vocab_size


def memory_plan(
    policy: ModelShape,
    scorers: Sequence[ModelShape],
    *,
    world_size: int,
    sharding: Literal["ddp", "fsdp2"],
    lora_r: int = 0,
    probe: str | None = "lm_head",
    k: int = 2,
    critic_init: Literal["head", "copy", "score", "none"] = "head",
    quant: Quant = "bf16",
    precision: Literal["fp32", "bf16"] = "bf16",
    micro_batch: int = 4,
    rollout_batch: int = 16,
    prompt_len: int = 128,
    response_len: int = 512,
    gradient_checkpointing: bool = True,
    cuda: bool = True,
) -> MemoryPlan:
    """Per-GPU memory of one PPO/MOGD training process as the pipeline runs it, component by
    component (bytes; every figure's assumption is in a note). Sequences are ``prompt_len`` +
    ``response_len`` tokens (the rollout batch left-pads its prompts to the longest).

    Resident for the whole run:

    * Trained weights are float32 master weights with float32 gradients and AdamW moments
      (4 + 4 + 8 B per parameter; ``precision`` only changes the compute dtype). With bf16
      compute, one process or DDP runs under autocast, which keeps a bf16 copy of every weight
      it used for the backward (2 B per parameter); FSDP2 casts one unit at a time instead.
    * MOGD full mode keeps k per-objective gradients in its bank ([k, n], row 0 doubles as
      ``.grad``); probe mode one gradient plus k copies of the probe's.
    * LoRA (replicated: ``--fsdp`` is refused with it): the frozen base in bf16, the adapters as
      trained weights.
    * Frozen models (reference, scorers) are bf16, or 8/4-bit scorers through bitsandbytes.
      FSDP2 shards every model but quantised scorers. The root unit of a frozen model
      (embeddings, final norm, LM head) is not resharded after its forward (FSDP2 keeps the
      root gathered for a backward that never comes), so each stays whole in bf16.

    Transient, the largest of four phases that do not overlap (``plan.phases``):

    * generation: KV cache of ``rollout_batch`` x seq (the sequences decoded at once: the
      rollout, or ``--generation-batch`` of it); under FSDP2 the policy is gathered once per
      rollout, a bf16 copy of every weight;
    * the policy's training micro-batch: checkpointed decoder + logits (:func:`logits_bytes`),
      and under FSDP2 the units in flight: root + two decoder layers (current + prefetched) in
      bf16 and the root's unsharded gradient (bf16, and its float32 copy for the reduce-scatter);
    * the critics' training micro-batch (the same for a trained critic trunk);
    * the optimizer step: foreach AdamW's one float32 temporary per trainable parameter
      (``sqrt(v)``), for the larger of the policy's and the critics' optimizers.

    Fixed: the CUDA context and NCCL buffers, and the allocator's reserve
    (:data:`CUDA_CONTEXT_BYTES`, :data:`NCCL_BYTES`, :data:`ALLOCATOR_RESERVE`); ``cuda=False``
    leaves them out.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if sharding not in ("ddp", "fsdp2"):
        raise ValueError(f"sharding must be 'ddp' or 'fsdp2', got {sharding!r}")
    if critic_init not in ("head", "copy", "score", "none"):
        raise ValueError(
            f"critic_init must be 'head', 'copy', 'score' or 'none' (group advantages), "
            f"got {critic_init!r}"
        )
    if quant not in _QUANT_LINEAR_BYTES:
        raise ValueError(f"quant must be one of {tuple(_QUANT_LINEAR_BYTES)}, got {quant!r}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if lora_r < 0:
        raise ValueError(f"lora_r must be >= 0, got {lora_r}")
    if probe == "lm_head" and lora_r > 0:
        raise ValueError(
            "probe 'lm_head' is frozen under LoRA (--lora-r > 0): use full mode (--probe full)"
        )
    if sharding == "fsdp2" and lora_r > 0:
        raise ValueError("FSDP2 shards full fine-tuning; a LoRA policy trains replicated (DDP)")
    fsdp = sharding == "fsdp2"
    shard = 1.0 / world_size if fsdp else 1.0
    seq_len = prompt_len + response_len
    plan = MemoryPlan(sharding=sharding, world_size=world_size)
    add = plan.entries.append

    p_total = policy.causal_lm_params()
    if lora_r > 0:
        trainable = lora_param_count(policy, lora_r)
        add(("policy: bf16 base + fp32 LoRA weights", 2 * p_total + 4 * trainable))
    else:
        trainable = p_total
        add(("policy master weights (fp32)", 4 * p_total * shard))
    if probe is None:
        add((f"MOGD bank: k={k} x fp32 gradients", k * 4 * trainable * shard))
    else:
        probe_params = policy.lm_head_params() or policy.vocab_size * policy.hidden_size
        if probe != "lm_head":
            plan.notes.append(f"probe {probe!r} counted as large as the LM head")
        add(("fp32 gradients", 4 * trainable * shard))
        add((f"MOGD bank: k={k} x probe ({probe}) gradients", k * 4 * probe_params * shard))
    add(("AdamW moments (fp32, 2 per trainable parameter)", 8 * trainable * shard))
    if precision == "bf16" and not fsdp:
        add(("bf16 compute copy of the trained weights (autocast)", 2 * trainable))
    add(("reference policy (bf16)", 0.0 if lora_r > 0 else 2 * p_total * shard))

    scorer_bytes = 0.0
    for s in scorers:
        quantised = s.num_layers * s.layer_linear_params()
        rest = s.score_model_params() - quantised
        scorer_bytes += _QUANT_LINEAR_BYTES[quant] * quantised + 2 * rest
    scorers_sharded = fsdp and quant == "bf16"
    where = "sharded" if scorers_sharded else "replicated"
    add(
        (
            f"scorers x{len(scorers)} ({quant}, {where})",
            scorer_bytes * (shard if scorers_sharded else 1),
        )
    )

    critic_act = 0.0
    critic_trainable = 0.0
    critic_unit = 0.0  # a trained critic trunk's FSDP2 units in flight
    # value heads: fp32 linear maps [h -> 1] with gradient and two moments, 16 B per parameter
    heads = 16.0 * k * (policy.hidden_size + 1)
    if critic_init == "head":  # on the policy's (detached) hidden states
        add((f"critics: {k} value heads (fp32)", heads))
        critic_trainable = k * (policy.hidden_size + 1)
    elif critic_init == "copy":  # a trained copy of the policy's decoder: a master-weight model
        add(
            (
                "critics: policy trunk copy (fp32 master) + value heads",
                16.0 * policy.backbone_params() * shard + heads,
            )
        )
        critic_trainable = policy.backbone_params() * shard + k * (policy.hidden_size + 1)
        critic_act = _activation_bytes(
            policy, micro_batch, seq_len, checkpointing=gradient_checkpointing
        )
        critic_unit = _units_in_flight(policy, lm_head=False) if fsdp else 0.0
    elif critic_init == "score":
        critic_bytes = 0.0
        for s in scorers:
            backbone, head = s.backbone_params(), s.hidden_size + 1
            if lora_r > 0:
                adapters = lora_param_count(s, lora_r)
                critic_bytes += 2 * backbone + 16 * (adapters + head)
                critic_trainable += adapters + head
            else:
                critic_bytes += 16 * backbone * shard + 16 * head
                critic_trainable += backbone * shard + head
            critic_act = max(
                critic_act,
                _activation_bytes(s, micro_batch, seq_len, checkpointing=gradient_checkpointing),
            )
            if fsdp:
                critic_unit = max(critic_unit, _units_in_flight(s, lm_head=False))
        add((f"critics: {len(scorers)} score-model critics (trained)", critic_bytes))

    if fsdp:
        # FSDP2 keeps a frozen model's root gathered after its (no-grad) forward
        roots = 0.0 if lora_r > 0 else 2.0 * _root_params(policy, lm_head=True)
        for s in scorers if scorers_sharded else []:
            roots += 2.0 * _root_params(s, lm_head=False)
        add(("FSDP2 roots of the frozen models, gathered (bf16)", roots))

    kv_cache = 2 * 2 * policy.num_layers * policy.kv_width * rollout_batch * seq_len
    plan.phases["generation"] = kv_cache + (2 * p_total if fsdp else 0.0)
    train_act = _activation_bytes(
        policy, micro_batch, seq_len, checkpointing=gradient_checkpointing
    ) + logits_bytes(policy, micro_batch, seq_len, response_len)
    plan.phases["policy train pass"] = train_act + (
        _units_in_flight(policy, lm_head=True) if fsdp and lora_r == 0 else 0.0
    )
    plan.phases["critic train pass"] = critic_act + critic_unit
    plan.phases["optimizer step (foreach AdamW)"] = 4.0 * max(trainable * shard, critic_trainable)
    peak = plan.peak_phase
    add(("transient peak (largest phase)", plan.phases[peak]))
    if cuda:
        fixed = CUDA_CONTEXT_BYTES + (NCCL_BYTES if world_size > 1 else 0.0)
        add(
            (
                f"allocator reserve ({ALLOCATOR_RESERVE:.0%} of the tensors)",
                ALLOCATOR_RESERVE * plan.total,
            )
        )
        add(("CUDA context + NCCL buffers", fixed))
    plan.notes.append(
        f"micro-batch {micro_batch} x {seq_len} tokens ({prompt_len} prompt + {response_len} "
        f"response); decoded {rollout_batch} at a time; gradient checkpointing "
        f"{'on' if gradient_checkpointing else 'off'}; transient GiB: "
        + ", ".join(f"{n} {gib(b):.2f}" for n, b in plan.phases.items())
        + f" (peak: {peak})"
    )
    return plan


def _root_params(shape: ModelShape, *, lm_head: bool) -> int:
    """Parameters of a model's FSDP2 root unit: embeddings, final norm (and the LM head)."""
    return (
        shape.vocab_size * shape.hidden_size
        + shape.hidden_size
        + (shape.lm_head_params() if lm_head else 0)
    )


def _units_in_flight(shape: ModelShape, *, lm_head: bool) -> float:
    """A trained FSDP2 model's units gathered in its training pass: the root and two decoder
    layers in bf16, and the root's unsharded gradient in bf16 plus its float32 copy for the
    reduce-scatter (6 B per parameter; a layer's gradient is smaller than the root's)."""
    root = _root_params(shape, lm_head=lm_head)
    return 2.0 * (root + 2 * shape.layer_params()) + 6.0 * max(root, shape.layer_params())


def gib(nbytes: float) -> float:
    return nbytes / _GIB
