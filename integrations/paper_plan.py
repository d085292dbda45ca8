"""Parameter counts and the per-GPU memory plan of the paper preset, from configs only.

``--dry-run`` must answer "does this fit on my GPUs?" without downloading or loading a single
weight, so everything here is arithmetic on config fields (``transformers.AutoConfig`` of a local
path, or the published configs below for the default hub ids).

Parameter count of a LLaMA/Mistral decoder with hidden size h, MLP size I, L layers, key/value
width kv = n_kv_heads * head_dim, vocabulary V:

    embed V*h + L * (2*h*h_q + 2*h*kv + 3*h*I + 2*h) + h (final norm)
    (+ V*h LM head when untied, + h*d (+d) for a score head of dimension d)

with h_q = n_heads * head_dim (= h for both published models).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DEFAULT_COST_MODEL",
    "DEFAULT_POLICY",
    "DEFAULT_REWARD_MODEL",
    "LORA_TARGETS",
    "PUBLISHED_CONFIGS",
    "MemoryPlan",
    "ModelShape",
    "lora_param_count",
    "memory_plan",
    "gib",
    "shape_from_config",
]

DEFAULT_POLICY = "HuggingFaceH4/mistral-7b-sft-beta"
DEFAULT_REWARD_MODEL = "PKU-Alignment/beaver-7b-v1.0-reward"
DEFAULT_COST_MODEL = "PKU-Alignment/beaver-7b-v1.0-cost"

# Fields of the published config.json files that the arithmetic needs (nothing else is read).
# Mistral: the Mistral-7B-v0.1 architecture that HuggingFaceH4/mistral-7b-sft-beta fine-tunes
# (config.json of models derived from it on the hub carry these exact values).
# Beaver: https://huggingface.co/PKU-Alignment/beaver-7b-v1.0-reward/blob/main/config.json and
# .../beaver-7b-v1.0-cost/blob/main/config.json (identical shapes: "architectures":
# ["LlamaForScore"], vocab 32001 = LLaMA + <pad>, "score_dim": 1, "score_bias": true).
_LLAMA_7B = {
    "model_type": "llama",
    "vocab_size": 32001,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "tie_word_embeddings": False,
    "score_dim": 1,
    "score_bias": True,
}
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    DEFAULT_POLICY: {
        "model_type": "mistral",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
    },
    DEFAULT_REWARD_MODEL: dict(_LLAMA_7B),
    DEFAULT_COST_MODEL: dict(_LLAMA_7B),
}

# peft LoRA targets: every linear map of a LLaMA/Mistral decoder layer.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a LLaMA-family decoder that fix its parameter count."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    score_dim: int = 1
    score_bias: bool = True

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear map of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_width),
            "k_proj": (h, self.kv_width),
            "v_proj": (h, self.kv_width),
            "o_proj": (self.q_width, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    def layer_params(self) -> int:
        return self.layer_linear_params() + 2 * self.hidden_size  # + two RMSNorm weights

    def backbone_params(self) -> int:
        """Embedding + decoder layers + final norm (transformers' ``*Model``)."""
        h = self.hidden_size
        return self.vocab_size * h + self.num_layers * self.layer_params() + h

    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def causal_lm_params(self) -> int:
        return self.backbone_params() + self.lm_head_params()

    def score_head_params(self) -> int:
        return self.hidden_size * self.score_dim + (self.score_dim if self.score_bias else 0)

    def score_model_params(self) -> int:
        return self.backbone_params() + self.score_head_params()


def shape_from_config(config: Any) -> ModelShape:
    """Read a :class:`ModelShape` from a transformers config object or a config.json dict."""
    fields: dict[str, Any] = dict(config) if isinstance(config, Mapping) else config.to_dict()
    required = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    )
    missing = [k for k in required if fields.get(k) is None]
    if missing:
        raise ValueError(
            f"config lacks {missing}: only LLaMA-family decoders (llama, mistral, ...) are "
            "supported by the paper preset"
        )
    hidden, heads = int(fields["hidden_size"]), int(fields["num_attention_heads"])
    kv_heads, head_dim = fields.get("num_key_value_heads"), fields.get("head_dim")
    return ModelShape(
        vocab_size=int(fields["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(fields["intermediate_size"]),
        num_layers=int(fields["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(kv_heads) if kv_heads is not None else heads,
        head_dim=int(head_dim) if head_dim is not None else hidden // heads,
        tie_word_embeddings=bool(fields.get("tie_word_embeddings", False)),
        score_dim=int(fields.get("score_dim") or 1),
        # safe-rlhf's newer configs say "score_bias", older ones only "bias"
        score_bias=bool(fields.get("score_bias", fields.get("bias", False))),
    )


def lora_param_count(shape: ModelShape, r: int, targets: Sequence[str] = LORA_TARGETS) -> int:
    """LoRA adds A [r, in] and B [out, r] to each targeted linear: r * (in + out) per map."""
    lin = shape.linear_shapes()
    unknown = [t for t in targets if t not in lin]
    if unknown:
        raise ValueError(
            f"LoRA targets {unknown} are not linear maps of a decoder layer {tuple(lin)}"
        )
    return shape.num_layers * sum(r * (lin[t][0] + lin[t][1]) for t in targets)


Quant = Literal["bf16", "8bit", "4bit"]
# Bytes per weight of a quantised nn.Linear: LLM.int8 keeps int8 weights (its per-row scales are
# negligible); NF4 packs two weights per byte plus one fp32 absmax per block of 64 (no double quant).
_QUANT_LINEAR_BYTES = {"bf16": 2.0, "8bit": 1.0, "4bit": 0.5 + 4 / 64}


@dataclass
class MemoryPlan:
    """Per-GPU bytes by component; ``notes`` say what each figure assumes."""

    sharding: str
    world_size: int
    entries: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(b for _, b in self.entries)

    def get(self, name: str) -> float:
        for n, b in self.entries:
            if n == name:
                return b
        raise KeyError(name)


def _activation_bytes(
    shape: ModelShape, batch: int, seq: int, *, logits: bool, checkpointing: bool
) -> float:
    """Training activations of one micro-batch in bf16 (an estimate, not a measurement).

    With gradient checkpointing every decoder layer keeps only its input (2*b*s*h bytes per
    layer) and one layer at a time is recomputed: its saved tensors are about
    2*b*s*(6h + 2kv + 4I) bytes (two norms' in/out, q/k/v, attention out, SwiGLU's four
    I-wide tensors; SDPA/flash attention keeps no s*s matrix). Without checkpointing every
    layer keeps that working set. The LM head adds its bf16 logits plus their fp32
    log-softmax: 6*b*s*V bytes.
    """
    h, i, kv = shape.hidden_size, shape.intermediate_size, shape.kv_width
    working = 2 * batch * seq * (6 * h + 2 * kv + 4 * i)
    if checkpointing:
        body = 2 * batch * seq * h * shape.num_layers + working
    else:
        body = working * shape.num_layers
    return body + (6 * batch * seq * shape.vocab_size if logits else 0)


def memory_plan(
    policy: ModelShape,
    scorers: Sequence[ModelShape],
    *,
    world_size: int,
    sharding: Literal["ddp", "fsdp2"],
    lora_r: int = 0,
    probe: str | None = "lm_head",
    k: int = 2,
    critic_init: Literal["head", "copy", "score"] = "head",
    quant: Quant = "bf16",
    micro_batch: int = 4,
    seq_len: int = 512,
    gradient_checkpointing: bool = True,
) -> MemoryPlan:
    """Per-GPU memory of one PPO/MOGD training process (DESIGN §5), component by component.

    Conventions (each printed as a note): weights bf16 (2 B); full fine-tuning trains bf16
    parameters whose gradients and AdamW moments are bf16 too (torch keeps them in the
    parameter dtype); LoRA adapters are fp32 (peft upcasts them) so their parameter, gradient and
    two moments take 4+4+8 B. MOGD full mode keeps k per-objective gradients in its bank
    ([k, n] buffer, ``.grad`` are views into it, so no separate gradient buffer); probe mode keeps
    one ordinary gradient plus k copies of the probe's gradient. FSDP2 divides every sharded
    tensor (weights, gradients, bank, moments) by the world size and adds the unsharded root
    unit (embeddings + LM head) plus two decoder layers (current + prefetched) in bf16; frozen
    scorers stay replicated; trained critics are sharded like the policy. Critics: ``head`` = one
    fp32 value head per objective on the policy's hidden states, ``copy`` = a trained copy of the
    policy's decoder + heads, ``score`` = one trained critic per score model. Activations: the peak of the policy's training pass, the critics'
    training pass and the generation KV cache (they never coexist).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if sharding not in ("ddp", "fsdp2"):
        raise ValueError(f"sharding must be 'ddp' or 'fsdp2', got {sharding!r}")
    if critic_init not in ("head", "copy", "score"):
        raise ValueError(f"critic_init must be 'head', 'copy' or 'score', got {critic_init!r}")
    if quant not in _QUANT_LINEAR_BYTES:
        raise ValueError(f"quant must be one of {tuple(_QUANT_LINEAR_BYTES)}, got {quant!r}")
    if lora_r < 0:
        raise ValueError(f"lora_r must be >= 0, got {lora_r}")
    if probe == "lm_head" and lora_r > 0:
        raise ValueError(
            "probe 'lm_head' is frozen under LoRA (--lora-r > 0): use full mode (--probe none)"
        )
    shard = 1.0 / world_size if sharding == "fsdp2" else 1.0
    plan = MemoryPlan(sharding=sharding, world_size=world_size)
    add = plan.entries.append

    p_total = policy.causal_lm_params()
    if lora_r > 0:
        trainable, t_bytes = lora_param_count(policy, lora_r), 4
        add(("policy weights (bf16 base + fp32 LoRA)", (2 * p_total + 4 * trainable) * shard))
    else:
        trainable, t_bytes = p_total, 2
        add(("policy weights (bf16)", 2 * p_total * shard))

    if probe is None:
        add((f"MOGD bank: k={k} x trainable gradients", k * trainable * t_bytes * shard))
    elif probe == "lm_head":
        probe_params = policy.lm_head_params() or policy.vocab_size * policy.hidden_size
        add(("trainable gradients", trainable * t_bytes * shard))
        add((f"MOGD bank: k={k} x probe ({probe}) gradients", k * probe_params * t_bytes * shard))
    else:
        add(("trainable gradients", trainable * t_bytes * shard))
        plan.notes.append(f"probe bank of module {probe!r} not estimated (lm_head only)")
    add(("AdamW moments (2 per trainable parameter)", 2 * trainable * t_bytes * shard))
    add(("reference policy", 0.0 if lora_r > 0 else 2 * p_total * shard))

    scorer_bytes = 0.0
    for s in scorers:
        quantised = s.num_layers * s.layer_linear_params()
        rest = s.score_model_params() - quantised
        scorer_bytes += _QUANT_LINEAR_BYTES[quant] * quantised + 2 * rest
    add((f"scorers x{len(scorers)} ({quant}, replicated)", scorer_bytes))

    critic_act = 0.0
    # Value heads are fp32 linear maps [h -> 1]: weight + gradient + two AdamW moments = 16 B per
    # parameter; a trained bf16 trunk takes 8 B per parameter (weight, gradient, two moments).
    heads = 16.0 * k * (policy.hidden_size + 1)
    if critic_init == "head":  # on the policy's (detached) hidden states
        add((f"critics: {k} value heads (fp32)", heads))
    elif critic_init == "copy":  # one trained copy of the policy's decoder, k heads on top
        add(
            (
                "critics: policy trunk copy + value heads",
                8.0 * policy.backbone_params() * shard + heads,
            )
        )
        critic_act = _activation_bytes(
            policy, micro_batch, seq_len, logits=False, checkpointing=gradient_checkpointing
        )
    else:
        critic_bytes = 0.0
        for s in scorers:
            backbone = s.backbone_params()
            head = s.hidden_size + 1
            if lora_r > 0:
                adapters = lora_param_count(s, lora_r)
                critic_bytes += (2 * backbone + 16 * (adapters + head)) * shard
            else:
                critic_bytes += (8 * backbone + 16 * head) * shard
            critic_act = max(
                critic_act,
                _activation_bytes(
                    s, micro_batch, seq_len, logits=False, checkpointing=gradient_checkpointing
                ),
            )
        add((f"critics: {len(scorers)} score-model critics (trained)", critic_bytes))

    policy_act = _activation_bytes(
        policy, micro_batch, seq_len, logits=True, checkpointing=gradient_checkpointing
    )
    kv_cache = 2 * 2 * policy.num_layers * policy.kv_width * micro_batch * seq_len
    add(
        (
            "activations (peak of train pass / critic pass / KV cache)",
            max(policy_act, critic_act, kv_cache),
        )
    )

    if sharding == "fsdp2":
        root = policy.vocab_size * policy.hidden_size + policy.lm_head_params() + policy.hidden_size
        add(("FSDP2 unsharded root + 2 layers (bf16)", 2.0 * (root + 2 * policy.layer_params())))
    plan.notes.append(
        f"micro-batch {micro_batch} x {seq_len} tokens; gradient checkpointing "
        f"{'on' if gradient_checkpointing else 'off'}"
    )
    return plan


def gib(nbytes: float) -> float:
    return nbytes / _GIB
